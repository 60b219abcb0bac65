"""The synthetic session generator: valid, deterministic, lazy, and faithful to its planted behaviour."""
import itertools
import tracemalloc
from collections import Counter, defaultdict

import orjson
import pytest

from schemas.contract import ContractError, parse_event
from streams.sources.synthetic import planted, planted_json, synthetic_events

pytestmark = pytest.mark.unit


def test_every_event_honours_the_contract_and_sessions_are_ordered():
    last_ts: dict[str, str] = {}
    first: dict[str, str] = {}
    for e in synthetic_events(20_000, seed=11):
        ev = parse_event(orjson.dumps(e.event))
        assert not isinstance(ev, ContractError), ev
        assert e.topic == f"{ev['schema'].split('/')[0]}.raw"
        sid = ev["session_id"]
        first.setdefault(sid, ev["event_type"])
        assert ev["ts"] >= last_ts.get(sid, ""), "a session's events go forward in time"
        last_ts[sid] = ev["ts"]
    assert set(first.values()) == {"task_started"}


def test_the_same_seed_gives_the_same_events_and_another_seed_does_not():
    a = [e.event for e in itertools.islice(synthetic_events(2_000, seed=4), 2_000)]
    assert a == [e.event for e in synthetic_events(2_000, seed=4)]
    assert a != [e.event for e in synthetic_events(2_000, seed=5)]
    assert planted_json(4) == orjson.loads(orjson.dumps(planted_json(4)))


def test_it_streams_in_constant_memory():
    def peak(n):
        tracemalloc.start()
        for _ in synthetic_events(n, seed=2):
            pass
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(5_000), peak(100_000)
    assert large < 2 * small + 2_000_000, (small, large)  # 20x the events, not 20x the memory


def test_the_planted_reaction_rates_are_what_the_stream_shows():
    shown, reacted = Counter(), defaultdict(Counter)
    for e in synthetic_events(150_000, seed=9):
        ev = e.event
        seg = (ev["agent_version"], ev["prompt_variant"], ev["task_type"])
        if ev["event_type"] == "action_shown":
            shown[seg] += 1
        elif ev["event_type"] in ("action_accepted", "action_edited", "action_rejected"):
            reacted[seg][ev["event_type"]] += 1
    plan = planted(9)
    for seg, b in plan.items():
        n = shown[seg]
        assert n > 600
        assert abs(reacted[seg]["action_accepted"] / n - b.accept) < 0.06, seg
        assert abs(reacted[seg]["action_edited"] / n - b.edit) < 0.05, seg
    gaming = ("agent-v2", "concise", "search")
    assert plan[gaming].accept == max(b.accept for b in plan.values())
    assert plan[gaming].complete == min(b.complete for b in plan.values())
