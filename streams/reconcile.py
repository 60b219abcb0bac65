"""Late events the stream's join could not apply, applied in batch: their tasks joined again from bronze/events and
written to silver as new revisions (`trajlake reconcile`).

The stream's join keeps a closed task for `join_retention_seconds`, a marker of it for twice that, and then
nothing (docs/design.md, "A session's join state is bounded"). An event later than the retention is dead-lettered
(`task_forgotten`); one later than the marker starts a new task of the same ids, whose rows repeat the first rows'
keys at revision 0 (a reopen the next day). Either way the task's silver rows miss the event, though bronze/events
holds it with all the task's others. This job finds those tasks in a window of days (of the dead letters' and the
rows' writing, wall clock) and joins each again from all its events in bronze (the stream's own join,
`streams.join.batch_join`); a row whose content differs from its key's latest silver row is appended as that key's
next revision, `closed_reason = 'reconciled'`. Readers that take the latest revision then see the task as if every
event had come in time. A rerun finds the same content and writes nothing.

Only a settled task is joined again: none of its silver rows or dead letters newer than three join retentions and
the sinks' dedup window (`settled_before`). Until then the stream may still write it — a second task of the same
ids counts its own revisions from 0, and a row of the number this job took would be dropped by the silver sink as a
repeat (found in review) — and bronze may still lack its last events. A task deferred so is counted and taken by a
later run whose window holds its rows' writing.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

import duckdb
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import write_deltalake

from lake.locks import outside_erase, table_locks
from lake.readers import read_table, table_dataset
from lake.tables import ensure_table, open_table
from schemas.contract import Reason
from schemas.settings import Settings
from schemas.tables import BRONZE_DEADLETTER, BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS, TableSpec
from streams.ingest import clean_event
from streams.join import batch_join
from streams.recompute import RECONCILED, as_events, content, latest_revisions, typed
from streams.sink import silver_row

Task = tuple[str, str]      # (session_id, task_id)


@dataclass(frozen=True)
class Reconciled:
    """What a run found and wrote."""

    forgotten: int      # tasks with an event the join refused as forgotten, dead-lettered in the window
    repeated: int       # tasks with two silver episode rows at one revision, one of them written in the window
    steps: int          # step rows written (each its key's next revision)
    episodes: int       # episode rows written
    dry_run: bool = False
    deferred: int = 0   # of those tasks, the ones not settled yet (`settled_before`): a later run takes them


def _in_days(start: date, end: date) -> ds.Expression:
    return (ds.field("date") >= start) & (ds.field("date") < end)


def _utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def settled_before(settings: Settings, now: datetime) -> datetime:
    """A task with no silver row or dead letter written after this can no longer be written by the stream: its
    marker and its second task's are gone, the silver sink's dedup window has passed, bronze has its events."""
    return now - timedelta(seconds=3 * settings.join_retention_seconds + settings.dedup_window_seconds)


def forgotten_tasks(settings: Settings, start: date, end: date) -> dict[Task, tuple[datetime, date]]:
    """Tasks with an event the join refused as forgotten (`task_forgotten`), dead-lettered in [start, end): per
    task its latest letter's time and its events' earliest day."""
    rows = read_table(settings, BRONZE_DEADLETTER, columns=["original", "failed_at"], filter=_in_days(start, end)
                      & (ds.field("stage") == "join") & (ds.field("reason") == Reason.task_forgotten.value))
    out: dict[Task, tuple[datetime, date]] = {}
    for original, failed in zip(rows.column("original").to_pylist(), rows.column("failed_at").to_pylist()):
        e = clean_event(original)
        day = datetime.fromisoformat(e["ts"]).astimezone(timezone.utc).date()
        t = (e["session_id"], e["task_id"])
        last, first = out.get(t, (failed, day))
        out[t] = (max(last, failed), min(first, day))
    return out


def repeated_tasks(con: duckdb.DuckDBPyConnection, start: date, end: date) -> set[Task]:
    """Tasks with two silver episode rows at one revision (a task the join had forgotten entirely, started again
    by a late event), one of them written in [start, end) (wall clock: the late row's date is its task's start,
    which can be any day before)."""
    rows = con.execute("""
        SELECT session_id, task_id FROM ep
        WHERE episode_id IN (SELECT episode_id FROM ep WHERE closed_at >= ? AND closed_at < ?)
        GROUP BY session_id, task_id, revision HAVING count(*) > 1""", [_utc(start), _utc(end)]).fetchall()
    return {(s, t) for s, t in rows}


def task_rows(con: duckdb.DuckDBPyConnection, tasks: set[Task]) -> dict[Task, tuple[datetime, date, date]]:
    """Per task with silver episode rows: the latest row's writing, and the first and last of their days."""
    con.register("wanted", pa.table({"session_id": [s for s, _ in tasks], "task_id": [t for _, t in tasks]}))
    rows = con.execute("""
        SELECT session_id, task_id, max(closed_at), min(date), max(date) FROM ep
        SEMI JOIN wanted USING (session_id, task_id) GROUP BY ALL""").fetchall()
    return {(s, t): (last, first, final) for s, t, last, first, final in rows}


def refused_for_state(settings: Settings, ids: list[str]) -> set[str]:
    """Of `ids`, the events the join refused because their session's state was full: by design in no silver row."""
    rows = read_table(settings, BRONZE_DEADLETTER, columns=["event_id"],
                      filter=(ds.field("stage") == "join") & (ds.field("reason") == Reason.session_state_full.value)
                      & ds.field("event_id").isin(ids))
    return {i for i in rows.column("event_id").to_pylist() if i}


def _days(first: date, last: date) -> ds.Expression:
    return (ds.field("date") >= first) & (ds.field("date") <= last)


def task_events(settings: Settings, tasks: set[Task], first: date, last: date) -> list[dict[str, Any]]:
    """Every event of `tasks` in bronze/events dated in [first, last], less those refused for a full state."""
    sessions = sorted({s for s, _ in tasks})
    rows = read_table(settings, BRONZE_EVENTS, filter=_days(first, last)
                      & ds.field("session_id").isin(sessions)).to_pylist()
    rows = [r for r in rows if (r["session_id"], r["task_id"]) in tasks]
    refused = refused_for_state(settings, [r["event_id"] for r in rows])
    return [e for e in as_events(rows) if e["event_id"] not in refused]


def latest_rows(settings: Settings, spec: TableSpec, key: str, tasks: set[Task], first: date, last: date
                ) -> dict[str, dict[str, Any]]:
    """Per key of the tasks' silver rows dated in [first, last]: its latest row (`recompute.latest_revisions`: the
    highest revision, then the later closed), whose revision is the key's highest."""
    sessions = sorted({s for s, _ in tasks})
    rows = read_table(settings, spec, filter=_days(first, last) & ds.field("session_id").isin(sessions)).to_pylist()
    return latest_revisions([r for r in rows if (r["session_id"], r["task_id"]) in tasks], key)


def new_revisions(spec: TableSpec, key: str, rows: list[dict[str, Any]], have: dict[str, dict[str, Any]],
                  closed_at: float) -> list[dict[str, Any]]:
    """The silver rows to append: each joined row whose content differs from its key's latest row, as that key's
    next revision (0 for a key silver does not have)."""
    out = []
    for r in rows:
        latest = have.get(r[key])
        if latest is not None and content(typed(spec, r)) == content(latest):
            continue
        revision = 0 if latest is None else latest["revision"] + 1
        out.append(silver_row(spec)(orjson.dumps({**r, "revision": revision, "closed_reason": RECONCILED,
                                                  "closed_at": closed_at})))
    return out


def reconcile(settings: Settings, start: date, end: date, dry_run: bool = False,
              progress: Callable[[str], None] = lambda _: None, now: datetime | None = None) -> Reconciled:
    """Join again the settled tasks that late events left incomplete in silver (dead-lettered or repeated rows
    written in [start, end), wall clock) and append the rows that changed as new revisions."""
    # the erase lock, shared: a rebuild from bronze must not write back a user erased meanwhile; the silver
    # tables' publish locks: two runs at once (the schedule's and a manual one) read the same latest revisions and
    # both appended the next one, a repeated (key, revision) (found in review)
    with outside_erase(settings.lake, progress), \
            table_locks(settings.lake, [SILVER_STEPS.id, SILVER_EPISODES.id], progress):
        if open_table(settings, BRONZE_EVENTS) is None:
            return Reconciled(0, 0, 0, 0, dry_run)
        progress("finding tasks with late events")
        con = duckdb.connect()
        con.register("ep", table_dataset(settings, SILVER_EPISODES))
        forgotten, repeated = forgotten_tasks(settings, start, end), repeated_tasks(con, start, end)
        candidates = set(forgotten) | repeated
        rows = task_rows(con, candidates) if candidates else {}
        settled = settled_before(settings, now or datetime.now(timezone.utc))
        tasks: set[Task] = set()
        first, last = date.max, date.min
        for t in candidates:
            written, day0, day1 = rows.get(t, (None, None, None))
            letter, event_day = forgotten.get(t, (None, None))
            if any(w is not None and w >= settled for w in (written, letter)):
                continue  # the stream may still write it: a later run takes it
            tasks.add(t)
            days = [d for d in (day0, day1, event_day) if d is not None]
            first, last = min(first, *days), max(last, *days)
        deferred = len(candidates) - len(tasks)
        if not tasks:
            return Reconciled(len(forgotten), len(repeated), 0, 0, dry_run, deferred)
        # a task's events and rows lie between its start and its latest event: its rows' and letters' days, and
        # the margin the jobs read around a window for events that straddle midnight
        first -= timedelta(days=settings.job_margin_days)
        last += timedelta(days=settings.job_margin_days)
        progress(f"joining {len(tasks):,} tasks again from bronze/events ({first} … {last})")
        steps, episodes = batch_join(task_events(settings, tasks, first, last))
        closed_at = datetime.now(timezone.utc).timestamp()
        written_rows = []
        for spec, key, joined in ((SILVER_STEPS, "step_id", steps), (SILVER_EPISODES, "episode_id", episodes)):
            out = new_revisions(spec, key, joined, latest_rows(settings, spec, key, tasks, first, last), closed_at)
            if out and not dry_run:
                progress(f"appending {len(out):,} rows to {spec.id}")
                write_deltalake(ensure_table(settings, spec), pa.Table.from_pylist(out, schema=spec.schema),
                                mode="append", partition_by=list(spec.partition_by))
            written_rows.append(len(out))
        return Reconciled(len(forgotten), len(repeated), written_rows[0], written_rows[1], dry_run, deferred)
