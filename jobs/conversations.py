"""An episode's chat conversation (OpenAI message form) rebuilt from its bronze events, with where each action sits."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

# the only events a conversation is built from (readers may skip the rest)
CONVERSATION_EVENTS = ("llm_call", "action_proposed", "user_message", "task_ended")
# the message keys a trainer reads; anything else an agent put into a context snapshot is dropped
_MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


@dataclass
class Conversation:
    """The messages a model saw and said in one episode, in order.

    `action_at` maps each proposed action to the index of the assistant message that carried it, so a step's
    prompt is `messages[:action_at[action_id]]`. `grader` holds the references an outside grader reported at
    task end (τ-bench's expected actions and outputs), when there were any.
    """

    messages: list[dict[str, Any]] = field(default_factory=list)
    action_at: dict[str, int] = field(default_factory=dict)
    grader: dict[str, Any] | None = None
    _tools: list[dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def first_user_turn(self) -> int | None:
        """Index just past the first user message: the task as the user posed it."""
        for i, m in enumerate(self.messages):
            if m["role"] == "user":
                return i + 1
        return None

    def user_text(self) -> str:
        """Everything the user said, for near-duplicate detection of prompts."""
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user" and isinstance(m["content"], str))

    def tools(self) -> list[dict[str, Any]]:
        """Function schemas of the tools the agent called here, inferred from the calls (the contract carries no
        tool definitions): name and the argument names with their JSON types. Computed once: call it when the
        conversation is complete (every format of an episode embeds the same list; none changes it)."""
        if self._tools is not None:
            return self._tools
        seen: dict[str, dict[str, str]] = {}
        for m in self.messages:
            for call in m.get("tool_calls") or ():
                fn = call.get("function") or {}
                name = fn.get("name")
                if not name:
                    continue
                props = seen.setdefault(name, {})
                try:
                    args = orjson.loads(fn.get("arguments") or "{}")
                except orjson.JSONDecodeError:
                    args = {}
                for k, v in (args.items() if isinstance(args, dict) else ()):
                    props.setdefault(k, _json_type(v))
        self._tools = [{"type": "function", "function": {
            "name": name, "description": f"{name} (signature inferred from observed calls)",
            "parameters": {"type": "object", "properties": {k: {"type": t} for k, t in sorted(props.items())}}}}
            for name, props in sorted(seen.items())]
        return self._tools


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    return "string"


def message(raw: dict[str, Any]) -> dict[str, Any]:
    """One chat message with the keys trainers read; tool-call arguments as JSON strings (OpenAI's form)."""
    out = {k: raw[k] for k in _MESSAGE_KEYS if raw.get(k) is not None}
    out.setdefault("content", None)
    if out.get("tool_calls"):
        out["tool_calls"] = [_tool_call(c) for c in out["tool_calls"]]
    if out["content"] is not None and not isinstance(out["content"], str):
        out["content"] = _content_text(out["content"])
    return out


def _content_text(content: Any) -> str:
    """One string for a message's content: OpenAI's content parts ([{"type": "text", "text": …}, …]) as their
    text joined by newlines; anything else (images, audio, an agent's own structure) as JSON text. A string either
    way, because every row of a column must have one type for `datasets` to load the file."""
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text")
            and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"] for p in content)
    return orjson.dumps(content).decode()


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    fn = dict(call.get("function") or {})
    if not isinstance(fn.get("arguments"), str):
        fn["arguments"] = orjson.dumps(fn.get("arguments") or {}).decode()
    return {"id": call.get("id"), "type": call.get("type", "function"),
            "function": {"name": fn.get("name"), "arguments": fn["arguments"]}}


def replaced_positions(action_at: dict[str, int], before: list[dict[str, Any]],
                       after: list[dict[str, Any]]) -> dict[str, int]:
    """Where each placed action's message is once a full snapshot `after` replaced `before`.

    Usually `after` restates `before` and goes on, and nothing moves. An agent that trims its context (a sliding
    window) or changes its system prompt shifts them: an action is then re-placed at the same message (equal
    role, content and tool calls), counted from the end, as a context is trimmed from its start; an action whose
    message is gone is no longer placed. Keeping the old index had pointed an action at whatever message took
    its place: an edit then overwrote a user's turn."""
    if after[:len(before)] == before:
        return dict(action_at)
    out = {}
    for action, i in action_at.items():
        if i >= len(before):
            continue
        m = before[i]
        later = sum(1 for x in before[i + 1:] if x == m)
        same = [j for j, x in enumerate(after) if x == m]
        if later < len(same):
            out[action] = same[-1 - later]
    return out


def conversation(events: Iterable[tuple[str, str | None, dict[str, Any]]]) -> Conversation:
    """The conversation of one episode from its events `(event_type, action_id, body)` in event-time order.

    Two sources, by what the agent reported:
    - the agent's own view, when its LLM calls carry context snapshots: each call's snapshot (the messages that
      were new to it, or all of them when `context_mode` is full) and then its output. This is exactly what the
      model saw, tool results and system prompt included.
    - the product's view otherwise: user messages and the actions the agent proposed, as user and assistant
      turns.
    An action is placed at the assistant message that carried it: in the agent's view, the latest assistant
    message when the action was proposed.
    """
    events = list(events)
    agent_view = any(t == "llm_call" and body.get("context_snapshot") for t, _, body in events)
    conv = Conversation()
    msgs = conv.messages
    for event_type, action_id, body in events:
        if event_type == "task_ended" and isinstance(body.get("grader"), dict):
            conv.grader = body["grader"]
        if agent_view:
            if event_type == "llm_call":
                snapshot = [message(m) for m in body.get("context_snapshot") or () if isinstance(m, dict)]
                if body.get("context_mode") == "full" and msgs:
                    # a full snapshot restates the context: keep it, and the actions whose messages are in it
                    before = msgs[:]
                    msgs[:] = snapshot
                    conv.action_at = replaced_positions(conv.action_at, before, msgs)
                else:
                    msgs.extend(snapshot)
                out = body.get("output")
                if isinstance(out, dict) and (out.get("content") or out.get("tool_calls")):
                    msgs.append(message({**out, "role": "assistant"}))
            elif event_type == "action_proposed" and action_id:
                last = next((i for i in range(len(msgs) - 1, -1, -1) if msgs[i]["role"] == "assistant"), None)
                if last is not None:
                    conv.action_at[action_id] = last
        else:
            if event_type == "user_message" and body.get("text"):
                msgs.append({"role": "user", "content": body["text"]})
            elif event_type == "action_proposed" and action_id:
                conv.action_at[action_id] = len(msgs)
                msgs.append({"role": "assistant", "content": body.get("output") or ""})
    return conv
