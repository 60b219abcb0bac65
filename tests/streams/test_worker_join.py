"""The join in the running worker: τ-bench end to end into silver (the session's `tau_lake`), stream/batch
parity against bronze, and synthetic sessions."""
import json

import pytest

from lake.readers import read_table
from schemas.tables import BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS
from streams.producer import produce
from streams.recompute import check_parity, latest_revisions
from streams.sources.tau_bench import ESCALATION_TOOL
from tests.conftest import WorkerProcess, own_settings

pytestmark = pytest.mark.integration


def test_every_trajectory_is_one_episode_with_its_outcome(tau_lake):
    s, records, events = tau_lake
    episodes = latest_revisions(read_table(s, SILVER_EPISODES).to_pylist(), "episode_id")
    assert len(episodes) == len(records) == 200
    completed = sum(e["outcome"] == "completed" for e in episodes.values())
    escalated = sum(e["escalated"] for e in episodes.values())
    assert completed == sum(r["reward"] == 1.0 for r in records) == 84
    assert escalated == sum(any(tc["function"]["name"] == ESCALATION_TOOL for m in r["traj"]
                                for tc in m.get("tool_calls") or []) for r in records) == 48
    assert sorted(e["external_reward"] for e in episodes.values()) == sorted(r["reward"] for r in records)


def test_every_proposed_action_is_one_step(tau_lake):
    s, _, events = tau_lake
    steps = read_table(s, SILVER_STEPS).to_pylist()
    proposed = {e.event["action_id"] for e in events if e.event["event_type"] == "action_proposed"}
    assert {r["action_id"] for r in steps} == proposed
    assert len({(r["step_id"], r["revision"]) for r in steps}) == len(steps)  # no duplicate revision
    # every action was shown. An earlier revision may say otherwise: action_proposed comes on agent.raw and
    # action_shown on frontend.raw, so the agent's next proposal for the same intent can reach the join first and
    # close the step as superseded; the shown event then amends it (a 'late' revision)
    latest = latest_revisions(steps, "step_id")
    assert all(r["shown"] for r in latest.values())
    for r in steps:
        if not r["shown"]:
            assert latest[r["step_id"]]["revision"] > r["revision"]
            assert latest[r["step_id"]]["closed_reason"] == "late"


def test_stream_and_batch_recomputation_agree(tau_lake):
    s, _, _ = tau_lake
    parity = check_parity(s)
    assert parity.ok, json.dumps(parity.__dict__, default=str)[:2000]
    assert (parity.steps, parity.episodes) == (1380, 200)


def test_synthetic_sessions_flow_through_ingest_and_join(kafka, tmp_path):
    """The seeded generator's events all pass the contract in the worker and join into episodes: exactly the
    tasks the user finished (completed or abandoned) and the agent ended close at once. The others (an escalated
    task, one the agent ended with no word from the user) stay open until their inactivity timeout, far beyond
    this test, and must not close early.

    Distinct episodes are counted, not rows: a late event (feedback after the end) adds a revision row, and how
    many depends on how the stream happened to batch the events (it once made this test pass or fail on the
    ingest batch size alone)."""
    from collections import defaultdict

    from schemas.tables import BRONZE_DEADLETTER
    from streams.sources.synthetic import synthetic_events

    s = own_settings(kafka, tmp_path, "y")
    events = list(synthetic_events(3_000, seed=21))
    kinds: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in events:
        kinds[(e.event["session_id"], e.event["task_id"])].add(e.event["event_type"])
    finished = {f"{sid}/{tid}" for (sid, tid), k in kinds.items()
                if "task_ended" in k and k & {"task_completed", "task_abandoned"}}
    assert len(finished) > 100 and len(finished) < len(kinds)  # the seed gives both kinds of task

    def episode_ids() -> set[str]:
        return set(read_table(s, SILVER_EPISODES, columns=["episode_id"]).column("episode_id").to_pylist())

    produce(s, events)
    w = WorkerProcess(s, tmp_path / "worker.log", "--no-ner").start()
    try:
        w.wait_for(lambda: read_table(s, BRONZE_EVENTS, columns=["event_id"]).num_rows >= len(events), 240,
                   message="bronze/events")
        w.wait_for(lambda: episode_ids() >= finished, 120, message="the episodes of the finished tasks")
    finally:
        w.stop()
    assert read_table(s, BRONZE_DEADLETTER).num_rows == 0
    episodes = latest_revisions(read_table(s, SILVER_EPISODES).to_pylist(), "episode_id")
    assert set(episodes) == finished
    assert {e["closed_reason"] for e in episodes.values()} <= {"terminal", "late"}
    assert {e["agent_version"] for e in episodes.values()} == {"agent-v1", "agent-v2"}


def test_hand_built_sessions_out_of_order_duplicated_interleaved_and_late(kafka, tmp_path):
    """The join's cases through the real worker and broker: two interleaved sessions, a reaction that arrives
    before its proposal, a resent event, and a reaction after the step and the episode closed, which amends
    both as revision 1 (closed_reason "late") while revision 0 stays."""
    import uuid
    from datetime import datetime, timedelta, timezone

    from streams.sources.tau_bench import Emitted

    s = own_settings(kafka, tmp_path, "h")
    t0 = datetime.now(timezone.utc).replace(microsecond=0)

    def event(session: str, family: str, event_type: str, second: int, body=None, **kw) -> Emitted:
        return Emitted(f"{family}.raw", {
            "schema": f"{family}/1", "event_id": str(uuid.uuid4()), "event_type": event_type,
            "ts": (t0 + timedelta(seconds=second)).isoformat(), "session_id": session, "task_id": "t1",
            "user_id": f"user-{session}", "agent_version": "v1", "prompt_variant": "p1", "task_type": "refund",
            **kw, "body": body or {}})

    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    accepted = event(a, "frontend", "action_accepted", 2, action_id="a1", intent_id="i1")
    first = [
        event(a, "agent", "task_started", 0), event(b, "agent", "task_started", 0),
        accepted,  # before the proposal it reacts to
        event(b, "agent", "action_proposed", 1, {"output": "cancel the booking"}, action_id="b1", intent_id="j1"),
        event(a, "agent", "action_proposed", 1, {"output": "refund 100 USD"}, action_id="a1", intent_id="i1"),
        event(b, "frontend", "action_rejected", 2, action_id="b1", intent_id="j1"),
        accepted,  # resent: the same event id
        event(a, "frontend", "task_completed", 3), event(b, "frontend", "task_abandoned", 3),
        event(a, "agent", "task_ended", 4, {"status": "success"}),
        event(b, "agent", "task_ended", 4, {"status": "failure"}),
    ]
    late = [event(a, "frontend", "action_undone", 5, action_id="a1", intent_id="i1")]

    def rows(spec, key):
        return sorted((r[key], r["revision"], r) for r in read_table(s, spec).to_pylist())

    produce(s, first)
    w = WorkerProcess(s, tmp_path / "worker.log", "--no-ner").start()
    try:
        w.wait_for(lambda: len(rows(SILVER_EPISODES, "episode_id")) >= 2 and len(rows(SILVER_STEPS, "step_id")) >= 2,
                   120, message="both sessions' step and episode")
        produce(s, late)
        w.wait_for(lambda: len(rows(SILVER_EPISODES, "episode_id")) >= 3 and len(rows(SILVER_STEPS, "step_id")) >= 3,
                   120, message="the late reaction's revisions")
    finally:
        w.stop()
    steps = {(k, rev): r for k, rev, r in rows(SILVER_STEPS, "step_id")}
    episodes = {(k, rev): r for k, rev, r in rows(SILVER_EPISODES, "episode_id")}
    assert sorted(steps) == [(f"{a}/a1", 0), (f"{a}/a1", 1), (f"{b}/b1", 0)]
    assert sorted(episodes) == [(f"{a}/t1", 0), (f"{a}/t1", 1), (f"{b}/t1", 0)]
    a0, a1, b0 = steps[(f"{a}/a1", 0)], steps[(f"{a}/a1", 1)], steps[(f"{b}/b1", 0)]
    assert (a0["outcome"], a0["closed_reason"], a0["reaction_ms"]) == ("accepted", "terminal", 1000)
    assert (a1["outcome"], a1["closed_reason"], a1["undone"], a1["accepted"]) == ("undone", "late", True, True)
    assert (b0["outcome"], b0["closed_reason"], b0["output"]) == ("rejected", "terminal", "cancel the booking")
    e0, e1, eb = episodes[(f"{a}/t1", 0)], episodes[(f"{a}/t1", 1)], episodes[(f"{b}/t1", 0)]
    assert (e0["outcome"], e0["closed_reason"], e0["accepted"], e0["undone"]) == ("completed", "terminal", 1, 0)
    assert (e1["outcome"], e1["closed_reason"], e1["undone"], e1["ended_at"] > e0["ended_at"]) == (
        "completed", "late", 1, True)
    assert (eb["outcome"], eb["rejected"], eb["n_steps"]) == ("abandoned", 1, 1)
    ids = read_table(s, BRONZE_EVENTS, columns=["event_id"]).column("event_id").to_pylist()
    assert sorted(ids) == sorted({e.event["event_id"] for e in first + late})  # the resend once
    parity = check_parity(s)
    assert parity.ok, json.dumps(parity.__dict__, default=str)[:2000]


def test_the_timer_closes_what_never_finishes(kafka, tmp_path):
    """Timeouts in the running worker, which visits a session only when streams.join.next_due says it can
    change: an open step and its open episode close by timeout, and a finished task whose agent never sends
    task_ended closes after the grace period, with no event arriving after them."""
    import uuid
    from datetime import datetime, timezone

    from streams.sources.tau_bench import Emitted

    s = own_settings(kafka, tmp_path, "tm").model_copy(update={
        "step_timeout_seconds": 3, "episode_timeout_seconds": 8, "episode_grace_seconds": 2, "join_tick_seconds": 0.5})
    now = datetime.now(timezone.utc)

    def event(session: str, family: str, event_type: str, second: int, body=None, **kw):
        ts = now.replace(microsecond=0).timestamp() + second
        return Emitted(f"{family}.raw", {
            "schema": f"{family}/1", "event_id": str(uuid.uuid4()), "event_type": event_type,
            "ts": datetime.fromtimestamp(ts, timezone.utc).isoformat(), "session_id": session, "task_id": "t",
            "user_id": "u", "agent_version": "v1", "prompt_variant": "p1", "task_type": "refund", **kw,
            "body": body or {}})

    events = [
        event("idle", "agent", "task_started", 0),
        event("idle", "agent", "action_proposed", 1, {"output": "shall I refund?"}, action_id="a1", intent_id="i1"),
        event("no-end", "agent", "task_started", 0),
        event("no-end", "agent", "action_proposed", 1, {"output": "refunded"}, action_id="a1", intent_id="i1"),
        event("no-end", "frontend", "action_accepted", 2, action_id="a1", intent_id="i1"),
        event("no-end", "frontend", "task_completed", 3),
    ]
    produce(s, events)
    w = WorkerProcess(s, tmp_path / "worker.log", "--no-ner").start()
    try:
        w.wait_for(lambda: read_table(s, SILVER_EPISODES, columns=["episode_id"]).num_rows >= 2
                   and read_table(s, SILVER_STEPS, columns=["step_id"]).num_rows >= 2, 240,
                   message="both episodes and both steps closed")
    finally:
        w.stop()
    episodes = {r["session_id"]: r for r in read_table(s, SILVER_EPISODES).to_pylist()}
    steps = {r["session_id"]: r for r in read_table(s, SILVER_STEPS).to_pylist()}
    assert (episodes["idle"]["outcome"], episodes["idle"]["closed_reason"]) == ("timeout", "timeout")
    assert (steps["idle"]["outcome"], steps["idle"]["closed_reason"]) == ("ignored", "timeout")
    assert (episodes["no-end"]["outcome"], episodes["no-end"]["closed_reason"]) == ("completed", "terminal")
    assert steps["no-end"]["closed_reason"] == "terminal"
    assert len(episodes) == len(steps) == 2


def test_a_session_past_its_state_budget_is_dead_lettered_not_a_crash(kafka, tmp_path):
    """A session's join state is one changelog record. Events that would take it past join_state_max_bytes are
    dead-lettered (stage join, reason session_state_full) with their clean record, while the session's other
    events, and other sessions, are joined as usual and the worker keeps running. An event for a task the join
    has forgotten (closed, then no event for the retention period) is dead-lettered too (task_forgotten)."""
    import time
    import uuid
    from datetime import datetime, timedelta, timezone

    from schemas.tables import BRONZE_DEADLETTER
    from streams.ingest import clean_event
    from streams.sources.tau_bench import Emitted

    s = own_settings(kafka, tmp_path, "sf").model_copy(update={
        "join_state_max_bytes": 32_768, "join_retention_seconds": 15, "join_tick_seconds": 0.5})
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    words = "the quarterly report is ready for review and the numbers look fine " * 90  # ~6 KB of text

    def event(session: str, task: str, family: str, event_type: str, second: int, body=None, **kw):
        return Emitted(f"{family}.raw", {
            "schema": f"{family}/1", "event_id": str(uuid.uuid4()), "event_type": event_type,
            "ts": (t0 + timedelta(seconds=second)).isoformat(), "session_id": session, "task_id": task,
            "user_id": "u", "agent_version": "v1", "prompt_variant": "p1", "task_type": "report", **kw,
            "body": body or {}})

    big, small = [], []
    for k in range(3):  # three ~6 KB proposals (each counts twice: the event, and its staged step row)
        big += [event("big", "t", "agent", "action_proposed", 2 * k + 1, {"output": words}, action_id=f"a{k}",
                      intent_id=f"i{k}"),
                event("big", "t", "frontend", "action_accepted", 2 * k + 2, action_id=f"a{k}", intent_id=f"i{k}")]
    big = [event("big", "t", "agent", "task_started", 0)] + big + [
        event("big", "t", "frontend", "task_completed", 10), event("big", "t", "agent", "task_ended", 11,
                                                                   {"status": "success"})]
    small = [event("small", "t", "agent", "task_started", 0),
             event("small", "t", "agent", "action_proposed", 1, {"output": "done"}, action_id="a", intent_id="i"),
             event("small", "t", "frontend", "action_accepted", 2, action_id="a", intent_id="i"),
             event("small", "t", "frontend", "task_completed", 3),
             event("small", "t", "agent", "task_ended", 4, {"status": "success"})]
    produce(s, big + small)
    w = WorkerProcess(s, tmp_path / "worker.log", "--no-ner").start()
    try:
        w.wait_for(lambda: read_table(s, SILVER_EPISODES, columns=["episode_id"]).num_rows >= 2
                   and read_table(s, BRONZE_DEADLETTER, columns=["reason"]).num_rows >= 1
                   and read_table(s, BRONZE_EVENTS, columns=["event_id"]).num_rows >= len(big) + len(small), 240,
                   message="both episodes, the dead letter and every event in bronze")
        assert w.alive()
        # the join folded "small" before its episode was visible, so it has forgotten the closed task 15 s later;
        # what is left of the task stays until twice that, when a late event would start a new session instead
        time.sleep(16)
        late = [event("small", "t", "frontend", "feedback", 20, {"rating": "up"})]
        produce(s, late)
        w.wait_for(lambda: read_table(s, BRONZE_DEADLETTER, columns=["reason"]).num_rows >= 2, 120,
                   message="the late event's dead letter")
    finally:
        w.stop()
    letters = sorted(read_table(s, BRONZE_DEADLETTER).to_pylist(), key=lambda r: r["reason"])
    refused_id = big[5].event["event_id"]  # the third proposal
    assert [(r["reason"], r["stage"], r["event_id"]) for r in letters] == [
        ("session_state_full", "join", refused_id), ("task_forgotten", "join", late[0].event["event_id"])]
    assert letters[0]["source_topic"] == s.topic("events.clean")
    assert "TRAJLAKE_JOIN_STATE_MAX_BYTES" in letters[0]["detail"]
    assert clean_event(letters[0]["original"])["event_id"] == refused_id  # its clean record: nothing lost
    episodes = {r["session_id"]: r for r in read_table(s, SILVER_EPISODES).to_pylist()}
    assert episodes["big"]["outcome"] == episodes["small"]["outcome"] == "completed"
    assert episodes["big"]["n_steps"] == 2  # the refused proposal is in no step
    parity = check_parity(s)
    assert parity.ok, json.dumps(parity.__dict__, default=str)[:2000]
