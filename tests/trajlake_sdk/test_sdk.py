"""The agent SDK: contract-valid events from context managers, never blocking the agent, delivered by Kafka or the collector."""
import threading
import uuid

import pytest

from schemas.contract import validate_event
from trajlake_sdk import AgentTracker


class Recorder:
    """A transport that keeps what it is given (the SDK's pure side is what is under test here)."""

    def __init__(self, gate: threading.Event | None = None):
        self.events, self.gate = [], gate

    def send(self, events):
        if self.gate is not None:
            self.gate.wait(30)
        self.events.extend(events)

    def close(self):
        pass


@pytest.mark.unit
def test_a_task_emits_contract_valid_events_with_ids_propagated():
    rec = Recorder()
    tracker = AgentTracker(rec, agent_version="support-agent@2.3.0", prompt_variant="concise-v2", app="support")
    with tracker.task("s-1", "user-1", task_type="refund", instruction="Refund order 88") as task:
        with task.llm_call("gpt-4o", context=[{"role": "user", "content": "refund 88"}]) as call:
            call.record("Looking it up", tokens_in=12, tokens_out=3, cost_usd=0.001)
        with task.tool_call("lookup_order", {"order_id": "88"}, call_id="c1") as tool:
            tool.result = {"status": "delivered"}
        action = task.propose("I can refund $42.50. Proceed?")
    tracker.close()
    types = [e["event_type"] for e in rec.events]
    assert types == ["task_started", "llm_call", "tool_call", "action_proposed", "task_ended"]
    for e in rec.events:
        assert validate_event(e) is e, validate_event(e)
    assert {e["task_id"] for e in rec.events} == {task.task_id} and {e["session_id"] for e in rec.events} == {"s-1"}
    assert rec.events[3]["action_id"] == action
    assert rec.events[1]["body"]["tokens_in"] == 12 and rec.events[1]["body"]["latency_ms"] >= 0
    assert rec.events[-1]["body"]["status"] == "success"
    assert task.ids["task_id"] == task.task_id


@pytest.mark.unit
def test_a_repeat_task_carries_its_marker():
    rec = Recorder()
    tracker = AgentTracker(rec, agent_version="a@1", prompt_variant="p")
    with tracker.task("s-1", "u", repeat_of_task_id="t-earlier"):
        pass
    tracker.close()
    assert rec.events[0]["body"] == {"repeat_of_task_id": "t-earlier"} and validate_event(rec.events[0]) is rec.events[0]


@pytest.mark.unit
def test_an_exception_ends_the_task_as_a_failure_and_the_tool_call_as_an_error():
    rec = Recorder()
    tracker = AgentTracker(rec, agent_version="a@1", prompt_variant="p")
    with pytest.raises(KeyError):
        with tracker.task("s-1", "u") as task:
            with task.tool_call("lookup", {"id": 1}):
                raise KeyError("no such order")
    tracker.close()
    tool, ended = rec.events[1], rec.events[2]
    assert tool["body"]["status"] == "error" and "no such order" in str(tool["body"]["result"])
    assert ended["body"]["status"] == "failure" and "KeyError" in ended["body"]["attributes"]["error"]
    assert all(validate_event(e) is e for e in rec.events)


@pytest.mark.unit
def test_emitting_never_waits_for_the_network():
    """The transport hangs (a dead network); the agent goes on, and what does not fit the queue is counted."""
    gate = threading.Event()
    rec = Recorder(gate)
    tracker = AgentTracker(rec, agent_version="a@1", prompt_variant="p", max_queue=10)
    done = threading.Event()

    def agent():
        for _ in range(50):
            with tracker.task("s", "u"):
                pass
        done.set()
    threading.Thread(target=agent, daemon=True).start()
    assert done.wait(10), "the agent was blocked by its telemetry"
    assert tracker.emitter.dropped > 0
    gate.set()
    tracker.close()
    assert len(rec.events) + tracker.emitter.dropped == 100


@pytest.mark.integration
def test_sdk_events_reach_bronze_by_kafka_and_by_the_collector_and_reactions_reference_the_action(
        kafka, tmp_path):
    import json

    from lake.readers import read_table
    from schemas.contract import CONTRACT_DIR
    from schemas.tables import BRONZE_EVENTS
    from tests.conftest import WorkerProcess
    from tests.streams.collector.conftest import KEY, OTHER_KEY, CollectorProcess, collector_settings, post_events

    s = collector_settings(kafka, tmp_path)
    c = CollectorProcess(s, tmp_path / "collector.log").start()
    try:
        by_kafka = AgentTracker.kafka(s, agent_version="support-agent@2.3.0", prompt_variant="v")
        by_http = AgentTracker.collector(c.url, OTHER_KEY, agent_version="support-agent@2.3.0", prompt_variant="v",
                                         app="support-agent")
        with by_kafka.task("s-k", "user-1") as t1:
            a1 = t1.propose("first")
        with by_http.task("s-h", "user-2") as t2:
            with t2.llm_call("gpt-4o") as call:
                call.record("second", tokens_in=1, tokens_out=1)
            a2 = t2.propose("second")
        by_kafka.close()
        by_http.close()
        assert by_http.emitter.sent == 4 and by_http.emitter.failed == 0 and not by_http.emitter.transport.rejected
        # the browser's reaction to the HTTP agent's action, through the same collector
        reaction = {**json.loads((CONTRACT_DIR / "examples/valid/action_accepted.json").read_text()),
                    "event_id": str(uuid.uuid4()), **{k: v for k, v in t2.ids.items()}, "action_id": a2}
        del reaction["client"]
        assert post_events(c, [reaction], key=KEY)[2]["accepted"] == 1
    finally:
        c.stop()
    w = WorkerProcess(s, tmp_path / "worker.log", "--no-ner").start()
    try:
        w.wait_for(lambda: read_table(s, BRONZE_EVENTS, columns=["event_id"]).num_rows >= 8, 120, message="bronze")
    finally:
        w.stop()
    rows = read_table(s, BRONZE_EVENTS, columns=["event_type", "action_id", "task_id", "client_app"]).to_pylist()
    assert sorted(r["event_type"] for r in rows) == sorted(
        ["task_started", "action_proposed", "task_ended"] * 2 + ["llm_call", "action_accepted"])
    assert {r["action_id"] for r in rows if r["event_type"] == "action_proposed"} == {a1, a2}
    accepted = next(r for r in rows if r["event_type"] == "action_accepted")
    assert (accepted["action_id"], accepted["task_id"], accepted["client_app"]) == (a2, t2.task_id, "helpdesk-web")


class _Collector:
    """A local HTTP server standing in for the collector's body limit: 413 over `limit` bytes, else every event
    accepted (the real collector's answer shape)."""

    def __init__(self, limit: int, status: int = 200):
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies: list[list] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if status != 200 or len(body) > limit:
                    self.send_response(413 if status == 200 else status)
                    self.end_headers()
                    return
                events = json.loads(body)
                outer.bodies.append(events)
                answer = json.dumps({"results": [{"status": "accepted"} for _ in events]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _event(i: int, size: int = 100) -> dict:
    return {"schema": "agent/1", "event_id": str(uuid.uuid4()), "session_id": "s", "body": {"text": "x" * size, "i": i}}


@pytest.mark.unit
def test_the_collector_transport_keeps_bodies_under_the_limit_and_halves_what_is_still_too_large():
    """200 full-context calls made one body over the collector's 1 MiB, answered 413, and all were lost."""
    from decimal import Decimal

    from trajlake_sdk import CollectorTransport

    server = _Collector(limit=20_000)
    try:
        # the transport's own cap is above the server's: the 413s are answered by halving
        t = CollectorTransport(server.url, "k", max_body_bytes=64_000, retries=0)
        events = [_event(i, 1_000) for i in range(60)] + [_event(60, 30_000)]  # the last is too large on its own
        events[0]["body"]["cost"] = Decimal("0.5")  # not JSON: sent as its text, not a lost batch
        assert t.send(events) == 1
        got = [e["body"]["i"] for body in server.bodies for e in body]
        assert sorted(got) == list(range(60)) and all(len(b) <= 20 for b in server.bodies)
        assert server.bodies[0][0]["body"]["cost"] == "0.5"
    finally:
        server.close()
    down = _Collector(limit=0, status=503)
    try:
        assert CollectorTransport(down.url, "k", retries=1).send([_event(0)]) == 1  # counted, not raised
    finally:
        down.close()


@pytest.mark.unit
def test_kafka_sends_that_failed_are_counted_not_sent():
    """kafka-python's flush returns when the sends are done, failed ones included: they were counted as sent."""
    from trajlake_sdk import AgentTracker, KafkaTransport

    class Future:
        def __init__(self, ok):
            self.ok, self.exception = ok, None if ok else TimeoutError("delivery timed out")

        def failed(self):
            return not self.ok

    class Producer:
        def __init__(self):
            self.n = 0

        def send(self, topic, key, value):
            self.n += 1
            return Future(self.n % 2 == 0)

        def flush(self):
            pass

        def close(self):
            pass

    class Settings:
        def topic(self, name):
            return "tl." + name

    transport = KafkaTransport.__new__(KafkaTransport)
    transport.settings, transport.producer = Settings(), Producer()
    tracker = AgentTracker(transport, agent_version="a@1", prompt_variant="p")
    with tracker.task("s-1", "u-1"):
        pass
    tracker.close()
    assert (tracker.emitter.sent, tracker.emitter.failed) == (1, 1)
