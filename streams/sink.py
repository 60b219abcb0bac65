"""The Delta sink: topic records become table rows, committed exactly once per (group, topic, partition) offset."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import unquote

import orjson
import pyarrow as pa
import pyarrow.dataset as ds

from lake.readers import files_dataset, table_dataset
from privacy import LEGACY_POLICY_VERSION
from lake.tables import ensure_table, table_path
from lake.writer import app_id, append_exactly_once, committed_offset
from schemas.contract import parse_timestamp
from schemas.settings import Settings
from schemas.tables import BRONZE_DEADLETTER, BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS, TableSpec
from streams.ingest import DeadLetter

ENVELOPE_COLUMNS = ("event_id", "schema", "event_type", "session_id", "task_id", "user_id", "action_id",
                    "intent_id", "agent_version", "prompt_variant", "task_type")


def _utc(ts: str) -> datetime:
    return parse_timestamp(ts).astimezone(timezone.utc)


def bronze_event_row(value: bytes) -> dict[str, Any]:
    """A tl.events.clean value → a bronze/events row."""
    msg = orjson.loads(value)
    e, src = msg["event"], msg["source"]
    ts = _utc(e["ts"])
    row = {c: e.get(c) for c in ENVELOPE_COLUMNS}
    # a record from a worker older than recorded policy versions was scrubbed by privacy-1, the only policy then
    row.update(ts=ts, client_app=(e.get("client") or {}).get("app"),
               body=orjson.dumps(e["body"]).decode(), policy_version=msg.get("policy_version") or LEGACY_POLICY_VERSION,
               user_ref=msg.get("user_ref"), source_topic=src["topic"],
               source_partition=src["partition"], source_offset=src["offset"],
               ingested_at=_utc(msg["ingested_at"]), date=ts.date())
    return row


def deadletter_row(value: bytes) -> dict[str, Any]:
    """A tl.deadletter value → a bronze/deadletter row."""
    d = DeadLetter.from_json(value)
    failed = _utc(d.failed_at)
    return {"reason": d.reason, "stage": d.stage, "detail": d.detail, "event_id": d.event_id,
            "source_topic": d.source_topic, "source_partition": d.source_partition,
            "source_offset": d.source_offset, "original": d.original, "original_key": d.original_key,
            "failed_at": failed, "date": failed.date()}


def silver_row(spec: TableSpec) -> Callable[[bytes], dict[str, Any]]:
    """A tl.steps / tl.episodes value (a join row: epoch-ms times, wall-clock closed_at) → a silver row."""
    ms_columns = [f.name for f in spec.schema if pa.types.is_timestamp(f.type) and f.name != "closed_at"]

    def to_row(value: bytes) -> dict[str, Any]:
        row = orjson.loads(value)
        for c in ms_columns:
            if (ms := row.get(c)) is not None:  # outcome_at and opted_out_at may be null
                row[c] = datetime.fromtimestamp(ms / 1000, timezone.utc)
        row["closed_at"] = datetime.fromtimestamp(row["closed_at"], timezone.utc)
        row["date"] = datetime.strptime(row["date"], "%Y-%m-%d").date()
        return row

    return to_row


@dataclass(frozen=True)
class SinkTarget:
    """What a sink topic writes: the table, how a record becomes a row, and which column dates a row for dedup."""

    spec: TableSpec
    to_row: Callable[[bytes], dict[str, Any]]
    recency_column: str


SINK_TARGETS = {
    "events.clean": SinkTarget(BRONZE_EVENTS, bronze_event_row, "ingested_at"),
    "deadletter": SinkTarget(BRONZE_DEADLETTER, deadletter_row, "failed_at"),
    "steps": SinkTarget(SILVER_STEPS, silver_row(SILVER_STEPS), "closed_at"),
    "episodes": SinkTarget(SILVER_EPISODES, silver_row(SILVER_EPISODES), "closed_at"),
}
BRONZE_TARGETS = {k: SINK_TARGETS[k] for k in ("events.clean", "deadletter")}


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes


def by_bytes(records: list[Record], max_bytes: int) -> list[list[Record]]:
    """`records` in order, in runs whose values add up to at most `max_bytes` (a record larger than that is a
    run of its own): one Delta commit each, so a batch of large records is never held and written at once."""
    runs: list[list[Record]] = []
    run: list[Record] = []
    size = 0
    for r in records:
        if run and size + len(r.value) > max_bytes:
            runs.append(run)
            run, size = [], 0
        run.append(r)
        size += len(r.value)
    if run:
        runs.append(run)
    return runs


PRUNE_FROM = 1024  # keys in the dedup set below which it is never pruned


class DeltaSinkWriter:
    """Writes micro-batches of one topic's records into one Delta table, exactly once.

    Offsets: each commit records, per source partition, the last offset it covers (a Delta app transaction);
    records at or below the committed offset are skipped, so Kafka redelivery after a crash writes nothing twice.
    Keys: an upstream retry can put the same row on the topic twice at different offsets; rows whose declared
    key was written within `dedup_window_seconds` are skipped too. The keys are seeded from the table at start,
    and taken in from every file another writer commits after that: a worker that owned these partitions before
    a handover, whose rows a restored join outbox may send again, to this writer now.
    """

    def __init__(self, settings: Settings, target: SinkTarget, group: str):
        self.settings, self.target, self.group = settings, target, group
        self.table = ensure_table(settings, target.spec)
        self.window = timedelta(seconds=settings.dedup_window_seconds)
        self.recent: dict[tuple, datetime] = {}
        self.prune_at = PRUNE_FROM
        self.commits = 0
        # the table version whose rows `recent` has taken in: all of them at start (within the window)
        self.version = self.table.version()
        self._take_in_keys(self.table.file_uris())

    def _take_in_commits(self, first: int, last: int) -> None:
        """Take in the keys of the rows added by versions `first`…`last` (other writers' commits), read from the
        Delta log's entries for them: the cost is in the new commits, not in the table's files."""
        if first > last:
            return
        log_dir = table_path(self.settings, self.target.spec) / "_delta_log"
        uris = []
        for v in range(first, last + 1):
            entry = log_dir / f"{v:020d}.json"
            if not entry.exists():  # the log was cleaned up past a checkpoint: take in every live file
                self._take_in_keys(self.table.file_uris())
                return
            for line in entry.read_bytes().splitlines():
                add = orjson.loads(line).get("add")
                if add is not None:
                    uris.append(str(log_dir.parent / unquote(add["path"])))
        self._take_in_keys(uris)

    def _take_in_keys(self, uris: list[str]) -> None:
        if not uris:
            return
        keys = list(self.target.spec.keys)
        since = datetime.now(timezone.utc) - self.window
        col = self.target.recency_column
        # the recency filter skips a file's row groups by their statistics: an old compacted file costs no read
        t = files_dataset(self.settings, self.target.spec, sorted(uris)).to_table(
            columns=keys + [col], filter=ds.field(col) >= pa.scalar(since, pa.timestamp("us", tz="UTC")))
        for row in zip(*(t.column(k).to_pylist() for k in keys), t.column(col).to_pylist()):
            self.recent.setdefault(tuple(row[:-1]), row[-1])

    def _expire(self, now: datetime) -> None:
        """Forget keys older than the dedup window, each time the set has doubled since the last pass (so a
        pass costs O(1) per key added, and the set stays within twice what the window holds)."""
        if len(self.recent) >= self.prune_at:
            horizon = now - self.window
            self.recent = {k: t for k, t in self.recent.items() if t >= horizon}
            self.prune_at = max(PRUNE_FROM, 2 * len(self.recent))

    def commit(self, records: list[Record]) -> tuple[int, int]:
        """Write what is new in `records`; returns (rows written, records skipped as already written)."""
        self.table.update_incremental()
        self._take_in_commits(self.version + 1, self.table.version())
        self.version = self.table.version()
        apps = {(r.topic, r.partition) for r in records}
        committed = {a: committed_offset(self.table, app_id(self.group, *a)) for a in apps}
        rows: list[dict[str, Any]] = []
        last: dict[str, int] = {}
        skipped = 0
        keys = self.target.spec.keys
        now = datetime.now(timezone.utc)
        for r in records:
            if r.offset <= committed[(r.topic, r.partition)]:
                skipped += 1
                continue
            app = app_id(self.group, r.topic, r.partition)
            last[app] = max(last.get(app, -1), r.offset)
            row = self.target.to_row(r.value)
            key = tuple(row[k] for k in keys)
            if key in self.recent:
                skipped += 1
                continue
            self.recent[key] = now
            rows.append(row)
        if not last:
            return 0, skipped
        batch = pa.Table.from_pylist(rows, schema=self.target.spec.schema)
        mine = append_exactly_once(self.table, self.target.spec, batch, last)
        if mine is not None:  # others' commits before and after this one's, if any
            self._take_in_commits(self.version + 1, mine - 1)
            self._take_in_commits(mine + 1, self.table.version())
            self.version = self.table.version()
        self.commits += 1
        if self.settings.crash_after_commits and self.commits >= self.settings.crash_after_commits:
            os._exit(137)  # fault injection: die between the Delta commit and the Kafka offset commit
        self._expire(now)
        return len(rows), skipped


def count_rows(settings: Settings, spec: TableSpec) -> int:
    return table_dataset(settings, spec).count_rows()


def count_present(settings: Settings, spec: TableSpec, column: str, values: list[str]) -> int:
    """How many distinct `values` of `column` the table holds."""
    t = table_dataset(settings, spec).to_table(columns=[column], filter=ds.field(column).isin(values))
    return len(set(t.column(column).to_pylist()))


def wait_for_rows(settings: Settings, spec: TableSpec, expected: int, timeout: float,
                  on_progress: Callable[[int], None] | None = None) -> int:
    """Poll a table until it holds `expected` rows (or the timeout passes); returns the last count."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n = count_rows(settings, spec)
        if on_progress:
            on_progress(n)
        if n >= expected:
            return n
        time.sleep(0.5)
    return n


__all__ = ["count_present", "BRONZE_TARGETS", "SINK_TARGETS", "silver_row", "DeltaSinkWriter", "Record", "bronze_event_row", "by_bytes", "deadletter_row", "wait_for_rows",
           "count_rows"]
