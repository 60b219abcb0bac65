"""Heuristic signals of the four buckets, bucket scores, the gated composite reward and step rewards.

silver/steps + silver/episodes → gold/step_signals + gold/episode_scores. The transforms are DataFrame →
DataFrame functions; `run` reads a window, transforms, checks and publishes with replaceWhere (a window whose
silver is missing is refused, not emptied: jobs/tables.refuse_emptying). Formulas: docs/heuristics.md; numbers: the
reward spec (schemas/reward/).
"""
from __future__ import annotations

import math
import sys
from datetime import date, timedelta
from typing import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from jobs.tables import Published, latest_revisions, publish_together, read_window
from lake.locks import outside_erase
from schemas.reward import RewardSpec, load_reward_spec
from schemas.settings import Settings
from schemas.tables import GOLD_EPISODE_SCORES, GOLD_STEP_SIGNALS, SILVER_EPISODES, SILVER_STEPS, TableSpec


def _clamp(c: Column) -> Column:
    return F.greatest(F.lit(0.0), F.least(F.lit(1.0), c))


def _lookup(mapping: dict[str, float], key: Column) -> Column:
    return F.create_map(*[x for k, v in sorted(mapping.items()) for x in (F.lit(k), F.lit(float(v)))])[key]


def _segment(df: DataFrame) -> DataFrame:
    return df.withColumn("task_type", F.coalesce(F.col("task_type"), F.lit("unknown")))


# An episode by its parts: silver's episode_id is session_id/task_id and a step's step_id is session_id/action_id
# (schemas/tables.py; the silver suites check both). The job partitions, sorts and joins by the parts and writes
# the two ids as the step rows leave (`with_ids`): carried through the shuffle, the windows' sorts and the cache,
# the two 77-character ids were ~30% of a step row's bytes, the shuffle 994 MiB instead of 681 at 10M events
# (bench/RESULTS.md, "Spark jobs").
EPISODE = ("session_id", "task_id")


def with_ids(steps: DataFrame) -> DataFrame:
    """Steps with their episode_id and step_id, written from session_id, task_id and action_id."""
    return steps.withColumns({"episode_id": F.concat_ws("/", "session_id", "task_id"),
                              "step_id": F.concat_ws("/", "session_id", "action_id")})


def step_signals(steps: DataFrame, spec: RewardSpec) -> DataFrame:
    """Per-step correction and friction signals and the step's own score (latest silver revisions in)."""
    # one window specification (partition and order) with three frames: Spark evaluates them in one Window
    # operator over one sort. Written as two specs (the sum unordered), the three became three Window operators,
    # each copying every row (bench/RESULTS.md, "Spark jobs").
    intent = Window.partitionBy(*EPISODE, "intent_id").orderBy("step_index")
    whole = intent.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    after = intent.rowsBetween(0, Window.unboundedFollowing)
    kept = ((F.col("accepted") & ~F.col("undone")) | F.col("edited")).cast("int")
    penalty = F.when(F.col("outcome") == "edited", F.col("edit_distance")).otherwise(
        _lookup(spec.correction.penalty, F.col("outcome")))
    return (
        _segment(steps)
        .withColumn("intent_id", F.coalesce("intent_id", "action_id"))
        .withColumn("overwritten", F.coalesce(
            F.col("edited") & (F.col("edit_distance") >= spec.correction.overwrite_threshold), F.lit(False)))
        .withColumn("correction_penalty", F.coalesce(penalty, F.lit(0.0)))
        .withColumn("reaction_s", F.col("reaction_ms") / 1000.0)
        .withColumn("next_action_s", F.col("next_action_ms") / 1000.0)
        .withColumns({"intent_attempt": F.row_number().over(intent),
                      "intent_retries": F.sum(F.col("retried").cast("int")).over(whole),
                      "dead_end": F.max(kept).over(after) == 0})
        .withColumn("own_reward", _clamp(1.0 - F.col("correction_penalty")
                                         - spec.step.dead_end_penalty * F.col("dead_end").cast("double")))
    )


def opted_out_after_poor(episodes: DataFrame, spec: RewardSpec, shared_users: tuple[str, ...] = ()) -> DataFrame:
    """(session_id, task_id, _opted_out_after) for each poor episode: did its user opt out, in it or in any of their
    tasks, at or after the outcome and at most `trust.opt_out_within_hours` after the task's end.

    The outcome is met at the task's first end (silver's `outcome_at`); a timeout has none, so from its start.
    Every opt-out in the task itself counts (it is before the task's end). `shared_users` are pseudonyms many
    people share (the OTLP default user): their tasks see their own opt-outs only. One narrow row per poor episode
    and per opt-out, sorted once per user: newest first, a running minimum of the opt-out times gives each poor
    episode the user's first opt-out at or after it (one at the same instant sorts first, so it counts). A running
    frame is linear in a user's rows, where a frame up to the end is not. Times are compared as whole
    microseconds, as DuckDB's mirror in bench/jobs_speed.py does."""
    o, tr = spec.outcome, spec.trust
    who = F.when(F.col("user_id").isin(*shared_users), F.col("episode_id")).otherwise(F.col("user_id")) \
        if shared_users else F.col("user_id")
    poor = episodes.where(F.col("outcome").isin(*o.poor_outcomes)).select(
        *EPISODE, who.alias("who"), F.unix_micros(F.coalesce("outcome_at", "started_at")).alias("t"),
        F.lit(0).alias("kind"),
        (F.unix_micros("ended_at") + F.lit(round(tr.opt_out_within_hours * 3_600_000_000))).alias("until"))
    outs = episodes.where(F.col("opted_out_at").isNotNull()).select(
        *[F.lit(None).cast("string").alias(c) for c in EPISODE], who.alias("who"),
        F.unix_micros("opted_out_at").alias("t"),
        F.lit(1).alias("kind"), F.lit(None).cast("long").alias("until"))
    newest_first = (Window.partitionBy("who").orderBy(F.desc("t"), F.desc("kind"))
                    .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    first_after = F.min(F.when(F.col("kind") == 1, F.col("t"))).over(newest_first)
    return (poor.unionByName(outs).withColumn("_first_opt_out", first_after).where(F.col("kind") == 0)
            .select(*EPISODE, F.coalesce(F.col("_first_opt_out") <= F.col("until"), F.lit(False))
                    .alias("_opted_out_after")))


def episode_scores(episodes: DataFrame, signals: DataFrame, spec: RewardSpec, shared_users: tuple[str, ...] = ()
                   ) -> DataFrame:
    """Per-episode signals of the four buckets, the bucket scores and the gated composite (`shared_users`:
    `opted_out_after_poor`'s)."""
    mean = lambda c: F.avg(F.col(c).cast("double"))  # noqa: E731
    per_episode = signals.groupBy(*EPISODE).agg(
        mean("edit_distance").alias("edit_distance"), mean("edited").alias("edit_rate"),
        mean("overwritten").alias("overwrite_rate"), mean("undone").alias("undo_rate"),
        mean("accepted").alias("accept_rate"), mean("rejected").alias("reject_rate"),
        mean("next_action_s").alias("next_action_s"), mean("reaction_s").alias("reaction_s"),
        mean("retried").alias("retry_rate"), mean("dead_end").alias("dead_end_rate"),
        mean("correction_penalty").alias("_penalty"))
    o, fr, tr, co = spec.outcome, spec.friction, spec.trust, spec.composite
    duration_s = F.col("duration_ms") / 1000.0
    completed = F.col("outcome") == "completed"
    sla = F.col("sla_seconds") * o.sla_grace
    over = duration_s / sla
    sla_factor = (F.when(~completed | sla.isNull() | (over <= 1), 1.0)
                  .otherwise(F.greatest(F.lit(o.sla_floor), 1.0 - (1.0 - o.sla_floor) * (over - 1.0))))
    poor = F.col("outcome").isin(*o.poor_outcomes)
    t = F.coalesce(F.col("next_action_s"), F.lit(0.0))
    after_poor = opted_out_after_poor(episodes, spec, shared_users)
    df = (
        _segment(episodes).join(per_episode, list(EPISODE), "left").join(after_poor, list(EPISODE), "left")
        .withColumn("week", F.to_date(F.date_trunc("week", "started_at")))
        .withColumn("completed", completed)
        .withColumn("duration_s", duration_s)
        .withColumn("completion_time_s", F.when(completed, duration_s))
        .withColumn("within_sla", F.when(completed & sla.isNotNull(), duration_s <= sla))
        .withColumn("sla_factor", sla_factor)
        .withColumn("opted_out_after_poor", F.when(poor, F.coalesce(
            # a row from before silver recorded these times (`trajlake migrate`: an end without its time, an opt-out
            # without its time) keeps the old definition, an opt-out anywhere in the poor episode
            F.when((F.col("outcome_at").isNull() & (F.col("outcome") != "timeout"))
                   | (F.col("opted_out") & F.col("opted_out_at").isNull()), F.col("opted_out")),
            F.col("_opted_out_after"), F.lit(False))))
        .withColumn("repeat_task", F.col("repeat_of_task_id").isNotNull())
        .withColumn("delegated_when_repeat", F.when(F.col("repeat_task"), F.col("delegated")))
        .withColumn("correction_score", 1.0 - F.coalesce(F.col("_penalty"), F.lit(0.0)))
        .withColumn("friction_score", _clamp(1.0 - (
            fr.weights["retry"] * F.coalesce(F.col("retry_rate"), F.lit(0.0))
            + fr.weights["dead_end"] * F.coalesce(F.col("dead_end_rate"), F.lit(0.0))
            + fr.weights["time"] * t / (t + fr.next_action_ref_s))))
        .withColumn("outcome_score", _lookup(o.values, F.col("outcome")) * F.col("sla_factor"))
        .withColumn("trust_score", _clamp(
            tr.base + tr.delegated_bonus * F.col("delegated").cast("double")
            - tr.escalated_penalty * F.col("escalated").cast("double")
            - tr.opted_out_penalty * F.col("opted_out").cast("double")))
        .withColumn("gate_passed", F.col("outcome").isin(*o.correct_outcomes)
                    & (F.col("external_reward").isNull() | (F.col("external_reward") >= o.external_reward_threshold)))
    )
    weighted = sum(co.weights[b] * F.col(f"{b}_score") for b in ("outcome", "correction", "friction", "trust"))
    return (df.withColumn("composite", F.when(F.col("gate_passed"), weighted).otherwise(co.ungated_scale * weighted))
              .withColumn("reward_version", F.lit(spec.version)))


def step_rewards(signals: DataFrame, scores: DataFrame, spec: RewardSpec) -> DataFrame:
    """Step signals with their credit share of the episode composite and the step reward.

    Steps of episodes that have not closed yet (no episode row) get no reward: a later run scores them.
    """
    # one window (the episode's steps in order) gives both a step's position and the episode's step count; the
    # weights' sum over the episode is then a closed form of the count, not a second window over the weights
    episode = Window.partitionBy(*EPISODE).orderBy("step_index")
    n = F.col("_n").cast("double")
    steps_after = F.col("_n") - F.col("_position")
    if spec.step.credit == "uniform":
        weight, total = F.lit(1.0), n
    elif spec.step.credit == "last":
        weight, total = F.when(steps_after == 0, 1.0).otherwise(0.0), F.lit(1.0)
    elif spec.step.gamma == 1.0:
        weight, total = F.lit(1.0), n
    else:  # γ^(steps after), summed over the episode: 1 + γ + … + γ^(n−1)
        g = spec.step.gamma
        weight, total = F.pow(F.lit(g), steps_after.cast("double")), (1.0 - F.pow(F.lit(g), n)) / (1.0 - g)
    own = spec.step.own_weight
    return (
        signals.withColumns({
            "_n": F.count(F.lit(1)).over(episode.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)),
            "_position": F.row_number().over(episode)})
        .join(scores.select(*EPISODE, "composite"), list(EPISODE), "inner")
        .withColumn("credit_share", F.col("composite") * weight / total)
        .withColumn("step_reward", own * F.col("own_reward") + (1.0 - own) * F.col("credit_share"))
        .withColumn("reward_version", F.lit(spec.version))
        .drop("_n", "_position", "composite")
        .transform(with_ids)
    )


def window_predicate(column: str, start: date, end: date, spec: RewardSpec) -> str:
    return f"{column} >= '{start}' AND {column} < '{end}' AND reward_version = '{spec.version}'"


# silver columns the formulas read that the gold tables do not keep
# (closed_at: the latest revision's tie-break, `latest_revisions`)
STEP_INPUTS = ("reaction_ms", "next_action_ms", "closed_at")
EPISODE_INPUTS = ("duration_ms", "sla_seconds", "ended_at", "outcome_at", "opted_out_at", "repeat_of_task_id",
                  "closed_at")


def silver_inputs(silver: TableSpec, gold: TableSpec, formula_inputs: tuple[str, ...]) -> list[str]:
    """The silver columns a job reads: those the gold table keeps and those its formulas use.

    Selected as the rows are read, before the shuffle by episode, the sorts of the windows and the cache: without
    it every one of them carried the whole silver row, the agent's output and the user's final value included
    (bench/RESULTS.md)."""
    return [c for c in silver.schema.names if c in gold.schema.names or c in formula_inputs]


def shared_users(settings: Settings) -> tuple[str, ...]:
    """The pseudonyms many people share: the OTLP collector's default user (spans that name none)."""
    from privacy.policy import PSEUDONYM_FIELDS
    from privacy.pseudonyms import pseudonym

    key = settings.pseudonym_key.get_secret_value().encode()
    return (pseudonym(key, PSEUDONYM_FIELDS["user_id"], settings.otlp_default_user_id),)


def latest_silver(spark: SparkSession, settings: Settings, start: date, end: date, episodes_end: date | None = None
                  ) -> tuple[DataFrame, DataFrame]:
    """The latest revisions of silver steps dated in [start, end) and episodes in [start, episodes_end or end),
    with the columns the job reads (the steps without their ids: `with_ids`), both hash-partitioned by episode.

    Partitioned once: every window and join after this one (a step's intent, its episode's aggregates, the credit
    share) is by episode too and reuses it. Without it each of them shuffled all steps again: the step rewards'
    plan had eight exchanges, now four (bench/RESULTS.md)."""
    steps = latest_revisions(read_window(spark, settings, SILVER_STEPS, start, end)
                             .select(*[c for c in silver_inputs(SILVER_STEPS, GOLD_STEP_SIGNALS, STEP_INPUTS)
                                       if c != "step_id"])
                             .repartition(*EPISODE), "action_id", within=EPISODE)
    episodes = latest_revisions(read_window(spark, settings, SILVER_EPISODES, start, episodes_end or end)
                                .select(*silver_inputs(SILVER_EPISODES, GOLD_EPISODE_SCORES, EPISODE_INPUTS))
                                .repartition(*EPISODE), "task_id", within=("session_id",))
    return steps, episodes


def run(spark: SparkSession, settings: Settings, start: date, end: date, spec: RewardSpec | None = None,
        progress: Callable[[str], None] = lambda _: None) -> list[Published]:
    """Score the episodes started and the steps proposed in [start, end) and publish both gold tables."""
    # the erase lock, shared: an erase waits for this run, so no erased user's rows come back through it
    with outside_erase(settings.lake, progress):
        spec = spec or load_reward_spec(settings.reward_version)
        margin = timedelta(days=settings.job_margin_days)
        # an opt-out in the user's later tasks counts for this one: episodes are read far enough ahead to see it
        ahead = margin + timedelta(days=math.ceil(spec.trust.opt_out_within_hours / 24))
        progress(f"reading silver {start - margin} … {end + ahead}")
        steps, episodes = latest_silver(spark, settings, start - margin, end + margin, end + ahead)
        # read three times (the scores, and the poor outcomes and opt-outs per user): once from the files
        episodes = episodes.cache()
        signals = step_signals(steps, spec).cache()
        scores = episode_scores(episodes, signals, spec, shared_users(settings)).cache()
        try:
            where = window_predicate("date", start, end, spec)  # filters the rows and bounds the replace alike
            # both gated before either is written: step rewards are shares of these very episode scores
            out = publish_together(spark, settings, [
                (GOLD_STEP_SIGNALS, step_rewards(signals, scores, spec).where(where), where),
                (GOLD_EPISODE_SCORES, scores.where(where), where)], spec, progress,
                inputs=(SILVER_STEPS.id, SILVER_EPISODES.id))  # named when a window's input is missing
        finally:
            signals.unpersist()
            scores.unpersist()
            episodes.unpersist()
        return out


if __name__ == "__main__":  # spark-submit jobs/heuristics.py --start … --end …
    from jobs.submit import main

    sys.exit(main("heuristics", sys.argv[1:]))
