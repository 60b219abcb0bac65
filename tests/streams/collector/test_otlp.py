"""OpenTelemetry GenAI spans → agent events: the mapping on spans made by the real SDK, and the real OTLP/HTTP exporter
pointed at the collector, through the worker into bronze/events."""
import json

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from schemas.contract import validate_event
from streams.collector.otlp import decode_request, map_request

RESOURCE = Resource.create({"service.name": "support-agent", "service.version": "2.3.0", "user.id": "user_8841"})
INPUT = [{"role": "user", "parts": [{"type": "text", "content": "Refund order 88-1124"}]}]
OUTPUT = [{"role": "assistant", "finish_reason": "tool_call",
           "parts": [{"type": "text", "content": "Let me look."},
                     {"type": "tool_call", "id": "call_1", "name": "lookup_order", "arguments": {"order_id": "88-1124"}}]}]


def agent_run(tracer, fail_tool: bool = False) -> None:
    """What an instrumented agent emits for one task: invoke_agent ⊃ chat, execute_tool, chat."""
    with tracer.start_as_current_span("invoke_agent support", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support-agent",
            "gen_ai.conversation.id": "conv-42", "gen_ai.input.messages": json.dumps(INPUT)}):
        with tracer.start_as_current_span("chat gpt-4o", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 812,
                "gen_ai.usage.output_tokens": 41, "gen_ai.conversation.id": "conv-42",
                "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "You are a support agent."}]),
                "gen_ai.input.messages": json.dumps(INPUT), "gen_ai.output.messages": json.dumps(OUTPUT)}):
            pass
        with tracer.start_as_current_span("execute_tool lookup_order", attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_order",
                "gen_ai.tool.call.id": "call_1", "gen_ai.tool.call.arguments": '{"order_id": "88-1124"}',
                "gen_ai.tool.call.result": '{"status": "delivered", "total": 42.5}',
                "gen_ai.conversation.id": "conv-42"}) as span:
            if fail_tool:
                span.set_status(trace.Status(trace.StatusCode.ERROR, "order service down"))
        with tracer.start_as_current_span("chat gpt-4o", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                "gen_ai.conversation.id": "conv-42", "trajlake.action_id": "a-17",
                "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                    {"type": "text", "content": "I can refund $42.50. Proceed?"}]}])}):
            pass
        with tracer.start_as_current_span("embeddings", attributes={"gen_ai.operation.name": "embeddings"}):
            pass


def sdk_spans(fail_tool: bool = False):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent_run(provider.get_tracer("test"), fail_tool)
    provider.shutdown()
    return exporter.get_finished_spans()


@pytest.mark.unit
def test_genai_spans_from_the_real_sdk_map_onto_contract_valid_agent_events():
    req = decode_request(encode_spans(sdk_spans()).SerializeToString(), "application/x-protobuf")
    mapped = map_request(req, "support-agent", "default", "anon")
    assert mapped.skipped == 1  # embeddings has no event in the contract
    events = sorted(mapped.events, key=lambda e: (e["ts"], e["event_type"]))
    assert [e["event_type"] for e in events] == ["task_started", "llm_call", "tool_call", "action_proposed",
                                                 "llm_call", "task_ended"]
    for e in events:
        assert validate_event(e) is e, validate_event(e)
    assert {e["session_id"] for e in events} == {"conv-42"}
    assert len({e["task_id"] for e in events}) == 1  # one trace = one task
    assert {e["user_id"] for e in events} == {"user_8841"}
    assert {e["agent_version"] for e in events} == {"support-agent@2.3.0"}
    started, llm, tool, proposed = events[0], events[1], events[2], events[3]
    assert started["body"]["instruction"] == "Refund order 88-1124"
    b = llm["body"]
    assert (b["model"], b["tokens_in"], b["tokens_out"]) == ("gpt-4o-2024-08-06", 812, 41)
    assert b["context_snapshot"] == [{"role": "system", "content": "You are a support agent."},
                                     {"role": "user", "content": "Refund order 88-1124"}]
    assert b["output"]["content"] == "Let me look."
    assert b["output"]["tool_calls"][0]["function"] == {"name": "lookup_order", "arguments": '{"order_id":"88-1124"}'}
    assert b["attributes"]["gen_ai.provider.name"] == "openai"
    assert tool["body"] | {"latency_ms": 0} == {"tool": "lookup_order", "call_id": "call_1",
                                                "arguments": {"order_id": "88-1124"},
                                                "result": {"status": "delivered", "total": 42.5}, "status": "ok",
                                                "latency_ms": 0, "attributes": tool["body"]["attributes"]}
    assert (proposed["action_id"], proposed["body"]["output"]) == ("a-17", "I can refund $42.50. Proceed?")
    assert events[-1]["body"]["status"] == "success"
    # the same spans sent again map to the same event ids (an exporter retry is deduplicated downstream)
    again = map_request(decode_request(encode_spans(sdk_spans()).SerializeToString(), "application/x-protobuf"),
                        "support-agent", "default", "anon")
    assert len({e["event_id"] for e in again.events}) == len(again.events)


@pytest.mark.unit
def test_a_failed_tool_span_is_an_error_and_garbage_is_a_typed_error():
    mapped = map_request(decode_request(encode_spans(sdk_spans(fail_tool=True)).SerializeToString(),
                                        "application/x-protobuf"), "a", "default", "anon")
    tool = next(e for e in mapped.events if e["event_type"] == "tool_call")
    assert tool["body"]["status"] == "error"
    err = decode_request(b"\xff\x00garbage", "application/x-protobuf")
    assert err.reason.value == "not_an_object" and "ExportTraceServiceRequest" in err.detail


@pytest.mark.unit
def test_otlp_json_with_hex_ids_is_read_too():
    body = orjson.dumps({"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "bot"}}]}, "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "execute_tool t",
            "startTimeUnixNano": "1764662400000000000", "endTimeUnixNano": "1764662400500000000",
            "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "execute_tool"}},
                           {"key": "gen_ai.tool.name", "value": {"stringValue": "t"}}]}]}]}]})
    mapped = map_request(decode_request(body, "application/json"), "a", "default", "anon")
    (e,) = mapped.events
    assert e["task_id"] == "5b8efff798038103d269b633813fc60c" and e["body"]["latency_ms"] == 500
    assert validate_event(e) is e


@pytest.mark.integration
def test_the_real_otlp_exporter_into_bronze(kafka, tmp_path):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    from lake.readers import read_table
    from schemas.tables import BRONZE_EVENTS
    from tests.conftest import WorkerProcess
    from tests.streams.collector.conftest import OTHER_KEY, CollectorProcess, collector_settings, topic_counts

    s = collector_settings(kafka, tmp_path)
    c = CollectorProcess(s, tmp_path / "collector.log").start()
    try:
        wrong = OTLPSpanExporter(endpoint=c.url + "/v1/traces", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.export(sdk_spans()) == SpanExportResult.FAILURE
        assert topic_counts(s, "agent.raw", "deadletter") == {"agent.raw": 0, "deadletter": 0}
        exporter = OTLPSpanExporter(endpoint=c.url + "/v1/traces", headers={"Authorization": f"Bearer {OTHER_KEY}"},
                                    compression=Compression.Gzip, timeout=10)
        provider = TracerProvider(resource=RESOURCE)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        agent_run(provider.get_tracer("agent"))
        provider.shutdown()
    finally:
        c.stop()
    w = WorkerProcess(s, tmp_path / "worker.log", "--no-ner").start()
    try:
        w.wait_for(lambda: read_table(s, BRONZE_EVENTS, columns=["event_id"]).num_rows >= 6, 120, message="bronze")
    finally:
        w.stop()
    rows = read_table(s, BRONZE_EVENTS).to_pylist()
    assert sorted(r["event_type"] for r in rows) == sorted(["task_started", "llm_call", "tool_call",
                                                            "action_proposed", "llm_call", "task_ended"])
    assert {r["session_id"] for r in rows} == {"conv-42"} and {r["client_app"] for r in rows} == {"support-agent"}
    llm = next(r for r in rows if r["event_type"] == "llm_call" and "812" in r["body"])
    assert json.loads(llm["body"])["model"] == "gpt-4o-2024-08-06"


@pytest.mark.unit
def test_spans_without_the_conversation_take_their_traces_and_a_sub_agent_is_no_second_task():
    """The conventions put gen_ai.conversation.id on chat spans "when available" and never on execute_tool: read
    span by span, the tool call went to the trace id's session and to `service.name`'s agent version, and a
    sub-agent's invoke_agent span started the task a second time."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-api", "user.id": "user_8841"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("invoke_agent refund-bot", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "refund-bot",
            "gen_ai.conversation.id": "conv-42"}):
        with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat",
                                                              "gen_ai.request.model": "gpt-4o"}):
            pass
        with tracer.start_as_current_span("invoke_agent lookup", attributes={
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "lookup-helper"}):
            with tracer.start_as_current_span("execute_tool", attributes={
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_order"}):
                pass
    provider.shutdown()
    spans = exporter.get_finished_spans()
    mapped = map_request(decode_request(encode_spans(spans).SerializeToString(), "application/x-protobuf"),
                         "support-agent", "default", "anon")
    events = mapped.events
    assert sorted(e["event_type"] for e in events) == ["llm_call", "task_ended", "task_started", "tool_call"]
    assert {e["session_id"] for e in events} == {"conv-42"}
    assert {e["agent_version"] for e in events} == {"refund-bot"}
    assert len({e["task_id"] for e in events}) == 1 and mapped.skipped == 1  # the sub-agent's span


@pytest.mark.unit
def test_spans_exported_apart_join_their_task_with_the_sdks_span_processor():
    """A BatchSpanProcessor sends a long task's finished children before its invoke_agent root: without the
    processor the children's request names no conversation, and their events went to the trace id's session."""
    from opentelemetry import baggage, context

    from streams.collector.otlp import TASK_ATTRIBUTES as COLLECTOR_READS
    from trajlake_sdk.otel import TASK_ATTRIBUTES, TaskAttributesSpanProcessor

    assert TASK_ATTRIBUTES == COLLECTOR_READS

    def run(with_processor: bool):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": "support-api"}))
        if with_processor:
            provider.add_span_processor(TaskAttributesSpanProcessor())
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("invoke_agent refund-bot", attributes={
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "refund-bot",
                "gen_ai.conversation.id": "conv-42", "user.id": "user_8841"}):
            with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat",
                                                                  "gen_ai.request.model": "gpt-4o"}):
                pass
            with tracer.start_as_current_span("invoke_agent lookup", attributes={
                    "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "lookup-helper"}) as sub:
                with tracer.start_as_current_span("execute_tool", attributes={
                        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_order"}):
                    pass
        provider.shutdown()
        spans = exporter.get_finished_spans()
        children, root = spans[:-1], spans[-1:]  # two export requests: the children first
        events = []
        for part in (children, root):
            events += map_request(decode_request(encode_spans(part).SerializeToString(), "application/x-protobuf"),
                                  "support-agent", "default", "anon").events
        return events, sub

    events, sub = run(with_processor=False)
    assert {e["session_id"] for e in events} == {"conv-42", events[0]["task_id"]}  # split across two sessions
    events, sub = run(with_processor=True)
    assert {e["session_id"] for e in events} == {"conv-42"} and {e["user_id"] for e in events} == {"user_8841"}
    assert len({e["task_id"] for e in events}) == 1
    assert sub.attributes["gen_ai.agent.name"] == "lookup-helper"  # a sub-agent keeps its own name

    # a parent in another process: the ids come through baggage
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(TaskAttributesSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    token = context.attach(baggage.set_baggage("gen_ai.conversation.id", "conv-7"))
    try:
        with provider.get_tracer("t").start_as_current_span("execute_tool", attributes={
                "gen_ai.operation.name": "execute_tool"}):
            pass
    finally:
        context.detach(token)
    provider.shutdown()
    assert exporter.get_finished_spans()[0].attributes["gen_ai.conversation.id"] == "conv-7"
