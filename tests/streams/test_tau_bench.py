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
