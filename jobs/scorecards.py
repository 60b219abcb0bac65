"""Scorecards by day and week × agent_version × prompt_variant × task_type, with guardrails and a review sample.

gold/step_signals + gold/episode_scores → gold/scorecards (every signal and the composite with a confidence
interval and its comparison with the named baseline), gold/guardrails (regressions, anti-gaming flags,
week-over-week drift) and gold/review_queue (a stratified sample for human review). Formulas: docs/heuristics.md.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from statistics import NormalDist
from typing import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from jobs.tables import Published, publish_together, read_window
from lake.locks import outside_erase
from schemas.reward import RewardSpec, load_reward_spec
from schemas.settings import Settings
from schemas.tables import (GOLD_EPISODE_SCORES, GOLD_GUARDRAILS, GOLD_REVIEW_QUEUE, GOLD_SCORECARDS,
                            GOLD_STEP_SIGNALS)

SEGMENT = ("agent_version", "prompt_variant", "task_type")


@dataclass(frozen=True)
class Metric:
    """One scorecard line: per step or per episode, a rate (of a boolean) or a mean, and which way is better."""

    name: str
    source: str      # step | episode
    column: str      # the column of the source observed; null rows are outside the metric's denominator
    kind: str        # rate | mean
    better: int      # +1 higher is better, -1 lower is better
    bucket: str


def _m(name, source, kind, better, bucket, column=None) -> Metric:
    return Metric(name, source, column or name, kind, better, bucket)


METRICS: tuple[Metric, ...] = (
    _m("accept_rate", "step", "rate", +1, "correction", "accepted"),
    _m("reject_rate", "step", "rate", -1, "correction", "rejected"),
    _m("edit_rate", "step", "rate", -1, "correction", "edited"),
    _m("overwrite_rate", "step", "rate", -1, "correction", "overwritten"),
    _m("edit_distance", "step", "mean", -1, "correction"),
    _m("undo_rate", "step", "rate", -1, "correction", "undone"),
    _m("undo_after_accept", "step", "rate", -1, "correction", "_undo_after_accept"),
    _m("retry_rate", "step", "rate", -1, "friction", "retried"),
    _m("dead_end_rate", "step", "rate", -1, "friction", "dead_end"),
    _m("next_action_s", "step", "mean", -1, "friction"),
    _m("reaction_s", "step", "mean", -1, "friction"),
    _m("step_reward", "step", "mean", +1, "reward"),
    _m("completion_rate", "episode", "rate", +1, "outcome", "completed"),
    _m("abandon_rate", "episode", "rate", -1, "outcome", "_abandoned"),
    _m("reopen_rate", "episode", "rate", -1, "outcome", "_reopened_when_done"),
    _m("timeout_rate", "episode", "rate", -1, "outcome", "_timeout"),
    _m("within_sla_rate", "episode", "rate", +1, "outcome", "within_sla"),
    _m("completion_time_s", "episode", "mean", -1, "outcome"),
    _m("escalation_rate", "episode", "rate", -1, "trust", "escalated"),
    _m("delegation_rate", "episode", "rate", +1, "trust", "delegated_when_repeat"),
    _m("opt_out_rate", "episode", "rate", -1, "trust", "opted_out"),
    _m("opt_out_after_poor", "episode", "rate", -1, "trust", "opted_out_after_poor"),
    _m("correction_score", "episode", "mean", +1, "reward"),
    _m("friction_score", "episode", "mean", +1, "reward"),
    _m("outcome_score", "episode", "mean", +1, "reward"),
    _m("trust_score", "episode", "mean", +1, "reward"),
    _m("gate_pass_rate", "episode", "rate", +1, "outcome", "gate_passed"),
    _m("composite", "episode", "mean", +1, "reward"),
    _m("steps_per_episode", "episode", "mean", -1, "cost", "n_steps"),
    _m("cost_usd", "episode", "mean", -1, "cost"),
)
METRIC_NAMES = frozenset(m.name for m in METRICS)

UNIT = [i / 10 for i in range(1, 10)]
SECONDS = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]
# drift: each signal's distribution over fixed bins (left edges of all bins but the first), per source
DRIFT_SIGNALS: tuple[tuple[str, str, list[float]], ...] = (
    ("composite", "episode", UNIT), ("correction_score", "episode", UNIT), ("friction_score", "episode", UNIT),
    ("outcome_score", "episode", UNIT), ("trust_score", "episode", UNIT),
    ("completion_time_s", "episode", SECONDS), ("completed", "episode", [0.5]),
    ("edit_distance", "step", UNIT), ("next_action_s", "step", SECONDS), ("reaction_s", "step", SECONDS),
    ("accepted", "step", [0.5]),
)
PSI_EPSILON = 1e-4  # share given to a bin empty in one week, so the log stays finite
# the gold step columns the scorecards read (the metrics, the drift signals and what they are grouped by): the
# steps are cached, and half of gold's step columns are ids and timestamps no metric reads
STEP_COLUMNS = tuple(dict.fromkeys([*SEGMENT, "date", "episode_id",
                                    *(m.column for m in METRICS if m.source == "step" and not m.column.startswith("_")),
                                    "accepted", "undone",  # _undo_after_accept
                                    *(name for name, source, _ in DRIFT_SIGNALS if source == "step")]))
# the same for the gold episode columns: the metrics, the drift signals, the segment and the review sample's columns
# (the ids of the session, task and user, the per-episode step means and the token counts stay unread)
EPISODE_COLUMNS = tuple(dict.fromkeys([*SEGMENT, "date", "week", "episode_id", "outcome", "composite", "reward_version",
                                       "reopened",  # _reopened_when_done
                                       *(m.column for m in METRICS
                                         if m.source == "episode" and not m.column.startswith("_")),
                                       *(name for name, source, _ in DRIFT_SIGNALS if source == "episode")]))


def _is_baseline(spec: RewardSpec) -> Column:
    b = spec.guardrails.baseline
    return (F.col("agent_version") == b.agent_version) & (F.col("prompt_variant") == b.prompt_variant)


def z_of(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def t_of(level: float, df: float) -> float:
    """Student's t quantile of a two-sided `level` with `df` degrees of freedom (exact for 1 and 2, the
    Cornish-Fisher expansion from 3 on: within 0.05 of the exact value at 3, within 1e-4 from 10); `t_column` is
    the same in Spark."""
    if df <= 0:
        return float("nan")
    return _t_expr(level, df, lambda c, a, b: a if c else b)


def t_coefficients(level: float) -> tuple[float, float, float, tuple[float, float, float, float]]:
    """(t at 1 df, t at 2 df, z, g1..g4): t ≈ z + g1/df + g2/df² + g3/df³ + g4/df⁴ from 3 df on."""
    q = 0.5 + level / 2
    z = z_of(level)
    g = ((z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
         (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
         (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return math.tan(math.pi * (q - 0.5)), (2 * q - 1) / math.sqrt(2 * q * (1 - q)), z, g


def _t_expr(level: float, df, when):
    exact1, exact2, z, g = t_coefficients(level)
    cf = z + g[0] / df + g[1] / df ** 2 + g[2] / df ** 3 + g[3] / df ** 4
    return when(df == 1, exact1, when(df == 2, exact2, cf))


def t_column(level: float, df: Column) -> Column:
    """`t_of` as a Spark column (null for df < 1)."""
    df = df.cast("double")
    return F.when(df >= 1, _t_expr(level, df, lambda c, a, b: F.when(c, F.lit(a)).otherwise(b)))


SUMS = ("n", "s", "ss", "c", "cs2", "csn", "cn2")


def _sums_by(df: DataFrame, metrics: list[Metric], keys: list[str]) -> DataFrame:
    """Per group of `keys`, each metric's n, Σx and Σx² over its non-null observations, one row per (group,
    metric) with n > 0.

    One wide aggregation, then the rows are unpivoted: exploding first (a row per observation and metric) fed
    every observation through the hash aggregation on its own, 12 step metrics making ~12 rows of each step.
    """
    aggs = []
    for i, m in enumerate(metrics):
        x = F.col(m.column).cast("double")
        aggs += [F.count(x).alias(f"_n{i}"), F.sum(x).alias(f"_s{i}"), F.sum(x * x).alias(f"_ss{i}")]
    per_metric = F.explode(F.array(*[
        F.struct(F.lit(m.name).alias("metric"), F.col(f"_n{i}").alias("n"), F.col(f"_s{i}").alias("s"),
                 F.col(f"_ss{i}").alias("ss"))
        for i, m in enumerate(metrics)])).alias("o")
    return (df.groupBy(*keys).agg(*aggs).select(*keys, per_metric)
              .select(*keys, "o.metric", "o.n", "o.s", "o.ss").where("n > 0"))


def daily_sums(steps: DataFrame, episodes: DataFrame) -> DataFrame:
    """Per day × segment × metric, the additive sums days roll up into weeks from: n, Σx and Σx² over the
    observations, and over their episodes (the clusters: a step metric's observations within one episode are
    correlated) c = episodes, cs2 = Σ S_e², csn = Σ S_e·n_e, cn2 = Σ n_e², where S_e and n_e are an episode's
    Σx and count. An episode metric has one observation per episode, so its cluster sums equal n, Σx², Σx, n."""
    steps = steps.withColumn("_undo_after_accept", F.when(F.col("accepted"), F.col("undone")))
    # a reopen is a regression of work handed back as done: its rate is over the episodes completed (or reopened
    # since), not over all, whose escalations and timeouts can never be reopened and would tie it to completion
    episodes = (episodes.withColumn("_abandoned", F.col("outcome") == "abandoned")
                        .withColumn("_timeout", F.col("outcome") == "timeout")
                        .withColumn("_reopened_when_done",
                                    F.when(F.col("outcome").isin("completed", "reopened"), F.col("reopened"))))
    per_episode = _sums_by(steps, [m for m in METRICS if m.source == "step"], [*SEGMENT, "date", "episode_id"])
    step_sums = per_episode.groupBy(*SEGMENT, "date", "metric").agg(
        F.sum("n").alias("n"), F.sum("s").alias("s"), F.sum("ss").alias("ss"), F.count(F.lit(1)).alias("c"),
        F.sum(F.col("s") * F.col("s")).alias("cs2"), F.sum(F.col("s") * F.col("n")).alias("csn"),
        F.sum(F.col("n") * F.col("n")).alias("cn2"))
    episode_sums = (_sums_by(episodes, [m for m in METRICS if m.source == "episode"], [*SEGMENT, "date"])
                    .select(*SEGMENT, "date", "metric", "n", "s", "ss", F.col("n").alias("c"), F.col("ss").alias("cs2"),
                            F.col("s").alias("csn"), F.col("n").alias("cn2")))
    return step_sums.unionByName(episode_sums)


def _metric_table(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([(m.name, m.kind, m.better, m.bucket) for m in METRICS],
                                 "metric STRING, kind STRING, better TINYINT, bucket STRING")


def scorecards(spark: SparkSession, sums: DataFrame, spec: RewardSpec) -> DataFrame:
    """Day and week rows of every metric with its confidence interval and the comparison with the baseline."""
    g = spec.guardrails
    day = sums.select(F.lit("day").alias("grain"), F.col("date").alias("period_start"), *SEGMENT, "metric", *SUMS)
    week = (sums.withColumn("period_start", F.to_date(F.date_trunc("week", "date")))
                .groupBy(*SEGMENT, "period_start", "metric").agg(*[F.sum(c).alias(c) for c in SUMS])
                .select(F.lit("week").alias("grain"), "period_start", *SEGMENT, "metric", *SUMS))
    n, s, ss, c = F.col("n").cast("double"), F.col("s"), F.col("ss"), F.col("c").cast("double")
    mean = s / n
    var = F.when(n > 1, F.greatest(F.lit(0.0), (ss - n * mean * mean) / (n - 1)))
    # the variance of the mean with episodes as clusters (the sandwich estimator of a ratio mean, with the
    # small-sample factor c/(c-1)): steps of one episode share its user and its task, and treating them as
    # independent made 1% nominal flags fire for ~13% of unchanged segments. For an episode metric it is s²/n.
    var_mean = F.when(c > 1, F.greatest(F.lit(0.0), cluster_residuals(F.col("cs2"), F.col("csn"), F.col("cn2"), mean)
                                        / (n * n) * c / (c - 1)))
    rows = (day.unionByName(week).join(F.broadcast(_metric_table(spark)), "metric")
            .withColumn("value", mean)
            .withColumn("std", F.sqrt(var))
            .withColumn("_var_mean", var_mean)
            .withColumn("_t", t_column(g.ci_level, c - 1)))
    # rates: the Wilson score interval (sound near 0 and 1 and for small n) at the effective sample size
    # p(1-p)/var_mean (n shrunk by the clustering's design effect, never grown past n); means: mean ± t·se with
    # episodes - 1 degrees of freedom
    p, t = F.col("value"), F.col("_t")
    # a rate of exactly 0 or 1 has no spread to measure its clustering by: it then counts its episodes, not its
    # steps (at 0 of 400 steps in 40 episodes, the interval of 400 independent steps stopped at 1.0% and missed
    # a true 2% about half the time; clustered steps are worth at least one observation per episode)
    n_eff = F.when(F.col("_var_mean") > 0, F.least(n, p * (1 - p) / F.col("_var_mean"))).otherwise(c)
    centre = (p + t * t / (2 * n_eff)) / (1 + t * t / n_eff)
    half_w = t * F.sqrt(p * (1 - p) / n_eff + t * t / (4 * n_eff * n_eff)) / (1 + t * t / n_eff)
    half_m = t * F.sqrt(F.col("_var_mean"))
    rows = (rows.withColumn("ci_low", F.when(F.col("kind") == "rate", centre - half_w).otherwise(F.col("value") - half_m))
                .withColumn("ci_high", F.when(F.col("kind") == "rate", centre + half_w).otherwise(F.col("value") + half_m)))
    is_base = _is_baseline(spec)
    base = (rows.where(is_base)
                .select("grain", "period_start", "task_type", "metric", F.col("n").alias("baseline_n"),
                        F.col("c").alias("_bc"), F.col("value").alias("baseline_value"),
                        F.col("_var_mean").alias("_bvar"), F.col("s").alias("_bs"), F.col("cs2").alias("_bcs2"),
                        F.col("csn").alias("_bcsn"), F.col("cn2").alias("_bcn2")))
    n2 = F.col("baseline_n").cast("double")
    # means: Welch's test on the cluster-robust variances; rates: `pooled_rate_se`. Both with the smaller side's
    # episodes - 1 degrees of freedom (conservative; the flag level is already strict)
    se = F.when(F.col("kind") == "rate", pooled_rate_se(
        n, s, c, F.col("cs2"), F.col("csn"), F.col("cn2"), F.col("value"),
        n2, F.col("_bs"), F.col("_bc").cast("double"), F.col("_bcs2"), F.col("_bcsn"), F.col("_bcn2"),
        F.col("baseline_value"))).otherwise(F.sqrt(F.col("_var_mean") + F.col("_bvar")))
    df = F.least(c, F.col("_bc").cast("double")) - 1
    out = (rows.join(base, ["grain", "period_start", "task_type", "metric"], "left")
               .withColumn("delta", F.col("value") - F.col("baseline_value"))
               .withColumn("z", F.when(~is_base & (se > 0), F.col("delta") / se))
               .withColumn("_flag_at", t_column(g.flag_level, df))
               .withColumn("significant", F.when(~is_base & F.col("baseline_n").isNotNull(),
                                                 F.coalesce((F.abs(F.col("z")) > F.col("_flag_at"))
                                                            & (n >= g.min_n) & (n2 >= g.min_n), F.lit(False))))
               .withColumn("regression", F.col("significant") & (F.col("delta") * F.col("better") < 0))
               .withColumn("reward_version", F.lit(spec.version)))
    return out


def cluster_residuals(cs2, csn, cn2, m):
    """Σ_e (S_e − m·n_e)² over the episodes, from their sums (Σ S_e², Σ S_e·n_e, Σ n_e²): numbers or columns."""
    return cs2 - 2 * m * csn + m * m * cn2


def pooled_rate_se(n_a, s_a, c_a, cs2_a, csn_a, cn2_a, p_a, n_b, s_b, c_b, cs2_b, csn_b, cn2_b, p_b):
    """The standard error of the difference of two rates under the hypothesis that they are equal: the pooled
    two-proportion test, p0(1 - p0)(1/n_a + 1/n_b) with p0 the rate of both sides together, times the design
    effect of clustered observations (a step rate's steps within one episode).

    The design effect is the two sides' squared residuals by episode, Σ(S_e - p·n_e)² around each side's own
    rate, over what independent observations would give, Σ n·p(1 - p): 1 for independent ones, the episode's
    size when its steps all agree. Each side's own variance (Welch's test, as for means) is 0 at a rate of 0 or
    1, so a variant with 0 escalations in 40 episodes was "significant" against 16 in 200 (z -4.2; Fisher's
    exact p 0.08). When neither side varies (0 against 1) there is nothing to estimate the design effect from,
    and the mean episode size, its largest value, is taken.
    Works on numbers and on Spark columns alike (the test checks one against the other)."""
    p0 = (s_a + s_b) / (n_a + n_b)
    within = cluster_residuals(cs2_a, csn_a, cn2_a, p_a) + cluster_residuals(cs2_b, csn_b, cn2_b, p_b)
    binomial = n_a * p_a * (1 - p_a) + n_b * p_b * (1 - p_b)
    most = (n_a + n_b) / (c_a + c_b)
    if isinstance(binomial, Column):
        deff = F.when(binomial > 0, F.greatest(F.lit(1.0), within / binomial)).otherwise(F.greatest(F.lit(1.0), most))
        return F.sqrt(deff * p0 * (1 - p0) * (1 / n_a + 1 / n_b))
    deff = max(1.0, within / binomial) if binomial > 0 else max(1.0, most)
    return math.sqrt(deff * p0 * (1 - p0) * (1 / n_a + 1 / n_b))


def regressions(cards: DataFrame, spec: RewardSpec) -> DataFrame:
    """One guardrail row per metric significantly worse than the baseline."""
    return cards.where("regression").select(
        F.lit("regression").alias("check"), "grain", "period_start", *SEGMENT, "metric",
        F.col("z").alias("statistic"), F.col("_flag_at").alias("threshold"),
        F.lit(True).alias("flagged"),
        F.to_json(F.struct("value", "baseline_value", "n", "baseline_n", "delta")).alias("detail"),
        "reward_version")


def gaming_flags(cards: DataFrame, spec: RewardSpec) -> DataFrame:
    """Per segment and period: flagged when a proxy is significantly better than the baseline while an outcome
    metric is significantly worse (the proxies are being gamed)."""
    g = spec.guardrails
    improved = F.col("significant") & (F.col("delta") * F.col("better") > 0)
    worse = F.col("significant") & (F.col("delta") * F.col("better") < 0)
    per_segment = (
        cards.where(~_is_baseline(spec) & F.col("baseline_n").isNotNull())
        .groupBy("grain", "period_start", *SEGMENT)
        .agg(F.array_sort(F.collect_list(F.when(F.col("metric").isin(*g.proxy_metrics) & improved,
                                                F.col("metric")))).alias("proxies_better"),
             F.array_sort(F.collect_list(F.when(F.col("metric").isin(*g.outcome_metrics) & worse,
                                                F.col("metric")))).alias("outcomes_worse")))
    return per_segment.select(
        F.lit("gaming").alias("check"), "grain", "period_start", *SEGMENT, F.lit("*").alias("metric"),
        F.size("proxies_better").cast("double").alias("statistic"), F.lit(1.0).alias("threshold"),
        ((F.size("proxies_better") > 0) & (F.size("outcomes_worse") > 0)).alias("flagged"),
        F.to_json(F.struct("proxies_better", "outcomes_worse",
                           F.lit(f"{g.baseline.agent_version}/{g.baseline.prompt_variant}").alias("baseline")))
        .alias("detail"),
        F.lit(spec.version).alias("reward_version"))


def bin_sql(name: str, edges: list[float]) -> str:
    """The bin of column `name` over `edges` (the left edges of all bins but the first) as Spark SQL: the number
    of edges at or below the value, null for a null value.

    One SQL expression per signal rather than a Column per comparison: built with the Column API, the drift
    signals' ~100 comparisons made building drift's frame ~8,000 calls into the JVM (~1,400–2,100 now), 0.6–1.3 s
    of every scorecards run (bench/RESULTS.md, "Spark jobs")."""
    x = f"CAST(`{name}` AS DOUBLE)"
    return f"CASE WHEN `{name}` IS NOT NULL THEN {' + '.join(f'CAST({x} >= {edge!r}D AS INT)' for edge in edges)} END"


def _binned(df: DataFrame, signals: list[tuple[str, str, list[float]]]) -> DataFrame:
    """(segment, week, signal, bin) counts of each signal over its fixed bins."""
    obs = F.explode(F.array(*[F.struct(F.lit(name).alias("signal"), F.expr(bin_sql(name, edges)).alias("bin"))
                              for name, _, edges in signals])).alias("o")
    return (df.withColumn("week", F.to_date(F.date_trunc("week", "date")))
              .select(*SEGMENT, "week", obs).select(*SEGMENT, "week", "o.signal", "o.bin")
              .where("bin IS NOT NULL").groupBy(*SEGMENT, "week", "signal", "bin").count())


def drift(steps: DataFrame, episodes: DataFrame, spec: RewardSpec) -> DataFrame:
    """Week-over-week population stability index of every drift signal per segment (weeks that have a previous
    week with data); flagged at the spec's psi_alert when both weeks have min_n observations."""
    g = spec.guardrails
    counts = _binned(steps, [d for d in DRIFT_SIGNALS if d[1] == "step"]).unionByName(
        _binned(episodes, [d for d in DRIFT_SIGNALS if d[1] == "episode"]))
    total = Window.partitionBy(*SEGMENT, "week", "signal")
    shares = counts.withColumn("n", F.sum("count").over(total)).withColumn("p", F.col("count") / F.col("n"))
    cur = shares.select(*SEGMENT, "week", "signal", "bin", "p", "n")
    prev = shares.select(*SEGMENT, F.date_add("week", 7).alias("week"), "signal", "bin",
                         F.col("p").alias("q"), F.col("n").alias("prev_n"))
    p = F.coalesce("p", F.lit(0.0)) + PSI_EPSILON
    q = F.coalesce("q", F.lit(0.0)) + PSI_EPSILON
    psi = (cur.join(prev, [*SEGMENT, "week", "signal", "bin"], "full_outer")
              .groupBy(*SEGMENT, "week", "signal")
              .agg(F.sum((p - q) * F.log(p / q)).alias("psi"), F.max("n").alias("n"), F.max("prev_n").alias("prev_n"))
              .where(F.col("n").isNotNull() & F.col("prev_n").isNotNull()))  # both weeks have data
    return psi.select(
        F.lit("drift").alias("check"), F.lit("week").alias("grain"), F.col("week").alias("period_start"), *SEGMENT,
        F.col("signal").alias("metric"), F.col("psi").alias("statistic"), F.lit(g.psi_alert).alias("threshold"),
        ((F.col("psi") >= g.psi_alert) & (F.col("n") >= g.min_n) & (F.col("prev_n") >= g.min_n)).alias("flagged"),
        F.to_json(F.struct(F.col("n"), F.col("prev_n"), F.date_sub("week", 7).alias("compared_with"))).alias("detail"),
        F.lit(spec.version).alias("reward_version"))


def review_queue(episodes: DataFrame, spec: RewardSpec) -> DataFrame:
    """Up to review_per_stratum episodes per week × segment × composite band, picked by a keyed hash so a rerun
    picks the same ones, with the weight that maps reviews back to the population."""
    g = spec.guardrails
    edges = [0.0, *g.review_bands]
    labels = [f"[{lo}, {hi})" for lo, hi in zip(edges, [*g.review_bands, 1.0])]
    labels[-1] = labels[-1].replace(")", "]")
    band = F.element_at(F.array(*[F.lit(x) for x in labels]),
                        sum((F.col("composite") >= e).cast("int") for e in edges))
    stratum = Window.partitionBy("week", *SEGMENT, "band")
    k = g.review_per_stratum
    return (episodes.withColumn("band", band)
            .withColumn("rank", F.row_number().over(stratum.orderBy(F.xxhash64("episode_id", F.lit(spec.version)),
                                                                    "episode_id")))
            .withColumn("stratum_size", F.count(F.lit(1)).over(stratum))
            .where(F.col("rank") <= k)
            .withColumn("weight", F.col("stratum_size") / F.least(F.col("stratum_size"), F.lit(k)))
            .withColumn("reward_version", F.lit(spec.version)))


def _weeks(start: date, end: date) -> tuple[date, date]:
    """[Monday of start's week, Monday after the week of end - 1 day)."""
    first = start - timedelta(days=start.weekday())
    last = end - timedelta(days=1)
    return first, last - timedelta(days=last.weekday()) + timedelta(days=7)


def periods_predicate(start: date, end: date, spec: RewardSpec) -> str:
    ws, we = _weeks(start, end)
    return (f"reward_version = '{spec.version}' AND ((grain = 'day' AND period_start >= '{start}' AND "
            f"period_start < '{end}') OR (grain = 'week' AND period_start >= '{ws}' AND period_start < '{we}'))")


def run(spark: SparkSession, settings: Settings, start: date, end: date, spec: RewardSpec | None = None,
        progress: Callable[[str], None] = lambda _: None) -> list[Published]:
    """Scorecards for the days in [start, end) and the whole weeks they touch; guardrails; the review sample."""
    # the erase lock, shared: an erase waits for this run, so no erased user's rows come back through it
    with outside_erase(settings.lake, progress):
        spec = spec or load_reward_spec(settings.reward_version)
        ws, we = _weeks(start, end)
        progress(f"reading gold scores {ws - timedelta(days=7)} … {we}")
        version = F.col("reward_version") == spec.version
        steps = (read_window(spark, settings, GOLD_STEP_SIGNALS, ws - timedelta(days=7), we, "date").where(version)
                 .select(*STEP_COLUMNS).cache())
        episodes = (read_window(spark, settings, GOLD_EPISODE_SCORES, ws - timedelta(days=7), we, "date").where(version)
                    .select(*EPISODE_COLUMNS).cache())
        cards = sums = None
        try:
            where = periods_predicate(start, end, spec)  # filters the rows and bounds the replace alike
            progress("aggregating signals by day and week")
            # the day sums feed the day rows, the week rows and each one's baseline: without materialising them once,
            # the plan re-explodes and re-aggregates every step and episode in each of those branches
            sums = daily_sums(steps, episodes).cache()
            sums.count()
            cards = scorecards(spark, sums, spec).where(where).cache()
            rails = regressions(cards, spec).unionByName(gaming_flags(cards, spec)).unionByName(
                drift(steps, episodes, spec).where(where))
            sample = review_queue(episodes.where((F.col("week") >= F.lit(ws)) & (F.col("week") < F.lit(we))), spec)
            # all three gated before any is written: the guardrails and the review sample are read off these cards
            out = publish_together(spark, settings, [
                (GOLD_SCORECARDS, cards, where), (GOLD_GUARDRAILS, rails, where),
                (GOLD_REVIEW_QUEUE, sample, f"week >= '{ws}' AND week < '{we}' AND reward_version = '{spec.version}'")],
                spec, progress, inputs=(GOLD_STEP_SIGNALS.id, GOLD_EPISODE_SCORES.id))
        finally:
            for df in (cards, sums):
                if df is not None:
                    df.unpersist()
            steps.unpersist()
            episodes.unpersist()
        return out


if __name__ == "__main__":  # spark-submit jobs/scorecards.py --start … --end …
    from jobs.submit import main

    sys.exit(main("scorecards", sys.argv[1:]))
