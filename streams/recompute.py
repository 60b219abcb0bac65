"""Batch recomputation of silver steps and episodes from bronze/events, and the stream/batch parity check."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

import orjson
import pyarrow as pa
from deltalake import write_deltalake

from lake.locks import outside_erase
from lake.readers import read_table
from lake.tables import ensure_table
from schemas.contract import Reason
from schemas.settings import Settings
from schemas.tables import BRONZE_DEADLETTER, BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS
from streams.ingest import clean_event
from streams.join import CONTENT_EXCLUDE, batch_join
from streams.sink import silver_row

ENVELOPE = ("event_id", "schema", "event_type", "session_id", "task_id", "user_id", "action_id", "intent_id",
            "agent_version", "prompt_variant", "task_type")


# the closed_reason of a row `trajlake reconcile` wrote (streams/reconcile.py): a task joined again in batch
RECONCILED = "reconciled"


def as_events(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """bronze/events rows back as contract events (as the join saw them on tl.events.clean)."""
    return [{**{k: r[k] for k in ENVELOPE}, "ts": r["ts"].astimezone(timezone.utc).isoformat(),
             "body": orjson.loads(r["body"]), "policy_version": r["policy_version"]} for r in rows]


def bronze_events(settings: Settings) -> list[dict[str, Any]]:
    """Every bronze/events row back as a contract event."""
    return as_events(read_table(settings, BRONZE_EVENTS).to_pylist())


def latest_revisions(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Each key's latest row: the highest revision, then (a key written twice at one revision, docs/design.md) the
    one closed later."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        have = out.get(r[key])
        if have is None or (r["revision"], r["closed_at"]) > (have["revision"], have["closed_at"]):
            out[r[key]] = r
    return out


@dataclass
class Parity:
    """Differences between what the stream wrote and a batch recomputation from bronze."""

    steps_only_stream: list[str]
    steps_only_batch: list[str]
    steps_differing: list[str]
    episodes_only_stream: list[str]
    episodes_only_batch: list[str]
    episodes_differing: list[str]
    steps: int
    episodes: int

    @property
    def ok(self) -> bool:
        return not any((self.steps_only_stream, self.steps_only_batch, self.steps_differing,
                        self.episodes_only_stream, self.episodes_only_batch, self.episodes_differing))


def refused_by_join(settings: Settings, reconciled: set[tuple[str, str]] = frozenset()) -> set[str]:
    """Ids of the events the stream's join refused (dead-lettered at stage "join": their session's state was full,
    or their task forgotten): they are in bronze/events but in no silver row the stream wrote. A forgotten task's
    events are in its rows again once `trajlake reconcile` joined it (`reconciled`: (session_id, task_id))."""
    rows = read_table(settings, BRONZE_DEADLETTER, columns=["stage", "reason", "event_id", "original"]).to_pylist()
    out = set()
    for r in rows:
        if r["stage"] != "join" or not r["event_id"]:
            continue
        if r["reason"] == Reason.task_forgotten.value and reconciled:
            e = clean_event(r["original"])
            if (e["session_id"], e["task_id"]) in reconciled:
                continue
        out.add(r["event_id"])
    return out


def check_parity(settings: Settings) -> Parity:
    """Compare the latest revision of every silver row with the same row recomputed in batch from bronze (less the
    events the stream's join refused and no reconciliation took in)."""
    silver_eps = latest_revisions(read_table(settings, SILVER_EPISODES).to_pylist(), "episode_id")
    silver_steps = latest_revisions(read_table(settings, SILVER_STEPS).to_pylist(), "step_id")
    # a task reconcile joined again: any of its latest rows is its (a late event can change a step alone)
    reconciled = {(r["session_id"], r["task_id"]) for rows in (silver_eps, silver_steps) for r in rows.values()
                  if r["closed_reason"] == RECONCILED}
    refused = refused_by_join(settings, reconciled)
    steps, episodes = batch_join(e for e in bronze_events(settings) if e["event_id"] not in refused)
    as_silver = lambda spec, rows: {k: content(v) for k, v in rows.items()}  # noqa: E731
    b_steps = {r["step_id"]: content(typed(SILVER_STEPS, r)) for r in steps}
    b_eps = {r["episode_id"]: content(typed(SILVER_EPISODES, r)) for r in episodes}
    s_steps = as_silver(SILVER_STEPS, silver_steps)
    s_eps = as_silver(SILVER_EPISODES, silver_eps)
    return Parity(
        sorted(set(s_steps) - set(b_steps)), sorted(set(b_steps) - set(s_steps)),
        sorted(k for k in set(s_steps) & set(b_steps) if s_steps[k] != b_steps[k]),
        sorted(set(s_eps) - set(b_eps)), sorted(set(b_eps) - set(s_eps)),
        sorted(k for k in set(s_eps) & set(b_eps) if s_eps[k] != b_eps[k]),
        len(b_steps), len(b_eps))


def typed(spec, row: dict[str, Any]) -> dict[str, Any]:
    """A join row as the sink would store it (times as datetimes, date as date), its revision fields blank."""
    return silver_row(spec)(orjson.dumps({**row, "closed_at": 0.0, "revision": 0, "closed_reason": ""}))


def content(row: dict[str, Any]) -> dict[str, Any]:
    """A silver row without its revision fields: what two revisions of a key are compared on."""
    return {k: v for k, v in row.items() if k not in CONTENT_EXCLUDE}


def silver_from_events(events: Iterable[dict[str, Any]], idle_events: int = 20_000
                       ) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """(steps, episodes) join rows, task by task, from a long stream of clean events in bounded memory.

    A task is joined once no event of it has arrived for `idle_events` events (sources interleave a bounded
    number of sessions, so their tasks finish well within that); an event of a task already joined is an error,
    never a silent second row.
    """
    open_: dict[tuple[str, str], list[dict[str, Any]]] = {}
    last_seen: dict[tuple[str, str], int] = {}
    done: set[tuple[str, str]] = set()
    for n, e in enumerate(events):
        key = (e["session_id"], e["task_id"])
        if key in done:
            raise ValueError(f"task {key} had an event after {idle_events} idle events; raise idle_events")
        open_.setdefault(key, []).append(e)
        last_seen[key] = n
        if n % 1000 == 999:
            idle = [k for k, seen in last_seen.items() if n - seen >= idle_events]
            if idle:
                yield batch_join([ev for k in idle for ev in open_.pop(k)])
                for k in idle:
                    del last_seen[k]
                done.update(idle)
    if open_:
        yield batch_join([ev for evs in open_.values() for ev in evs])


def write_silver(settings: Settings, events: Iterable[dict[str, Any]], rows_per_commit: int = 200_000,
                 closed_at: datetime | None = None) -> tuple[int, int]:
    """Batch-join `events` and append the rows to silver/steps and silver/episodes (revision 0); returns counts.

    The batch path to silver for backfills and benchmarks: the same join as the stream (stream/batch parity
    is tested), without the broker.
    """
    with outside_erase(settings.lake):  # a rebuild from bronze must not write back a user erased meanwhile
        return _write_silver(settings, events, rows_per_commit, closed_at)


def _write_silver(settings: Settings, events: Iterable[dict[str, Any]], rows_per_commit: int,
                  closed_at: datetime | None) -> tuple[int, int]:
    closed = (closed_at or datetime.now(timezone.utc)).timestamp()
    targets = [(SILVER_STEPS, silver_row(SILVER_STEPS), [], [0]), (SILVER_EPISODES, silver_row(SILVER_EPISODES), [], [0])]

    def flush(spec, pending: list[dict[str, Any]], count: list[int]) -> None:
        if pending:
            write_deltalake(ensure_table(settings, spec), pa.Table.from_pylist(pending, schema=spec.schema),
                            mode="append", partition_by=list(spec.partition_by))
            count[0] += len(pending)
            pending.clear()

    for joined in silver_from_events(events):
        for (spec, to_row, pending, count), rows in zip(targets, joined):
            pending.extend(to_row(orjson.dumps({**r, "revision": 0, "closed_reason": "terminal", "closed_at": closed}))
                           for r in rows)
            if len(pending) >= rows_per_commit:
                flush(spec, pending, count)
    for spec, _, pending, count in targets:
        flush(spec, pending, count)
    return targets[0][3][0], targets[1][3][0]


def bronze_through(settings: Settings, events: Iterable[dict[str, Any]], use_ner: bool = False,
                   rows_per_commit: int = 200_000) -> Iterator[dict[str, Any]]:
    """Scrub `events` with the worker's privacy policy, append them to bronze/events, and yield the scrubbed events
    (what the stream's join consumes), so `write_silver(s, bronze_through(s, events))` fills bronze and silver in
    one pass without the broker: the batch path for backfills, tests and benchmarks. NER is off by default
    (synthetic text carries no names); sealed user references are left empty."""
    from privacy import POLICY_VERSION
    from schemas.contract import ContractError, validate_event
    from privacy.scrub import EventScrubber, SessionDictionary
    from streams.ingest import SourceRecord, clean_record, now_iso
    from streams.sink import bronze_event_row

    scrubber = EventScrubber(settings.pseudonym_key.get_secret_value().encode(), use_ner=use_ner,
                             deny_terms=settings.scrub_deny_terms)
    contexts: dict[str, SessionDictionary] = {}
    table = ensure_table(settings, BRONZE_EVENTS)
    pending: list[dict[str, Any]] = []
    ingested = now_iso()

    def flush() -> None:
        if pending:
            write_deltalake(table, pa.Table.from_pylist(pending, schema=BRONZE_EVENTS.schema), mode="append",
                            partition_by=list(BRONZE_EVENTS.partition_by))
            pending.clear()

    for n, raw in enumerate(events):
        e = validate_event(raw)
        if isinstance(e, ContractError):
            raise ValueError(f"event {raw.get('event_id')} breaks the contract: {e.detail}")
        ctx = contexts.setdefault(e["session_id"], SessionDictionary())
        scrubber.learn_event(e, ctx)
        clean = scrubber.scrub_event(e, ctx)
        rec = SourceRecord(topic="batch", partition=0, offset=n, key=None, value=b"")
        pending.append(bronze_event_row(clean_record(clean, rec, ingested, POLICY_VERSION)))
        if len(pending) >= rows_per_commit:
            flush()
        yield {**clean, "policy_version": POLICY_VERSION}
    flush()
