"""The stream worker against the real broker and real Delta: dead letters, dedup, and exactly once across crashes."""
import uuid
from collections import Counter

import orjson
import pytest

from infra.kafka import broker
from lake.readers import read_table
from schemas.tables import BRONZE_DEADLETTER, BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS
from streams.recompute import check_parity
from streams.producer import build_producer, produce
from streams.sources.tau_bench import load_trajectories, replay_events
from tests.conftest import TAU, WorkerProcess, own_settings, process_gone, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def records():
    return load_trajectories(TAU / "gpt-4o-airline.json")


@pytest.fixture
def own(kafka, tmp_path):
    """Settings with this test's own topics, consumer group and lake on the shared broker."""
    return own_settings(kafka, tmp_path)


def event_ids(settings, spec=BRONZE_EVENTS):
    return read_table(settings, spec, columns=["event_id"]).column("event_id").to_pylist()


def run_worker_until(settings, log, done, message: str, timeout: float = 120) -> WorkerProcess:
    """A `--no-ner` worker, from start until `done()` holds, then stopped; returned for its log."""
    w = WorkerProcess(settings, log, "--no-ner").start()
    try:
        w.wait_for(done, timeout, message=message)
    finally:
        w.stop()
    return w


def test_bad_events_go_to_the_dead_letter_table_and_valid_traffic_flows(own, records, tmp_path):
    events = list(replay_events(records, limit=3))
    session = events[0].event["session_id"].encode()
    # the last one is as large as the raw topics take: its dead letter (base64) is ~1.4 MB, over Kafka's
    # default limit, and must still be written (schemas/settings.py::OUTPUT_MESSAGE_MAX_BYTES)
    huge = b"{" + b"x" * 1_000_000
    poison = [(b"{not json", "invalid_json"), (orjson.dumps({**events[1].event, "body": {}}), "schema_violation"),
              (b"[]", "not_an_object"), (huge, "invalid_json")]
    wrong_topic = events[0].event | {"event_id": str(uuid.uuid4())}
    p = build_producer(own)
    for i, item in enumerate(events):
        if i < len(poison):  # poison first, in the same partition as a valid session
            p.send(own.topic("frontend.raw"), key=session, value=poison[i][0])
        p.send(own.topic(item.topic), key=item.event["session_id"].encode(), value=orjson.dumps(item.event))
    p.send(own.topic("frontend.raw"), key=session, value=orjson.dumps(wrong_topic))  # an agent/1 event on frontend
    p.send(own.topic(events[5].topic), key=session, value=orjson.dumps(events[5].event))  # a resend: same event_id
    p.flush()
    p.close()
    # the valid traffic all the way: bronze, and silver equal to the batch join of bronze (found in the test audit:
    # this test stopped at bronze)
    w = run_worker_until(own, tmp_path / "worker.log", lambda: len(event_ids(own)) >= len(events) and
                         read_table(own, BRONZE_DEADLETTER).num_rows >= 5 and
                         read_table(own, SILVER_EPISODES, columns=["episode_id"]).num_rows >= 3 and
                         check_parity(own).ok, "bronze and silver to fill")
    assert "the worker exits" not in w.log.read_text(errors="replace")  # no stage failed, nor the shutdown
    ids = event_ids(own)
    assert Counter(ids) == Counter(e.event["event_id"] for e in events)  # all valid events, the resend once
    assert {r["episode_id"] for r in read_table(own, SILVER_EPISODES, columns=["episode_id"]).to_pylist()} == \
        {f"{e.event['session_id']}/{e.event['task_id']}" for e in events}
    dl = read_table(own, BRONZE_DEADLETTER).to_pylist()
    assert sorted(d["reason"] for d in dl) == sorted([r for _, r in poison] + ["wrong_topic"])
    assert any(d["original"] == huge for d in dl)
    by_reason = {d["reason"]: d for d in dl if d["original"] != huge}
    assert by_reason["invalid_json"]["original"] == b"{not json"
    assert by_reason["invalid_json"]["original_key"] == session
    assert by_reason["schema_violation"]["detail"].startswith("event")
    assert all(d["source_topic"].startswith(own.topic_prefix) and d["source_offset"] >= 0 for d in dl)


def test_no_raw_user_id_reaches_bronze(own, records, tmp_path):
    events = list(replay_events(records, limit=2))
    produce(own, events)
    run_worker_until(own, tmp_path / "worker.log", lambda: len(event_ids(own)) >= len(events), "bronze/events")
    raw_ids = {e.event["user_id"] for e in events}
    rows = read_table(own, BRONZE_EVENTS, columns=["user_id", "body"]).to_pylist()
    assert not raw_ids & {r["user_id"] for r in rows}
    assert not any(uid in r["body"] for r in rows for uid in raw_ids)


def delta_ahead_of_kafka(s) -> list[tuple[str, int, int, int]]:
    """(topic, partition, last offset in Delta, next offset the sinks' group would read) where Delta is ahead."""
    from kafka import KafkaConsumer, TopicPartition

    from lake.tables import open_table
    from lake.writer import app_id, committed_offset
    from streams.sink import SINK_TARGETS

    # a consumer with the group's id reads its committed offsets without joining it (as `trajlake status` does)
    group = KafkaConsumer(bootstrap_servers=s.bootstrap, group_id=s.sink_group, enable_auto_commit=False)
    ahead = []
    try:
        for name, target in SINK_TARGETS.items():
            dt = open_table(s, target.spec)
            topic = s.topic(name)
            for p in range(s.topic_partitions):
                delta = -1 if dt is None else committed_offset(dt, app_id(s.worker_id, topic, p))
                kafka = group.committed(TopicPartition(topic, p)) or 0
                if delta >= kafka:
                    ahead.append((topic, p, delta, kafka))
    finally:
        group.close()
    return ahead


@pytest.mark.parametrize("crash", ["sigkill_mid_stream", "between_delta_and_offset_commit",
                                   "between_join_state_and_delivery"])
def test_exactly_once_across_worker_crashes(own, records, tmp_path, crash):
    events = list(replay_events(records, limit=40))
    produce(own, events)
    log = tmp_path / "worker.log"
    if crash == "between_delta_and_offset_commit":
        # parts of ~20 kB: the second Delta commit (the crash) can be the second part of one batch, before any
        # of the batch's Kafka offsets
        crashing = own.model_copy(update={"crash_after_commits": 2, "sink_max_records": 100,
                                          "sink_max_bytes": 20_000})
        w = WorkerProcess(crashing, log, "--no-ner").start()
        wait_until(lambda: not w.alive(), 120, message="the injected crash")
        assert w.proc.returncode == 137
        # the crash landed in the window: a Delta commit holds records the sinks' Kafka offsets do not cover yet
        # (the restarted sinks must resume from Delta's offsets, not Kafka's, or they write those records again)
        assert delta_ahead_of_kafka(own), "no Delta commit was ahead of the sinks' Kafka offsets at the crash"
    elif crash == "between_join_state_and_delivery":
        crashing = own.model_copy(update={"crash_after_join_saves": 3})
        w = WorkerProcess(crashing, log, "--no-ner").start()
        wait_until(lambda: not w.alive(), 120, message="the injected crash")
        assert w.proc.returncode == 137
    else:
        slow = own.model_copy(update={"sink_max_records": 20})
        w = WorkerProcess(slow, log, "--no-ner").start()
        w.wait_for(lambda: len(event_ids(own)) > 0, 120, message="the first commit")
        w.kill()
        # the sink process dies with the worker: no orphan writes beside the restarted one
        sinks = w.sink_pids()
        assert len(sinks) == 1
        wait_until(lambda: process_gone(sinks[0]), 10, message="the sink process to die with the worker")
    if crash == "between_join_state_and_delivery":
        assert read_table(own, SILVER_EPISODES, columns=["episode_id"]).num_rows < 40
    else:
        assert 0 < len(event_ids(own)) < len(events)
    w = WorkerProcess(own, log, "--no-ner").start()
    try:
        w.wait_for(lambda: len(event_ids(own)) >= len(events), 180, message="the restarted worker to catch up")
        w.wait_for(lambda: read_table(own, SILVER_EPISODES, columns=["episode_id"]).num_rows >= 40 and
                   check_parity(own).ok, 180, message="silver to match bronze")
    finally:
        w.stop()
    ids = event_ids(own)
    assert len(ids) == len(set(ids)) == len(events)
    for spec, key in ((SILVER_STEPS, "step_id"), (SILVER_EPISODES, "episode_id")):
        rows = read_table(own, spec, columns=[key, "revision"]).to_pylist()
        assert len({(r[key], r["revision"]) for r in rows}) == len(rows), f"a {spec.id} revision was written twice"
    assert read_table(own, SILVER_EPISODES, columns=["episode_id"]).num_rows == 40


def test_exactly_once_across_a_broker_restart(kafka, own, records, tmp_path):
    """SIGKILL the broker under a running worker, start it again: nothing lost, nothing doubled."""
    first = list(replay_events(records, limit=10))
    seen = {e.event["event_id"] for e in first}
    # the same tasks, fresh ids and times
    second = [e for e in replay_events(records, limit=10, loops=2) if e.event["event_id"] not in seen]
    produce(own, first)
    w = WorkerProcess(own, tmp_path / "worker.log", "--no-ner").start()
    try:
        w.wait_for(lambda: len(event_ids(own)) > 0, 120, message="the first commit")
        broker.kill(kafka)  # the session's broker: `own` differs only in topics, group and lake
        broker.start(kafka)
        produce(own, second)
        w.wait_for(lambda: len(event_ids(own)) >= len(first) + len(second), 240,
                   message="the worker to recover from the broker restart")
        w.wait_for(lambda: read_table(own, SILVER_EPISODES, columns=["episode_id"]).num_rows >= 20 and
                   check_parity(own).ok, 180, message="silver to match bronze")
    finally:
        w.stop()
    ids = event_ids(own)
    assert len(ids) == len(set(ids)) == len(first) + len(second)
    assert read_table(own, SILVER_EPISODES, columns=["episode_id"]).num_rows == 20
    # parity compares latest revisions only: a step or episode revision written twice would pass it (found in review)
    for spec, key in ((SILVER_STEPS, "step_id"), (SILVER_EPISODES, "episode_id")):
        rows = read_table(own, spec, columns=[key, "revision"]).to_pylist()
        assert len({(r[key], r["revision"]) for r in rows}) == len(rows), f"a {spec.id} revision was written twice"


def test_a_resend_long_after_its_first_copy_is_dropped_at_ingest(own, records, tmp_path):
    """Events sent again by a fresh worker, after the sinks' dedup window: ingest finds their ids in bronze/events
    and drops them; only the new events land, in bronze and in silver."""
    import time

    first = list(replay_events(records, limit=5))
    known = {e.event["event_id"] for e in first}
    new = [e for e in replay_events(records, limit=5, loops=2) if e.event["event_id"] not in known]
    produce(own, first)
    run_worker_until(own, tmp_path / "first.log", lambda: len(event_ids(own)) >= len(first) and
                     read_table(own, SILVER_EPISODES, columns=["episode_id"]).num_rows >= 5, "the first copies")
    # a window the sinks' key sets cannot bridge: without ingest's dedup, each resend would land a second time
    later = own.model_copy(update={"dedup_window_seconds": 1})
    time.sleep(1.5)
    produce(later, first + new)
    log = tmp_path / "second.log"

    def dropped() -> int:
        import re
        return sum(int(n) for n in re.findall(r"ingest: (\d+) duplicate events dropped", log.read_text(errors="replace")))

    run_worker_until(later, log, lambda: dropped() >= len(first) and len(event_ids(own)) >= len(first) + len(new)
                     and read_table(own, SILVER_EPISODES, columns=["episode_id"]).num_rows >= 10 and
                     check_parity(own).ok, "the new events, and the resends dropped")
    assert dropped() == len(first)
    ids = event_ids(own)
    assert len(ids) == len(set(ids)) == len(first) + len(new)
    episodes = read_table(own, SILVER_EPISODES, columns=["episode_id", "revision"]).to_pylist()
    assert len(episodes) == 10 and all(r["revision"] == 0 for r in episodes)


def profile_session():
    """A session whose profile lookup reveals a name and an e-mail, and a later message naming them in free text
    (with no word before the name that the patterns know)."""
    from datetime import datetime, timedelta, timezone

    from streams.sources.tau_bench import Emitted

    session, t0 = f"s-{uuid.uuid4().hex[:8]}", datetime.now(timezone.utc).replace(microsecond=0)

    def event(family: str, event_type: str, second: int, body: dict) -> Emitted:
        return Emitted(f"{family}.raw", {
            "schema": f"{family}/1", "event_id": str(uuid.uuid4()), "event_type": event_type,
            "ts": (t0 + timedelta(seconds=second)).isoformat(), "session_id": session, "task_id": "t1",
            "user_id": "mia_li_3668", "agent_version": "v1", "prompt_variant": "p1", "task_type": "rebook",
            "body": body})

    profile = {"name": {"first_name": "Mia", "last_name": "Li"}, "email": "mia.li3818@example.com"}
    before = [event("agent", "task_started", 0, {}),
              event("agent", "tool_call", 1, {"tool": "get_user_details", "call_id": "c1",
                                                "arguments": {"user_id": "mia_li_3668"}, "result": profile,
                                                "status": "ok"})]
    after = [event("frontend", "user_message", 60, {"text": "please move Mia Li to an aisle seat, and mail "
                                                            "mia.li3818@example.com"})]
    return session, before, after


def test_a_session_keeps_its_scrub_dictionary_across_a_worker_restart(own, tmp_path):
    """What a session's structured fields taught the scrubber (a name, from a profile lookup) is still known
    after the worker restarts: a later message naming that person in free text gets the same placeholder.

    With the dictionary in memory only, the restarted worker passed the name through wherever patterns and NER
    miss it (`--no-ner` here, so only the dictionary can catch it), and numbered placeholders afresh."""
    _, before, after = profile_session()
    produce(own, before)
    run_worker_until(own, tmp_path / "worker.log", lambda: len(event_ids(own)) >= len(before),
                     "the first events in bronze")
    produce(own, after)
    run_worker_until(own, tmp_path / "worker.log", lambda: len(event_ids(own)) >= len(before) + len(after),
                     "the later event in bronze")
    bodies = {r["event_type"]: orjson.loads(r["body"])
              for r in read_table(own, BRONZE_EVENTS, columns=["event_type", "body"]).to_pylist()}
    text, result = bodies["user_message"]["text"], bodies["tool_call"]["result"]
    assert "Mia" not in text and "mia.li3818" not in text, text
    assert text == f"please move <PERSON_1> to an aisle seat, and mail {result['email']}"  # the same placeholders
    assert result["email"] == "<EMAIL_1>"


def test_an_idle_sessions_scrub_dictionary_is_deleted(own, tmp_path):
    """The saved dictionaries hold PII: a session idle for twice the join retention loses its dictionary, and
    the changelog gets a tombstone for it (the sweep runs when the worker's partitions change and every ten
    minutes; here a restart triggers it)."""
    import time

    from kafka import KafkaConsumer

    own = own.model_copy(update={"join_retention_seconds": 1, "join_tick_seconds": 0.5})
    session, before, _ = profile_session()
    produce(own, before)
    log = tmp_path / "worker.log"
    run_worker_until(own, log, lambda: len(event_ids(own)) >= len(before), "the first events in bronze")
    changelog = f"{own.worker_id}-scrub-dictionaries-changelog"

    def values() -> list:
        c = KafkaConsumer(changelog, bootstrap_servers=own.bootstrap, auto_offset_reset="earliest",
                          enable_auto_commit=False, consumer_timeout_ms=3000)
        try:
            return [m.value for m in c if m.key == session.encode()]
        finally:
            c.close()

    saved = values()
    assert saved and saved[-1] is not None and b"mia.li3818@example.com" in saved[-1]
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=own.bootstrap)
    try:  # Kafka deletes and compacts closed segments only: they roll hourly, and compaction comes within the hour
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, changelog)])["topic"][changelog]
    finally:
        admin.close()
    assert {k: configs.get(k, {}).get("value") for k in ("cleanup.policy", "retention.ms", "segment.ms",
                                                          "max.compaction.lag.ms")} == {
        "cleanup.policy": "compact,delete", "retention.ms": str((2 * 1 + 3600) * 1000), "segment.ms": "3600000",
        "max.compaction.lag.ms": "3600000"}
    time.sleep(2.5)  # past twice the retention
    run_worker_until(own, log, lambda: (v := values()) and v[-1] is None, "the dictionary's tombstone", timeout=60)


def test_a_dictionary_the_broker_refuses_stops_the_worker_before_the_ack(own, tmp_path):
    """A scrub dictionary whose changelog record the broker refuses stops the worker (status 70) before the
    batch is acked. Before, Faust only logged the failed send and the worker went on: after a restart the
    session's later message met a dictionary without the name, and the name reached bronze (`--no-ner`).
    Once the topic takes the record, a restarted worker redoes the batch, saves the dictionary and scrubs the
    later message with it."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

    changelog = f"{own.worker_id}-scrub-dictionaries-changelog"
    admin = KafkaAdminClient(bootstrap_servers=own.bootstrap)
    try:
        admin.create_topics([NewTopic(changelog, own.topic_partitions, 1,
                                      topic_configs={"max.message.bytes": "300", "cleanup.policy": "compact,delete"})])
        _, before, after = profile_session()
        produce(own, before)
        log = tmp_path / "worker.log"
        w = WorkerProcess(own, log, "--no-ner").start()
        try:
            wait_until(lambda: not w.alive(), 120, message="the worker to stop on the refused changelog record")
        finally:
            w.kill()
        assert w.proc.returncode == 70
        text = log.read_text(errors="replace")
        assert "the worker exits" in text and "TooLarge" in text, text[-3000:]
        from trajlake.cli import _topic_sizes

        # nothing acked: the group's offsets on the raw topics are still where a fresh group starts
        committed = {t["topic"]: t["committed"][own.worker_id] for t in _topic_sizes(own)
                     if own.worker_id in t["committed"]}
        assert all(o == 0 for topic in ("frontend.raw", "agent.raw")
                   for o in committed[own.topic(topic)].values()), committed
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, changelog,
                                            configs={"max.message.bytes": str(16 * 1024 * 1024)})])
    finally:
        admin.close()
    # a fresh process: what the first one held in memory is gone, as after a crash
    run_worker_until(own, log, lambda: len(event_ids(own)) >= len(before), "the first events in bronze")
    produce(own, after)
    run_worker_until(own, log, lambda: len(event_ids(own)) >= len(before) + len(after), "the later event in bronze")
    assert sorted(Counter(event_ids(own)).values()) == [1] * (len(before) + len(after))
    bodies = {r["event_type"]: orjson.loads(r["body"])
              for r in read_table(own, BRONZE_EVENTS, columns=["event_type", "body"]).to_pylist()}
    assert bodies["user_message"]["text"].startswith("please move <PERSON_1> to an aisle seat"), bodies


def test_a_record_lost_on_its_way_to_the_streams_is_read_again_not_committed_over(own, records, tmp_path):
    """The consumer passes one record without handing it to the streams (fault injection: what Faust's buffer
    clearing did in the handover test). Later records of its partition are processed and acked; Faust's own
    commit would step over the hole (faust-streaming #606). The worker's commit waits instead, the stall watch
    seeks the partition back to the hole, and every event lands in bronze exactly once (docs/design.md, trap 6)."""
    from kafka import KafkaConsumer, TopicPartition

    events = list(replay_events(records, limit=12))
    produce(own, events)
    consumer = KafkaConsumer(bootstrap_servers=own.bootstrap)
    try:
        topic = own.topic("agent.raw")
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    finally:
        consumer.close()
    # offset 2 of a partition with records after it: not the first record (a fresh group's commit of offset 0
    # is Faust's None, upstream's rule), and later ones to be acked past the hole
    partition = max(ends, key=ends.get).partition
    assert ends[TopicPartition(topic, partition)] > 5
    log = tmp_path / "worker.log"
    losing = own.model_copy(update={"lose_record_once": f"agent.raw:{partition}:2"})
    run_worker_until(losing, log, lambda: len(event_ids(own)) >= len(events), "every event in bronze", 180)
    ids = event_ids(own)
    assert len(ids) == len(set(ids)) == len(events)
    text = log.read_text()
    assert f"stream partition {topic}[{partition}]: the record at offset 2 never reached the streams" in text
    assert "holds no record" not in text  # read again, not written off as a gap
