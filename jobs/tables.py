"""Spark reads and guarded publishes of the declared lake tables: windows, revisions, overwrites, checksums.

A publish replaces its window only with rows that passed the checks and the gates, and never replaces a window
that holds published rows with none, nor any of its days that hold published rows with none while other days get
rows, unless told to (`refuse_emptying`, docs/quality.md "An empty window")."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from functools import cache
from typing import Callable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType
from pyspark.sql.window import Window

from lake.locks import table_locks
from lake.readers import files_dataset
from lake.tables import SchemaMismatch, ensure_table, open_table, schema_differences, table_path
from quality.errors import (EmptyDaysRefused, EmptyPublishRefused,  # noqa: F401  (raised here; callers import
                             PublishRefused, days_listed)              # them from either)
from quality.runner import QualityReport, data_docs_once, gate
from quality.suites import suite_for
from schemas.reward import RewardSpec
from schemas.settings import Settings
from schemas.tables import GOLD_GUARDRAILS, TableSpec, spark_ddl

log = logging.getLogger("trajlake.jobs")


def declared_schema(spec: TableSpec) -> StructType:
    return StructType.fromDDL(spark_ddl(spec.schema))


def read_window(spark: SparkSession, settings: Settings, spec: TableSpec, start: date, end: date,
                column: str = "date") -> DataFrame:
    """Rows of `spec` with `column` in [start, end); an empty frame with the declared schema when the table
    does not exist yet."""
    table = open_table(settings, spec)
    if table is None:
        return spark.createDataFrame([], declared_schema(spec))
    # an input from an older declaration: the one-line SchemaMismatch naming `trajlake migrate`, not Spark's
    # unresolved column deep in the plan. Extra columns (a table a newer release migrated) are read past
    missing, _, changed = schema_differences(table, spec)
    if missing or changed:
        raise SchemaMismatch(spec.id, table_path(settings, spec), missing, [], changed)
    df = spark.read.format("delta").load(str(table_path(settings, spec)))
    return df.where((F.col(column) >= F.lit(start)) & (F.col(column) < F.lit(end)))


def latest_revisions(df: DataFrame, key: str, within: tuple[str, ...] = ()) -> DataFrame:
    """Only the highest revision of each `key` within `within` (late amendments supersede earlier rows); of a key
    written twice at one revision (a task the join had forgotten, started again by a late event: docs/design.md),
    the row closed later, as every reader of silver takes it.

    `within`: columns every revision of a key shares (a step's session and task); a frame already partitioned
    by them keeps its partitioning, so the job's later windows and joins by those columns need no shuffle of their
    own.
    """
    w = Window.partitionBy(*within, key).orderBy(F.col("revision").desc(), F.col("closed_at").desc())
    return df.withColumn("_rn", F.row_number().over(w)).where("_rn = 1").drop("_rn")


def conform(df: DataFrame, spec: TableSpec) -> DataFrame:
    """The declared columns, in declared order, cast to declared types."""
    missing = [f.name for f in declared_schema(spec) if f.name not in df.columns]
    if missing:
        raise PublishRefused(f"{spec.id}: the job produced no column(s) {missing}")
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in declared_schema(spec)])


@dataclass(frozen=True)
class Published:
    table: str
    rows: int
    version: int | None          # the table's version after the publish; None: nothing written, no table yet
    quality: QualityReport | None = None
    note: str | None = None      # said beside the counts: why nothing was written, or a window emptied on purpose
    written: bool = True         # False: the run had nothing to publish (`nothing_to_publish`) and wrote nothing


# Tables whose window may lose every row while the job's other tables keep theirs, so an empty result there is an
# answer, not a sign of missing input: gold/guardrails holds flags, and a regression that late episodes make
# insignificant, with no baseline in the segment for gaming rows and no previous week for drift, leaves none.
# Every other gold table is empty only when the job's input for the window is: step signals and episode scores
# exist for every scored step and episode, scorecards for every segment with an episode, the review sample for
# every week with one. When the input is gone the guarded partners refuse, and a job publishes all its tables or
# none, so the guardrails' window is not emptied alone.
MAY_BE_EMPTY = frozenset({GOLD_GUARDRAILS.id})


# A table's day, for the per-day guard: its partition columns but the reward version (`day_columns`). A job's
# window is a range of them at one reward version, each replaced whole, and a day with published rows that the run
# computed none for lost its input (or the run's range was wrong), as a window with none does:
#   gold/step_signals   date                  the step's proposal day: the heuristics window's [start, end)
#   gold/episode_scores date                  the episode's start day, likewise
#   gold/scorecards     grain, period_start   a day card and a week card are different periods: the days of the
#                                             window, and the weeks it touches (lost only when no day of the week
#                                             has scores; a week missing some days is a partial input, below)
#   gold/review_queue   week                  the sample is drawn per week
# (gold/guardrails: MAY_BE_EMPTY, any day may lose its flags.) The partitions rather than a column of the rows
# because they are what the overwrite replaces and what the Delta log lists per file, so the rows each day holds
# are read from the log without opening a data file (`rows_by_partition`). A day the run computed fewer rows for
# is not caught: telling half a day's files from a real drop needs a threshold per table (docs/quality.md).
def day_columns(spec: TableSpec) -> tuple[str, ...]:
    return tuple(c for c in spec.partition_by if c != "reward_version")


@dataclass(frozen=True)
class WindowRows:
    """A table's window before its publish: the rows the job computed for it, the rows it holds now, and the days
    that hold published rows the job computed none for.

    `held` is counted when the job computed no rows, or, for a table the per-day guard holds (partitioned, not
    MAY_BE_EMPTY), always; None when not counted. `lost`: ((day, …), rows held) of those days, in order, `by`
    naming the day's columns (`day_columns`); empty when the job computed no rows at all (`held` says it)."""

    table: str
    where: str
    rows: int
    held: int | None
    lost: tuple[tuple[tuple, int], ...] = ()
    by: tuple[str, ...] = ()


def refuse_emptying(w: WindowRows, allow_empty: bool, inputs: tuple[str, ...] = ()) -> None:
    """Raise EmptyPublishRefused when publishing `w` would replace a window's published rows with none, and
    EmptyDaysRefused when it would replace the published rows of some of its days with none.

    The overwrite deletes whatever matches the window, and zero rows pass every check and suite, so without this
    a run whose input was missing (silver not written yet or vacuumed, a mistyped --start/--end) deleted the
    published scores of its window and reported success; a run missing the input of some days deleted those
    days' scores and published the rest. `allow_empty` (--allow-empty) is the deliberate case; MAY_BE_EMPTY tables
    are never refused on their own.
    """
    if w.table in MAY_BE_EMPTY or allow_empty:
        return
    if w.rows == 0 and (w.held or 0) > 0:
        raise EmptyPublishRefused(w.table, w.where, w.held, inputs)
    if w.lost:
        raise EmptyDaysRefused(w.table, w.where, w.lost, w.by, inputs)


def days_lost(held: dict[tuple, int], computed: set[tuple], partition_by: tuple[str, ...]
              ) -> tuple[tuple[tuple, int], ...]:
    """The days a publish would empty: ((day, …), rows held) of each partition of the window that holds rows
    (`held`, by partition values) and that no computed row falls in (`computed`), in order; the day is the
    partition values but the reward version (`day_columns`: one value in a job's window), rows summed over it."""
    keep = [i for i, c in enumerate(partition_by) if c != "reward_version"]
    lost: dict[tuple, int] = {}
    for values, rows in held.items():
        if rows and values not in computed:
            day = tuple(values[i] for i in keep)
            lost[day] = lost.get(day, 0) + rows
    return tuple(sorted(lost.items()))


def nothing_to_publish(windows: list[WindowRows]) -> bool:
    """True when no table has rows to publish and none holds rows in its window: the run has nothing to do, and
    writes nothing (no empty commit, no table created, no gate run on zero rows)."""
    return all(w.rows == 0 and w.held == 0 for w in windows)


def rows_in_window(settings: Settings, spec: TableSpec, where: str) -> int:
    """The published rows of `spec` that `where` matches: what a publish of that window would delete. 0 when the
    table does not exist."""
    return sum(rows_by_partition(settings, spec, where).values())


def rows_by_partition(settings: Settings, spec: TableSpec, where: str) -> dict[tuple, int]:
    """The published rows of `spec` that `where` matches, by partition (the values of `spec.partition_by`, the key
    () for an unpartitioned table): what a publish of that window would delete, day by day. {} when the table
    does not exist or `where` matches nothing.

    When `where` reads partition columns only (every job's window) and the log has every live file's row count
    (delta-rs and Spark write `numRecords`), from the Delta log alone: each file's partition values and row count,
    no data file opened, so the per-day guard costs a publish that has rows next to nothing (docs/quality.md). A
    file lies wholly in one partition, so `where` over its partition values holds for all its rows or none.
    Otherwise DuckDB over the live files. Either way `where` is evaluated by DuckDB, the dialect of the pre-publish
    window check (deletion vectors, which would make a file's count stale, are off: lake.tables).
    """
    table = open_table(settings, spec)
    if table is None:
        return {}
    cols = list(spec.partition_by)
    grouped = ", ".join(f'"{c}"' for c in cols)
    con = _duckdb().cursor()
    try:
        if cols:
            files = pa.table(table.get_add_actions(flatten=True))
            if files.num_rows == 0:
                return {}
            counts = files.column("num_records")
            if counts.null_count == 0:
                con.register("files", pa.table(
                    {c: files.column(f"partition.{c}").cast(spec.schema.field(c).type) for c in cols}
                    | {"__rows": counts}))
                try:
                    got = con.execute(f"SELECT {grouped}, sum(__rows) FROM files WHERE ({where}) "
                                      f"GROUP BY {grouped}").fetchall()
                    return {tuple(r[:-1]): int(r[-1]) for r in got}
                except duckdb.BinderException:
                    pass  # `where` reads a column the files hold, not their partition values: count the rows
        con.register("t", files_dataset(settings, spec, table.file_uris()))
        if not cols:
            n = con.execute(f"SELECT count(*) FROM t WHERE ({where})").fetchone()[0]
            return {(): n} if n else {}
        got = con.execute(f"SELECT {grouped}, count(*) FROM t WHERE ({where}) GROUP BY {grouped}").fetchall()
        return {tuple(r[:-1]): int(r[-1]) for r in got}
    finally:
        con.close()


@cache
def _duckdb() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB kept for the process, for `rows_by_partition`'s cursors. Opening one costs ~23 ms, twice
    what the count from the log then takes (scratch, 2026-12-07); a cursor ~0.01 ms, and it is a connection of its
    own (views registered on it are its own), so threads may each take one."""
    return duckdb.connect()


def partitions_in(data: pa.Table, spec: TableSpec) -> set[tuple]:
    """The partitions (values of `spec.partition_by`) the rows of `data` fall in: the days a publish of them fills.

    One hash pass over the partition columns of the collected rows; measured with the guard (docs/quality.md)."""
    cols = list(spec.partition_by)
    if not cols or data.num_rows == 0:
        return set()
    if len(cols) == 1:
        return {(v,) for v in pc.unique(data.column(cols[0])).to_pylist()}
    found = data.select(cols).group_by(cols).aggregate([])
    return set(zip(*(found.column(c).to_pylist() for c in cols)))


def check_before_publish(data: pa.Table, spec: TableSpec, where: str = "true") -> int:
    """Declared NOT NULL columns hold no nulls, the declared keys are unique and every row lies inside `where`
    (the rows the publish replaces); returns the row count.

    These are the structural invariants every gold table has; the Great Expectations suite of the table
    (quality/suites.py) adds the semantic ones. Both run on the rows collected for the suite: a Spark aggregation
    of its own (a distinct count of the keys) cost a shuffle of the whole table per publish.
    """
    required = [f.name for f in spec.schema if not f.nullable]
    nulls = {c: data.column(c).null_count for c in required if data.column(c).null_count}
    if nulls:
        raise PublishRefused(f"{spec.id}: nulls in NOT NULL columns {nulls}; nothing was published")
    repeated, outside = repeated_keys_and_rows_outside(data, spec.keys, where)
    if repeated:
        raise PublishRefused(f"{spec.id}: {repeated} rows repeat a key {spec.keys}; nothing was published")
    if outside:
        raise PublishRefused(f"{spec.id}: {outside} rows lie outside the window they would replace ({where}), so a "
                             "rerun would not replace them; nothing was published")
    return data.num_rows


def repeated_keys_and_rows_outside(data: pa.Table, keys: tuple[str, ...], where: str) -> tuple[int, int]:
    """(rows beyond the first of each key, rows the SQL predicate `where` does not hold for) in one DuckDB scan;
    a null counts as not holding.

    The window is checked before any table of a job is written: the Delta write refuses such rows too, but only
    when it comes to that table, after its partners may already be written. An Arrow group-by of the keys took
    0.4-1.5 s on 1.87M step rows, this query ~0.3 s for both (bench/RESULTS.md, "Spark jobs"). The keys are
    counted as one struct, which is never null, so a null key is a key like any other.
    """
    key = ", ".join(f'"{k}"' for k in keys)
    con = duckdb.connect()
    try:
        con.register("t", data)
        return con.execute(f"SELECT count(*) - count(DISTINCT row({key})), "
                           f"count(*) FILTER (WHERE ({where}) IS NOT TRUE) FROM t").fetchone()
    finally:
        con.close()


def publish(spark: SparkSession, settings: Settings, spec: TableSpec, df: DataFrame, where: str,
            reward: RewardSpec) -> Published:
    """Replace exactly the rows matching `where` with `df` in one Delta commit (a predicate overwrite, Spark's
    replaceWhere), after the checks: the structural ones, then the table's Great Expectations suite (a failure
    quarantines the failing rows and raises QualityGateFailed; nothing is written).

    Every row of `df` must satisfy `where` (the write refuses it otherwise), so a rerun of the same window
    replaces what the last run wrote and nothing else: reruns are idempotent.
    """
    return publish_together(spark, settings, [(spec, df, where)], reward)[0]


def publish_together(spark: SparkSession, settings: Settings, tables: list[tuple[TableSpec, DataFrame, str]],
                     reward: RewardSpec, progress: Callable[[str], None] = lambda _: None,
                     inputs: tuple[str, ...] = ()) -> list[Published]:
    """`publish` for tables a job produces together: every table is checked and gated first, and only when all
    pass is any written. A failing suite of the second table then leaves the first as it was, not replaced by
    rows whose partners were refused.

    A table with no rows to publish is held against its window (`refuse_emptying`): a window that holds
    published rows is not emptied unless `settings.job_allow_empty`; EmptyPublishRefused names `inputs` (the
    tables the job reads) as what to check. A table with rows is held against its window's days likewise: a day
    (`day_columns`) that holds published rows and got none is not emptied (EmptyDaysRefused). When no table has
    rows and no window holds any, nothing is written and each Published says so in its `note`.

    The tables are then written at once, one commit each. A write that fails (a full disk, a lost store) leaves
    the others committed, as a failure after the first of two commits in turn did; the job raises, and its rerun
    over the window replaces all of them (publishes are idempotent).

    The rows are written from the Arrow table collected for the gate, with delta-rs, rather than by Spark from
    a cached copy of the frame: the gate needs every row on the driver anyway, and writing what was checked
    means the rows published are the rows validated. Spark's write had cost a cache of each frame and a write
    job per table (bench/RESULTS.md, "Spark jobs").
    """
    with publishing(settings, [spec for spec, _, _ in tables], progress):
        return _publish_together(settings, tables, reward, progress, inputs)


@contextmanager
def publishing(settings: Settings, specs: list[TableSpec], progress: Callable[[str], None] = lambda _: None
               ) -> Iterator[None]:
    """Hold the publish lock of each of `specs` (`lake.locks.table_locks`, files under <lake>/.locks).

    Two runs that publish one table at once (the daily and the weekly scorecards over the same days after a
    cleared failure, a manual `trajlake jobs run` during the scheduled one) would make concurrent overwrite
    commits to it, and a conflict could fail one run after some of its other tables were written. Now the
    second waits, then replaces the same window with its own rows. A lock between processes of one machine (the scheduler's, Airflow's local
    workers); jobs submitted from several machines to one lake need a lock the lake's storage provides."""
    with table_locks(settings.lake, [spec.id for spec in specs], progress):
        yield


def _publish_together(settings: Settings, tables: list[tuple[TableSpec, DataFrame, str]],
                      reward: RewardSpec, progress: Callable[[str], None],
                      inputs: tuple[str, ...]) -> list[Published]:
    def collect(spec: TableSpec, df: DataFrame) -> pa.Table:
        return conform(df, spec).toArrow()

    checked, windows = [], []
    # Three kinds of work overlap here, on threads, because each leaves a core idle while it runs: Spark computes
    # and collects the tables in order (one thread, so it starts the next table while this one is checked);
    # Arrow sorts a collected table for writing while the checks and the gate (Python, on this thread) read the
    # same rows unsorted, since no check depends on their order; and delta-rs writes the tables while Great
    # Expectations renders their Data Docs. Each of them ran after the other before (bench/RESULTS.md).
    with (ThreadPoolExecutor(1, thread_name_prefix="trajlake-collect") as collector,
          ThreadPoolExecutor(1, thread_name_prefix="trajlake-sort") as sorter,
          ThreadPoolExecutor(max(1, len(tables)), thread_name_prefix="trajlake-write") as writer):
        with data_docs_once(settings):
            collected = [collector.submit(collect, spec, df) for spec, df, _ in tables]
            try:
                for (spec, _, where), rows in zip(tables, collected):
                    progress(f"checking {spec.id}")
                    data = rows.result().cast(spec.schema)
                    ordered = sorter.submit(sorted_for_writing, data, spec)
                    n = check_before_publish(data, spec, where)
                    w = window_rows(settings, spec, where, data)
                    refuse_emptying(w, settings.job_allow_empty, inputs)  # before its gate: zero rows pass any
                    windows.append(w)
                    # an empty table's gate waits: if every table is empty and so is every window, none runs
                    checked.append((spec, where, ordered, n, data,
                                    gate(settings, suite_for(spec.id, reward), data) if n else None))
            except BaseException:
                for rows in collected:
                    rows.cancel()  # the collection under way finishes; the ones not started never start
                raise
            if nothing_to_publish(windows):
                # said by the callers (the CLI, the scheduler's run line) through the notes; logged for the rest
                log.info("nothing to publish: no rows computed for %s and none published in their windows",
                         ", ".join(w.table for w in windows))
                return [Published(spec.id, 0, _version(settings, spec), None,
                                  f"nothing to publish: no rows computed for its window ({where}) and none "
                                  "published there; nothing written", written=False)
                        for spec, where, *_ in checked]
            checked = [(spec, where, ordered, n, report if n else gate(settings, suite_for(spec.id, reward), data))
                       for spec, where, ordered, n, data, report in checked]
            emptied = {w.table: w.held for w in windows if w.rows == 0 and w.held and w.table not in MAY_BE_EMPTY}
            for table, held in emptied.items():  # only reached with the override: refuse_emptying raised otherwise
                log.warning("%s: deleting the %d published rows of its window, no rows replace them (allowed by "
                            "job_allow_empty)", table, held)
            # likewise: days of a window that has rows elsewhere, emptied with the override
            days = {w.table: f"the {sum(r for _, r in w.lost):,} published rows of {len(w.lost)} "
                              f"{'/'.join(w.by)} partition{'' if len(w.lost) == 1 else 's'} with no rows computed "
                              f"deleted: {days_listed(w.lost)} (--allow-empty)"
                    for w in windows if w.rows and w.lost and w.table not in MAY_BE_EMPTY}
            for table, said in days.items():
                log.warning("%s: %s", table, said)
            progress(f"publishing {', '.join(spec.id for spec, *_ in checked)}")
            written = [writer.submit(write_checked, settings, spec, where, ordered.result())
                       for spec, where, ordered, _, _ in checked]
        # leaving data_docs_once built the Data Docs while the writes ran
        versions = [w.result() for w in written]
    return [Published(spec.id, n, version, report,
                      f"its window's {emptied[spec.id]:,} published rows deleted (--allow-empty)"
                      if spec.id in emptied else days.get(spec.id))
            for (spec, _, _, n, report), version in zip(checked, versions)]


def window_rows(settings: Settings, spec: TableSpec, where: str, data: pa.Table) -> WindowRows:
    """`spec`'s window before the publish of `data` (the rows checked): what `refuse_emptying` decides on.

    The rows held are counted for a table with no rows (every table: `nothing_to_publish` needs them too), and by
    partition for one the per-day guard holds (partitioned, not MAY_BE_EMPTY); a MAY_BE_EMPTY table with rows
    counts nothing. Called under the publish lock, so no other publish changes the window before the write."""
    guarded = bool(spec.partition_by) and spec.id not in MAY_BE_EMPTY
    if data.num_rows and not guarded:
        return WindowRows(spec.id, where, data.num_rows, None)
    held = rows_by_partition(settings, spec, where)
    # no rows at all is the whole-window case, said as such; otherwise the days that got none
    lost = days_lost(held, partitions_in(data, spec), spec.partition_by) if data.num_rows and held else ()
    return WindowRows(spec.id, where, data.num_rows, sum(held.values()), lost, day_columns(spec))


def _version(settings: Settings, spec: TableSpec) -> int | None:
    table = open_table(settings, spec)
    return None if table is None else table.version()


def write_checked(settings: Settings, spec: TableSpec, where: str, data: pa.Table) -> int:
    """Replace the rows matching `where` with `data` in one commit; the table's new version."""
    table = ensure_table(settings, spec)
    write_deltalake(table, data, mode="overwrite", predicate=where,
                    partition_by=list(spec.partition_by) or None)  # moves `table` to the new version
    if table.version() % CHECKPOINT_EVERY == 0:
        table.create_checkpoint()
    return table.version()


# Spark's Delta writer checkpoints every 10 commits; delta-rs only every 100 (`delta.checkpointInterval`'s
# default), and Spark reads every commit since the last checkpoint to plan each read of a gold table. A daily
# schedule commits each gold table once or twice a day, so without this the scorecards' reads would replay up
# to 99 commits.
CHECKPOINT_EVERY = 10


def rows_to_publish(data: pa.Table, spec: TableSpec) -> pa.Table:
    """`data` in the table's declared Arrow types, sorted for writing (`sorted_for_writing`)."""
    return sorted_for_writing(data.cast(spec.schema), spec)


def sorted_for_writing(data: pa.Table, spec: TableSpec) -> pa.Table:
    """`data` sorted by the table's keys outside its partition columns: the same rows give the same files,
    whatever order Spark's partitions returned them in.

    The writer splits the rows by partition in their order, so each partition's file holds its rows sorted by
    those keys, which are unique within a partition (the keys are unique, and their partition columns are one
    value there). Sorting by the partition columns first gave the same files at ~6x the cost of the sort's
    comparisons: a 1.87M-row table's constant reward version and its dates came before every id compared
    (bench/RESULTS.md, "Spark jobs")."""
    order = [k for k in spec.keys if k not in spec.partition_by] or list(spec.partition_by)
    return data.sort_by([(c, "ascending") for c in order]) if data.num_rows and order else data


def checksum(spark: SparkSession, settings: Settings, spec: TableSpec, where: str = "true") -> tuple[int, int]:
    """(rows, order-independent content hash) of the rows matching `where`: equal for equal data, whatever the
    files, so two runs over one window can be compared."""
    if open_table(settings, spec) is None:
        return (0, 0)
    df = spark.read.format("delta").load(str(table_path(settings, spec))).where(where)
    cols = [F.col(f.name) for f in declared_schema(spec)]
    row = df.agg(F.count(F.lit(1)).alias("n"),
                 F.sum(F.xxhash64(*cols).cast("decimal(38,0)")).alias("h")).first()
    return int(row["n"]), int(row["h"] or 0)
