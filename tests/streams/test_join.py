"""The join's pure core on hand-built sessions: order, lateness, duplicates, timeouts, interleaving, parity."""
import random
import uuid
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from streams.join import CONTENT_EXCLUDE, Timeouts, apply_event, batch_join, expired, new_session, tick

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
TO = Timeouts(step_s=60, episode_s=300, grace_s=5, retention_s=3600)


class Session:
    """Builds the events of one session; seconds are offsets from T0."""

    def __init__(self, sid="s1", task="t1"):
        self.sid, self.task, self.events = sid, task, []

    def add(self, sec, event_type, body=None, **kw):
        family = "agent" if event_type in ("task_started", "llm_call", "tool_call", "action_proposed", "task_ended") else "frontend"
        self.events.append({"schema": f"{family}/1", "event_id": str(uuid.uuid4()), "event_type": event_type,
                            "ts": (T0 + timedelta(seconds=sec)).isoformat(), "session_id": self.sid,
                            "task_id": kw.pop("task_id", self.task), "user_id": "u_1", "agent_version": "v1",
                            "prompt_variant": "p1", "task_type": "refund", **kw, "body": body or {}})
        return self


def run(events, wall=0.0, timeouts=TO):
    states, out = {}, []
    for i, e in enumerate(events):
        st = states.setdefault(e["session_id"], new_session())
        out += apply_event(st, e, wall + i * 0.01, timeouts)
    return states, out


def latest(emits, kind):
    rows = {}
    for e in emits:
        if e.kind == kind:
            key = e.row["step_id"] if kind == "step" else e.row["episode_id"]
            if key not in rows or e.row["revision"] > rows[key]["revision"]:
                rows[key] = e.row
    return rows


def typical():
    return (Session().add(0, "task_started", {"sla_seconds": 120})
            .add(1, "llm_call", {"model": "m", "output": {"role": "assistant"}, "tokens_in": 100, "tokens_out": 20, "cost_usd": 0.01, "latency_ms": 900})
            .add(2, "tool_call", {"tool": "refund", "arguments": {}, "status": "error", "cost_usd": 0.002, "latency_ms": 50})
            .add(3, "action_proposed", {"output": "Refund $40 to card"}, action_id="a1", intent_id="i1")
            .add(4, "action_shown", {}, action_id="a1", intent_id="i1")
            .add(9, "action_edited", {"final_value": "Refund $40 to store credit"}, action_id="a1", intent_id="i1")
            .add(10, "task_ended", {"status": "success", "reward": None})
            .add(12, "task_completed", {"kpi": 1.0}))


def test_a_typical_task_gives_one_step_and_one_episode():
    _, out = run(typical().events)
    steps, eps = latest(out, "step"), latest(out, "episode")
    assert len(out) == 2
    s = steps["s1/a1"]
    assert (s["outcome"], s["edited"], s["shown"], s["accepted"], s["revision"]) == ("edited", True, True, False, 0)
    assert s["closed_reason"] == "terminal" and s["final_value"] == "Refund $40 to store credit"
    assert 0 < s["edit_distance"] < 1
    assert s["reaction_ms"] == 6000 and s["next_action_ms"] == 6000
    assert (s["llm_calls"], s["tool_calls"], s["tool_errors"], s["tokens_in"]) == (1, 1, 1, 100)
    assert s["cost_usd"] == pytest.approx(0.012)
    e = eps["s1/t1"]
    assert (e["outcome"], e["n_steps"], e["edited"], e["duration_ms"], e["sla_seconds"]) == ("completed", 1, 1, 12000, 120)
    assert e["agent_status"] == "success" and e["kpi"] == 1.0 and e["closed_reason"] == "terminal"


def test_out_of_order_arrival_gives_the_same_rows():
    ordered = typical().events
    shuffled = ordered[:]
    random.Random(7).shuffle(shuffled)
    strip = lambda rows: {k: {c: v for c, v in r.items() if c not in CONTENT_EXCLUDE} for k, r in rows.items()}
    _, a = run(ordered)
    _, b = run(shuffled)
    assert strip(latest(a, "step")) == strip(latest(b, "step"))
    assert strip(latest(a, "episode")) == strip(latest(b, "episode"))


def test_a_reaction_before_its_proposal_waits_for_it():
    s = Session().add(5, "action_accepted", {}, action_id="a1").add(3, "action_proposed", {"output": "x"}, action_id="a1")
    st, out = run(s.events[:1])
    assert out == []
    out = apply_event(st["s1"], s.events[1], 1.0, TO)
    assert [(e.kind, e.row["outcome"], e.row["reaction_ms"]) for e in out] == [("step", "accepted", 2000)]


def test_a_late_reaction_amends_the_step_as_a_new_revision():
    s = (Session().add(0, "action_proposed", {"output": "x"}, action_id="a1")
         .add(2, "action_accepted", {}, action_id="a1").add(90, "action_undone", {}, action_id="a1"))
    _, out = run(s.events)
    revs = [(e.row["revision"], e.row["outcome"], e.row["closed_reason"]) for e in out if e.kind == "step"]
    assert revs == [(0, "accepted", "terminal"), (1, "undone", "late")]


def test_duplicates_change_nothing():
    events = typical().events
    _, once = run(events)
    _, twice = run(events + events[2:5])
    assert [e.row for e in once] == [e.row for e in twice][: len(once)] and len(twice) == len(once)


def test_never_closed_steps_and_episodes_time_out():
    s = Session().add(0, "task_started").add(1, "action_proposed", {"output": "x"}, action_id="a1")
    st, out = run(s.events, wall=1000.0)
    assert out == []
    out = tick(st["s1"], 1000.0 + TO.step_s + 1, TO)
    assert [(e.kind, e.row["closed_reason"], e.row["outcome"]) for e in out] == [("step", "timeout", "ignored")]
    out = tick(st["s1"], 1000.0 + TO.episode_s + 1, TO)
    assert [(e.kind, e.row["closed_reason"], e.row["outcome"]) for e in out] == [("episode", "timeout", "timeout")]


def test_event_time_also_closes_a_step_when_the_session_moves_on():
    s = (Session().add(0, "action_proposed", {"output": "x"}, action_id="a1")
         .add(TO.step_s + 5, "user_message", {"text": "hello?"}))
    _, out = run(s.events)
    assert [(e.row["closed_reason"], e.row["next_action_ms"]) for e in out] == [("timeout", (TO.step_s + 5) * 1000)]


def test_interleaved_sessions_do_not_mix():
    a, b = typical(), Session(sid="s2", task="t9")
    b.add(0, "task_started").add(1, "action_proposed", {"output": "y"}, action_id="a1", intent_id="i1") \
     .add(2, "action_rejected", {}, action_id="a1").add(3, "task_ended", {"status": "failure"}) \
     .add(4, "task_abandoned", {})
    mixed = [e for pair in zip(a.events, b.events) for e in pair] + a.events[len(b.events):]
    _, out = run(mixed)
    steps, eps = latest(out, "step"), latest(out, "episode")
    assert steps["s1/a1"]["outcome"] == "edited" and steps["s2/a1"]["outcome"] == "rejected"
    assert eps["s1/t1"]["outcome"] == "completed" and eps["s2/t9"]["outcome"] == "abandoned"


def test_retries_and_superseded_actions():
    s = (Session().add(0, "action_proposed", {"output": "v1"}, action_id="a1", intent_id="i1")
         .add(2, "action_retried", {}, action_id="a1", intent_id="i1")
         .add(3, "action_proposed", {"output": "v2"}, action_id="a2", intent_id="i1")
         .add(4, "action_proposed", {"output": "v3"}, action_id="a3", intent_id="i1")
         .add(6, "action_accepted", {}, action_id="a3", intent_id="i1"))
    _, out = run(s.events)
    steps = latest(out, "step")
    assert {k: (r["outcome"], r["closed_reason"]) for k, r in steps.items()} == {
        "s1/a1": ("retried", "terminal"), "s1/a2": ("superseded", "next_action"), "s1/a3": ("accepted", "terminal")}


def test_the_episode_waits_a_grace_period_for_the_agents_task_ended():
    s = Session().add(0, "task_started").add(5, "task_completed", {})
    st, out = run(s.events, wall=100.0)
    assert out == []
    assert tick(st["s1"], 100.0 + TO.grace_s / 2, TO) == []
    out = tick(st["s1"], 100.0 + TO.grace_s + 1, TO)
    assert [(e.row["outcome"], e.row["closed_reason"]) for e in out] == [("completed", "terminal")]


def test_an_episode_records_its_repeat_marker_and_when_its_outcome_and_opt_out_came():
    ms = lambda sec: int((T0 + timedelta(seconds=sec)).timestamp() * 1000)  # noqa: E731
    s = Session().add(0, "task_started", {"sla_seconds": 120, "repeat_of_task_id": "t0"}).add(1, "delegated", {
        "repeat_of_task_id": "t0"}).add(5, "task_abandoned", {}).add(8, "opted_out", {"scope": "agent"})
    e = batch_join(s.events)[1][0]
    assert (e["repeat_of_task_id"], e["delegated"], e["outcome"]) == ("t0", True, "abandoned")
    assert (e["outcome_at"], e["opted_out_at"]) == (ms(5), ms(8))
    # the first end the user met: an abandonment before an escalation, the completion a reopen undid; the latest
    # opt-out ("one after t" is "the latest after t"); a timeout has no end
    s = Session().add(0, "task_started", {}).add(2, "opted_out", {}).add(3, "task_abandoned", {}).add(
        6, "escalated", {}).add(7, "opted_out", {}).add(9, "escalated", {})
    e = batch_join(s.events)[1][0]
    assert (e["repeat_of_task_id"], e["outcome"], e["outcome_at"], e["opted_out_at"]) == (None, "escalated", ms(3), ms(7))
    s = Session().add(0, "task_started", {}).add(5, "task_completed", {}).add(7, "opted_out", {}).add(
        9, "task_reopened", {})
    e = batch_join(s.events)[1][0]
    assert (e["outcome"], e["outcome_at"], e["opted_out_at"]) == ("reopened", ms(5), ms(7))
    _, episodes = batch_join(Session().add(0, "task_started", {}).add(1, "opted_out", {}).events)
    assert (episodes[0]["outcome"], episodes[0]["outcome_at"], episodes[0]["opted_out_at"]) == ("timeout", None, ms(1))


def test_a_reopen_after_completion_is_a_new_revision():
    s = typical().add(100, "task_reopened", {"reason": "refund never arrived"})
    _, out = run(s.events)
    eps = [(e.row["revision"], e.row["outcome"], e.row["reopened"]) for e in out if e.kind == "episode"]
    assert eps == [(0, "completed", False), (1, "reopened", True)]


def test_state_is_bounded_by_retention():
    st, _ = run(typical().events, wall=0.0)
    tick(st["s1"], TO.retention_s + 10, TO)
    assert st["s1"]["tasks"]["t1"]["events"] == [] and st["s1"]["tasks"]["t1"]["forgotten"]


@pytest.mark.parametrize("seed", range(5))
def test_stream_and_batch_agree_on_any_arrival_order(seed):
    rng = random.Random(seed)
    sessions = []
    for n in range(4):
        s = Session(sid=f"s{n}", task=f"t{n}")
        t = 0
        s.add(t, "task_started")
        for k in range(rng.randint(1, 4)):
            t += rng.randint(1, 20)
            s.add(t, "action_proposed", {"output": f"answer {k}"}, action_id=f"a{k}", intent_id=f"i{k // 2}")
            t += rng.randint(1, 20)
            kind = rng.choice(["action_accepted", "action_rejected", "action_edited", "action_retried", None])
            if kind:
                s.add(t, kind, {"final_value": f"edited {k}"} if kind == "action_edited" else {}, action_id=f"a{k}")
        s.add(t + 1, "task_ended", {"status": "success"}).add(t + 2, rng.choice(["task_completed", "task_abandoned"]))
        sessions += s.events
    arrival = sessions[:]
    rng.shuffle(arrival)
    states, out = run(arrival)
    for st in states.values():
        out += tick(st, 10_000.0, TO)
    steps, episodes = batch_join(sessions)
    strip = lambda r: {c: v for c, v in r.items() if c not in CONTENT_EXCLUDE}
    assert {k: strip(v) for k, v in latest(out, "step").items()} == {r["step_id"]: r for r in steps}
    assert {k: strip(v) for k, v in latest(out, "episode").items()} == {r["episode_id"]: r for r in episodes}


@pytest.mark.parametrize("seed", range(30))
def test_dimensions_come_from_the_earliest_event_whatever_arrives_first(seed):
    """Agent spans without the user (OTLP) beside the tracker's events with it: the rows took the dimensions of
    whichever event arrived first, so the stream and a batch recomputation disagreed. Now each task takes those of
    its earliest event in event time, and its type from the earliest that has one."""
    rng = random.Random(seed)
    agent = dict(user_id="otel-anonymous", agent_version="bot@1.2", task_type=None)
    s = (Session().add(0, "task_started", {"sla_seconds": 120}, **agent)
         .add(3, "action_proposed", {"output": "Refund $40"}, action_id="a1", intent_id="i1", **agent)
         .add(4, "action_shown", {}, action_id="a1", intent_id="i1", task_type="refund")
         .add(9, "action_accepted", {}, action_id="a1", intent_id="i1", task_type="refund")
         .add(10, "task_ended", {"status": "success"}, **agent)
         .add(12, "task_completed", {"kpi": 1.0}, task_type="billing"))
    arrival = s.events[:]
    rng.shuffle(arrival)
    states, out = run(arrival)
    out += tick(states["s1"], 10_000.0, TO)
    steps, episodes = batch_join(arrival)
    strip = lambda r: {c: v for c, v in r.items() if c not in CONTENT_EXCLUDE}  # noqa: E731
    assert strip(latest(out, "episode")["s1/t1"]) == episodes[0]
    assert strip(latest(out, "step")["s1/a1"]) == steps[0]
    assert (episodes[0]["user_id"], episodes[0]["agent_version"], episodes[0]["task_type"]) == (
        "otel-anonymous", "bot@1.2", "refund")


def test_the_outbox_holds_rows_until_delivered_and_keeps_the_session_alive():
    from streams.join import Emit, delivered, outbox, stage

    state = new_session()
    stage(state, [])
    assert outbox(state) == [] and "outbox" not in state  # nothing staged, nothing persisted
    rows = [Emit("step", {"step_id": "a", "revision": 0}), Emit("episode", {"episode_id": "e", "revision": 0})]
    stage(state, rows)
    assert outbox(state) == rows
    t = Timeouts(step_s=1, episode_s=1, grace_s=0, retention_s=1)
    assert not expired(state, wall=1e9, t=t)  # undelivered rows pin the session
    delivered(state)
    assert outbox(state) == [] and expired(state, wall=1e9, t=t)


def test_rows_record_the_oldest_policy_among_their_events():
    """A row is only as clean as its least-scrubbed input; privacy-10 is newer than privacy-9."""
    from streams.join import UNRECORDED_POLICY

    events = typical().events
    for e in events:
        e["policy_version"] = "privacy-10"
    events[1]["policy_version"] = "privacy-9"  # the llm_call before the step: part of the step's work
    events[-1]["policy_version"] = "privacy-2"  # task_completed: the episode's, not the step's
    _, out = run(events)
    assert latest(out, "step")["s1/a1"]["policy_version"] == "privacy-9"
    assert latest(out, "episode")["s1/t1"]["policy_version"] == "privacy-2"
    steps, episodes = batch_join(events)
    assert (steps[0]["policy_version"], episodes[0]["policy_version"]) == ("privacy-9", "privacy-2")
    # events no scrubber saw (a synthetic backfill) say so rather than claim a policy
    _, out = run(typical().events)
    assert latest(out, "episode")["s1/t1"]["policy_version"] == UNRECORDED_POLICY


def _random_sessions(rng: random.Random, n: int) -> list[dict]:
    """Sessions of one or two tasks cut off at random points: open steps, tasks awaiting their grace period,
    finished tasks."""
    events = []
    for k in range(n):
        s = Session(sid=f"s{k}", task=f"t{k}")
        for task in [f"t{k}"] + ([f"t{k}b"] if rng.random() < 0.5 else []):
            t = rng.randint(0, 200)
            s.add(t, "task_started", task_id=task)
            for a in range(rng.randint(0, 3)):
                t += rng.randint(1, 30)
                s.add(t, "action_proposed", {"output": f"answer {a}"}, action_id=f"{task}a{a}", intent_id=f"i{a}",
                      task_id=task)
                if rng.random() < 0.6:
                    t += rng.randint(1, 30)
                    s.add(t, rng.choice(["action_accepted", "action_rejected", "action_retried"]),
                          action_id=f"{task}a{a}", task_id=task)
            end = rng.choice(["open", "terminal", "terminal+ended"])
            if end != "open":
                s.add(t + 1, rng.choice(["task_completed", "task_abandoned"]), task_id=task)
            if end == "terminal+ended":
                s.add(t + 2, "task_ended", {"status": "success"}, task_id=task)
        events += s.events
    return events


@pytest.mark.parametrize("seed", range(8))
def test_nothing_changes_before_a_session_is_due(seed):
    """The timer skips a session until next_due: so tick must never change a session before then, and must
    change or keep it due at that time (no session is forgotten by the index)."""
    import copy

    from streams.join import next_due

    rng = random.Random(seed)
    t = Timeouts(step_s=rng.choice([5, 60]), episode_s=rng.choice([30, 300]), grace_s=rng.choice([0, 5, 40]),
                 retention_s=rng.choice([50, 600]))
    states, _ = run(_random_sessions(rng, 12), wall=100.0, timeouts=t)
    for st in states.values():
        wall = 100.0
        for _ in range(16):  # follow the session through its timeouts, retention and expiry
            due = next_due(st, t)
            assert due is not None
            for probe in sorted({wall, wall + (due - wall) * rng.random(), due - 1e-6}):
                if probe < due:
                    before = copy.deepcopy(st)
                    assert tick(st, probe, t) == [] and not expired(st, probe, t)
                    st.pop("dirty", None)
                    before.pop("dirty", None)
                    assert st == before, probe
            wall = max(wall, due) + rng.choice([0.0, 0.5, 3.0])
            tick(st, wall, t)
            if expired(st, wall, t):
                break
        else:
            pytest.fail(f"session still alive after 16 due times: {st}")


# ---- bounded state: per-task retention and the byte budget ----------------------------------------------
def recounted(state: dict) -> int:
    """The byte count made afresh (as for a state saved by an older format), for comparing with the running one."""
    import copy

    from streams.join import state_bytes

    fresh = copy.deepcopy(state)
    fresh.pop("v")
    return state_bytes(fresh)


def _task_events(sid: str, task: str, start: float, text: str = "ok") -> list[dict]:
    return (Session(sid=sid, task=task).add(start, "task_started")
            .add(start + 1, "action_proposed", {"output": text}, action_id=f"{task}-a", intent_id=f"{task}-i")
            .add(start + 2, "action_accepted", action_id=f"{task}-a", intent_id=f"{task}-i")
            .add(start + 3, "task_completed").add(start + 4, "task_ended", {"status": "success"}).events)


def test_a_busy_session_forgets_its_closed_tasks_after_retention():
    """Retention is per task: a session that never goes idle keeps only the tasks of the last retention period,
    so its state (one changelog record) stays bounded. Before, nothing was forgotten until the whole session had
    been idle for the retention period."""
    from streams.join import state_bytes

    t = Timeouts(step_s=60, episode_s=300, grace_s=5, retention_s=600)
    st, sizes, wall = new_session(), [], 0.0
    for k in range(120):  # one task every 2 minutes for 4 hours, the timer ticking in between
        wall = k * 120.0
        for e in _task_events("s1", f"t{k}", k * 120, text="x" * 500):
            apply_event(st, e, wall, t)
        tick(st, wall + 60, t)
        sizes.append(state_bytes(st))
    kept = [k for k, task in st["tasks"].items() if not task["forgotten"]]
    assert 4 <= len(kept) <= 6  # ~600 s of tasks, 2 minutes apart
    assert len(st["seen"]) == 5 * len(kept)  # the ids of forgotten tasks go with them
    assert max(sizes[20:]) <= 1.2 * min(sizes[20:])  # flat once retention is reached
    assert st["size"] == recounted(st)
    assert len(st["tasks"]) <= 16  # what is left of forgotten tasks goes after twice the retention
    import orjson
    assert len(orjson.dumps(st)) <= st["size"]  # the count bounds the saved record


def test_a_late_event_for_a_forgotten_task_is_refused_and_keeps_nothing():
    from streams.join import Folded, fold_event

    t = Timeouts(step_s=60, episode_s=300, grace_s=5, retention_s=600)
    events = _task_events("s1", "t1", 0)
    st, _ = run(events, timeouts=t)
    tick(st["s1"], 10_000.0, t)
    st = st["s1"]
    marker = st["tasks"]["t1"]
    assert {k: marker[k] for k in ("forgotten", "closed", "events")} == {"forgotten": True, "closed": True, "events": []}
    assert "dims" not in marker and st["seen"] == {}  # a marker of the task is all that is left
    assert st["size"] == recounted(st) >= len(orjson.dumps(st))
    before = dict(st)
    late = Session(task="t1").add(5, "feedback", {"rating": "up"}).events[0]
    assert fold_event(st, late, 10_001.0) is Folded.forgotten
    assert fold_event(st, events[0], 10_001.0) is Folded.forgotten  # a redelivery of a forgotten event too
    assert st == before  # neither the ids nor the session's clock moved


def test_events_past_the_byte_budget_are_refused_until_room_comes_back():
    from streams.join import Folded, fold_event, refusal_detail, state_bytes

    t = Timeouts(step_s=60, episode_s=300, grace_s=5, retention_s=600)
    budget = 40_000  # the t1 task takes ~24 kB: its 9 kB text counts twice (the event, and its staged step row)
    st = new_session()
    results = [fold_event(st, e, 0.0, budget) for e in _task_events("s1", "t1", 0, text="y" * 9_000)]
    assert results.count(Folded.folded) == 5
    big = _task_events("s1", "t2", 10, text="z" * 12_000)
    results = [fold_event(st, e, 1.0, budget) for e in big]
    assert results == [Folded.folded, Folded.state_full, Folded.folded, Folded.folded, Folded.folded]
    assert state_bytes(st) <= budget
    assert big[1]["event_id"] not in st["seen"]  # refused, not remembered: a redelivery is refused again
    detail = refusal_detail(Folded.state_full, st, big[1], budget)
    assert "join_state_max_bytes (40,000)" in detail and "TRAJLAKE_JOIN_STATE_MAX_BYTES" in detail
    assert fold_event(st, big[1], 2.0, budget) is Folded.state_full
    evaluate_all = lambda wall: tick(st, wall, t)  # noqa: E731 — close both tasks, then pass retention
    evaluate_all(100.0)
    evaluate_all(1_000.0)
    assert all(task["forgotten"] for task in st["tasks"].values()) and state_bytes(st) == recounted(st) < 1_000
    retry = Session(task="t3").add(20, "action_proposed", {"output": "z" * 12_000}, action_id="b", intent_id="j")
    assert fold_event(st, retry.events[0], 1_001.0, budget) is Folded.folded


def test_a_state_saved_before_the_byte_count_gets_one():
    """A state of an older format (no count, no per-task clocks, forgotten tasks with their dimensions, `seen`
    holding their ids) is brought up to date at first touch: it gets the same count, its tasks the session's
    clock, and retention and expiry work on it."""
    from streams.join import state_bytes

    t = Timeouts(step_s=60, episode_s=300, grace_s=5, retention_s=600)
    st, _ = run(typical().events + _task_events("s1", "t2", 20), timeouts=t)
    st = st["s1"]
    counted = st["size"]
    old_seen = dict(st["seen"])
    for key in ("size", "v"):
        st.pop(key)
    for task in st["tasks"].values():
        task.pop("wall"), task.pop("bytes")
    st["tasks"]["t0"] = {"dims": {"session_id": "s1", "task_id": "t0"}, "events": [], "closed": True, "rev": 0,
                         "hash": "h", "steps": {"a": {"rev": 0}}, "terminal_wall": 1.0, "forgotten": True}
    st["seen"] = {**old_seen, "e-of-t0": 1}
    state_bytes(st)
    assert st["seen"] == old_seen  # the forgotten task's ids go
    assert st["tasks"]["t0"]["forgotten"] and "dims" not in st["tasks"]["t0"]
    assert st["size"] == counted + st["tasks"]["t0"]["bytes"]
    tick(st, 1e6, t)  # retention starts from the session's clock
    assert all(task["forgotten"] for task in st["tasks"].values()) and st["size"] == recounted(st)
    tick(st, 1e7, t)
    assert st["tasks"] == {} and st["size"] == recounted(st) and expired(st, 1e7, t)


def test_the_count_bounds_the_saved_state_with_long_non_ascii_ids_and_a_late_task_type():
    """Ids and dimensions may be 512 characters of any script: counted in UTF-8 bytes, with the dimensions in
    every staged row, and a task type that arrives late in every row staged before."""
    from streams.join import Folded, evaluate, fold_event, stage

    t = Timeouts(step_s=60, episode_s=300, grace_s=5, retention_s=600)
    long = "😀" * 512
    st = new_session()
    s = Session(sid=long, task="t" + long)
    s.add(0, "task_started", task_type=None, agent_version=long, prompt_variant=long)
    for k in range(20):
        s.add(k + 1, "action_proposed", {"output": "é" * 300}, action_id=f"{k}{long}", intent_id=long,
              task_type=None, agent_version=long, prompt_variant=long)
    s.add(30, "action_edited", {"final_value": "ü" * 300}, action_id=f"0{long}", intent_id=long,
          task_type="类型" * 256, agent_version=long, prompt_variant=long)
    for e in s.events:
        e["user_id"] = "ü" * 512
        assert fold_event(st, e, 0.0, 16 << 20, t) is Folded.folded
    stage(st, evaluate(st, 0.0, t))
    assert len(st["outbox"]) == 19  # every proposal but the last superseded (same intent), so closed
    st["outbox"] = st["outbox"] * 2  # a crash left a first round undelivered
    assert st["size"] == recounted(st)
    assert len(orjson.dumps(st)) <= 2 * st["size"]  # two rounds of staged rows fit in twice the count
    st.pop("outbox")
    stage(st, tick(st, 1_000.0, t))  # the last step and the episode close by timeout: one round
    assert len(st["outbox"]) == 2 and len(orjson.dumps(st)) <= st["size"]


def test_the_due_index_scans_on_a_new_assignment_and_never_overwrites_fresher_notes():
    from streams.join import DueIndex, next_due

    t = Timeouts(step_s=60, episode_s=300, grace_s=5, retention_s=600)
    index = DueIndex(t, rescan_s=600)
    states, _ = run(_task_events("s1", "t1", 0) + _task_events("s2", "t2", 0)[:2], wall=100.0, timeouts=t)
    assert index.needs_scan({0, 1}, 0.0)  # never scanned
    index.start_scan({0, 1}, 100.0)
    assert not index.needs_scan({0, 1}, 699.0)
    assert index.needs_scan({0, 1}, 700.0) and index.needs_scan({0}, 101.0)  # the backstop; a rebalance
    # the join notes s1 while the scan is under way; the scan's older read of s1 must not replace it
    fresher = dict(states["s1"], wall=5_000.0)
    index.note(b"s1", 0, fresher)
    index.scanned(b"s1", 0, states["s1"])
    index.scanned(b"s2", 1, states["s2"])
    assert len(index) == 2
    assert index.due_now(next_due(states["s2"], t), {0, 1}) == [(b"s2", 1)]
    assert index.due_now(1e9, {0}) == [(b"s1", 0)]  # only the active partitions' sessions
    assert index.due_now(next_due(fresher, t) - 1, {0}) == []
    index.forget(b"s1")
    assert index.due_now(1e9, {0, 1}) == [(b"s2", 1)]
    index.abandon_scan()
    assert index.needs_scan({0, 1}, 101.0)


def test_a_busy_session_saved_before_tasks_had_clocks_still_forgets_its_old_tasks():
    """Old closed tasks take the session's clock as their own before a new event moves it; else, in a session
    that never goes idle, they would never pass retention."""
    t = Timeouts(step_s=60, episode_s=300, grace_s=5, retention_s=600)
    st, _ = run(_task_events("s1", "t1", 0), wall=100.0, timeouts=t)
    st = st["s1"]
    st.pop("v")
    for task in st["tasks"].values():
        task.pop("wall")
    wall = 100.0
    for k in range(1, 8):  # a new task every 2 minutes: the session never idles
        wall = 100.0 + k * 120
        for e in _task_events("s1", f"t{k + 1}", k * 120):
            apply_event(st, e, wall, t)
        tick(st, wall + 1, t)
    assert st["tasks"]["t1"]["forgotten"]
    assert st["size"] == recounted(st)
