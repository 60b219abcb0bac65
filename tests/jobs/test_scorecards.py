"""Scorecards recover the synthetic generator's planted behaviour, flag its gaming segment, agree with τ-bench's
ground truth, detect drift, and reruns leave identical tables (real Spark, real Delta)."""
import hashlib
import math
import subprocess
from datetime import date, timedelta
from pathlib import Path

import pytest

from schemas.reward import load_reward_spec
from schemas.tables import (GOLD_EPISODE_SCORES, GOLD_GUARDRAILS, GOLD_REVIEW_QUEUE, GOLD_SCORECARDS,
                            GOLD_STEP_SIGNALS)
from tests.conftest import REPO, settings_env

SEED = 11
START, END = date(2026, 11, 1), date(2026, 11, 15)
GOLD = (GOLD_STEP_SIGNALS, GOLD_EPISODE_SCORES, GOLD_SCORECARDS, GOLD_GUARDRAILS, GOLD_REVIEW_QUEUE)


@pytest.fixture(scope="module")
def synthetic_gold(spark, base_settings, tmp_path_factory):
    """~30k synthetic events (≈1,750 episodes over four days) → silver by the batch join → both jobs."""
    from jobs import heuristics, scorecards
    from streams.recompute import write_silver
    from streams.sources.synthetic import synthetic_events

    s = base_settings.model_copy(update={"lake_root": tmp_path_factory.mktemp("synthetic") / "lake"})
    write_silver(s, (e.event for e in synthetic_events(30_000, seed=SEED, sessions_per_minute=0.3)))
    heuristics.run(spark, s, START, END)
    scorecards.run(spark, s, START, END)
    return s


def week_cards(spark, s):
    from lake.tables import table_path

    rows = (spark.read.format("delta").load(str(table_path(s, GOLD_SCORECARDS)))
            .where("grain = 'week' AND period_start = '2026-11-02'").collect())
    return {(r.agent_version, r.prompt_variant, r.task_type, r.metric): r for r in rows}


def expected_from_planted(b) -> dict[str, float]:
    """What each scorecard metric must recover, from the generator's planted parameters."""
    poor = b.abandon + b.escalate + b.reopen
    return {
        "accept_rate": b.accept, "edit_rate": b.edit, "reject_rate": b.reject, "retry_rate": b.retry,
        "undo_after_accept": b.undo_after_accept,
        "completion_rate": b.complete, "abandon_rate": b.abandon, "escalation_rate": b.escalate,
        # of the tasks handed back as done (the generator reopens only completed ones)
        "reopen_rate": b.reopen / (b.complete + b.reopen), "delegation_rate": b.delegate,
        "opt_out_after_poor": b.opt_out_after_failure * b.abandon / poor,
        # shown 30–200 ms after the proposal, then an exponential think time
        "reaction_s": b.think_s + 0.115,
        # a task that does not stall ends well within its SLA; one that stalls misses it
        "within_sla_rate": 1 - b.sla_miss,
        # 1 + ⌊Exp(mean)⌋ steps: E⌊X⌋ = 1 / (e^(1/mean) − 1)
        "steps_per_episode": 1 + 1 / (math.exp(1 / b.steps_mean) - 1),
    }


@pytest.mark.integration
def test_scorecard_recovers_every_planted_rate(spark, synthetic_gold):
    from streams.sources.synthetic import planted

    cards = week_cards(spark, synthetic_gold)
    checks, covered, worst = 0, 0, 0.0
    for segment, behaviour in planted(SEED).items():
        for metric, truth in expected_from_planted(behaviour).items():
            row = cards[(*segment, metric)]
            checks += 1
            covered += row.ci_low <= truth <= row.ci_high
            se = (math.sqrt(truth * (1 - truth) / row.n) if metric.endswith(("rate", "accept", "poor"))
                  else row.std / math.sqrt(row.n))
            worst = max(worst, abs(row.value - truth) / se)
    # 95% intervals: about 95% of the 168 checks cover the truth; none is far out (Bonferroni: z 3.85 at α 0.01)
    assert checks == 12 * 14
    assert covered / checks >= 0.90, f"{covered}/{checks} intervals cover the planted value"
    assert worst < 3.85


@pytest.mark.integration
def test_only_the_planted_gaming_segment_is_flagged(spark, synthetic_gold):
    from lake.tables import table_path

    flagged = (spark.read.format("delta").load(str(table_path(synthetic_gold, GOLD_GUARDRAILS)))
               .where("check = 'gaming' AND grain = 'week' AND flagged").collect())
    assert {(r.agent_version, r.prompt_variant, r.task_type) for r in flagged} == {("agent-v2", "concise", "search")}
    assert "accept_rate" in flagged[0].detail and "completion_rate" in flagged[0].detail
    cards = week_cards(spark, synthetic_gold)
    assert cards[("agent-v2", "concise", "search", "completion_rate")].regression
    # the planted improvement of agent-v2 is no regression
    assert not cards[("agent-v2", "control", "refund", "completion_rate")].regression


@pytest.mark.integration
def test_review_sample_is_stratified_and_weighted(spark, synthetic_gold):
    from lake.readers import read_table

    sample = read_table(synthetic_gold, GOLD_REVIEW_QUEUE).to_pandas()
    scores = read_table(synthetic_gold, GOLD_EPISODE_SCORES).to_pandas()
    k = load_reward_spec().guardrails.review_per_stratum
    per_stratum = sample.groupby(["week", "agent_version", "prompt_variant", "task_type", "band"]).size()
    assert per_stratum.max() == k and set(sample["band"]) >= {"[0.0, 0.2)", "[0.8, 1.0]"}
    # the weights map the sample back onto the population
    assert sample["weight"].sum() == pytest.approx(len(scores))


@pytest.mark.integration
def test_rerunning_a_window_leaves_identical_tables(spark, synthetic_gold):
    from jobs import heuristics, scorecards
    from jobs.tables import checksum
    from lake.tables import open_table, table_path

    def file_bytes(t):
        """The content of each data file of the table's current version, by partition (file names are random)."""
        root = table_path(synthetic_gold, t).resolve()
        return sorted((str(p.parent.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest())
                      for p in map(Path, (u.removeprefix("file://") for u in open_table(synthetic_gold, t).file_uris())))

    before = {t.id: checksum(spark, synthetic_gold, t) for t in GOLD}
    files = {t.id: file_bytes(t) for t in GOLD}
    versions = {t.id: open_table(synthetic_gold, t).version() for t in GOLD}
    heuristics.run(spark, synthetic_gold, START, END)
    scorecards.run(spark, synthetic_gold, START, END)
    after = {t.id: checksum(spark, synthetic_gold, t) for t in GOLD}
    assert after == before and all(n > 0 for n, _ in after.values())
    assert all(open_table(synthetic_gold, t).version() == versions[t.id] + 1 for t in GOLD)
    # byte-identical, not only equal in content: the rerun's files have the bytes of the files they replace
    assert {t.id: file_bytes(t) for t in GOLD} == files


@pytest.mark.integration
def test_a_shifted_week_is_flagged_as_drift(spark):
    """Week 2's composite moves up by 0.3: its PSI against week 1 is far beyond the alert; an unchanged week is not."""
    import random

    from jobs.scorecards import drift

    rng = random.Random(3)
    spec = load_reward_spec()
    monday = date(2026, 11, 2)
    episodes = []
    for week, shift in ((0, 0.0), (1, 0.3), (2, 0.3)):
        for i in range(400):
            x = min(1.0, max(0.0, rng.gauss(0.4 + shift, 0.1)))
            episodes.append(("agent-v1", "control", "refund", monday + timedelta(days=7 * week + i % 7), x))
    eps = spark.createDataFrame(episodes, "agent_version STRING, prompt_variant STRING, task_type STRING, date DATE, "
                                          "composite DOUBLE")
    for col in ("correction_score", "friction_score", "outcome_score", "trust_score", "completion_time_s",
                "completed"):
        eps = eps.withColumn(col, eps.composite)
    steps = spark.createDataFrame([], "agent_version STRING, prompt_variant STRING, task_type STRING, date DATE, "
                                      "edit_distance DOUBLE, next_action_s DOUBLE, reaction_s DOUBLE, accepted BOOLEAN")
    rows = {(str(r.period_start), r.metric): r for r in drift(steps, eps, spec).collect()}
    assert rows[("2026-11-09", "composite")].flagged and rows[("2026-11-09", "composite")].statistic > 1
    assert not rows[("2026-11-16", "composite")].flagged
    assert ("2026-11-02", "composite") not in rows  # no earlier week to compare with


@pytest.mark.integration
def test_a_drift_bin_counts_the_edges_at_or_below_the_value(spark):
    """`bin_sql` in Spark against the definition in Python: on the edges, between, outside, null, a boolean."""
    from pyspark.sql import functions as F

    from jobs.scorecards import SECONDS, UNIT, bin_sql

    values = [None, -1.0, 0.0, 0.1, 0.15, 0.9, 1.0, 1.0 - 1e-12, 0.3, 2.0, 59.9, 60.0, 1800.0, 1e9]
    df = spark.createDataFrame([(v, v is not None and v > 0.5) for v in values], "x DOUBLE, b BOOLEAN")
    for edges in (UNIT, SECONDS):
        got = [r[0] for r in df.select(F.expr(bin_sql("x", edges))).collect()]
        assert got == [None if v is None else sum(v >= e for e in edges) for v in values], edges
    assert [r[0] for r in df.select(F.expr(bin_sql("b", [0.5]))).collect()] == [int(v is not None and v > 0.5)
                                                                              for v in values]


@pytest.mark.integration
def test_tau_bench_rates_equal_the_ground_truth(spark, tau_lake):
    """Completion = share of reward-1.0 trajectories; escalation = share that called transfer_to_human_agents."""
    import pyarrow.compute as pc

    from jobs import heuristics, scorecards
    from lake.readers import read_table
    from schemas.tables import SILVER_EPISODES
    from streams.sources.tau_bench import ESCALATION_TOOL

    s, records, _ = tau_lake
    dates = read_table(s, SILVER_EPISODES, columns=["date"]).column("date")
    start, end = pc.min(dates).as_py(), pc.max(dates).as_py() + timedelta(days=1)
    heuristics.run(spark, s, start, end)
    scorecards.run(spark, s, start, end)
    scores = read_table(s, GOLD_EPISODE_SCORES).to_pandas()
    assert len(scores) == len(records)
    completed = sum(1 for r in records if r["reward"] >= 1.0) / len(records)
    escalated = sum(1 for r in records if any(
        c.get("function", {}).get("name") == ESCALATION_TOOL
        for m in r["traj"] for c in (m.get("tool_calls") or []))) / len(records)
    assert scores["completed"].mean() == pytest.approx(completed)
    assert scores["escalated"].mean() == pytest.approx(escalated)
    assert scores["gate_passed"].mean() == pytest.approx(completed)  # the outside grade agrees with completion
    cards = read_table(s, GOLD_SCORECARDS).to_pandas()
    week = cards[cards["grain"] == "week"].set_index("metric")
    for metric, truth in (("completion_rate", completed), ("escalation_rate", escalated)):
        rows = week.loc[[metric]]
        assert (rows["value"] * rows["n"]).sum() / rows["n"].sum() == pytest.approx(truth)


@pytest.mark.integration
def test_jobs_run_under_spark_submit(synthetic_gold, tmp_path):
    """The same module, submitted to a (local) master with spark-submit, publishes the same table."""
    import os
    import sys

    from jobs.spark import delta_packages

    venv_bin = str(Path(sys.executable).parent)
    env = {**settings_env(synthetic_gold), "TRAJLAKE_SPARK_MASTER": "", "PYTHONPATH": str(REPO),
           "PYSPARK_PYTHON": sys.executable, "PATH": venv_bin + os.pathsep + os.environ["PATH"]}
    r = subprocess.run([str(Path(venv_bin) / "spark-submit"), "--master", "local[1]", "--packages", delta_packages(),
                        str(REPO / "jobs" / "heuristics.py"), "--start", str(START), "--end", str(END)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "gold/episode_scores:" in r.stdout and "rows → version" in r.stdout
    bad = subprocess.run([str(Path(venv_bin) / "spark-submit"), str(REPO / "jobs" / "heuristics.py"),
                          "--start", "2026-11-05", "--end", "2026-11-01"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert bad.returncode != 0 and "must be after --start" in bad.stdout + bad.stderr, bad.stdout + bad.stderr


@pytest.mark.unit
def test_t_quantiles():
    from jobs.scorecards import t_of, z_of

    for level, df, exact in ((0.95, 1, 12.7062), (0.95, 2, 4.3027), (0.99, 3, 5.8409), (0.95, 10, 2.2281),
                             (0.99, 29, 2.7564), (0.99, 1000, 2.5808)):
        assert abs(t_of(level, df) - exact) < (0.05 if df == 3 else 1e-3), (level, df)
    assert t_of(0.99, 10**9) == pytest.approx(z_of(0.99))


@pytest.mark.integration
def test_unchanged_variants_are_flagged_at_the_nominal_rate_despite_correlated_steps(spark):
    """A/A: 100 segments whose variant behaves exactly like the baseline, with every step of an episode accepted or
    rejected together (what one user does with one task). Steps treated as independent flagged ~40% of these
    segments at the 1% level; episodes as clusters flag about 1%."""
    import random

    from pyspark.sql import functions as F

    from jobs.scorecards import METRICS, daily_sums, scorecards, t_of

    rng = random.Random(11)
    spec = load_reward_spec()
    day = date(2026, 11, 2)
    steps, episodes = [], []
    for seg in range(100):
        for agent in ("agent-v1", "agent-v2"):
            for e in range(40):
                eid = f"{seg}-{agent}-{e}"
                accepted = rng.random() < 0.5
                episodes.append((agent, "control", f"t{seg}", day, eid, rng.random() < 0.7))
                steps += [(agent, "control", f"t{seg}", day, eid, accepted) for _ in range(10)]
    schema = "agent_version STRING, prompt_variant STRING, task_type STRING, date DATE, episode_id STRING"
    st = spark.createDataFrame(steps, schema + ", accepted BOOLEAN")
    ep = spark.createDataFrame(episodes, schema + ", completed BOOLEAN").withColumn("outcome", F.lit("completed"))
    # every other metric's column, unobserved (null: outside every denominator)
    for col in {m.column for m in METRICS if m.source == "step" and not m.column.startswith("_")} | {"undone"}:
        st = st if col in st.columns else st.withColumn(col, F.lit(None).cast("double"))
    for col in {m.column for m in METRICS if m.source == "episode" and not m.column.startswith("_")} | {"reopened"}:
        ep = ep if col in ep.columns else ep.withColumn(col, F.lit(None).cast("double"))
    cards = scorecards(spark, daily_sums(st, ep), spec).where("grain = 'day' AND agent_version = 'agent-v2'")
    accept = cards.where("metric = 'accept_rate'").collect()
    assert len(accept) == 100 and all(r.n == 400 and r.baseline_n == 400 for r in accept)
    flagged = sum(r.significant for r in accept)
    assert flagged <= 5, f"{flagged} of 100 unchanged segments flagged at the 1% level"
    # the interval is as wide as 40 episodes allow, not 400 independent steps: ±~0.16 at p = 0.5, not ±0.05
    widths = sorted(r.ci_high - r.ci_low for r in accept)
    assert 0.25 < widths[50] < 0.40
    assert all(r.z is None or abs(r.z) < 10 for r in accept)
    completion = cards.where("metric = 'completion_rate'").collect()
    assert sum(r.significant for r in completion) <= 5
    assert {round(r.threshold, 3) for r in cards.where("metric = 'accept_rate'").select(
        F.col("_flag_at").alias("threshold")).collect()} == {round(t_of(spec.guardrails.flag_level, 39), 3)}


def _frames(spark, steps, episodes):
    """Step and episode frames for `daily_sums` from (agent, task type, episode id, {column: value}) tuples; every
    metric column not given is null (outside every denominator)."""
    from jobs.scorecards import METRICS

    day = date(2026, 11, 2)
    rates = {m.column for m in METRICS if m.kind == "rate"} | {"undone", "reopened"}
    step_cols = sorted({m.column for m in METRICS if m.source == "step" and not m.column.startswith("_")} | {"undone"})
    ep_cols = sorted({m.column for m in METRICS if m.source == "episode" and not m.column.startswith("_")}
                     | {"reopened"})
    key = "agent_version STRING, prompt_variant STRING, task_type STRING, date DATE, episode_id STRING"
    ddl = lambda cols: "".join(f", {c} {'BOOLEAN' if c in rates else 'DOUBLE'}" for c in cols)  # noqa: E731
    st = spark.createDataFrame([(a, "control", t, day, e, *(v.get(c) for c in step_cols)) for a, t, e, v in steps],
                               key + ddl(step_cols))
    ep = spark.createDataFrame([(a, "control", t, day, e, v.get("outcome", "completed"), *(v.get(c) for c in ep_cols))
                                for a, t, e, v in episodes], key + ", outcome STRING" + ddl(ep_cols))
    return st, ep


@pytest.mark.unit
def test_a_rate_of_zero_is_tested_on_the_pooled_rate():
    """0 of 40 against 16 of 200 is no regression (Fisher's exact p 0.08; with each side's own variance, 0 at a
    rate of 0, it was z -4.2 and flagged); 0 of 200 against 40 of 200 is. Unchanged rare rates in unequal
    segments are flagged at about the nominal 1% (10% before), and steps that agree within their episodes count
    as their episodes."""
    import random

    from jobs.scorecards import pooled_rate_se, t_of

    def episodes(n, k):  # an episode metric: one observation per episode, so c = n, cs2 = csn = s, cn2 = n
        return (n, k, n, k, k, n, k / n)

    def z(a, b):
        return (a[-1] - b[-1]) / pooled_rate_se(*a, *b)

    flag_at = t_of(0.99, 39)
    assert abs(z(episodes(40, 0), episodes(200, 16))) < flag_at
    assert abs(z(episodes(200, 0), episodes(200, 40))) > flag_at
    rng = random.Random(5)
    flagged, runs = 0, 3000
    for _ in range(runs):
        a, b = sum(rng.random() < 0.05 for _ in range(40)), sum(rng.random() < 0.05 for _ in range(200))
        flagged += 0 < a + b and abs(z(episodes(40, a), episodes(200, b))) > flag_at
    assert flagged / runs < 0.02
    # 40 and 200 episodes of 10 steps each, every step of an episode alike: the design effect is the episode size
    step_sums = lambda c, k: (10 * c, 10 * k, c, 100 * k, 100 * k, 100 * c, k / c)  # noqa: E731
    assert pooled_rate_se(*step_sums(40, 4), *step_sums(200, 30)) == pytest.approx(
        pooled_rate_se(*episodes(40, 4), *episodes(200, 30)))


@pytest.mark.component
def test_a_rate_of_zero_is_neither_flagged_on_one_side_nor_sure_of_itself(spark):
    """In Spark: a variant with no escalation in 40 episodes against a baseline with 16 in 200 is not significant,
    and a step rate of 0 in 400 steps of 40 episodes has the interval of 40 observations (upper bound ~9%), not of
    400 independent ones (~1%, which missed a true 2% about half the time)."""
    from jobs.scorecards import daily_sums, scorecards, t_of

    steps, eps = [], []
    for agent, n, escalated in (("agent-v1", 200, 16), ("agent-v2", 40, 0)):
        for e in range(n):
            eid = f"{agent}-{e}"
            eps.append((agent, "t", eid, {"escalated": e < escalated, "reopened": False}))
            steps += [(agent, "t", eid, {"undone": False, "accepted": True})] * 10
    cards = {(r.agent_version, r.metric): r for r in scorecards(
        spark, daily_sums(*_frames(spark, steps, eps)), load_reward_spec()).where("grain = 'day'").collect()}
    escalation = cards[("agent-v2", "escalation_rate")]
    assert escalation.value == 0 and escalation.baseline_value == pytest.approx(0.08)
    assert escalation.z == pytest.approx(-1.85, abs=0.01) and not escalation.significant
    undo = cards[("agent-v2", "undo_rate")]
    t = t_of(0.95, 39)
    assert undo.n == 400 and undo.ci_low == pytest.approx(0.0, abs=1e-12)
    assert undo.ci_high == pytest.approx(t * t / (40 + t * t))


@pytest.mark.component
def test_daily_sums_equal_the_sums_computed_in_plain_python(spark):
    """n, Σx, Σx² and the cluster sums per day × segment × metric, nulls outside the denominator, an episode
    whose steps span two days counted as a cluster on each day, against a direct computation."""
    import random
    from collections import defaultdict

    from jobs.scorecards import METRICS, SEGMENT, daily_sums

    rng = random.Random(3)
    step_metrics = [m for m in METRICS if m.source == "step" and not m.column.startswith("_")]
    episode_metrics = [m for m in METRICS if m.source == "episode" and not m.column.startswith("_")]
    episode_columns = [*(m.column for m in episode_metrics), "reopened"]
    bools = {"accepted", "rejected", "edited", "overwritten", "undone", "retried", "dead_end", "completed",
             "reopened", "within_sla", "escalated", "delegated", "delegated_when_repeat", "opted_out",
             "opted_out_after_poor", "gate_passed"}

    def value(column):
        if rng.random() < 0.2:
            return None
        return rng.random() < 0.4 if column in bools else round(rng.uniform(0, 9), 3)

    steps, episodes = [], []
    for e in range(40):
        seg = (rng.choice("ab"), "p1", rng.choice(["x", "y"]))
        first = date(2026, 11, 2) + timedelta(days=rng.randrange(2))
        for k in range(rng.randrange(1, 6)):
            row = dict(zip(SEGMENT, seg), date=first + timedelta(days=k // 4), episode_id=f"e{e}")
            row.update({m.column: value(m.column) for m in step_metrics})
            steps.append(row)
        row = dict(zip(SEGMENT, seg), date=first, episode_id=f"e{e}",
                   outcome=rng.choice(["completed", "reopened", "abandoned", "timeout"]))
        row.update({c: value(c) for c in episode_columns})
        episodes.append(row)

    def ddl(columns):
        kinds = {c: "STRING" if c == "outcome" else "BOOLEAN" if c in bools else "DOUBLE" for c in columns}
        return ", ".join([*(f"{c} STRING" for c in SEGMENT), "date DATE", "episode_id STRING",
                          *(f"{c} {t}" for c, t in kinds.items())])

    sdf = spark.createDataFrame(steps, ddl([m.column for m in step_metrics]))
    edf = spark.createDataFrame(episodes, ddl(["outcome", *episode_columns]))
    got = {(*(r[c] for c in SEGMENT), r.date, r.metric): r for r in daily_sums(sdf, edf).collect()}

    def x_of(row, m):
        if m.column == "_undo_after_accept":
            return float(row["undone"]) if row["accepted"] and row["undone"] is not None else None
        if m.column in ("_abandoned", "_timeout"):
            return float(row["outcome"] == m.column[1:])
        if m.column == "_reopened_when_done":
            done = row["outcome"] in ("completed", "reopened") and row["reopened"] is not None
            return float(row["reopened"]) if done else None
        v = row[m.column]
        return None if v is None else float(v)

    want: dict = {}
    for rows, metrics, clustered in ((steps, [m for m in METRICS if m.source == "step"], True),
                                     (episodes, [m for m in METRICS if m.source == "episode"], False)):
        for m in metrics:
            clusters = defaultdict(list)
            for row in rows:
                x = x_of(row, m)
                if x is not None:
                    clusters[(*(row[c] for c in SEGMENT), row["date"], m.name, row["episode_id"])].append(x)
            by_key = defaultdict(list)
            for key, xs in clusters.items():
                by_key[key[:-1]].append(xs)
            for key, groups in by_key.items():
                if not clustered:
                    groups = [[x] for xs in groups for x in xs]
                want[key] = dict(n=sum(len(g) for g in groups), s=sum(sum(g) for g in groups),
                                 ss=sum(x * x for g in groups for x in g), c=len(groups),
                                 cs2=sum(sum(g) ** 2 for g in groups), csn=sum(sum(g) * len(g) for g in groups),
                                 cn2=sum(len(g) ** 2 for g in groups))
    assert got.keys() == want.keys()
    for key, w in want.items():
        for k, v in w.items():
            assert got[key][k] == pytest.approx(v, rel=1e-12, abs=1e-12), (key, k)
