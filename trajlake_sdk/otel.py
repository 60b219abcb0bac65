"""An OpenTelemetry span processor that copies a task's ids onto every span of it, so spans exported apart still join."""
from __future__ import annotations

from typing import Any

from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

__all__ = ["TASK_ATTRIBUTES", "TaskAttributesSpanProcessor"]

# the attributes the collector reads a span's session, task, user and agent from (streams/collector/otlp.py; a test
# checks the two lists agree)
TASK_ATTRIBUTES = ("gen_ai.conversation.id", "session.id", "user.id", "enduser.id", "gen_ai.agent.name",
                   "gen_ai.agent.version", "trajlake.task_id", "trajlake.prompt_variant", "trajlake.task_type")
_AGENT_OWN = ("gen_ai.agent.name", "gen_ai.agent.version")


class TaskAttributesSpanProcessor(SpanProcessor):
    """Gives each starting span the task attributes it lacks, from its parent span (or, for a parent in another
    process, from the context's baggage under the same keys).

    Why: the GenAI conventions put `gen_ai.conversation.id` on chat spans only "when available" and on tool spans
    not at all, and a `BatchSpanProcessor` exports a long task's finished children before its `invoke_agent` root.
    The collector can lend a span its trace's attributes only within one export request, so the children of such a
    task went to the trace id's session, away from the task's other events and its frontend events. With this
    processor every span carries them itself. Add it before the exporting processor:

        provider.add_span_processor(TaskAttributesSpanProcessor())
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(...)))

    An `invoke_agent` span (a sub-agent) keeps its own agent name and version; it takes the ids."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        own = span.attributes or {}
        missing = [k for k in TASK_ATTRIBUTES if k not in own]
        if own.get("gen_ai.operation.name") == "invoke_agent":
            missing = [k for k in missing if k not in _AGENT_OWN]
        if not missing:
            return
        parent = trace.get_current_span(parent_context)
        inherited: dict[str, Any] = dict(getattr(parent, "attributes", None) or {})
        lent = baggage.get_all(parent_context)
        for key in missing:
            value = inherited.get(key, lent.get(key))
            if isinstance(value, (str, bool, int, float)):
                span.set_attribute(key, value)

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
