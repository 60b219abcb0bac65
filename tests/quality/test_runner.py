"""The gate: a failing suite quarantines its rows, refuses the publish with a readable report, writes Data Docs;
an override passes non-critical failures only."""
from __future__ import annotations

import pyarrow as pa
import pytest

from lake.readers import read_table
from quality.runner import QualityGateFailed, gate
from quality.suites import exports
from schemas.tables import QUALITY_QUARANTINE
from tests.quality.test_suites import SPEC, step, table

pytestmark = pytest.mark.component


def test_a_failing_suite_refuses_quarantines_and_reports(lake_settings):
    from quality.suites import suite_for

    rows = [step(0), step(1, edit_distance=2.0, edited=True, outcome="edited", final_value="y", accepted=False)]
    with pytest.raises(QualityGateFailed) as exc:
        gate(lake_settings, suite_for("silver/steps", SPEC), table("silver/steps", rows))
    report = exc.value.report
    text = str(exc.value)
    assert "silver/steps: suite silver_steps FAILED" in text and "edit_distance" in text
    assert "step_id=sess/a1" in text
    assert "Nothing was published" in text
    assert report.quarantined == 1
    q = read_table(lake_settings, QUALITY_QUARANTINE).to_pylist()
    assert [(r["table"], r["column"], r["row_key"]) for r in q] == [
        ("silver/steps", "edit_distance", '{"step_id":"sess/a1","revision":0}')]
    assert q[0]["user_id"] == "u_" + "a" * 24 and '"final_value":"y"' in q[0]["row"]  # erasable, inspectable
    docs = lake_settings.state_dir / "quality" / "gx" / "uncommitted" / "data_docs" / "local_site"
    assert (docs / "index.html").exists() and list((docs / "validations").rglob("*.html"))


def test_a_run_id_that_reads_like_a_date_is_not_taken_for_one(lake_settings):
    """GE parses a run name as its time when given none: these hex ids overflowed dateutil or became the year
    1361."""
    from datetime import datetime, timezone

    from quality.runner import validate
    from quality.suites import suite_for

    began = datetime.now(timezone.utc)
    for run_id in ("6a2457826049", "1361ad041526"):
        report, _ = validate(lake_settings, suite_for("silver/steps", SPEC), table("silver/steps", [step(0)]), run_id)
        assert report.success and report.run_id == run_id
        [stored] = [p for p in (lake_settings.state_dir / "quality").rglob("*.json") if run_id in str(p)]
        assert str(began.year) in str(stored.relative_to(lake_settings.state_dir))


def test_passing_rows_pass(lake_settings):
    from quality.suites import suite_for

    report = gate(lake_settings, suite_for("silver/steps", SPEC), table("silver/steps", [step(0), step(1)]))
    assert report.success and report.evaluated > 20 and not report.overridden


def test_validation_results_carry_no_batch_fingerprint(lake_settings):
    """GE would hash the whole batch for a fingerprint marker (seconds at 1M rows); the runner switches it off."""
    from quality.suites import suite_for

    assert gate(lake_settings, suite_for("silver/steps", SPEC), table("silver/steps", [step(0), step(1)])).success
    results = list((lake_settings.state_dir / "quality" / "gx" / "uncommitted" / "validations").rglob("*.json"))
    assert results and not any("pandas_data_fingerprint" in r.read_text() for r in results)


def test_an_override_passes_a_leak_but_never_pii(lake_settings):
    suite = exports(("train", "test", "holdout"))
    leak = pa.table({"episode_id": ["a", "b"], "split": ["train", "test"], "group_hash": ["g", "g"],
                     "prompt_digest": ["", ""], "frozen_holdout": [False, False], "pii_values": [0, 0]})
    with pytest.raises(QualityGateFailed):
        gate(lake_settings, suite, leak)
    report = gate(lake_settings, suite, leak, allow_failures=True)
    assert report.overridden and [f.column for f in report.failures] == ["check_one_split_per_group"]
    assert report.as_manifest()["overridden"] is True
    pii = leak.set_column(5, "pii_values", pa.array([0, 1]))
    with pytest.raises(QualityGateFailed, match=r"pii_values.*\[critical\]|no PII pattern.*\[critical\]"):
        gate(lake_settings, suite, pii, allow_failures=True)
    # exports quarantine keys only: their content stays in the failed export's directory
    q = read_table(lake_settings, QUALITY_QUARANTINE).to_pylist()
    assert q and all(r["row"] is None and r["table"] == "exports" for r in q)


def test_a_relative_state_dir_works(tmp_path, monkeypatch):
    """The default state dir is relative (.trajlake); reports still link their Data Docs as a file URI."""
    from pathlib import Path

    from quality.suites import suite_for
    from schemas.settings import Settings

    monkeypatch.chdir(tmp_path)
    s = Settings(state_dir=Path("rel-state"))
    report = gate(s, suite_for("silver/steps", SPEC), table("silver/steps", [step(0)]))
    assert report.data_docs == (tmp_path / "rel-state/quality/gx/uncommitted/data_docs/local_site/index.html").as_uri()


def test_the_data_docs_index_lists_only_the_newest_runs(lake_settings):
    """Each gate rebuilds the index: bounded, it reads back the newest runs, not every run ever stored."""
    from quality.runner import data_docs_index, quality_dir
    from quality.suites import suite_for

    s = lake_settings.model_copy(update={"quality_docs_runs": 2})
    runs = [gate(s, suite_for("silver/steps", SPEC), table("silver/steps", [step(0)])).run_id for _ in range(4)]
    index = data_docs_index(s).read_text()
    assert [r in index for r in runs] == [False, False, True, True]
    stored = list((quality_dir(s) / "gx" / "uncommitted" / "validations").rglob("*.json"))
    assert sum(any(r in str(p) for r in runs) for p in stored) == 4  # every result is kept


def test_gates_inside_data_docs_once_get_their_pages_built_together_even_when_one_fails(lake_settings, tmp_path):
    from quality.runner import data_docs_index, data_docs_once
    from quality.suites import suite_for

    lake_settings = lake_settings.model_copy(update={"state_dir": tmp_path / "state"})  # a site of its own
    site = data_docs_index(lake_settings).parent
    good = table("silver/steps", [step(0)])
    bad = table("silver/steps", [step(0), step(1, edit_distance=2.0, edited=True, outcome="edited", final_value="y",
                                                accepted=False)])
    with pytest.raises(QualityGateFailed):
        with data_docs_once(lake_settings):
            with data_docs_once(lake_settings):  # a nested block leaves the build to the outer one
                first = gate(lake_settings, suite_for("silver/steps", SPEC), good)
            assert not data_docs_index(lake_settings).exists()  # nothing built yet
            gate(lake_settings, suite_for("silver/steps", SPEC), bad)
    assert first.data_docs == data_docs_index(lake_settings).resolve().as_uri()
    index = data_docs_index(lake_settings).read_text()
    failed = read_table(lake_settings, QUALITY_QUARANTINE).column("run_id")[0].as_py()
    assert first.run_id in index and failed in index
    pages = [str(p) for p in (site / "validations").rglob("*.html")]
    assert any(first.run_id in p for p in pages) and any(failed in p for p in pages)
    assert list((site / "expectations").rglob("*.html"))


def test_data_docs_templates_are_compiled_once_per_process(lake_settings, monkeypatch):
    """GE renders each page with a new Jinja environment; the runner's shared bytecode cache keeps them from
    compiling the templates again (~0.45 s of a ~0.6 s build)."""
    import jinja2

    from quality.runner import data_docs_index
    from quality.suites import suite_for

    gate(lake_settings, suite_for("silver/steps", SPEC), table("silver/steps", [step(0)]))  # warms the cache
    compiled = []
    original = jinja2.Environment.compile
    monkeypatch.setattr(jinja2.Environment, "compile", lambda self, *a, **k: compiled.append(1) or original(self, *a, **k))
    report = gate(lake_settings, suite_for("silver/steps", SPEC), table("silver/steps", [step(0)]))
    assert compiled == [] and report.run_id in data_docs_index(lake_settings).read_text()


@pytest.mark.unit
def test_expectations_see_only_the_columns_they_read_numbers_widened_and_nullness_for_null_checks():
    """GE copies its whole frame per expectation whose column has nulls, and compares int32 values one by one in
    Python: it is given the columns the suite reads, int32 as int64, a column only checked for nulls as a float
    null on the same rows, and the row number its failures come back by (the derived checks are computed before,
    on every column)."""
    from quality.runner import ROW, expectation_columns, frame_for_expectations, nullness_only_columns, with_derived
    from quality.suites import suite_for

    suite = suite_for("silver/steps", SPEC)
    full = with_derived(suite, table("silver/steps", [step(0), step(1, session_id=None), step(2)]))
    seen = frame_for_expectations(suite, full)
    assert seen.column_names == [*(c for c in expectation_columns(suite) if c in full.column_names), ROW]
    assert {"step_id", "step_index", "check_ordered_in_episode", "key_hash"} <= set(seen.column_names)
    assert not {"output", "final_value", "agent_version"} & set(seen.column_names)
    assert seen.schema.field("step_index").type == pa.int64() and full.schema.field("step_index").type == pa.int32()
    assert seen.column("step_index").to_pylist() == full.column("step_index").to_pylist()
    # the ids are only checked for nulls; `outcome` is also checked against a set, so it keeps its values
    assert {"step_id", "session_id"} <= nullness_only_columns(suite) and "outcome" not in nullness_only_columns(suite)
    assert seen.column("session_id").to_pylist() == [0.0, None, 0.0] and seen.column("step_id").null_count == 0
    assert seen.column("outcome").to_pylist() == ["accepted"] * 3
    assert seen.column(ROW).to_pylist() == [0, 1, 2]


@pytest.mark.unit
def test_a_filter_that_keeps_every_row_shares_the_columns_and_one_that_drops_rows_copies():
    """GE filters its frame by an expectation column's non-null rows even when none is null; that filter is a
    shallow copy of the frame, and any other filter behaves as pandas's own."""
    import numpy as np

    from quality.runner import pandas_for_expectations

    df = pandas_for_expectations(pa.table({"a": [1.0, 2.0, None], "b": [1, 2, 3]}))
    kept = df[df["b"].notna()]
    assert np.shares_memory(kept["b"].to_numpy(), df["b"].to_numpy()) and kept.equals(df)
    dropped = df[df["a"].notnull()]
    assert dropped["b"].tolist() == [1, 2] and not np.shares_memory(dropped["b"].to_numpy(), df["b"].to_numpy())
    assert df[["a"]].columns.tolist() == ["a"] and df["b"].tolist() == [1, 2, 3]
    assert type(df[df["b"] > 1]) is type(df) and df[df["b"] > 1]["b"].tolist() == [2, 3]


def test_a_negative_int32_is_caught_on_the_widened_column(lake_settings):
    from quality.suites import suite_for

    with pytest.raises(QualityGateFailed) as exc:
        gate(lake_settings, suite_for("silver/steps", SPEC), table("silver/steps", [step(0), step(1, tool_calls=-1)]))
    [failure] = [f for f in exc.value.report.failures if f.column == "tool_calls"]
    assert failure.unexpected == 1 and failure.examples == ({"step_id": "sess/a1", "revision": 0},)


@pytest.mark.unit
def test_a_suite_with_a_row_condition_gives_expectations_every_column():
    import dataclasses

    import great_expectations.expectations as E

    from quality.runner import ROW, frame_for_expectations
    from quality.suites import suite_for

    suite = suite_for("silver/steps", SPEC)
    conditional = dataclasses.replace(suite, expectations=(*suite.expectations, E.ExpectColumnValuesToNotBeNull(
        column="step_id", row_condition='agent_version=="a1"', condition_parser="pandas")))
    full = table("silver/steps", [step(0)])
    seen = frame_for_expectations(conditional, full)
    assert seen.column_names == [*full.column_names, ROW]
    assert seen.column("step_id").to_pylist() == ["sess/a0"]  # a condition reads values: none reduced to nullness


def test_string_checks_hold_on_the_categorical_frame(lake_settings):
    """Strings reach GE as categoricals (cheap row takes): nulls, values outside a set and a repeated key are
    still each caught, and the failing rows' keys come back as plain strings."""
    from quality.runner import validate
    from quality.suites import suite_for

    rows = [step(0), step(1, session_id=None), step(2, outcome="exploded"), step(2, outcome="exploded")]
    report, _ = validate(lake_settings, suite_for("silver/steps", SPEC), table("silver/steps", rows))
    got = {f.column: f for f in report.failures}
    assert got["session_id"].unexpected == 1
    assert got["session_id"].examples == ({"step_id": "sess/a1", "revision": 0},)
    assert got["outcome"].unexpected == 2 and got["step_id,revision"].unexpected == 2
    assert all(type(e["step_id"]) is str for e in got["outcome"].examples)
    # the failing rows come back by row number and are named by their keys, in the rows' order
    assert got["outcome"].rows == ({"step_id": "sess/a2", "revision": 0}, {"step_id": "sess/a2", "revision": 0})


@pytest.mark.unit
def test_identifiers_reach_ge_as_arrow_strings_and_repeating_strings_as_categoricals():
    """Ids (mostly distinct in a sample spread over the rows, also when each repeats on neighbouring rows) are
    not dictionary-encoded; a missing id is NaN, as in the other columns, not pd.NA."""
    import math

    import pandas as pd

    from quality.runner import pandas_for_expectations

    n = 30_000
    frame = pa.table({"step_id": [None if i == 7 else f"s{i}" for i in range(n)],
                      "episode_id": [f"e{i // 3}" for i in range(n)],
                      "outcome": [("accepted", "edited", None)[i % 3] for i in range(n)],
                      "step_reward": [0.5] * n})
    df = pandas_for_expectations(frame)
    assert df["step_id"].dtype == pd.StringDtype("pyarrow", na_value=float("nan"))
    assert df["episode_id"].dtype == df["step_id"].dtype
    assert isinstance(df["outcome"].dtype, pd.CategoricalDtype) and df["outcome"].isna().sum() == n // 3
    assert math.isnan(df["step_id"][7]) and df["step_id"].isna().sum() == 1 and df["step_id"][8] == "s8"
    assert df["step_reward"].dtype == "float64" and list(df.columns) == frame.column_names
    assert pandas_for_expectations(frame.slice(0, 0)).empty


def test_derived_checks_stay_on_their_rows_when_duckdb_reorders_them():
    """A derived check with a window (or a correlated subquery) comes back from DuckDB in another row order; the
    check columns are appended row for row, so they are put back in the rows' order first."""
    import numpy as np

    from quality.suites import Suite
    from quality.runner import with_derived

    n = 200_000
    rng = np.random.default_rng(7)
    group = rng.integers(0, 5_000, n)
    rows = pa.table({"id": np.arange(n), "g": group, "v": rng.integers(0, 1_000, n)})
    suite = Suite("s", "t", ("id",), derived={
        "check_not_first": "row_number() OVER (PARTITION BY g ORDER BY v, id) > 1",
        "check_group_even": "(SELECT min(g) FROM t u WHERE u.g = t.g) % 2 = 0"})
    out = with_derived(suite, rows)
    assert out.column("id").to_pylist() == list(range(n))
    firsts = {}
    for i, g, v in zip(range(n), group.tolist(), rows.column("v").to_pylist()):
        firsts[g] = min(firsts.get(g, (v, i)), (v, i))
    expect_first = np.zeros(n, bool)
    expect_first[[i for _, i in firsts.values()]] = True
    assert np.array_equal(~out.column("check_not_first").to_numpy(), expect_first)
    assert np.array_equal(out.column("check_group_even").to_numpy(), group % 2 == 0)
    # the keys' hash rides along, one per row, equal for equal keys
    assert out.column("key_hash").to_pylist() == with_derived(suite, rows).column("key_hash").to_pylist()
