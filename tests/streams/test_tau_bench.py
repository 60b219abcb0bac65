"""τ-bench replay: every real trajectory becomes valid contract events that keep its outcome and escalations."""
from collections import Counter

import pytest

from schemas.contract import validate_event
from streams.sources.tau_bench import ESCALATION_TOOL, load_trajectories, replay_events, trajectory_events
from tests.conftest import TAU

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def records():
    return load_trajectories(TAU / "gpt-4o-airline.json")


def test_every_replayed_event_is_valid(records):
    bad = [(e.event["event_type"], r.detail) for e in replay_events(records)
           if not isinstance(r := validate_event(e.event), dict)]
    assert bad == []


def test_outcomes_and_escalations_match_the_source(records):
    counts = Counter(e.event["event_type"] for e in replay_events(records))
    escalated = sum(any(tc["function"]["name"] == ESCALATION_TOOL for m in r["traj"] for tc in m.get("tool_calls") or [])
                    for r in records)
    assert counts["task_started"] == counts["task_ended"] == 200
    assert counts["task_completed"] == sum(r["reward"] == 1.0 for r in records)
    assert counts["task_abandoned"] == sum(r["reward"] != 1.0 for r in records)
    assert counts["escalated"] == escalated


def test_events_go_to_their_family_topic_in_time_order(records):
    events = list(trajectory_events(records[0], 0))
    assert all(e.topic == e.event["schema"].split("/")[0] + ".raw" for e in events)
    assert [e.event["ts"] for e in events] == sorted(e.event["ts"] for e in events)
    assert len({e.event["session_id"] for e in events}) == 1


def test_replay_is_deterministic_and_loops_get_fresh_ids(records):
    a = [e.event for e in trajectory_events(records[3], 3)]
    assert a == [e.event for e in trajectory_events(records[3], 3)]
    b = [e.event for e in trajectory_events(records[3], 3, loop=1)]
    assert not {e["event_id"] for e in a} & {e["event_id"] for e in b}


def test_reactions_reference_proposed_actions(records):
    events = [e.event for e in trajectory_events(records[0], 0)]
    proposed = {e["action_id"] for e in events if e["event_type"] == "action_proposed"}
    shown = {e["action_id"] for e in events if e["event_type"] == "action_shown"}
    assert proposed and shown == proposed


def test_the_replay_interleaves_sessions_in_event_time_and_loops_overlap(records):
    """A replay at --speed sends events in event-time order across sessions, and `--loop N` adds N overlapping
    copies with fresh ids (not a copy days later that --speed would wait out)."""
    from datetime import datetime, timedelta

    one = list(replay_events(records, limit=20))
    three = list(replay_events(records, limit=20, loops=3))
    times = [datetime.fromisoformat(e.event["ts"]) for e in three]
    assert times == sorted(times)
    assert len(three) == 3 * len(one) and len({e.event["event_id"] for e in three}) == len(three)
    assert {e.event["event_id"] for e in one} <= {e.event["event_id"] for e in three}  # loop 0 is the plain replay
    assert times[-1] - datetime.fromisoformat(one[-1].event["ts"]) < timedelta(minutes=1)
    by_session = [e.event["session_id"] for e in one]
    assert by_session != sorted(by_session, key=by_session.index)  # sessions overlap, so their events interleave
    expected = {}
    for loop in range(3):
        for i, record in enumerate(records[:20]):
            events = list(trajectory_events(record, i, loop))
            expected[events[0].event["session_id"]] = events
    replayed: dict[str, list] = {}
    for e in three:
        replayed.setdefault(e.event["session_id"], []).append(e)
    assert replayed == expected  # each session whole and in its own order
