"""The collector's pure core: write-key lookup, per-key token buckets, and a batch checked into produce / dead-letter."""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import orjson
from pydantic import SecretStr

from schemas.contract import ContractError, Reason, too_deep, validate_event
from streams.ingest import DeadLetter, now_iso

COLLECTOR_STAGE = "collect"


# ---- auth -------------------------------------------------------------------------------------------
def app_for_key(presented: str | None, keys: Mapping[str, SecretStr]) -> str | None:
    """The app whose write key was presented, or None.

    Every configured key is compared, with hmac.compare_digest, whatever matched before: the time taken says
    neither which key nor how much of one was right."""
    if not presented:
        return None
    given = presented.encode()
    found = None
    for app, key in keys.items():
        if hmac.compare_digest(given, key.get_secret_value().encode()):
            found = app
    return found


def presented_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The write key from `Authorization: Bearer …`, `X-Trajlake-Key`, or `?key=` (sendBeacon cannot set headers)."""
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("X-Trajlake-Key") or query.get("key") or None


# ---- rate limit --------------------------------------------------------------------------------------
@dataclass(slots=True)
class Bucket:
    """A token bucket: `tokens` left at time `at` (monotonic seconds)."""

    tokens: float
    at: float


def take(bucket: Bucket | None, n: int, now: float, rate: float, burst: int) -> tuple[Bucket, float]:
    """Take n tokens (events) from a bucket refilled at `rate`/s up to `burst`.

    Returns the new bucket and 0 when allowed, else the bucket unchanged (refilled) and the seconds to wait
    before n tokens are there. A batch larger than the burst can never pass: the wait is then infinite."""
    if bucket is None:
        bucket = Bucket(float(burst), now)
    tokens = min(float(burst), bucket.tokens + (now - bucket.at) * rate)
    if n <= tokens:
        return Bucket(tokens - n, now), 0.0
    if n > burst:
        return Bucket(tokens, now), float("inf")
    return Bucket(tokens, now), (n - tokens) / rate


# ---- batches -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid event bound for its raw topic."""

    index: int
    event_id: str
    family: str  # frontend | agent → <prefix><family>.raw
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event refused at the door; `dead` is what the dead-letter topic keeps of it."""

    index: int
    event_id: str | None
    reason: str
    detail: str
    dead: DeadLetter


@dataclass(frozen=True, slots=True)
class Limits:
    max_event_bytes: int
    max_batch_events: int


@dataclass(frozen=True, slots=True)
class BatchError:
    """The request as a whole is unusable (not JSON, not a batch, too many events)."""

    status: int
    reason: str
    detail: str
    dead: DeadLetter | None = None  # an undecodable body is still kept


@dataclass(slots=True)
class Checked:
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def results(self) -> list[dict[str, Any]]:
        """Per-event answers in request order."""
        out: list[dict[str, Any]] = [{"index": a.index, "event_id": a.event_id, "status": "accepted"}
                                     for a in self.accepted]
        out += [{"index": r.index, "event_id": r.event_id, "status": "rejected", "reason": r.reason,
                 "detail": r.detail} for r in self.rejected]
        return sorted(out, key=lambda r: r["index"])


def source_topic(app: str, path: str = "/v1/events") -> str:
    """What a dead letter from the collector names as its source (no Kafka topic has it)."""
    return f"collector:{app}:{path}"


def collector_dead_letter(app: str, error: ContractError, original: bytes, key: bytes | None,
                          event_id: str | None, path: str = "/v1/events") -> DeadLetter:
    """A dead letter for input refused at the HTTP door.

    It never had Kafka coordinates, so partition -1 and an offset made from a hash of (app, bytes): bronze/deadletter
    dedups by (source_topic, partition, offset), so a client retrying the same batch does not store it twice."""
    digest = hashlib.blake2b(app.encode() + b"\0" + original, digest_size=8).digest()
    offset = int.from_bytes(digest, "big") & (2**63 - 1)
    return DeadLetter(error.reason.value, COLLECTOR_STAGE, error.detail, event_id, source_topic(app, path), -1, offset,
                      original, key, now_iso())


def decode_batch(body: bytes, app: str, limits: Limits) -> list[Any] | BatchError:
    """A request body → its list of items: a JSON array of events, or {"events": [...]}."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        detail = f"the body is not valid JSON: {exc}"
        return BatchError(400, Reason.invalid_json.value, detail,
                          collector_dead_letter(app, ContractError(Reason.invalid_json, detail), body, None, None))
    items = doc.get("events") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        detail = 'send a JSON array of events, or {"events": [...]}'
        return BatchError(400, Reason.not_an_object.value, detail,
                          collector_dead_letter(app, ContractError(Reason.not_an_object, detail), body, None, None))
    if len(items) > limits.max_batch_events:
        return BatchError(413, "batch_too_large",
                          f"{len(items)} events in one request; send at most {limits.max_batch_events} per request")
    return items


def check_batch(items: Iterable[Any], app: str, limits: Limits, path: str = "/v1/events") -> Checked:
    """Each item → Accepted (valid, stamped with the key's app) or Rejected (with its dead letter).

    Validation is the contract's own (schemas.contract.validate_event, the worker's too); the collector adds only
    what the door knows: the event's size and that it belongs to the app whose key sent it."""
    out = Checked()
    for i, item in enumerate(items):
        try:
            value = orjson.dumps(item)
        except TypeError:  # nested deeper than orjson writes (255 levels): too_deep refuses it below
            value = json.dumps(item).encode()
        event_id = _peek(item, "event_id")
        key = _peek(item, "session_id")
        key_bytes = key.encode() if key else None

        def reject(reason: Reason, detail: str) -> None:
            out.rejected.append(Rejected(i, event_id, reason.value, detail,
                                         collector_dead_letter(app, ContractError(reason, detail), value, key_bytes,
                                                               event_id, path)))

        if len(value) > limits.max_event_bytes:
            reject(Reason.event_too_large, f"the event is {len(value)} bytes; the limit is {limits.max_event_bytes}")
            continue
        checked = too_deep(value, item) or validate_event(item)
        if isinstance(checked, ContractError):
            reject(checked.reason, checked.detail)
            continue
        client = checked.get("client") or {}
        if client.get("app", app) != app:
            reject(Reason.wrong_app, f"client.app is {client['app']!r} but the write key is {app!r}'s; "
                                     f"use that app's key or drop client.app")
            continue
        if "app" not in client:  # the key names the app; the stamped event still satisfies the contract
            checked = {**checked, "client": {**client, "app": app}}
            value = orjson.dumps(checked)
        out.accepted.append(Accepted(i, checked["event_id"], checked["schema"].split("/")[0],
                                     checked["session_id"].encode(), value))
    return out


def _peek(item: Any, name: str) -> str | None:
    v = item.get(name) if isinstance(item, dict) else None
    return v if isinstance(v, str) and v else None
