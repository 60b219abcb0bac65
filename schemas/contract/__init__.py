"""The event contract: load the versioned JSON Schema and turn raw bytes into a valid event or a typed error."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

CONTRACT_DIR = Path(__file__).parent
CURRENT_VERSION = 1
FAMILIES = ("frontend", "agent")


class Reason(str, Enum):
    """Why an event was rejected; stored as text in the dead-letter table."""

    invalid_json = "invalid_json"
    not_an_object = "not_an_object"
    unknown_schema = "unknown_schema"
    schema_violation = "schema_violation"
    bad_timestamp = "bad_timestamp"
    wrong_topic = "wrong_topic"
    scrub_failed = "scrub_failed"
    # the join's: a session's state is at join_state_max_bytes; a task was forgotten after join_retention_seconds
    session_state_full = "session_state_full"
    task_forgotten = "task_forgotten"
    # the collector's own (streams/collector/): checked at the HTTP door, before the raw topics
    event_too_large = "event_too_large"
    wrong_app = "wrong_app"


@dataclass(frozen=True, slots=True)
class ContractError:
    """A rejected event: a typed reason and a sentence a producer can act on."""

    reason: Reason
    detail: str


@cache
def contract_schema(version: int = CURRENT_VERSION) -> dict[str, Any]:
    return json.loads((CONTRACT_DIR / f"events-v{version}.json").read_text())


@cache
def _validator(version: int = CURRENT_VERSION):
    return fastjsonschema.compile(contract_schema(version))


_DISPATCH_KEYS = frozenset({"schema", "event_type"})


@cache
def _validator_for(schema_tag: str, event_type: str, version: int = CURRENT_VERSION):
    """The contract specialised to one (schema, event_type): the envelope plus only the `then` branches whose
    `if` holds for that pair, compiled once.

    The full validator evaluates every `if` of the contract's `allOf` for every event; an event's schema and type
    pick its branches, so this one checks the same rules in the same order and rejects with the same message, at
    about a seventh of the cost (bench/validate_cost.py). A branch whose `if` reads anything other than the schema tag
    and the event type cannot be decided ahead, so such a contract is not specialised (returns None).
    """
    schema = contract_schema(version)
    keep = []
    probe = {"schema": schema_tag, "event_type": event_type}
    for rule in schema.get("allOf", []):
        cond = rule.get("if")
        if cond is None or set(cond) - {"properties", "required"} or set(cond.get("properties", {})) - _DISPATCH_KEYS \
                or set(cond.get("required", [])) - _DISPATCH_KEYS or set(rule) - {"if", "then"}:
            return None
        try:
            fastjsonschema.compile(cond)(probe)
        except fastjsonschema.JsonSchemaValueException:
            continue
        if "then" in rule:
            keep.append(rule["then"])
    specialised = {k: v for k, v in schema.items() if k != "allOf"}
    if keep:
        specialised["allOf"] = keep
    return fastjsonschema.compile(specialised)


def _validator_of(event: dict[str, Any]):
    tag, etype = event.get("schema"), event.get("event_type")
    if isinstance(etype, str) and etype in event_types():
        v = _validator_for(tag, etype)
        if v is not None:
            return v
    return _validator()  # an unknown or malformed type: the full contract words the error


@cache
def event_types(family: str | None = None, version: int = CURRENT_VERSION) -> tuple[str, ...]:
    """Event types of the contract, optionally of one family (frontend or agent)."""
    schema = contract_schema(version)
    if family is None:
        return tuple(schema["properties"]["event_type"]["enum"])
    for rule in schema["allOf"]:
        if rule["if"]["properties"].get("schema", {}).get("const") == f"{family}/{version}":
            return tuple(rule["then"]["properties"]["event_type"]["enum"])
    raise KeyError(family)


def validate_event(event: Any) -> dict[str, Any] | ContractError:
    """Check a decoded event against the contract; return it unchanged or say why not."""
    if not isinstance(event, dict):
        return ContractError(Reason.not_an_object, f"an event must be a JSON object, got {type(event).__name__}")
    schema_tag = event.get("schema")
    if not isinstance(schema_tag, str) or "/" not in schema_tag:
        return ContractError(Reason.unknown_schema, f"'schema' must be one of frontend/1, agent/1; got {schema_tag!r}")
    family, _, version = schema_tag.partition("/")
    if family not in FAMILIES or version != str(CURRENT_VERSION):
        return ContractError(Reason.unknown_schema, f"unknown contract {schema_tag!r}: this ingest speaks frontend/1 and agent/1")
    try:
        _validator_of(event)(event)
    except fastjsonschema.JsonSchemaValueException as exc:
        where = (exc.name or "data").replace("data", "event", 1)
        return ContractError(Reason.schema_violation, f"{where}: {exc.message.replace(exc.name or 'data', '', 1).strip()}")
    try:
        ts = parse_timestamp(event["ts"])
    except ValueError as exc:
        return ContractError(Reason.bad_timestamp, f"event.ts {event['ts']!r} is not RFC 3339: {exc}")
    if not 2000 <= ts.year <= 2100:
        return ContractError(Reason.bad_timestamp, f"event.ts {event['ts']!r} is outside 2000..2100")
    return event


# How deep an event's JSON may nest. orjson reads up to 1,024 levels but writes only 255, and the worker writes
# every event again (its clean record, its bronze body): a contract-valid event with 300 levels of `attributes`
# stopped the ingest agent on every restart. JSON Schema cannot say this, so parse_event does.
MAX_NESTING = 64


def nesting(value: Any) -> int:
    """How many levels of objects and arrays `value` has (0 for a scalar)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def parse_event(raw: bytes | str) -> dict[str, Any] | ContractError:
    """Decode one raw Kafka value and validate it against the contract."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return ContractError(Reason.invalid_json, f"not valid JSON: {exc}")
    return too_deep(raw, event) or validate_event(event)


def too_deep(raw: bytes | str, event: Any) -> ContractError | None:
    """The error for an event (decoded from `raw`) that nests deeper than MAX_NESTING, else None."""
    # counting brackets is cheap; only a value with enough of them can nest too deep
    opens = raw.count(b"{") + raw.count(b"[") if isinstance(raw, bytes) else raw.count("{") + raw.count("[")
    if opens <= MAX_NESTING:
        return None
    depth = nesting(event)
    if depth <= MAX_NESTING:
        return None
    return ContractError(Reason.schema_violation,
                         f"event nests {depth} levels of objects and arrays; the contract allows at most {MAX_NESTING}")


def parse_timestamp(ts: str) -> datetime:
    """An RFC 3339 timestamp as the contract reads it (a "Z" or "z" for UTC, which Python's parser refuses)."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00").replace("z", "+00:00"))


def event_timestamp(event: dict[str, Any]) -> datetime:
    """The event's ts as an aware datetime (validated events only)."""
    return parse_timestamp(event["ts"])
