"""The quality gate: runs a table's Great Expectations suite on rows about to be published, quarantines the rows
that fail, keeps Data Docs in the state dir, and refuses the publish with a readable report."""
from __future__ import annotations

import fcntl
import logging
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import duckdb
import numpy as np
import orjson
import pyarrow as pa

from quality.errors import QualityGateFailed  # noqa: F401  (raised by gate; importable from here as before)
from quality.suites import KEY_HASH, Suite
from schemas.settings import Settings

log = logging.getLogger("trajlake.quality")
# failing rows copied to the quarantine table per expectation; the count in the report is always the full one
QUARANTINE_CAP = 10_000
EXAMPLES = 3


@dataclass(frozen=True)
class Failure:
    """One expectation that did not hold: how many rows broke it and a few of their keys."""

    expectation: str
    column: str | None
    description: str | None
    unexpected: int
    examples: tuple[dict[str, Any], ...]
    critical: bool
    rows: tuple[dict[str, Any], ...] = field(default=(), repr=False)  # key columns of every failing row (capped)

    def line(self) -> str:
        what = self.description or f"{self.expectation}({self.column})"
        ex = "; ".join(", ".join(f"{k}={v}" for k, v in e.items()) for e in self.examples)
        return f"{what}: {self.unexpected:,} row(s) fail" + (f" — e.g. {ex}" if ex else "")


@dataclass(frozen=True)
class QualityReport:
    """The outcome of one suite on one batch of rows."""

    run_id: str
    suite: str
    table: str
    rows: int
    evaluated: int
    failures: tuple[Failure, ...]
    data_docs: str | None
    quarantined: int = 0
    overridden: bool = False

    @property
    def success(self) -> bool:
        return not self.failures

    def blocking(self, allow_failures: bool) -> tuple[Failure, ...]:
        """The failures that stop a publish: all of them, or only the critical ones under an override."""
        return tuple(f for f in self.failures if f.critical or not allow_failures)

    def summary(self) -> str:
        head = (f"{self.table}: suite {self.suite} {'passed' if self.success else 'FAILED'} "
                f"({self.evaluated - len(self.failures)}/{self.evaluated} expectations on {self.rows:,} rows)")
        lines = [head] + [f"  ✗ {f.line()}" + ("  [critical]" if f.critical else "") for f in self.failures]
        if self.quarantined:
            lines.append(f"  {self.quarantined:,} failing row(s) copied to quality/quarantine (run_id {self.run_id})")
        if self.data_docs:
            lines.append(f"  Data Docs: {self.data_docs}")
        return "\n".join(lines)

    def as_manifest(self) -> dict[str, Any]:
        return {"suite": self.suite, "run_id": self.run_id, "success": self.success, "overridden": self.overridden,
                "rows": self.rows, "expectations": self.evaluated,
                "failures": [{"expectation": f.expectation, "column": f.column, "unexpected": f.unexpected}
                             for f in self.failures]}


# ---- Great Expectations -------------------------------------------------------------------------------------
def quality_dir(settings: Settings) -> Path:
    return settings.state_dir / "quality"


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One GE run at a time per state dir: the file context's stores are plain files that two writers would tear."""
    d = quality_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@lru_cache(maxsize=4)
def _context(root: str, docs_runs: int):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.execution_engine import pandas_execution_engine

    # GE fingerprints every in-memory batch below HASH_THRESHOLD bytes (shallow size, so any batch of strings
    # qualifies) with hash_pandas_object: 4.6 s on a 1M-row export index (docs/quality.md). Our batches are rows
    # about to be published, identified by the run id in the report and the manifest, so it is switched off.
    # Internal to GE: if it goes away, nothing breaks, batches are just hashed again.
    if hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
        pandas_execution_engine.HASH_THRESHOLD = 0
    _share_compiled_templates()
    ctx = gx.get_context(mode="file", project_root_dir=root)
    bars = ctx.variables.progress_bars  # an object when set here, a dict when read back from the YAML
    if (bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)) is not False:
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        ctx.variables.save()
    _bound_data_docs_index(ctx, docs_runs)
    return ctx


@lru_cache(maxsize=1)
def _share_compiled_templates() -> None:
    """Data Docs views share one in-memory cache of compiled Jinja templates (Jinja's BytecodeCache).

    GE makes a new Jinja environment for every view it renders, and each compiled its templates from source again:
    under cProfile that was ~0.45 s of a ~0.6 s Data Docs build, every build (docs/quality.md). Internal to GE (the
    view's `env`): if it goes away, nothing breaks, templates are just compiled again.
    """
    try:
        from great_expectations.render.view.view import DefaultJinjaView
        from jinja2 import BytecodeCache
    except ImportError:
        return
    compiled: dict[str, bytes] = {}

    class InMemory(BytecodeCache):
        def load_bytecode(self, bucket: Any) -> None:
            if bucket.key in compiled:  # the bucket checks the template source's checksum before using it
                bucket.bytecode_from_string(compiled[bucket.key])

        def dump_bytecode(self, bucket: Any) -> None:
            compiled[bucket.key] = bucket.bytecode_to_string()

    cache = InMemory()
    init = DefaultJinjaView.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        env = getattr(self, "env", None)
        if env is not None and getattr(env, "bytecode_cache", None) is None:
            env.bytecode_cache = cache

    DefaultJinjaView.__init__ = __init__


def _bound_data_docs_index(ctx: Any, runs: int) -> None:
    """The Data Docs index lists the newest `runs` validation results only (GE's `validation_results_limit`).

    Rebuilding the index reads every stored result back (GE deserialises each one to link it), so unbounded, each
    gate's cost grew with the number of runs ever made, ~3 ms per stored result (a 1.6 s gate took 2.8 s with 400
    stored; bench/gate_cost.py), and a daily schedule adds five results per jobs run. The stored results and their
    pages are kept.
    """
    sites = dict(ctx.variables.data_docs_sites or {})
    changed = False
    for name, site in sites.items():
        site = dict(site)
        index = dict(site.get("site_index_builder") or {"class_name": "DefaultSiteIndexBuilder"})
        if index.get("validation_results_limit") != runs:
            index["validation_results_limit"] = runs
            site["site_index_builder"] = index
            sites[name] = site
            changed = True
    if changed:
        ctx.variables.data_docs_sites = sites
        ctx.variables.save()


def data_docs_index(settings: Settings) -> Path:
    return quality_dir(settings) / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"


# the Data Docs resources of the validations run inside `data_docs_once`, built when it exits; None outside it
_docs_pending: ContextVar[list[Any] | None] = ContextVar("trajlake_docs_pending", default=None)


@contextmanager
def data_docs_once(settings: Settings) -> Iterator[None]:
    """Validations run inside build their Data Docs together on leaving (the index once, each result's page)
    instead of each rebuilding the site as it finishes.

    A job gates two or three tables, and each build re-renders the index: building once per job took the five
    gates of a jobs round from 7.75 to 5.49 s (`bench/gate_cost.py --round`, bench/RESULTS.md). The pages are
    built on the way out even when a gate or anything else inside raised, so a refused publish still has its
    page.
    """
    if _docs_pending.get() is not None:  # nested: the outermost block builds
        yield
        return
    pending: list[Any] = []
    token = _docs_pending.set(pending)
    try:
        yield
    finally:
        _docs_pending.reset(token)
        if pending:
            with _locked(settings):
                _context(str(quality_dir(settings)), settings.quality_docs_runs).build_data_docs(
                    resource_identifiers=pending)


def with_derived(suite: Suite, data: pa.Table) -> pa.Table:
    """`data` plus the suite's derived columns (its boolean checks and its keys' hash), row for row."""
    derived = suite.derived_columns
    if not derived:
        return data
    con = duckdb.connect()
    try:
        try:
            con.execute("SET enable_progress_bar = false").fetchall()
        except duckdb.Error:  # inside Jupyter DuckDB refuses to touch the setting without ipywidgets
            pass
        con.register("t", data.append_column(ROW, pa.array(np.arange(data.num_rows, dtype=np.int64))))
        # only the derived columns come back, appended to `data`: selecting `t.*` with them copied every column of
        # the table through DuckDB (0.66 s of 1.87M step rows, against 0.02 s; bench/RESULTS.md). Ordered by the row
        # number, because a check with a window or a correlated subquery can give its rows back in another order.
        cols = ", ".join(f"({sql}) AS {name}" for name, sql in derived.items())
        checks = con.sql(f"SELECT {cols} FROM t ORDER BY {ROW}").to_arrow_table()
    finally:
        con.close()
    for name in checks.column_names:
        data = data.append_column(name, checks.column(name))
    return data


ROW = "__trajlake_row"


def _columns_read(expectation: Any) -> list[str]:
    kw = expectation.configuration.kwargs
    return [kw[k] for k in ("column", "column_A", "column_B") if kw.get(k)] + list(kw.get("column_list") or [])


def _conditional(suite: Suite) -> bool:
    """Whether an expectation has a row condition: a query over any column, values included."""
    return any(e.configuration.kwargs.get("row_condition") for e in suite.expectations)


def expectation_columns(suite: Suite) -> list[str]:
    """The columns the suite's expectations read."""
    return list(dict.fromkeys(c for e in suite.expectations for c in _columns_read(e)))


def nullness_only_columns(suite: Suite) -> set[str]:
    """The columns the suite only checks for nulls: Great Expectations needs to see where their nulls are, not
    their values."""
    if _conditional(suite):
        return set()
    kinds: dict[str, set[str]] = {}
    for e in suite.expectations:
        for c in _columns_read(e):
            kinds.setdefault(c, set()).add(e.expectation_type)
    return {c for c, k in kinds.items() if k == {"expect_column_values_to_not_be_null"}}


def frame_for_expectations(suite: Suite, frame: pa.Table) -> pa.Table:
    """The part of `frame` Great Expectations is given: the columns it reads, numbers widened to 64 bits, a
    column only checked for nulls as its nullness, and the row number (ROW) that the failing rows come back by.

    GE's pandas engine copies the whole frame (every column) for each expectation's domain with a null in its
    column, so each column it is given costs a copy per such expectation; and its range check is vectorised only
    for int64 and float64 columns (an int32 column is compared value by value in Python). The ids cost most:
    1.87M step ids taken row by row, once per copy. So the keys are not given (a failing row's keys are looked
    up from `frame` by its row number), and a column checked only for nulls (the ids, again) is given as a float
    that is null where it is and 0 elsewhere: the same rows pass and fail. Measured on 1.87M step rows:
    bench/RESULTS.md, "Spark jobs". The quarantine still copies whole rows from `frame`."""
    # an expectation with a row condition sees every column, as it is
    wanted = frame.column_names if _conditional(suite) else [c for c in expectation_columns(suite)
                                                              if c in frame.column_names]
    nullness = nullness_only_columns(suite)
    wide = {pa.int8(): pa.int64(), pa.int16(): pa.int64(), pa.int32(): pa.int64(), pa.uint8(): pa.int64(),
            pa.uint16(): pa.int64(), pa.uint32(): pa.int64(), pa.float16(): pa.float64(), pa.float32(): pa.float64()}
    columns = []
    for name in wanted:
        column = frame.column(name)
        if name in nullness:
            column = pa.array(np.zeros(len(column)), pa.float64(), mask=column.is_null().to_numpy(zero_copy_only=False))
        elif column.type in wide:
            column = column.cast(wide[column.type])
        columns.append(column)
    # nullable fields: a declared NOT NULL column holding a null is for the suite to find, not for a cast to refuse
    return pa.table(columns + [pa.array(np.arange(frame.num_rows, dtype=np.int64))], names=[*wanted, ROW])


@lru_cache(maxsize=1)
def _expectation_frame_class() -> type:
    """A pandas DataFrame whose filter by a row mask that keeps every row shares its columns instead of copying.

    GE's pandas engine filters the whole frame by the non-null rows of an expectation's column before it checks
    the column (`df[df[column].notnull()]`), also when nothing is null: one copy of every column per expectation.
    A shallow copy holds the same rows, so the check is the same; a mask that drops rows copies as before."""
    import pandas as pd

    class _Frame(pd.DataFrame):
        @property
        def _constructor(self) -> type:
            return _Frame

        def __getitem__(self, key: Any) -> Any:
            if (isinstance(key, pd.Series) and key.dtype == bool and key.index is self.index
                    and len(key) == len(self) and key.all()):
                return self.copy(deep=False)
            return super().__getitem__(key)

    return _Frame


# a string column whose sample is mostly distinct values is an identifier (a step's or an episode's id): see
# pandas_for_expectations
IDENTIFIER_SAMPLE = 10_000
IDENTIFIER_SHARE = 0.5


def pandas_for_expectations(frame: pa.Table) -> Any:
    """`frame` as the pandas frame Great Expectations checks: repeating strings as categoricals, identifiers as
    Arrow-backed strings, in a frame that a filter keeping every row does not copy (`_expectation_frame_class`).

    GE's pandas engine filters the whole frame by a row mask for an expectation whose column has nulls. Taking
    rows of integer codes is cheap where taking Python strings is not: as categoricals the step signals' gate at
    10M events went from ~9.3 to ~5.5 s. But a column of ids has as many categories as rows: encoding it hashed
    every id twice (Arrow's dictionary, then pandas checking the categories are unique), 2.3 s of the 2.35 s
    conversion of 1.87M step rows. Arrow-backed strings convert without a copy and are taken by Arrow
    (bench/RESULTS.md, "Spark jobs"). Which columns are identifiers is read off a sample of the rows, so no
    naming rule is needed.
    """
    import pandas as pd
    import pyarrow.compute as pc

    arrays, strings = [], []
    for field, column in zip(frame.schema, frame.columns):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            # spread over the rows: the rows of one episode sit together, so its first rows repeat its id
            sample = column.take(pa.array(range(0, len(column), max(1, len(column) // IDENTIFIER_SAMPLE)), pa.int64()))
            if len(sample) and pc.count_distinct(sample).as_py() > IDENTIFIER_SHARE * len(sample):
                strings.append(field.type)
            else:
                column = pc.dictionary_encode(column)  # to pandas as a categorical
        arrays.append(column)
    # NaN for a missing value, as in a categorical or an object column (pd.NA broke the column-pair expectations
    # and the failing rows' keys, docs/quality.md)
    ids = pd.StringDtype("pyarrow", na_value=float("nan"))
    df = pa.table(arrays, names=frame.column_names).to_pandas(types_mapper={t: ids for t in strings}.get)
    return _expectation_frame_class()(df, copy=False)


def validate(settings: Settings, suite: Suite, data: pa.Table, run_id: str | None = None) -> tuple[QualityReport, pa.Table]:
    """Run `suite` on `data` through Great Expectations (results and Data Docs kept under <state_dir>/quality);
    returns the report and the checked frame (data plus derived check columns)."""
    import great_expectations as gx

    run_id = run_id or uuid.uuid4().hex[:12]
    frame = with_derived(suite, data)
    df = pandas_for_expectations(frame_for_expectations(suite, frame))
    with _locked(settings):
        ctx = _context(str(quality_dir(settings)), settings.quality_docs_runs)
        source = ctx.data_sources.add_or_update_pandas("trajlake")
        asset = next((a for a in source.assets if a.name == suite.name), None) or source.add_dataframe_asset(suite.name)
        batch = next((b for b in asset.batch_definitions if b.name == "batch"), None) \
            or asset.add_batch_definition_whole_dataframe("batch")
        gx_suite = ctx.suites.add_or_update(gx.ExpectationSuite(
            name=suite.name, expectations=[e.copy(update={"id": None}, deep=True) for e in suite.expectations],
            meta={"table": suite.table}))
        definition = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=gx_suite))
        pending = _docs_pending.get()
        checkpoint = ctx.checkpoints.add_or_update(gx.Checkpoint(
            name=suite.name, validation_definitions=[definition],
            actions=[] if pending is not None else [gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW],
                           "partial_unexpected_count": EXAMPLES,
                           # the failing rows' numbers come back in the index list; the query form of the
                           # same list filtered the whole frame once more per expectation
                           "return_unexpected_index_query": False}))
        # with no run_time, GE parses the run name as a date: a hex run id such as 6a2457826049 overflowed dateutil
        # (~1 in 2,500 ids, seen in CI) and 1361ad041526 became a run of 1361-12-07
        result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=gx.RunIdentifier(
            run_name=run_id, run_time=datetime.now(timezone.utc)))
        if pending is not None:  # what UpdateDataDocsAction would have built: the result's page and the suite's
            from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier
            for identifier in result.run_results:
                pending += [identifier, ExpectationSuiteIdentifier(name=suite.name)]
    failures = []
    evaluated = 0
    for vr in result.run_results.values():
        for r in vr.results:
            evaluated += 1
            if r.success:
                continue
            cfg = r.expectation_config
            kw = cfg.kwargs
            column = kw.get("column") or (",".join(kw["column_list"]) if "column_list" in kw else None) \
                or (f"{kw.get('column_A')},{kw.get('column_B')}" if "column_A" in kw else None)
            if column == KEY_HASH:
                column = ",".join(suite.keys)
            res = r.result or {}
            keys = failing_keys(suite, frame, [row[ROW] for row in (res.get("unexpected_index_list") or [])
                                               if isinstance(row, dict) and ROW in row][:QUARANTINE_CAP])
            if r.exception_info and r.exception_info.get("raised_exception"):
                desc = f"{cfg.type}({column}) raised: {r.exception_info.get('exception_message')}"
                count = len(df)
            else:
                desc, count = cfg.description, int(res.get("unexpected_count") or len(keys) or 0)
            failures.append(Failure(cfg.type, column, desc, count, tuple(_plain(k) for k in keys[:EXAMPLES]),
                                    column in suite.critical, keys))
    docs = data_docs_index(settings)
    report = QualityReport(run_id, suite.name, suite.table, frame.num_rows, evaluated, tuple(failures),
                           docs.resolve().as_uri() if pending is not None or docs.exists() else None)
    return report, frame


def failing_keys(suite: Suite, frame: pa.Table, rows: list[int]) -> tuple[dict[str, Any], ...]:
    """The keys of `frame`'s rows at positions `rows`, in that order."""
    if not rows or not suite.keys:
        return tuple({} for _ in rows)
    return tuple(frame.select(list(suite.keys)).take(pa.array(rows, pa.int64())).to_pylist())


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v.item() if hasattr(v, "item") else v)
            for k, v in d.items()}


# ---- quarantine ---------------------------------------------------------------------------------------------
def quarantine(settings: Settings, suite: Suite, report: QualityReport, frame: pa.Table) -> int:
    """Copy the failing rows (their keys, and the whole row unless the suite keeps content out) into
    quality/quarantine. Returns how many rows were written."""
    from deltalake import write_deltalake

    from lake.tables import ensure_table
    from schemas.tables import QUALITY_QUARANTINE

    now = datetime.now(timezone.utc)
    out = []
    rows_by_key: dict[str, dict[str, Any]] = {}
    if suite.quarantine_rows and any(f.rows for f in report.failures):
        wanted = {_key(suite, k) for f in report.failures for k in f.rows}
        for row in frame.to_pylist():
            k = _key(suite, row)
            if k in wanted:
                rows_by_key[k] = row
    for f in report.failures:
        for k in f.rows:
            key = _key(suite, k)
            row = rows_by_key.get(key)
            out.append({"run_id": report.run_id, "table": suite.table, "suite": suite.name,
                        "expectation": f.expectation, "column": f.column, "row_key": key,
                        "user_id": row.get("user_id") if row else None,
                        "row": orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS).decode() if row else None,
                        "quarantined_at": now, "date": now.date()})
    if not out:
        return 0
    table = ensure_table(settings, QUALITY_QUARANTINE)
    write_deltalake(table, pa.Table.from_pylist(out, schema=QUALITY_QUARANTINE.schema), mode="append",
                    partition_by=list(QUALITY_QUARANTINE.partition_by))
    return len(out)


def _key(suite: Suite, row: dict[str, Any]) -> str:
    return orjson.dumps(_plain({k: row.get(k) for k in suite.keys}), default=str).decode()


# ---- the gate -----------------------------------------------------------------------------------------------
def check(settings: Settings, suite: Suite, data: pa.Table) -> QualityReport:
    """Validate `data`; on failure, quarantine the failing rows. Raises nothing: callers decide what a failure
    means (the gate refuses, `trajlake quality check` exits 1, an export weighs the override)."""
    report, frame = validate(settings, suite, data)
    if report.success:
        return report
    return replace(report, quarantined=quarantine(settings, suite, report, frame))


def gate(settings: Settings, suite: Suite, data: pa.Table, allow_failures: bool = False) -> QualityReport:
    """Validate `data` before it is published. On failure, quarantine the failing rows and raise
    QualityGateFailed — unless `allow_failures` and no critical expectation failed, in which case log a warning
    and return the report marked `overridden` (callers record it, e.g. in an export's manifest)."""
    report = check(settings, suite, data)
    if report.success:
        log.info(report.summary())
        return report
    if report.blocking(allow_failures):
        raise QualityGateFailed(report)
    report = replace(report, overridden=True)
    log.warning("publishing despite failed checks (override):\n%s", report.summary())
    return report
