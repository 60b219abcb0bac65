"""Property test of the collector's endpoints over HTTP (hypothesis): whatever arrives, the answer is never a 5xx,
and a processed batch answers every event."""
import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from schemas.contract import CONTRACT_DIR
from tests.streams.collector.conftest import KEY, request

pytestmark = pytest.mark.integration

VALID = [json.loads(p.read_text()) for p in sorted((CONTRACT_DIR / "examples" / "valid").glob("*.json"))]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) |
    st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)


@st.composite
def mutated_event(draw):
    """A valid example with one field dropped, replaced by any JSON, or a body key added."""
    e = dict(draw(st.sampled_from(VALID)))
    field = draw(st.sampled_from(sorted(e) + ["body.extra", "client.app"]))
    how = draw(st.sampled_from(["drop", "replace", "keep"]))
    if field == "body.extra":
        e["body"] = {**e["body"], draw(st.text(max_size=8)): draw(json_values)}
    elif field == "client.app":
        e["client"] = {"app": draw(st.text(max_size=8))}
    elif how == "drop":
        e.pop(field)
    elif how == "replace":
        e[field] = draw(json_values)
    return e


batches = st.one_of(
    st.lists(mutated_event(), max_size=8),
    st.builds(lambda evs: {"events": evs}, st.lists(mutated_event(), max_size=8)),
    st.lists(json_values, max_size=5),
    json_values,
)
SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@SLOW
@given(batch=batches, content_type=st.sampled_from(["application/json", "text/plain", "text/plain;charset=UTF-8",
                                                    "application/x-www-form-urlencoded", ""]))
def test_events_endpoint_never_answers_5xx(collector, batch, content_type):
    body = json.dumps(batch).encode()
    status, _, raw = request(f"{collector.url}/v1/events?key={KEY}", body, {"Content-Type": content_type}, "POST")
    assert status < 500, raw
    answer = orjson.loads(raw)
    if status == 200:
        items = batch["events"] if isinstance(batch, dict) else batch
        assert [r["index"] for r in answer["results"]] == list(range(len(items)))
        assert all(r["status"] == "accepted" or (r["reason"] and r["detail"]) for r in answer["results"])
    else:
        assert answer["error"] and answer["detail"]


@SLOW
@given(body=st.binary(max_size=300), auth=st.sampled_from([f"Bearer {KEY}", "Bearer wrong", ""]),
       path=st.sampled_from(["/v1/events", "/v1/traces"]),
       content_type=st.sampled_from(["application/json", "application/x-protobuf", "text/plain"]))
def test_arbitrary_bytes_never_answer_5xx(collector, body, auth, path, content_type):
    headers = {"Content-Type": content_type, **({"Authorization": auth} if auth else {})}
    status, _, raw = request(collector.url + path, body, headers, "POST")
    assert status < 500, raw
    if not auth.endswith(KEY):
        assert status == 401


def _any_value(v):
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[_any_value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=_any_value(x)) for k, x in v.items()]))
    return AnyValue()


GENAI_KEYS = ["gen_ai.operation.name", "gen_ai.request.model", "gen_ai.response.model", "gen_ai.usage.input_tokens",
              "gen_ai.usage.output_tokens", "gen_ai.tool.name", "gen_ai.tool.call.id", "gen_ai.tool.call.arguments",
              "gen_ai.tool.call.result", "gen_ai.conversation.id", "gen_ai.input.messages", "gen_ai.output.messages",
              "gen_ai.system_instructions", "user.id", "trajlake.action_id"]
attr_values = json_values | st.builds(json.dumps, json_values) | st.sampled_from(
    ["chat", "execute_tool", "invoke_agent", "text_completion", "embeddings"])


@SLOW
@given(spans=st.lists(st.tuples(st.dictionaries(st.sampled_from(GENAI_KEYS), attr_values, max_size=8),
                                st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=16),
                                st.integers(0, 2)), max_size=4))
def test_otlp_spans_with_any_genai_attributes_never_answer_5xx(collector, spans):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    req = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[
        Span(trace_id=tid, span_id=tid[:8], name="s", start_time_unix_nano=start, end_time_unix_nano=end,
             status=Status(code=code), attributes=[KeyValue(key=k, value=_any_value(v)) for k, v in attrs.items()])
        for attrs, start, end, tid, code in spans])])])
    status, _, raw = request(collector.url + "/v1/traces", req.SerializeToString(),
                             {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {KEY}"}, "POST")
    assert status < 500, raw
