"""The collector over HTTP against the real broker: per-event answers, dead letters in bronze, auth, limits, CORS."""
import json
import uuid

import orjson
import pytest

from lake.readers import read_table
from schemas.contract import CONTRACT_DIR
from schemas.tables import BRONZE_DEADLETTER, BRONZE_EVENTS
from tests.conftest import WorkerProcess
from tests.streams.collector.conftest import (KEY, OTHER_KEY, CollectorProcess, collector_settings, post_events,
                                              request, topic_counts)

pytestmark = pytest.mark.integration

EXAMPLES = CONTRACT_DIR / "examples"
RAW = ("frontend.raw", "agent.raw", "deadletter")


def example(name: str, **update) -> dict:
    return {**json.loads((EXAMPLES / "valid" / f"{name}.json").read_text()), "event_id": str(uuid.uuid4()), **update}


def test_valid_events_land_in_bronze_and_invalid_ones_in_the_dead_letter_table_with_their_reason(collector, tmp_path):
    s = collector.settings
    good = [example("task_started"), example("action_proposed"), example("action_accepted"),
            {k: v for k, v in example("action_shown").items() if k != "client"}]
    bad = [{**example("action_edited"), "body": {}}, {**example("feedback"), "ts": "1999-12-31T23:59:59Z"}, 42,
           {**example("action_rejected"), "client": {"app": "someone-else"}}]
    status, _, answer = post_events(collector, good[:2] + bad[:2] + good[2:] + bad[2:])
    assert status == 200, answer
    assert (answer["accepted"], answer["rejected"]) == (4, 4)
    by_index = {r["index"]: r for r in answer["results"]}
    assert [by_index[i]["status"] for i in range(8)] == ["accepted"] * 2 + ["rejected"] * 2 + ["accepted"] * 2 + \
        ["rejected"] * 2
    assert [by_index[i]["reason"] for i in (2, 3, 6, 7)] == ["schema_violation", "bad_timestamp", "not_an_object",
                                                              "wrong_app"]
    assert all(by_index[i]["detail"] for i in (2, 3, 6, 7))
    # a retry of the whole batch (the client never saw the answer) changes nothing downstream
    assert post_events(collector, good[:2] + bad[:2] + good[2:] + bad[2:])[0] == 200

    w = WorkerProcess(s, tmp_path / "worker.log", "--no-ner").start()
    try:
        w.wait_for(lambda: read_table(s, BRONZE_EVENTS, columns=["event_id"]).num_rows >= 4 and
                   read_table(s, BRONZE_DEADLETTER).num_rows >= 4, 120, message="bronze to fill")
        rows = read_table(s, BRONZE_EVENTS, columns=["event_id", "client_app"]).to_pylist()
        dead = read_table(s, BRONZE_DEADLETTER).to_pylist()
    finally:
        w.stop()
    assert sorted(r["event_id"] for r in rows) == sorted(e["event_id"] for e in good)
    stamped = next(r for r in rows if r["event_id"] == good[3]["event_id"])
    assert stamped["client_app"] == "helpdesk-web"  # the write key named the app
    assert sorted(d["reason"] for d in dead) == ["bad_timestamp", "not_an_object", "schema_violation", "wrong_app"]
    assert all(d["stage"] == "collect" and d["source_topic"] == "collector:helpdesk-web:/v1/events" for d in dead)
    assert orjson.loads(next(d for d in dead if d["reason"] == "not_an_object")["original"]) == 42


def test_no_key_or_a_wrong_key_is_refused_and_nothing_is_written(collector):
    batch = [example("action_accepted"), {"not": "an event"}]
    for headers, key in (({}, None), ({}, "wk_wrong"), ({}, KEY[:-1]), ({"X-Trajlake-Key": "nope"}, None),
                         ({"Authorization": "Basic " + KEY}, None)):
        status, hdrs, answer = post_events(collector, batch, key=key, headers=headers)
        assert status == 401, answer
        assert answer["error"] in ("missing_write_key", "invalid_write_key") and "Bearer" in hdrs["WWW-Authenticate"]
    status, _, _ = request(collector.url + "/v1/events?key=wk_wrong", orjson.dumps(batch),
                           {"Content-Type": "text/plain"}, "POST")
    assert status == 401
    assert topic_counts(collector.settings, *RAW) == {t: 0 for t in RAW}


def test_each_key_writes_as_its_own_app(collector):
    status, _, answer = post_events(collector, [example("task_started", client={"app": "support-agent"})],
                                    key=OTHER_KEY)
    assert status == 200 and answer["accepted"] == 1


def test_sendbeacon_style_text_plain_with_the_key_in_the_query_is_accepted(collector):
    e = example("action_accepted")
    status, _, body = request(f"{collector.url}/v1/events?key={KEY}", orjson.dumps([e]),
                              {"Content-Type": "text/plain;charset=UTF-8"}, "POST")
    assert status == 200 and orjson.loads(body)["accepted"] == 1


def test_size_limits(kafka, tmp_path):
    s = collector_settings(kafka, tmp_path, collector_max_body_bytes=64 * 1024, collector_max_event_bytes=2048,
                           collector_max_batch_events=5)
    c = CollectorProcess(s, tmp_path / "collector.log").start()
    try:
        huge = [example("user_message", body={"text": "x" * 70_000})]
        status, _, answer = post_events(c, huge)
        assert status == 413 and answer["error"] == "body_too_large"
        status, _, answer = post_events(c, [example("action_accepted") for _ in range(6)])
        assert status == 413 and answer["error"] == "batch_too_large" and "at most 5" in answer["detail"]
        assert topic_counts(s, *RAW) == {t: 0 for t in RAW}  # refused requests write nothing
        big = example("user_message", body={"text": "y" * 3000})
        status, _, answer = post_events(c, [big, example("action_accepted")])
        assert status == 200 and [r["status"] for r in answer["results"]] == ["rejected", "accepted"]
        assert answer["results"][0]["reason"] == "event_too_large"
        assert topic_counts(s, *RAW) == {"frontend.raw": 1, "agent.raw": 0, "deadletter": 1}  # the big one is kept
        # OTLP has its own, larger limit: an exporter batches up to 512 spans with their messages and never
        # retries a 413, so a body over the events' limit was a lost batch
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        with provider.get_tracer("t").start_as_current_span("execute_tool", attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "t",
                "gen_ai.tool.call.result": '"' + "z" * 100_000 + '"'}):
            pass
        provider.shutdown()
        body = encode_spans(spans.get_finished_spans()).SerializeToString()
        assert len(body) > 64 * 1024
        status, _, _ = request(c.url + "/v1/traces", body, {"Content-Type": "application/x-protobuf",
                                                             "Authorization": f"Bearer {KEY}"}, "POST")
        assert status == 200
    finally:
        c.stop()


def test_rate_limit_per_key(kafka, tmp_path):
    s = collector_settings(kafka, tmp_path, collector_rate_per_second=0.5, collector_rate_burst=5)
    c = CollectorProcess(s, tmp_path / "collector.log").start()
    try:
        assert post_events(c, [example("action_accepted") for _ in range(5)])[0] == 200
        status, hdrs, answer = post_events(c, [example("action_accepted")])
        assert status == 429 and answer["error"] == "rate_limited" and int(hdrs["Retry-After"]) >= 1
        # the other app's key has a bucket of its own
        assert post_events(c, [example("task_started", client={"app": "support-agent"})], key=OTHER_KEY)[0] == 200
        status, _, answer = post_events(c, [example("action_accepted") for _ in range(6)], key=OTHER_KEY)
        assert status == 413 and "burst" in answer["detail"]  # could never pass: not a 429 to retry forever
        assert topic_counts(s, *RAW) == {"frontend.raw": 5, "agent.raw": 1, "deadletter": 0}
    finally:
        c.stop()


def test_cors_for_configured_origins_only(kafka, tmp_path):
    allowed, other = "http://app.example.test", "http://evil.example.test"
    s = collector_settings(kafka, tmp_path, collector_cors_origins=(allowed,))
    c = CollectorProcess(s, tmp_path / "collector.log").start()
    try:
        status, hdrs, _ = request(c.url + "/v1/events", None, {
            "Origin": allowed, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization"}, "OPTIONS")
        assert status == 200 and hdrs["Access-Control-Allow-Origin"] == allowed
        assert "AUTHORIZATION" in hdrs["Access-Control-Allow-Headers"].upper()
        status, hdrs, _ = request(c.url + "/v1/events", None, {
            "Origin": other, "Access-Control-Request-Method": "POST"}, "OPTIONS")
        assert status == 403 and "Access-Control-Allow-Origin" not in hdrs
        status, hdrs, answer = post_events(c, [example("action_accepted")], headers={"Origin": allowed})
        assert status == 200 and hdrs["Access-Control-Allow-Origin"] == allowed
        # a simple (text/plain) request needs no preflight, so the collector itself refuses other origins
        status, _, answer = post_events(c, [example("action_accepted")], headers={"Origin": other})
        assert status == 403 and answer["error"] == "origin_not_allowed"
        assert topic_counts(s, "frontend.raw")["frontend.raw"] == 1
    finally:
        c.stop()


def test_health_readiness_and_the_tracker_files(collector):
    assert request(collector.url + "/health")[0] == 200
    status, _, body = request(collector.url + "/ready")
    assert status == 200 and orjson.loads(body)["status"] == "ready"
    status, hdrs, body = request(collector.url + "/tracker.js")
    assert status == 200 and "javascript" in hdrs["Content-Type"] and b"sendBeacon" in body
    assert request(collector.url + "/demo")[0] == 200


def test_collect_without_a_broker_says_so_in_one_line(kafka, tmp_path):
    import subprocess
    import sys

    from infra.kafka.broker import free_port
    from tests.conftest import REPO, settings_env

    s = collector_settings(kafka, tmp_path).model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    r = subprocess.run([sys.executable, "-m", "trajlake.cli", "collect"], env=settings_env(s), capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "trajlake up" in r.stderr
