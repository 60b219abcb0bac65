"""Ingest as pure functions: a raw Kafka record becomes a valid event or a typed dead letter; clean records for tl.events.clean."""
from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from privacy import LEGACY_POLICY_VERSION
from schemas.contract import ContractError, Reason, parse_event


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """Where a record came from, and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected input: typed reason, the stage that rejected it, its source coordinates and original bytes."""

    reason: str
    stage: str
    detail: str
    event_id: str | None
    source_topic: str
    source_partition: int
    source_offset: int
    original: bytes
    original_key: bytes | None
    failed_at: str

    def to_json(self) -> bytes:
        d = asdict(self)
        d["original"] = base64.b64encode(self.original).decode()
        d["original_key"] = None if self.original_key is None else base64.b64encode(self.original_key).decode()
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes) -> "DeadLetter":
        d = orjson.loads(raw)
        d["original"] = base64.b64decode(d["original"])
        d["original_key"] = None if d["original_key"] is None else base64.b64decode(d["original_key"])
        return cls(**d)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def dead_letter(rec: SourceRecord, error: ContractError, stage: str, event_id: str | None = None) -> DeadLetter:
    return DeadLetter(error.reason.value, stage, error.detail, event_id, rec.topic, rec.partition, rec.offset,
                      rec.value, rec.key, now_iso())


def check_record(rec: SourceRecord, family_of_topic: dict[str, str]) -> dict[str, Any] | DeadLetter:
    """Parse and validate one raw record; an event must also arrive on its family's topic."""
    result = parse_event(rec.value)
    if isinstance(result, ContractError):
        stage = "parse" if result.reason in (Reason.invalid_json,) else "validate"
        return dead_letter(rec, result, stage, _peek_event_id(rec.value))
    expected = family_of_topic.get(rec.topic)
    family = result["schema"].split("/")[0]
    if expected is not None and family != expected:
        return dead_letter(rec, ContractError(Reason.wrong_topic, f"a {result['schema']} event arrived on {rec.topic}; "
                                              f"send {family} events to the {family}.raw topic"), "validate",
                           result["event_id"])
    return result


def _peek_event_id(raw: bytes) -> str | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    eid = value.get("event_id") if isinstance(value, dict) else None
    return eid if isinstance(eid, str) else None


def clean_record(event: dict[str, Any], rec: SourceRecord, ingested_at: str, policy_version: str,
                 user_ref: str | None = None) -> bytes:
    """The tl.events.clean value: the scrubbed event, the privacy policy that scrubbed it, the user's sealed
    reference, and where it came from."""
    return orjson.dumps({"event": event, "policy_version": policy_version, "user_ref": user_ref,
                         "source": {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
                         "ingested_at": ingested_at})


def clean_event(value: bytes) -> dict[str, Any]:
    """A tl.events.clean value → the event as the join folds it: the scrubbed event with its policy version.

    A record without one was written before versions were recorded, and so scrubbed by privacy-1: the version
    its bronze row gets too (`streams.sink.bronze_event_row`), or the stream's steps and episodes would say
    "unrecorded" where a recomputation from bronze says privacy-1."""
    msg = orjson.loads(value)
    return {**msg["event"], "policy_version": msg.get("policy_version") or LEGACY_POLICY_VERSION}
