"""OTLP/HTTP traces as pure functions: decode an ExportTraceServiceRequest and map OpenTelemetry GenAI spans to agent events."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTracePartialSuccess,
                                                                      ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from schemas.contract import ContractError, Reason

# event ids are derived from (trace, span, kind): an exporter's retry of the same spans yields the same ids,
# which the worker's dedup drops
EVENT_NS = uuid.UUID("6c1f1f5e-5d1b-4c36-9a43-7f0c3e1b7a10")
LLM_OPERATIONS = {"chat", "text_completion", "generate_content"}
ROLES = {"system", "user", "assistant", "tool", "developer"}


def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest | ContractError:
    """The body of POST /v1/traces (application/x-protobuf, or application/json per the OTLP JSON mapping)."""
    req = ExportTraceServiceRequest()
    try:
        if content_type == "application/json":
            json_format.Parse(_hex_ids_to_base64(body), req, ignore_unknown_fields=True)
        else:
            req.ParseFromString(body)
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        return ContractError(Reason.invalid_json if content_type == "application/json" else Reason.not_an_object,
                             f"not an OTLP ExportTraceServiceRequest ({content_type}): {exc}")
    return req


def _hex_ids_to_base64(body: bytes) -> str:
    """OTLP/JSON writes trace and span ids as hex, protobuf's JSON mapping expects base64 for bytes."""
    import base64

    doc = orjson.loads(body)
    for rs in doc.get("resourceSpans", []) if isinstance(doc, dict) else []:
        for ss in rs.get("scopeSpans", []):
            for sp in ss.get("spans", []):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if isinstance(sp.get(k), str) and sp[k]:
                        sp[k] = base64.b64encode(bytes.fromhex(sp[k])).decode()
    return orjson.dumps(doc).decode()


def response(rejected: int, message: str, content_type: str) -> "Any":
    """The OTLP answer: 200 with a partial_success naming what was rejected (the spec's way to report it)."""
    from aiohttp import web

    resp = ExportTraceServiceResponse()
    if rejected:
        resp.partial_success.CopyFrom(ExportTracePartialSuccess(rejected_spans=rejected, error_message=message))
    if content_type == "application/json":
        return web.Response(body=json_format.MessageToJson(resp).encode(), content_type="application/json")
    return web.Response(body=resp.SerializeToString(), content_type="application/x-protobuf")


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attributes(kvs) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass
class Mapped:
    events: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0  # spans that are not GenAI operations this contract has an event for


# the attributes that say whose task a span belongs to; a span without them takes them from its trace (below)
TASK_ATTRIBUTES = ("gen_ai.conversation.id", "session.id", "user.id", "enduser.id", "gen_ai.agent.name",
                   "gen_ai.agent.version", "trajlake.task_id", "trajlake.prompt_variant", "trajlake.task_type")


def trace_context(req: ExportTraceServiceRequest) -> tuple[dict[bytes, dict[str, Any]], set[bytes]]:
    """Per trace id, the task attributes its spans in this request carry (an `invoke_agent` span's first, then
    any other's), and the span ids of `invoke_agent` spans nested in another one of the request.

    The GenAI conventions put `gen_ai.conversation.id` on chat spans "when available" and not on `execute_tool`
    spans: read span by span, a task's tool calls went to the trace id's session, away from its chat turns and
    its frontend events, and its agent version was `service.name` for some events and `gen_ai.agent.name` for
    others. Spans of one trace that reach the collector in different requests cannot be joined here: the SDK's
    `trajlake_sdk.otel.TaskAttributesSpanProcessor` puts the attributes on every span at its source."""
    spans: list[tuple[bytes, bytes, bool, dict[str, Any]]] = []  # (trace id, span id, invoke_agent?, attributes)
    parents: dict[bytes, bytes] = {}
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs = attributes(span.attributes)
                parents[span.span_id] = span.parent_span_id
                spans.append((span.trace_id, span.span_id, attrs.get("gen_ai.operation.name") == "invoke_agent",
                              {k: attrs[k] for k in TASK_ATTRIBUTES if k in attrs}))
    agents = {span_id for _, span_id, is_agent, _ in spans if is_agent}
    nested = set()
    for span_id in agents:
        up, seen = parents.get(span_id), set()
        while up and up not in seen:
            if up in agents:
                nested.add(span_id)
                break
            seen.add(up)
            up = parents.get(up)
    ctx: dict[bytes, dict[str, Any]] = {}
    # the outermost agent span's attributes first, then what any other span of the trace adds
    for trace_id, span_id, is_agent, attrs in sorted(spans, key=lambda s: not (s[2] and s[1] not in nested)):
        known = ctx.setdefault(trace_id, {})
        for k, v in attrs.items():
            known.setdefault(k, v)
    return ctx, nested


def map_request(req: ExportTraceServiceRequest, app: str, default_variant: str, default_user: str) -> Mapped:
    """Every GenAI span of the request → agent/1 events (spans of other operations are skipped and counted)."""
    out = Mapped()
    traces, nested = trace_context(req)
    for rs in req.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                if span.span_id in nested:  # a sub-agent inside the task: the outer agent's span is the task
                    out.skipped += 1
                    continue
                inherited = {**resource, **traces.get(span.trace_id, {})}
                events = span_events(span, inherited, app, default_variant, default_user)
                if events:
                    out.events.extend(events)
                else:
                    out.skipped += 1
    return out


def span_events(span: Span, resource: dict[str, Any], app: str, default_variant: str,
                default_user: str) -> list[dict[str, Any]]:
    """One span → its agent events: chat → llm_call (+ action_proposed when it carries trajlake.action_id),
    execute_tool → tool_call, invoke_agent → task_started + task_ended; anything else → none."""
    attrs = attributes(span.attributes)
    both = {**resource, **attrs}
    op = attrs.get("gen_ai.operation.name") if isinstance(attrs.get("gen_ai.operation.name"), str) else None
    trace_id, span_id = span.trace_id.hex(), span.span_id.hex()

    def envelope(event_type: str, ts_ns: int, body: dict[str, Any], **extra: Any) -> dict[str, Any]:
        body["attributes"] = {"otel.trace_id": trace_id, "otel.span_id": span_id,
                              "otel.parent_span_id": span.parent_span_id.hex() or None,
                              "gen_ai.operation.name": op, **_pick(both, "gen_ai.provider.name", "gen_ai.system",
                                                                       "gen_ai.agent.id", "gen_ai.response.id",
                                                                       "gen_ai.response.finish_reasons")}
        agent = _str(both.get("gen_ai.agent.name")) or _str(resource.get("service.name")) or "otel-agent"
        version = _str(both.get("gen_ai.agent.version")) or _str(resource.get("service.version"))
        sdk = _str(resource.get("telemetry.sdk.name")) or "opentelemetry"
        event = {
            "schema": "agent/1",
            "event_id": str(uuid.uuid5(EVENT_NS, f"{trace_id}:{span_id}:{event_type}")),
            "event_type": event_type,
            "ts": _iso(ts_ns),
            "session_id": _str(both.get("gen_ai.conversation.id")) or _str(both.get("session.id")) or trace_id,
            "task_id": _str(both.get("trajlake.task_id")) or trace_id,
            "user_id": _str(both.get("user.id")) or _str(both.get("enduser.id")) or default_user,
            "agent_version": f"{agent}@{version}" if version else agent,
            "prompt_variant": _str(both.get("trajlake.prompt_variant")) or default_variant,
            "task_type": _str(both.get("trajlake.task_type")),
            "client": {"app": app, "sdk": sdk, **({"version": v} if (v := _str(resource.get("telemetry.sdk.version")))
                                                 else {})},
            "body": body,
        }
        return {**event, **{k: v for k, v in extra.items() if v is not None}}

    latency = max(0.0, (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6)
    failed = span.status.code == Status.STATUS_CODE_ERROR
    if op in LLM_OPERATIONS:
        context = _messages(attrs.get("gen_ai.input.messages"))
        system = _parts_text(_json(attrs.get("gen_ai.system_instructions")))
        if system:
            context = [{"role": "system", "content": system}, *context]
        outputs = _messages(attrs.get("gen_ai.output.messages"))
        output = outputs[0] if outputs else {"role": "assistant", "content": None}
        body: dict[str, Any] = {"model": _str(attrs.get("gen_ai.response.model")) or
                                _str(attrs.get("gen_ai.request.model")) or "unknown",
                                "output": output, "latency_ms": latency}
        if context:
            body.update(context_snapshot=context, context_mode="full")
        for src, dst in (("gen_ai.usage.input_tokens", "tokens_in"), ("gen_ai.usage.output_tokens", "tokens_out")):
            if isinstance(attrs.get(src), int) and not isinstance(attrs.get(src), bool) and attrs[src] >= 0:
                body[dst] = attrs[src]
        events = [envelope("llm_call", span.end_time_unix_nano, body)]
        action_id = _str(attrs.get("trajlake.action_id"))
        if action_id:
            text = output.get("content") if isinstance(output.get("content"), str) else ""
            events.append(envelope("action_proposed", span.end_time_unix_nano, {"output": text, "kind": "message"},
                                   action_id=action_id, intent_id=_str(attrs.get("trajlake.intent_id"))))
        return events
    if op == "execute_tool":
        args = _json(attrs.get("gen_ai.tool.call.arguments"))
        body = {"tool": _str(attrs.get("gen_ai.tool.name")) or span.name or "unknown",
                "arguments": args if isinstance(args, dict) else ({} if args is None else {"value": args}),
                "status": "error" if failed else "ok", "latency_ms": latency}
        if (call_id := _str(attrs.get("gen_ai.tool.call.id"))) is not None:
            body["call_id"] = call_id
        if "gen_ai.tool.call.result" in attrs:
            body["result"] = _json(attrs["gen_ai.tool.call.result"])
        elif failed and span.status.message:
            body["result"] = {"error": span.status.message}
        return [envelope("tool_call", span.end_time_unix_nano, body)]
    if op == "invoke_agent":
        started: dict[str, Any] = {}
        instruction = next((m["content"] for m in _messages(attrs.get("gen_ai.input.messages"))
                            if m["role"] == "user" and isinstance(m.get("content"), str)), None)
        if instruction:
            started["instruction"] = instruction
        return [envelope("task_started", span.start_time_unix_nano, started),
                envelope("task_ended", span.end_time_unix_nano, {"status": "failure" if failed else "success"})]
    return []


def _messages(value: Any) -> list[dict[str, Any]]:
    """gen_ai.{input,output}.messages (JSON string or structured; parts format, or older plain content) →
    contract messages with role, content, tool_calls / tool_call_id."""
    value = _json(value)
    if not isinstance(value, list):
        return []
    out = []
    for m in value:
        if not isinstance(m, dict):
            continue
        role = m["role"] if isinstance(m.get("role"), str) and m["role"] in ROLES else "user"
        msg: dict[str, Any] = {"role": role}
        parts = m.get("parts")
        if not isinstance(parts, list):  # the older flat form: {"role", "content"}
            content = m.get("content")
            msg["content"] = content if isinstance(content, (str, list)) or content is None else orjson.dumps(
                content).decode()
            out.append(msg)
            continue
        texts, calls = [], []
        for p in parts:
            if not isinstance(p, dict):
                continue
            kind = p.get("type")
            if kind == "text" and isinstance(p.get("content"), str):
                texts.append(p["content"])
            elif kind == "tool_call":
                args = p.get("arguments")
                calls.append({"id": str(p.get("id") or ""), "type": "function",
                              "function": {"name": str(p.get("name") or ""),
                                           "arguments": args if isinstance(args, str) else orjson.dumps(args).decode()}})
            elif kind == "tool_call_response":
                msg["role"] = "tool"
                if p.get("id"):
                    msg["tool_call_id"] = str(p["id"])
                resp = p.get("response")
                texts.append(resp if isinstance(resp, str) else orjson.dumps(resp).decode())
        msg["content"] = "".join(texts) if texts else None
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def _parts_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, list):
        texts = [p.get("content") for p in value if isinstance(p, dict) and isinstance(p.get("content"), str)]
        return "".join(texts) or None
    return None


def _json(value: Any) -> Any:
    """Attributes that hold JSON as a string (messages, tool arguments and results) decoded; others as they are."""
    if isinstance(value, str) and value[:1] in ("{", "[", '"'):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    s = value if isinstance(value, str) else str(value)
    return s[:512]


def _pick(attrs: dict[str, Any], *names: str) -> dict[str, Any]:
    return {n: attrs[n] for n in names if n in attrs}


def _iso(ns: int) -> str:
    """A span time as RFC 3339; one no datetime can hold is passed on as digits, which the contract rejects."""
    try:
        ts = datetime.fromtimestamp(ns / 1e9, timezone.utc) if ns else datetime.now(timezone.utc)
    except (OverflowError, ValueError, OSError):
        return str(ns)
    return ts.isoformat(timespec="microseconds")
