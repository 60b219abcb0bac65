"""τ-bench replay: each real GPT-4o airline trajectory becomes one session of frontend/1 and agent/1 events."""
from __future__ import annotations

import heapq
import itertools
import json
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

EST = timezone(timedelta(hours=-5))
# τ-bench's policy says "The current time is 2024-05-15 15:00:00 EST"
EPOCH = datetime(2024, 5, 15, 15, 0, tzinfo=EST)
NAMESPACE = uuid.UUID("6f1c9a52-4d4e-4a53-9d1e-7a6c2f3b8e10")
MODEL = "gpt-4o-2024-08-06"
AGENT_VERSION = "tau-gpt-4o"
PROMPT_VARIANT = "airline-policy-v1"
# list prices of gpt-4o per token, to give the replay a realistic cost column
USD_IN, USD_OUT = 2.5e-6, 10e-6
ESCALATION_TOOL = "transfer_to_human_agents"
# trajectory i of loop k starts at EPOCH + i × 7 min + k × 17 s: the loops overlap in event time, so `--loop N`
# with `--speed F` sends N sessions where one would be (before: loops 3 days apart, waited out at --speed)
TRAJECTORY_SPACING, LOOP_OFFSET = timedelta(minutes=7), timedelta(seconds=17)


@dataclass(frozen=True)
class Emitted:
    """One event and the logical topic it goes to (frontend.raw or agent.raw)."""

    topic: str
    event: dict[str, Any]


def load_trajectories(path: Path) -> list[dict[str, Any]]:
    """The records of a τ-bench results file; ValueError naming the file when it is not one."""
    shape = "a JSON list of {task_id, trial, reward, info, traj}"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as exc:  # not JSON (JSON Lines is not either), or not UTF-8
        raise ValueError(f"{path} is not a τ-bench results file ({shape}): {exc}") from None
    if not isinstance(data, list) or not data or not all(
            isinstance(r, dict) and {"task_id", "trial", "traj"} <= r.keys() for r in data):
        raise ValueError(f"{path} is not a τ-bench results file ({shape})")
    return data


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def task_type(record: dict[str, Any]) -> str:
    """The first database-changing action τ-bench expects (book_reservation, …), or 'inquiry'."""
    actions = (record.get("info") or {}).get("task", {}).get("actions") or []
    return actions[0]["name"] if actions else "inquiry"


def trajectory_events(record: dict[str, Any], index: int, loop: int = 0) -> Iterator[Emitted]:
    """The contract events of one trajectory, in event-time order. Deterministic for (record, index, loop)."""
    rng = random.Random(f"{record['task_id']}/{record['trial']}/{loop}")
    key = f"tau/{record['task_id']}/{record['trial']}/{loop}"
    ids = iter(uuid.uuid5(NAMESPACE, f"{key}/{n}") for n in range(1_000_000))
    session_id = f"s-{uuid.uuid5(NAMESPACE, key)}"
    task_id = f"t-{uuid.uuid5(NAMESPACE, key + '/task')}"
    user_id = (record.get("info") or {}).get("task", {}).get("user_id") or "anonymous"
    clock = trajectory_start(index, loop)
    base = {"session_id": session_id, "task_id": task_id, "user_id": user_id, "agent_version": AGENT_VERSION,
            "prompt_variant": PROMPT_VARIANT, "task_type": task_type(record),
            "client": {"app": "tau-bench-replay", "sdk": "trajlake", "version": "1"}}

    def emit(family: str, event_type: str, body: dict[str, Any], **extra: Any) -> Emitted:
        event = {"schema": f"{family}/1", "event_id": str(next(ids)), "event_type": event_type,
                 "ts": clock.isoformat(timespec="milliseconds"), **base, **extra, "body": body}
        return Emitted(f"{family}.raw", event)

    traj = record["traj"]
    system = [m for m in traj if m["role"] == "system"]
    yield emit("agent", "task_started", {})
    pending_context: list[dict[str, Any]] = [_message(m) for m in system]
    last_action: str | None = None
    intent = f"i-{next(ids)}"
    calls_by_id: dict[str, dict[str, Any]] = {}
    step = 0
    for m in traj:
        role = m["role"]
        if role == "system":
            continue
        if role == "user":
            clock += timedelta(seconds=rng.uniform(4, 40))
            intent = f"i-{next(ids)}"
            yield emit("frontend", "user_message", {"text": m.get("content") or ""},
                       action_id=last_action, intent_id=intent)
            pending_context.append(_message(m))
        elif role == "assistant":
            latency = rng.uniform(600, 3500)
            clock += timedelta(milliseconds=latency)
            context_chars = sum(len(json.dumps(c)) for c in pending_context)
            output = _message(m)
            out_text = (m.get("content") or "") + json.dumps(m.get("tool_calls") or "")
            tokens_in, tokens_out = _tokens("x" * context_chars) + 1500 * step, _tokens(out_text)
            yield emit("agent", "llm_call", {
                "model": MODEL, "context_snapshot": pending_context, "context_mode": "full" if step == 0 else "delta",
                "output": output, "tokens_in": tokens_in, "tokens_out": tokens_out, "latency_ms": round(latency, 1),
                "cost_usd": round(tokens_in * USD_IN + tokens_out * USD_OUT, 6)}, intent_id=intent)
            pending_context = []
            step += 1
            for tc in m.get("tool_calls") or []:
                calls_by_id[tc["id"]] = tc
            if m.get("content"):
                last_action = f"a-{next(ids)}"
                yield emit("agent", "action_proposed", {"output": m["content"], "kind": "message"},
                           action_id=last_action, intent_id=intent)
                clock += timedelta(milliseconds=rng.uniform(50, 300))
                yield emit("frontend", "action_shown", {"surface": "chat"}, action_id=last_action, intent_id=intent)
        elif role == "tool":
            call = calls_by_id.get(m.get("tool_call_id", ""), {})
            name = m.get("name") or call.get("function", {}).get("name") or "unknown"
            try:
                arguments = json.loads(call.get("function", {}).get("arguments") or "{}")
            except json.JSONDecodeError:
                arguments = {"raw": call.get("function", {}).get("arguments")}
            content = m.get("content") or ""
            try:
                result: Any = json.loads(content)
            except json.JSONDecodeError:
                result = content
            latency = rng.uniform(20, 400)
            clock += timedelta(milliseconds=latency)
            status = "error" if isinstance(result, str) and result.startswith("Error") else "ok"
            yield emit("agent", "tool_call", {"tool": name, "call_id": m.get("tool_call_id") or "",
                                              "arguments": arguments if isinstance(arguments, dict) else {"value": arguments},
                                              "result": result, "status": status, "latency_ms": round(latency, 1),
                                              "cost_usd": 0.0}, intent_id=intent)
            pending_context.append(_message(m))
            if name == ESCALATION_TOOL:
                clock += timedelta(seconds=1)
                yield emit("frontend", "escalated", {"channel": "human_agent", "reason": arguments.get("summary", "") if isinstance(arguments, dict) else ""},
                           action_id=last_action)
    reward = float(record.get("reward") or 0.0)
    clock += timedelta(seconds=rng.uniform(1, 5))
    yield emit("agent", "task_ended", {
        "status": "success" if reward >= 1.0 else "failure", "reward": reward,
        "grader": {"source": "tau-bench", "task_id": record["task_id"], "trial": record["trial"],
                   "expected_actions": (record.get("info") or {}).get("task", {}).get("actions") or [],
                   "expected_outputs": (record.get("info") or {}).get("task", {}).get("outputs") or []}})
    clock += timedelta(seconds=rng.uniform(1, 10))
    if reward >= 1.0:
        yield emit("frontend", "task_completed", {"human_approved": True})
    else:
        yield emit("frontend", "task_abandoned", {"reason": "goal not reached"})


def _message(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m["role"], "content": m.get("content")}
    if m.get("tool_calls"):
        out["tool_calls"] = m["tool_calls"]
    if m.get("tool_call_id"):
        out["tool_call_id"] = m["tool_call_id"]
    if m.get("name"):
        out["name"] = m["name"]
    return out


def trajectory_start(index: int, loop: int = 0) -> datetime:
    """The event time of a trajectory's first event."""
    return EPOCH + index * TRAJECTORY_SPACING + loop * LOOP_OFFSET


def replay_events(records: list[dict[str, Any]], limit: int | None = None, loops: int = 1) -> Iterator[Emitted]:
    """All events of the first `limit` trajectories, `loops` times over (fresh ids and times per loop), in
    event-time order across sessions, as they would arrive live: a replay at `--speed` interleaves the sessions
    that overlap instead of playing one after another.

    Lazy: a trajectory's events are generated once the replay reaches its start, so only the sessions open at
    a time are held (the trajectories' start times are known ahead, and each one's events are in time order)."""
    chosen = records[:limit] if limit else records
    starts = heapq.merge(*(_starts(len(chosen), loop) for loop in range(loops)))
    upcoming = next(starts, None)
    heap: list[tuple[datetime, int, Emitted, Iterator[Emitted]]] = []
    order = itertools.count()  # ties keep the order they were generated in, and never compare events
    while heap or upcoming is not None:
        while upcoming is not None and (not heap or upcoming[0] <= heap[0][0]):
            _, loop, i = upcoming
            events = trajectory_events(chosen[i], i, loop)
            first = next(events, None)
            if first is not None:
                heapq.heappush(heap, (_event_time(first), next(order), first, events))
            upcoming = next(starts, None)
        _, _, item, events = heapq.heappop(heap)
        yield item
        following = next(events, None)
        if following is not None:
            heapq.heappush(heap, (_event_time(following), next(order), following, events))


def _starts(n: int, loop: int) -> Iterator[tuple[datetime, int, int]]:
    return ((trajectory_start(i, loop), loop, i) for i in range(n))


def _event_time(item: Emitted) -> datetime:
    return datetime.fromisoformat(item.event["ts"])
