"""Suites on a real lake: the τ-bench lake (real worker, Presidio) passes every suite from bronze to gold; a
failing suite stops a Spark publish; `trajlake quality check` reports and exits non-zero on a bad row."""
from __future__ import annotations

from datetime import date

import pytest

from jobs import heuristics, scorecards
from quality.lake_checks import check_lake
from quality.runner import QualityGateFailed
from quality.suites import checked_tables
from schemas.reward import load_reward_spec

pytestmark = pytest.mark.integration
TAU_START, TAU_END = date(2024, 5, 14), date(2024, 5, 17)
V2 = load_reward_spec("reward-v2")


def test_every_suite_passes_on_the_tau_bench_lake(spark, tau_lake):
    s, records, events = tau_lake
    for job in (heuristics, scorecards):
        for published in job.run(spark, s, TAU_START, TAU_END, spec=V2):
            assert published.quality is not None and published.quality.success  # the jobs ran their gates
    reports = check_lake(s, V2)
    assert [r.table for r in reports] == list(checked_tables())
    assert all(r.success for r in reports), "\n".join(r.summary() for r in reports if not r.success)
    rows = {r.table: r.rows for r in reports}
    assert rows["bronze/events"] == len(events) and rows["gold/episode_scores"] == len(records)


def test_a_failing_suite_stops_a_gold_publish(spark, lake_settings):
    from jobs.tables import publish
    from lake.readers import read_table
    from lake.tables import open_table
    from schemas.tables import GOLD_REVIEW_QUEUE, QUALITY_QUARANTINE

    row = dict(episode_id="e1", week=date(2026, 11, 2), agent_version="a", prompt_variant="p", task_type="t",
               band="high", outcome="completed", composite=0.9, rank=1, stratum_size=4, weight=0.25,
               reward_version=V2.version)  # a weight below 1 cannot reweight a sample to its population
    df = spark.createDataFrame([row])
    with pytest.raises(QualityGateFailed, match="gold/review_queue: suite gold_review_queue FAILED") as exc:
        publish(spark, lake_settings, GOLD_REVIEW_QUEUE, df, f"reward_version = '{V2.version}'", V2)
    assert [f.column for f in exc.value.report.failures] == ["weight"]
    assert open_table(lake_settings, GOLD_REVIEW_QUEUE) is None  # nothing was written
    q = read_table(lake_settings, QUALITY_QUARANTINE).to_pylist()
    assert len(q) == 1 and q[0]["table"] == "gold/review_queue" and '"weight":0.25' in q[0]["row"]


def test_tables_published_together_are_all_gated_before_any_is_written(spark, lake_settings, tmp_path):
    """A job's tables are checked first and written only when every one passes: the second table's failing suite
    leaves the first unwritten too (the heuristics' step rewards are shares of its episode scores)."""
    from jobs.tables import publish_together
    from lake.tables import open_table
    from schemas.tables import GOLD_REVIEW_QUEUE

    s = lake_settings.model_copy(update={"lake_root": tmp_path / "lake"})
    row = dict(episode_id="e1", week=date(2026, 11, 2), agent_version="a", prompt_variant="p", task_type="t",
               band="high", outcome="completed", composite=0.9, rank=1, stratum_size=4, weight=4.0,
               reward_version=V2.version)
    good = spark.createDataFrame([row])
    bad = spark.createDataFrame([{**row, "episode_id": "e2", "weight": 0.25}])
    seen = []
    with pytest.raises(QualityGateFailed, match="weight|gold_review_queue FAILED"):
        publish_together(spark, s, [(GOLD_REVIEW_QUEUE, good, "episode_id = 'e1'"),
                                    (GOLD_REVIEW_QUEUE, bad, "episode_id = 'e2'")], V2, progress=seen.append)
    assert open_table(s, GOLD_REVIEW_QUEUE) is None
    assert seen == ["checking gold/review_queue"] * 2
    published = publish_together(spark, s, [(GOLD_REVIEW_QUEUE, good, "episode_id = 'e1'")], V2)
    assert published[0].rows == 1 and published[0].quality.success


def test_the_cli_check_fails_on_a_bad_row(lake_settings):
    from deltalake import write_deltalake

    from lake.tables import ensure_table
    from schemas.tables import SILVER_STEPS
    from tests.conftest import settings_env
    from tests.quality.test_suites import step, table
    from tests.trajlake.test_cli import run as cli

    write_deltalake(ensure_table(lake_settings, SILVER_STEPS),
                    table("silver/steps", [step(0), step(1, outcome="exploded")]), mode="append",
                    partition_by=["date"])
    env = settings_env(lake_settings)
    bad = cli(["quality", "check", "silver/steps"], env)
    out = " ".join(bad.stdout.split())
    assert bad.returncode == 1 and "silver/steps: suite silver_steps FAILED" in out and "Data Docs" in out, bad.stderr
    assert cli(["quality", "check", "silver/episodes"], env).returncode == 0  # an empty table passes
    wrong = cli(["quality", "check", "silver/stepz"], env)
    assert wrong.returncode == 2 and "no suite for silver/stepz" in wrong.stderr
