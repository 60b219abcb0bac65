"""`trajlake reconcile`: a task whose late event the stream's join could not apply (dead-lettered as forgotten, or
started again as a second task of the same ids) is joined again from bronze and gets a new silver revision equal
to the batch join of all its events; a rerun writes nothing; the parity check then agrees with the stream."""
from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lake.readers import read_table
from lake.tables import ensure_table
from schemas.contract import ContractError, Reason
from schemas.tables import BRONZE_DEADLETTER, SILVER_EPISODES, SILVER_STEPS
from streams.ingest import SourceRecord, clean_record, dead_letter
from streams.join import batch_join
from streams.recompute import RECONCILED, bronze_through, check_parity, content, latest_revisions, typed, write_silver
from streams.reconcile import reconcile
from streams.sink import deadletter_row
from streams.sources.tau_bench import load_trajectories, replay_events
from tests.conftest import TAU

pytestmark = pytest.mark.component

LATER = datetime.now(timezone.utc) + timedelta(days=1)   # the tasks settled: the stream can no longer write them


def today_window():
    today = datetime.now(timezone.utc).date()
    return today, today + timedelta(days=1)


@pytest.fixture
def one_task(lake_settings):
    """One τ-bench trajectory's events in bronze, scrubbed (NER off): (settings, clean events in time order)."""
    raw = [e.event for e in replay_events(load_trajectories(TAU / "gpt-4o-airline.json"), limit=1)]
    clean = list(bronze_through(lake_settings, raw))
    return lake_settings, sorted(clean, key=lambda e: e["ts"])


def latest(settings, spec, key):
    return latest_revisions(read_table(settings, spec).to_pylist(), key)


def assert_silver_is_the_batch_join_of(settings, events):
    steps, episodes = batch_join(events)
    for spec, key, rows in ((SILVER_STEPS, "step_id", steps), (SILVER_EPISODES, "episode_id", episodes)):
        have = latest(settings, spec, key)
        assert {k: content(v) for k, v in have.items()} == {r[key]: content(typed(spec, r)) for r in rows}, spec.id


def dead_letter_forgotten(s, late):
    letter = dead_letter(SourceRecord("tl.events.clean", 0, 7, late["session_id"].encode(),
                                      clean_record(late, SourceRecord("tl.agent.raw", 0, 7, None, b""),
                                                   "2026-12-08T00:00:00+00:00", late["policy_version"])),
                         ContractError(Reason.task_forgotten, "after its retention"), "join", late["event_id"])
    write_deltalake(ensure_table(s, BRONZE_DEADLETTER),
                    pa.Table.from_pylist([deadletter_row(letter.to_json())], schema=BRONZE_DEADLETTER.schema),
                    mode="append", partition_by=["date"])


def test_a_forgotten_tasks_late_event_becomes_its_next_revision(one_task):
    s, events = one_task
    *early, late = events
    write_silver(s, early)                        # what the stream wrote before the task was forgotten
    dead_letter_forgotten(s, late)
    assert check_parity(s).ok                     # the refused event is left out until the task is reconciled

    today, tomorrow = today_window()
    assert reconcile(s, today - timedelta(days=1), today, now=LATER).forgotten == 0   # the letter is today's
    # written just now: the stream may still write the task, so it waits for a later run
    waiting = reconcile(s, today, tomorrow)
    assert (waiting.forgotten, waiting.deferred, waiting.episodes) == (1, 1, 0)
    done = reconcile(s, today, tomorrow, now=LATER)
    assert (done.forgotten, done.repeated, done.deferred, done.episodes) == (1, 0, 0, 1)
    assert_silver_is_the_batch_join_of(s, events)
    ep = next(iter(latest(s, SILVER_EPISODES, "episode_id").values()))
    assert (ep["revision"], ep["closed_reason"]) == (1, RECONCILED)
    assert check_parity(s).ok                     # the event is in the task's rows now, and parity counts it

    again = reconcile(s, today, tomorrow, now=LATER)
    assert (again.steps, again.episodes) == (0, 0)    # the same content: nothing written
    assert len(read_table(s, SILVER_EPISODES).to_pylist()) == 2


def test_a_late_event_that_changes_a_step_alone_counts_in_parity(one_task):
    """A late `action_shown` changes its step's `shown` and nothing of the episode: parity took a task as
    reconciled only by its episode row and reported the step (found in review)."""
    s, events = one_task
    late = next(e for e in events if e["event_type"] == "action_shown")
    write_silver(s, [e for e in events if e is not late])
    dead_letter_forgotten(s, late)
    done = reconcile(s, *today_window(), now=LATER)
    assert done.steps == 1 and done.episodes == 0
    assert_silver_is_the_batch_join_of(s, events)
    assert check_parity(s).ok


def test_a_task_started_again_by_a_late_event_is_joined_whole(one_task):
    """Past the marker, the late event started a second task of the same ids: two episode rows at revision 0. Found
    by the day its rows were written, whatever day the task started (2024-05 here)."""
    s, events = one_task
    *early, late = events
    write_silver(s, early)
    write_silver(s, [late])                       # the second task, of the late event alone
    rows = read_table(s, SILVER_EPISODES).to_pylist()
    assert len(rows) == 2 and {r["revision"] for r in rows} == {0}

    done = reconcile(s, *today_window(), now=LATER)
    assert (done.forgotten, done.repeated, done.episodes) == (0, 1, 1)
    assert_silver_is_the_batch_join_of(s, events)
    assert check_parity(s).ok
    assert reconcile(s, *today_window(), now=LATER).episodes == 0
    # a window of other days finds nothing
    assert reconcile(s, date(2024, 1, 1), date(2024, 2, 1), now=LATER) == type(done)(0, 0, 0, 0)


def test_two_runs_at_once_write_one_revision(one_task):
    """Two runs read the same latest revisions and both appended the next one (found in review): the silver
    tables' publish locks make the second wait, find the first's rows and write nothing."""
    from concurrent.futures import ThreadPoolExecutor

    s, events = one_task
    *early, late = events
    write_silver(s, early)
    write_silver(s, [late])
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: reconcile(s, *today_window(), now=LATER), range(2)))
    assert sorted(r.episodes for r in runs) == [0, 1]
    rows = read_table(s, SILVER_EPISODES).to_pylist()
    assert len({(r["episode_id"], r["revision"]) for r in rows if r["revision"] > 0}) == \
        len([r for r in rows if r["revision"] > 0]) == 1
