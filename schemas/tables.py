"""Delta table schemas, declared once in Arrow, with their partitioning and keys; Spark's form is derived."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class TableSpec:
    """One lake table: where it sits (layer/name), its columns, how it is partitioned and what identifies a row."""

    layer: str
    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...]
    keys: tuple[str, ...]
    description: str

    @property
    def id(self) -> str:
        return f"{self.layer}/{self.name}"


def _f(name: str, typ: pa.DataType, nullable: bool = True, doc: str = "") -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"doc": doc} if doc else None)


_ENVELOPE = [
    _f("event_id", pa.string(), False, "UUID from the producer; unique in this table"),
    _f("schema", pa.string(), False, "contract family/version, e.g. agent/1"),
    _f("event_type", pa.string(), False),
    _f("ts", TS, False, "event time"),
    _f("session_id", pa.string(), False),
    _f("task_id", pa.string(), False),
    _f("user_id", pa.string(), False, "HMAC pseudonym, never the raw id"),
    _f("action_id", pa.string()),
    _f("intent_id", pa.string()),
    _f("agent_version", pa.string(), False),
    _f("prompt_variant", pa.string(), False),
    _f("task_type", pa.string()),
    _f("client_app", pa.string()),
]

# the privacy policy (privacy.POLICY_VERSION) that scrubbed the row; for a join row, the oldest policy among its
# events, so a query for rows a faulty policy touched finds every one of them
_POLICY_VERSION = _f("policy_version", pa.string(), False, "privacy policy that scrubbed this row, e.g. privacy-1")

_SOURCE = [
    _f("source_topic", pa.string(), False),
    _f("source_partition", pa.int32(), False),
    _f("source_offset", pa.int64(), False),
]

BRONZE_EVENTS = TableSpec(
    "bronze", "events",
    pa.schema(_ENVELOPE + [
        _f("body", pa.string(), False, "the type-specific body as JSON, after scrubbing"),
        _POLICY_VERSION,
        _f("user_ref", pa.string(), doc="the raw user id sealed with the user's own key (privacy/tokens.py): "
                                        "support can reveal it while the key exists; unreadable once erased"),
        *_SOURCE,
        _f("ingested_at", TS, False),
        _f("date", pa.date32(), False, "partition: UTC date of ts"),
    ]),
    partition_by=("date",), keys=("event_id",),
    description="every valid, pseudonymized and scrubbed contract event, once",
)

BRONZE_DEADLETTER = TableSpec(
    "bronze", "deadletter",
    pa.schema([
        _f("reason", pa.string(), False, "a schemas.contract.Reason value"),
        _f("stage", pa.string(), False, "parse | validate | scrub | join | collect"),
        _f("detail", pa.string(), False, "what a producer must fix"),
        _f("event_id", pa.string(), doc="when it could be read"),
        *_SOURCE,
        _f("original", pa.binary(), False, "the original Kafka value, byte for byte"),
        _f("original_key", pa.binary()),
        _f("failed_at", TS, False),
        _f("date", pa.date32(), False, "partition: UTC date of failed_at"),
    ]),
    partition_by=("date",), keys=("source_topic", "source_partition", "source_offset"),
    description="every rejected input with a typed reason and its original bytes",
)

_DIMENSIONS = [
    _f("session_id", pa.string(), False),
    _f("task_id", pa.string(), False),
    _f("user_id", pa.string(), False),
    _f("agent_version", pa.string(), False),
    _f("prompt_variant", pa.string(), False),
    _f("task_type", pa.string()),
]

_COST = [
    _f("llm_calls", pa.int32(), False),
    _f("tool_calls", pa.int32(), False),
    _f("tool_errors", pa.int32(), False),
    _f("tokens_in", pa.int64(), False),
    _f("tokens_out", pa.int64(), False),
    _f("cost_usd", pa.float64(), False),
    _f("latency_ms", pa.float64(), False),
]

SILVER_STEPS = TableSpec(
    "silver", "steps",
    pa.schema([
        _f("step_id", pa.string(), False, "session_id/action_id"),
        _f("revision", pa.int32(), False, "0 when first closed; +1 for each late amendment"),
        *_DIMENSIONS,
        _f("action_id", pa.string(), False),
        _f("intent_id", pa.string()),
        _f("step_index", pa.int32(), False, "order of the action within its task"),
        _f("proposed_at", TS, False),
        _f("output", pa.string(), False, "the agent's user-visible output (scrubbed)"),
        _f("outcome", pa.string(), False, "accepted | rejected | edited | undone | retried | superseded | ignored"),
        _f("shown", pa.bool_(), False),
        _f("accepted", pa.bool_(), False),
        _f("rejected", pa.bool_(), False),
        _f("edited", pa.bool_(), False),
        _f("undone", pa.bool_(), False),
        _f("retried", pa.bool_(), False),
        _f("final_value", pa.string(), doc="what the user submitted after editing (scrubbed)"),
        _f("edit_distance", pa.float64(), doc="normalized Levenshtein distance output → final_value, 0..1"),
        _f("reaction_ms", pa.int64(), doc="from proposal to the first user reaction"),
        _f("next_action_ms", pa.int64(), doc="from proposal to the next meaningful user action"),
        *_COST,
        _POLICY_VERSION,
        _f("closed_reason", pa.string(), False, "terminal | next_action | task_end | timeout | late | reconciled"),
        _f("closed_at", TS, False),
        _f("date", pa.date32(), False, "partition: UTC date of proposed_at"),
    ]),
    partition_by=("date",), keys=("step_id", "revision"),
    description="one row per agent action with everything the user did about it; readers take the latest revision",
)

SILVER_EPISODES = TableSpec(
    "silver", "episodes",
    pa.schema([
        _f("episode_id", pa.string(), False, "session_id/task_id"),
        _f("revision", pa.int32(), False),
        *_DIMENSIONS,
        _f("started_at", TS, False),
        _f("ended_at", TS, False),
        _f("duration_ms", pa.int64(), False),
        _f("outcome", pa.string(), False, "completed | abandoned | escalated | reopened | timeout"),
        _f("n_steps", pa.int32(), False),
        _f("n_user_messages", pa.int32(), False),
        _f("accepted", pa.int32(), False),
        _f("rejected", pa.int32(), False),
        _f("edited", pa.int32(), False),
        _f("undone", pa.int32(), False),
        _f("retried", pa.int32(), False),
        _f("escalated", pa.bool_(), False),
        _f("delegated", pa.bool_(), False),
        _f("opted_out", pa.bool_(), False),
        _f("repeat_of_task_id", pa.string(), doc="the earlier task this one repeats (task_started's marker); null "
                                                 "when not a repeat"),
        _f("outcome_at", TS, doc="when the task first reached an end (its first completion, abandonment or "
                                 "escalation); null without one (a timeout)"),
        _f("opted_out_at", TS, doc="the user's latest opt-out in the task; null without one"),
        _f("reopened", pa.bool_(), False),
        _f("feedback_up", pa.int32(), False),
        _f("feedback_down", pa.int32(), False),
        _f("sla_seconds", pa.float64()),
        _f("agent_status", pa.string(), doc="status the agent reported at task_ended"),
        _f("external_reward", pa.float64(), doc="an outside grade (e.g. τ-bench's reward) when the agent reported one"),
        _f("kpi", pa.float64()),
        *_COST,
        _POLICY_VERSION,
        _f("closed_reason", pa.string(), False, "terminal | timeout | late | reconciled"),
        _f("closed_at", TS, False),
        _f("date", pa.date32(), False, "partition: UTC date of started_at"),
    ]),
    partition_by=("date",), keys=("episode_id", "revision"),
    description="one row per task: outcome, counts, cost and duration; readers take the latest revision",
)

_SEGMENT = [
    _f("agent_version", pa.string(), False),
    _f("prompt_variant", pa.string(), False),
    _f("task_type", pa.string(), False, "'unknown' when the events carried none"),
]

GOLD_STEP_SIGNALS = TableSpec(
    "gold", "step_signals",
    pa.schema([
        _f("step_id", pa.string(), False),
        _f("revision", pa.int32(), False, "the silver revision these signals were computed from"),
        _f("episode_id", pa.string(), False),
        _f("session_id", pa.string(), False),
        _f("task_id", pa.string(), False),
        _f("user_id", pa.string(), False),
        *_SEGMENT,
        _f("action_id", pa.string(), False),
        _f("intent_id", pa.string(), False, "the step's intent, or its action_id when it had none"),
        _f("step_index", pa.int32(), False),
        _f("proposed_at", TS, False),
        _f("outcome", pa.string(), False),
        _f("accepted", pa.bool_(), False),
        _f("rejected", pa.bool_(), False),
        _f("edited", pa.bool_(), False),
        _f("undone", pa.bool_(), False),
        _f("retried", pa.bool_(), False),
        _f("edit_distance", pa.float64(), doc="correction: normalised Levenshtein output → final value (edited steps)"),
        _f("overwritten", pa.bool_(), False, "correction: an edit that changed at least the spec's overwrite share"),
        _f("correction_penalty", pa.float64(), False, "correction: the spec's penalty of this step's outcome, 0..1"),
        _f("reaction_s", pa.float64(), doc="friction: proposal → first terminal reaction"),
        _f("next_action_s", pa.float64(), doc="friction: proposal → next meaningful user action"),
        _f("intent_attempt", pa.int32(), False, "friction: 1 for the first action of its intent, 2 for the next…"),
        _f("intent_retries", pa.int32(), False, "friction: retried reactions within this step's intent"),
        _f("dead_end", pa.bool_(), False, "friction: neither this nor any later action of the intent was kept"),
        _f("own_reward", pa.float64(), False, "the step's own signals as a score, 0..1"),
        _f("credit_share", pa.float64(), False, "its share of the episode composite (shares sum to it)"),
        _f("step_reward", pa.float64(), False, "own_weight × own_reward + (1 - own_weight) × credit_share"),
        _f("reward_version", pa.string(), False),
        _f("date", pa.date32(), False, "partition: UTC date of proposed_at"),
    ]),
    partition_by=("reward_version", "date"), keys=("step_id", "reward_version"),
    description="per-step heuristic signals and the process-supervision step reward",
)

GOLD_EPISODE_SCORES = TableSpec(
    "gold", "episode_scores",
    pa.schema([
        _f("episode_id", pa.string(), False),
        _f("revision", pa.int32(), False, "the silver revision these scores were computed from"),
        _f("session_id", pa.string(), False),
        _f("task_id", pa.string(), False),
        _f("user_id", pa.string(), False),
        *_SEGMENT,
        _f("started_at", TS, False),
        _f("week", pa.date32(), False, "Monday of the ISO week of started_at"),
        _f("outcome", pa.string(), False),
        _f("n_steps", pa.int32(), False),
        # correction
        _f("edit_distance", pa.float64(), doc="mean over edited steps"),
        _f("edit_rate", pa.float64(), doc="share of steps edited"),
        _f("overwrite_rate", pa.float64()),
        _f("undo_rate", pa.float64()),
        _f("accept_rate", pa.float64()),
        _f("reject_rate", pa.float64()),
        # friction
        _f("next_action_s", pa.float64(), doc="mean time to the next meaningful action"),
        _f("reaction_s", pa.float64()),
        _f("retry_rate", pa.float64()),
        _f("dead_end_rate", pa.float64()),
        # outcome
        _f("completed", pa.bool_(), False),
        _f("reopened", pa.bool_(), False),
        _f("duration_s", pa.float64(), False),
        _f("completion_time_s", pa.float64(), doc="duration of a completed episode"),
        _f("within_sla", pa.bool_(), doc="completed within sla_seconds × grace; null without an SLA or completion"),
        _f("sla_factor", pa.float64(), False),
        _f("external_reward", pa.float64()),
        # trust
        _f("escalated", pa.bool_(), False),
        _f("delegated", pa.bool_(), False),
        _f("repeat_task", pa.bool_(), False, "the task repeats an earlier one of the user (task_started's marker)"),
        _f("delegated_when_repeat", pa.bool_(), doc="delegated; null unless a repeat task"),
        _f("opted_out", pa.bool_(), False),
        _f("opted_out_after_poor", pa.bool_(), doc="null unless the outcome was poor (spec outcome.poor_outcomes): "
                                                   "an opt-out after the outcome, or in the user's next task"),
        # cost
        _f("cost_usd", pa.float64(), False),
        _f("tokens_in", pa.int64(), False),
        _f("tokens_out", pa.int64(), False),
        # scores
        _f("correction_score", pa.float64(), False),
        _f("friction_score", pa.float64(), False),
        _f("outcome_score", pa.float64(), False),
        _f("trust_score", pa.float64(), False),
        _f("gate_passed", pa.bool_(), False, "outcome correct (and the outside grade, when there is one)"),
        _f("composite", pa.float64(), False, "the reward: gated weighted sum of the four bucket scores, 0..1"),
        _f("reward_version", pa.string(), False),
        _f("date", pa.date32(), False, "partition: UTC date of started_at"),
    ]),
    partition_by=("reward_version", "date"), keys=("episode_id", "reward_version"),
    description="per-episode signals of the four buckets, bucket scores and the composite reward",
)

GOLD_SCORECARDS = TableSpec(
    "gold", "scorecards",
    pa.schema([
        _f("grain", pa.string(), False, "day | week"),
        _f("period_start", pa.date32(), False, "the day, or the Monday of the week"),
        *_SEGMENT,
        _f("metric", pa.string(), False),
        _f("bucket", pa.string(), False, "correction | friction | outcome | trust | reward | cost"),
        _f("better", pa.int8(), False, "+1 when higher is better, -1 when lower is"),
        _f("n", pa.int64(), False, "observations (steps or episodes that define the metric)"),
        _f("value", pa.float64(), doc="a rate or a mean"),
        _f("std", pa.float64()),
        _f("ci_low", pa.float64(), doc="confidence interval at the spec's ci_level, episodes as clusters (Wilson at "
                                          "the effective n for rates, Student's t for means)"),
        _f("ci_high", pa.float64()),
        _f("baseline_n", pa.int64()),
        _f("baseline_value", pa.float64()),
        _f("delta", pa.float64(), doc="value - baseline_value"),
        _f("z", pa.float64(), doc="the delta over its standard error with episodes as clusters (Welch's t)"),
        _f("significant", pa.bool_(), doc="|z| beyond Student's t at the spec's flag_level (the smaller side's "
                                          "episodes - 1 degrees of freedom) and both sides have min_n"),
        _f("regression", pa.bool_(), doc="significantly worse than the baseline"),
        _f("reward_version", pa.string(), False),
    ]),
    partition_by=("reward_version", "grain", "period_start"),
    keys=("grain", "period_start", "agent_version", "prompt_variant", "task_type", "metric", "reward_version"),
    description="every signal and the composite by day and week × agent_version × prompt_variant × task_type",
)

GOLD_GUARDRAILS = TableSpec(
    "gold", "guardrails",
    pa.schema([
        _f("check", pa.string(), False, "gaming | drift | regression"),
        _f("grain", pa.string(), False),
        _f("period_start", pa.date32(), False),
        *_SEGMENT,
        _f("metric", pa.string(), False, "the signal checked; '*' for a segment-wide verdict"),
        _f("statistic", pa.float64(), doc="PSI for drift, z for regression, proxies improved for gaming"),
        _f("threshold", pa.float64()),
        _f("flagged", pa.bool_(), False),
        _f("detail", pa.string(), False, "what was compared, as JSON"),
        _f("reward_version", pa.string(), False),
    ]),
    partition_by=("reward_version", "grain", "period_start"),
    keys=("check", "grain", "period_start", "agent_version", "prompt_variant", "task_type", "metric", "reward_version"),
    description="anti-gaming flags, week-over-week drift and regressions against the baseline",
)

GOLD_REVIEW_QUEUE = TableSpec(
    "gold", "review_queue",
    pa.schema([
        _f("episode_id", pa.string(), False),
        _f("week", pa.date32(), False),
        *_SEGMENT,
        _f("band", pa.string(), False, "composite band, e.g. [0.2, 0.5)"),
        _f("outcome", pa.string(), False),
        _f("composite", pa.float64(), False),
        _f("rank", pa.int32(), False, "order within the stratum (a keyed hash, so reruns pick the same)"),
        _f("stratum_size", pa.int64(), False),
        _f("weight", pa.float64(), False, "stratum_size / sampled: reweights reviews to the population"),
        _f("reward_version", pa.string(), False),
    ]),
    partition_by=("reward_version", "week"), keys=("episode_id", "reward_version"),
    description="a stratified sample of episodes for human review, to calibrate the heuristics",
)

AUDIT_ERASURES = TableSpec(
    "audit", "erasures",
    pa.schema([
        _f("erasure_id", pa.string(), False, "UUID of this run of `trajlake erase`"),
        _f("subject", pa.string(), False, "keyed digest of the user's pseudonym (privacy/erase.py): answers 'was "
                                          "this user erased?' for whoever holds the key, and names no one"),
        _f("matched_by", pa.string(), False, "raw_id (dead letters searched for it too) | pseudonym"),
        _f("requested_at", TS, False),
        _f("finished_at", TS, False),
        _f("tables", pa.list_(pa.struct([
            pa.field("table", pa.string()), pa.field("rows_deleted", pa.int64()),
            pa.field("files_removed", pa.int64())])), False, "every table and export looked at"),
        _f("rows_deleted", pa.int64(), False),
        _f("files_removed", pa.int64(), False, "data files vacuumed or rewritten"),
        _f("key_shredded", pa.bool_(), False, "the user's key was in the key store and is gone"),
        _f("policy_version", pa.string(), False, "privacy policy of the erase procedure"),
        _f("note", pa.string(), doc="the operator's note, scrubbed"),
    ]),
    partition_by=(), keys=("erasure_id",),
    description="one PII-free row per erase run: what was deleted, when, under which policy",
)

EXPORT_HOLDOUT = TableSpec(
    "exports", "holdout_registry",
    pa.schema([
        _f("group_by", pa.string(), False, "user | task | session"),
        _f("group_hash", pa.string(), False, "sha256 of the salted group key: names no one, survives erasure"),
        _f("export_name", pa.string(), False, "the export that first put the group in the holdout"),
        _f("export_version", pa.string(), False),
        _f("registered_at", TS, False),
    ]),
    partition_by=(), keys=("group_by", "group_hash"),
    description="the frozen holdout: once a group is here, every later export keeps it in the holdout split",
)

QUALITY_QUARANTINE = TableSpec(
    "quality", "quarantine",
    pa.schema([
        _f("run_id", pa.string(), False, "the quality run (quality/runner.py) that failed these rows"),
        _f("table", pa.string(), False, "the table (or export) the rows were bound for"),
        _f("suite", pa.string(), False, "the Great Expectations suite"),
        _f("expectation", pa.string(), False, "the expectation type the row failed"),
        _f("column", pa.string(), doc="the column (or derived check) it failed on"),
        _f("row_key", pa.string(), False, "the row's declared key columns as JSON"),
        _f("user_id", pa.string(), doc="the row's user pseudonym, when it has one: `trajlake erase` finds it here"),
        _f("row", pa.string(), doc="the whole row as JSON (already scrubbed: rows reach a suite after the scrubber); "
                                   "null for exports, whose content stays in the failed export directory"),
        _f("quarantined_at", TS, False),
        _f("date", pa.date32(), False, "day of quarantined_at"),
    ]),
    partition_by=("date",), keys=("run_id", "expectation", "column", "row_key"),
    description="rows that failed a quality suite before publishing, for inspection; nothing here was published",
)

# the tables the stream worker appends to (streams/sink.py writes them; compaction and the scheduler walk them)
STREAM_TABLES: tuple[TableSpec, ...] = (BRONZE_EVENTS, BRONZE_DEADLETTER, SILVER_STEPS, SILVER_EPISODES)

TABLES: dict[str, TableSpec] = {t.id: t for t in (
    BRONZE_EVENTS, BRONZE_DEADLETTER, SILVER_STEPS, SILVER_EPISODES,
    GOLD_STEP_SIGNALS, GOLD_EPISODE_SCORES, GOLD_SCORECARDS, GOLD_GUARDRAILS, GOLD_REVIEW_QUEUE,
    AUDIT_ERASURES, EXPORT_HOLDOUT, QUALITY_QUARANTINE,
)}

# the tables a Great Expectations suite checks (quality/suites.py, held to this by a test): the pipeline's layers,
# not the audit, registry and quarantine tables their own writers check. Here, not there, for what cannot import
# Great Expectations (the schedule file's checks, which the Airflow DAGs import)
CHECKED_TABLES: tuple[str, ...] = tuple(tid for tid, t in TABLES.items() if t.layer in ("bronze", "silver", "gold"))


_SPARK_TYPES = {
    pa.string(): "STRING", pa.large_string(): "STRING", pa.binary(): "BINARY", pa.bool_(): "BOOLEAN",
    pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INT", pa.int64(): "BIGINT",
    pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.date32(): "DATE", TS: "TIMESTAMP",
}


def spark_type(typ: pa.DataType) -> str:
    if pa.types.is_list(typ):
        return f"ARRAY<{spark_type(typ.value_type)}>"
    if pa.types.is_struct(typ):
        return "STRUCT<" + ", ".join(f"`{f.name}`: {spark_type(f.type)}" for f in typ) + ">"
    try:
        return _SPARK_TYPES[typ]
    except KeyError:
        raise TypeError(f"no Spark type declared for Arrow {typ}") from None


def spark_ddl(schema: pa.Schema) -> str:
    """The Spark DDL of an Arrow schema (pass it to StructType.fromDDL); nullability is carried too."""
    return ", ".join(
        f"`{f.name}` {spark_type(f.type)}{'' if f.nullable else ' NOT NULL'}" for f in schema
    )
