"""Two workers in one consumer group: partitions move between them and back, and every guarantee holds."""
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from kafka.partitioner.default import murmur2

from lake.readers import read_table
from lake.tables import ensure_table
from lake.writer import app_id, committed_offset
from schemas.tables import BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS
from streams.producer import produce
from streams.recompute import check_parity
from streams.sources.tau_bench import Emitted, load_trajectories, replay_events
from tests.conftest import TAU, WorkerProcess, own_settings
from trajlake.cli import group_members

pytestmark = pytest.mark.integration


def partition_of(key: str, partitions: int) -> int:
    """The partition kafka-python's default partitioner sends `key` to."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def where_missing(settings, emitted: list[Emitted]) -> str:
    """Why events are not in bronze: for each one missing, where it is on the raw topic and on events.clean,
    beside each partition's end offset, the worker group's committed offset and the sink's Delta offset (a
    failure's diagnosis: the handover this test drives is where an event could be lost)."""
    from kafka import KafkaConsumer, TopicPartition

    in_bronze = set(read_table(settings, BRONZE_EVENTS, columns=["event_id"]).column("event_id").to_pylist())
    missing = {e.event["event_id"]: e.topic for e in emitted if e.event["event_id"] not in in_bronze}
    if not missing:
        return "nothing missing"
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    group = KafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=settings.worker_id, enable_auto_commit=False)
    lines = []
    try:
        delta = ensure_table(settings, BRONZE_EVENTS)
        for name in ("agent.raw", "frontend.raw", "events.clean"):
            topic = settings.topic(name)
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            end = consumer.end_offsets(tps)
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            found = {}
            while any(consumer.position(tp) < end[tp] for tp in tps):
                for tp, msgs in consumer.poll(timeout_ms=1000).items():
                    for m in msgs:
                        v = orjson.loads(m.value)
                        eid = (v.get("event") or {}).get("event_id") if name == "events.clean" else v.get("event_id")
                        if eid in missing:
                            found[eid] = (tp.partition, m.offset)
            for tp in tps:
                sink = committed_offset(delta, app_id(settings.worker_id, topic, tp.partition)) \
                    if name == "events.clean" else None
                lines.append(f"{topic}[{tp.partition}] end {end[tp]} group committed {group.committed(tp)}"
                             + (f" sink's Delta offset {sink}" if sink is not None else ""))
            lines += [f"  missing {eid} ({missing[eid]}) at {topic}[{p}]@{o}" for eid, (p, o) in found.items()]
            lines += [f"  missing {eid} ({missing[eid]}) not on {topic}" for eid in missing
                      if eid not in found and name in ("events.clean", missing[eid])]
    finally:
        consumer.close()
        group.close()
    return "\n".join(lines)


def companion_sessions(partitions: int, per_partition: int = 2):
    """Sessions in three parts, `per_partition` keyed to each partition: a profile lookup revealing the user's
    name (part 1), a reservation lookup revealing a companion's name (part 2), and a message naming both in free
    text, then the task's end (part 3). Only a session's scrub dictionary can catch the names there (the worker runs `--no-ner`)."""
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    counts: dict[int, int] = defaultdict(int)
    sessions = []
    while min(counts.get(p, 0) for p in range(partitions)) < per_partition:
        sid = f"s-{uuid.uuid4().hex[:8]}"
        p = partition_of(sid, partitions)
        if counts[p] >= per_partition:
            continue
        counts[p] += 1

        def event(family: str, event_type: str, second: int, body: dict, sid: str = sid) -> Emitted:
            return Emitted(f"{family}.raw", {
                "schema": f"{family}/1", "event_id": str(uuid.uuid4()), "event_type": event_type,
                "ts": (t0 + timedelta(seconds=second)).isoformat(), "session_id": sid, "task_id": "t1",
                "user_id": "ivan_moreau_1177", "agent_version": "v1", "prompt_variant": "p1", "task_type": "rebook",
                "body": body})

        sessions.append((sid, [
            [event("agent", "task_started", 0, {}),
             event("agent", "tool_call", 1, {"tool": "get_user_details", "call_id": "c1",
                                              "arguments": {"user_id": "ivan_moreau_1177"},
                                              "result": {"name": {"first_name": "Ivan", "last_name": "Moreau"}},
                                              "status": "ok"})],
            [event("agent", "tool_call", 30, {"tool": "get_reservation_details", "call_id": "c2",
                                               "arguments": {"reservation_id": "QX81ZT"},
                                               "result": {"passengers": [{"first_name": "Greta",
                                                                          "last_name": "Lindqvist"}]},
                                               "status": "ok"})],
            [event("frontend", "user_message", 60, {"text": "seat Ivan Moreau next to Greta Lindqvist"}),
             event("agent", "task_ended", 70, {"status": "success", "reward": None}),
             event("frontend", "task_completed", 71, {"kpi": 1.0, "human_approved": True})],
        ]))
    return sessions


def test_two_workers_hand_partitions_over_and_back_with_nothing_lost_doubled_or_leaked(kafka, tmp_path):
    """Worker A alone, then A and B sharing the partitions, then B SIGKILLed and A alone again.

    Each session's events are spread over the three phases, so its join state and its scrub dictionary pass from
    A to B and, for B's partitions, back to A, which still has its own older in-memory copy of the dictionary
    from phase 1: it must use the one B saved (the companion's name), not that copy."""
    own = own_settings(kafka, tmp_path)
    a = own.model_copy(update={"state_dir": tmp_path / "state-a"})
    b = own.model_copy(update={"state_dir": tmp_path / "state-b"})
    n = own.topic_partitions
    trajectories = load_trajectories(TAU / "gpt-4o-airline.json")
    tau: dict[str, list[Emitted]] = defaultdict(list)
    for e in replay_events(trajectories, limit=9):
        tau[e.event["session_id"]].append(e)
    companions = companion_sessions(n)

    def phase(k: int) -> list[Emitted]:
        """Part k of every session: the τ-bench ones cut in thirds, in event-time order."""
        out = [e for _, parts in companions for e in parts[k]]
        for events in tau.values():
            third = -(-len(events) // 3)
            out += events[k * third:(k + 1) * third]
        return out

    phases = [phase(k) for k in range(3)]
    total = sum(len(p) for p in phases)
    episodes = len(tau) + len(companions)  # every task ends

    def in_bronze() -> int:
        return read_table(own, BRONZE_EVENTS, columns=["event_id"]).num_rows

    def owners() -> list[set[int]]:
        """Each running member's raw partitions, once the group is stable."""
        g = group_members(own)
        return [set(m["partitions"]) for m in g["members"]] if g["state"] == "Stable" else []

    wa = WorkerProcess(a, tmp_path / "a.log", "--no-ner").start()
    wb = WorkerProcess(b, tmp_path / "b.log", "--no-ner")
    try:
        produce(own, phases[0])
        wa.wait_for(lambda: in_bronze() >= len(phases[0]), 120, message="phase 1 in bronze")
        wb.start()
        wb.wait_for(lambda: len(o := owners()) == 2 and all(o) and o[0] | o[1] == set(range(n)), 120,
                    message="A and B to share the partitions")
        produce(own, phases[1])
        wb.wait_for(lambda: in_bronze() >= len(phases[0]) + len(phases[1]), 120, message="phase 2 in bronze")
        wb.kill()
        wa.wait_for(lambda: owners() == [set(range(n))], 120, message="A to take every partition back")
        produce(own, phases[2])
        try:
            wa.wait_for(lambda: in_bronze() >= total, 120, message="phase 3 in bronze")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{where_missing(own, [x for p in phases for x in p])}") from None
        wa.wait_for(lambda: read_table(own, SILVER_EPISODES, columns=["episode_id"]).num_rows >= episodes and
                    check_parity(own).ok, 180, message="silver to match bronze")
    finally:
        wb.kill()
        wa.stop()
    assert group_members(own)["members"] == []  # both gone

    ids = read_table(own, BRONZE_EVENTS, columns=["event_id"]).column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == total
    for spec, key in ((SILVER_STEPS, "step_id"), (SILVER_EPISODES, "episode_id")):
        rows = read_table(own, spec, columns=[key, "revision"]).to_pylist()
        assert len({(r[key], r["revision"]) for r in rows}) == len(rows), f"a {spec.id} revision was written twice"
    closed = read_table(own, SILVER_EPISODES, columns=["episode_id", "revision"]).to_pylist()
    assert len({r["episode_id"] for r in closed}) == episodes and {r["revision"] for r in closed} == {0}
    texts = {r["session_id"]: orjson.loads(r["body"])["text"]
             for r in read_table(own, BRONZE_EVENTS, columns=["session_id", "event_type", "body"]).to_pylist()
             if r["event_type"] == "user_message" and r["session_id"] in dict(companions)}
    assert len(texts) == len(companions)
    for sid, text in texts.items():
        assert not any(name in text for name in ("Ivan", "Moreau", "Greta", "Lindqvist")), (sid, text)
        assert text == "seat <PERSON_1> next to <PERSON_4>", (sid, text)  # the full names, learnt first
