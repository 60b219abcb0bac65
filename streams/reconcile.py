"""Late events the stream's join could not apply, applied in batch: their tasks joined again from bronze/events and
written to silver as new revisions (`trajlake reconcile`).

The stream's join keeps a closed task for `join_retention_seconds`, a marker of it for twice that, and then
nothing (docs/design.md, "A session's join state is bounded"). An event later than the retention is dead-lettered
(`task_forgotten`); one later than the marker starts a new task of the same ids, whose rows repeat the first rows'
keys at revision 0 (a reopen the next day). Either way the task's silver rows miss the event, though bronze/events
holds it with all the task's others. This job finds those tasks in a window of days and joins each again from all
its events in bronze (the stream's own join, `streams.join.batch_join`); a row whose content differs from its
key's latest silver row is appended as that key's next revision, `closed_reason = 'reconciled'`. Readers that take
the latest revision then see the task as if every event had come in time. A rerun finds the same content and
writes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Callable

import duckdb
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import write_deltalake

from lake.locks import outside_erase
from lake.readers import read_table, table_dataset
from lake.tables import ensure_table, open_table
from schemas.contract import Reason
from schemas.settings import Settings
from schemas.tables import BRONZE_DEADLETTER, BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS, TableSpec
from streams.ingest import clean_event
from streams.join import batch_join
from streams.recompute import RECONCILED, as_events, content, typed
from streams.sink import silver_row

Task = tuple[str, str]      # (session_id, task_id)


@dataclass(frozen=True)
class Reconciled:
    """What a run found and wrote."""

    forgotten: int      # tasks with an event the join refused as forgotten, dead-lettered in the window
    repeated: int       # tasks with two silver episode rows at one revision, one of them dated in the window
    steps: int          # step rows written (each its key's next revision)
    episodes: int       # episode rows written
    dry_run: bool = False


def _in_days(start: date, end: date) -> ds.Expression:
    return (ds.field("date") >= start) & (ds.field("date") < end)


def forgotten_tasks(settings: Settings, start: date, end: date) -> set[Task]:
    """Tasks with an event the join refused as forgotten (`task_forgotten`), dead-lettered in [start, end)."""
    rows = read_table(settings, BRONZE_DEADLETTER, columns=["original"], filter=_in_days(start, end)
                      & (ds.field("stage") == "join") & (ds.field("reason") == Reason.task_forgotten.value))
    out = set()
    for original in rows.column("original").to_pylist():
        e = clean_event(original)
        out.add((e["session_id"], e["task_id"]))
    return out


def repeated_tasks(settings: Settings, start: date, end: date) -> set[Task]:
    """Tasks with two silver episode rows at one revision (a task the join had forgotten entirely, started again
    by a late event), one of them dated in [start, end)."""
    con = duckdb.connect()
    con.register("ep", table_dataset(settings, SILVER_EPISODES))
    rows = con.execute("""
        SELECT session_id, task_id FROM ep
        WHERE episode_id IN (SELECT episode_id FROM ep WHERE date >= ? AND date < ?)
        GROUP BY session_id, task_id, revision HAVING count(*) > 1""", [start, end]).fetchall()
    return {(s, t) for s, t in rows}


def refused_for_state(settings: Settings) -> set[str]:
    """Ids of events the join refused because their session's state was full: by design in no silver row."""
    rows = read_table(settings, BRONZE_DEADLETTER, columns=["event_id"],
                      filter=(ds.field("stage") == "join") & (ds.field("reason") == Reason.session_state_full.value))
    return {i for i in rows.column("event_id").to_pylist() if i}


def task_events(settings: Settings, tasks: set[Task]) -> list[dict[str, Any]]:
    """Every event of `tasks` in bronze/events (any day), less those refused for a full session state."""
    sessions = sorted({s for s, _ in tasks})
    rows = read_table(settings, BRONZE_EVENTS, filter=ds.field("session_id").isin(sessions)).to_pylist()
    refused = refused_for_state(settings)
    return [e for e in as_events([r for r in rows if (r["session_id"], r["task_id"]) in tasks])
            if e["event_id"] not in refused]


def latest_rows(settings: Settings, spec: TableSpec, key: str, tasks: set[Task]
                ) -> dict[str, tuple[dict[str, Any], int]]:
    """Per key of the tasks' silver rows: its latest row (highest revision, then latest closed) and its highest
    revision."""
    sessions = sorted({s for s, _ in tasks})
    out: dict[str, tuple[dict[str, Any], int]] = {}
    for r in read_table(settings, spec, filter=ds.field("session_id").isin(sessions)).to_pylist():
        if (r["session_id"], r["task_id"]) not in tasks:
            continue
        have = out.get(r[key])
        if have is None or (r["revision"], r["closed_at"]) > (have[0]["revision"], have[0]["closed_at"]):
            out[r[key]] = (r, max(r["revision"], have[1] if have else -1))
        else:
            out[r[key]] = (have[0], max(have[1], r["revision"]))
    return out


def new_revisions(spec: TableSpec, key: str, rows: list[dict[str, Any]],
                  have: dict[str, tuple[dict[str, Any], int]], closed_at: float) -> list[dict[str, Any]]:
    """The silver rows to append: each joined row whose content differs from its key's latest row, as that key's
    next revision (0 for a key silver does not have)."""
    out = []
    for r in rows:
        latest, top = have.get(r[key], (None, -1))
        if latest is not None and content(typed(spec, r)) == content(latest):
            continue
        out.append(silver_row(spec)(orjson.dumps({**r, "revision": top + 1, "closed_reason": RECONCILED,
                                                  "closed_at": closed_at})))
    return out


def reconcile(settings: Settings, start: date, end: date, dry_run: bool = False,
              progress: Callable[[str], None] = lambda _: None) -> Reconciled:
    """Join again the tasks that late events left incomplete in silver ([start, end): the days of the dead
    letters and of the repeated rows) and append the rows that changed as new revisions."""
    with outside_erase(settings.lake, progress):  # a rebuild from bronze must not write back a user erased meanwhile
        if open_table(settings, BRONZE_EVENTS) is None:
            return Reconciled(0, 0, 0, 0, dry_run)
        progress("finding tasks with late events")
        forgotten, repeated = forgotten_tasks(settings, start, end), repeated_tasks(settings, start, end)
        tasks = forgotten | repeated
        if not tasks:
            return Reconciled(len(forgotten), len(repeated), 0, 0, dry_run)
        progress(f"joining {len(tasks):,} tasks again from bronze/events")
        steps, episodes = batch_join(task_events(settings, tasks))
        closed_at = datetime.now(timezone.utc).timestamp()
        written = []
        for spec, key, rows in ((SILVER_STEPS, "step_id", steps), (SILVER_EPISODES, "episode_id", episodes)):
            out = new_revisions(spec, key, rows, latest_rows(settings, spec, key, tasks), closed_at)
            if out and not dry_run:
                progress(f"appending {len(out):,} rows to {spec.id}")
                write_deltalake(ensure_table(settings, spec), pa.Table.from_pylist(out, schema=spec.schema),
                                mode="append", partition_by=list(spec.partition_by))
            written.append(len(out))
        return Reconciled(len(forgotten), len(repeated), written[0], written[1], dry_run)
