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

_SOURCE = [
    _f("source_topic", pa.string(), False),
    _f("source_partition", pa.int32(), False),
    _f("source_offset", pa.int64(), False),
]

BRONZE_EVENTS = TableSpec(
    "bronze", "events",
    pa.schema(_ENVELOPE + [
        _f("body", pa.string(), False, "the type-specific body as JSON, after scrubbing"),
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
        _f("stage", pa.string(), False, "parse | validate | scrub | ..."),
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
        _f("closed_reason", pa.string(), False, "terminal | next_action | task_end | timeout | late"),
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
        _f("reopened", pa.bool_(), False),
        _f("feedback_up", pa.int32(), False),
        _f("feedback_down", pa.int32(), False),
        _f("sla_seconds", pa.float64()),
        _f("agent_status", pa.string(), doc="status the agent reported at task_ended"),
        _f("external_reward", pa.float64(), doc="an outside grade (e.g. τ-bench's reward) when the agent reported one"),
        _f("kpi", pa.float64()),
        *_COST,
        _f("closed_reason", pa.string(), False, "terminal | timeout | late"),
        _f("closed_at", TS, False),
        _f("date", pa.date32(), False, "partition: UTC date of started_at"),
    ]),
    partition_by=("date",), keys=("episode_id", "revision"),
    description="one row per task: outcome, counts, cost and duration; readers take the latest revision",
)

TABLES: dict[str, TableSpec] = {t.id: t for t in (BRONZE_EVENTS, BRONZE_DEADLETTER, SILVER_STEPS, SILVER_EPISODES)}


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
