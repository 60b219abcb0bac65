"""The agent SDK: context managers (task → LLM call / tool call / action proposed) that emit agent/1 events off the agent's thread."""
from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator, Protocol

import orjson

__all__ = ["AgentTracker", "Task", "LlmCall", "ToolCall", "KafkaTransport", "CollectorTransport", "agent_event"]
SDK, VERSION = "trajlake-py", "1.0.0"
log = logging.getLogger("trajlake.sdk")


# ---- the pure part: one contract event -----------------------------------------------------------------
def agent_event(event_type: str, *, session_id: str, task_id: str, user_id: str, agent_version: str,
                prompt_variant: str, body: dict[str, Any], task_type: str | None = None, action_id: str | None = None,
                intent_id: str | None = None, app: str | None = None, ts: datetime | None = None) -> dict[str, Any]:
    """An agent/1 event with a fresh event_id."""
    client = {"sdk": SDK, "version": VERSION, **({"app": app} if app else {})}
    e = {"schema": "agent/1", "event_id": str(uuid.uuid4()), "event_type": event_type,
         "ts": (ts or datetime.now(timezone.utc)).isoformat(timespec="microseconds"), "session_id": session_id,
         "task_id": task_id, "user_id": user_id, "agent_version": agent_version, "prompt_variant": prompt_variant,
         "task_type": task_type, "client": client, "body": body}
    if action_id is not None:
        e["action_id"] = action_id
    if intent_id is not None:
        e["intent_id"] = intent_id
    return e


# ---- transports: run on the emitter's thread, never the agent's ----------------------------------------
class Transport(Protocol):
    def send(self, events: list[dict[str, Any]]) -> int: ...   # how many of `events` could not be delivered
    def close(self) -> None: ...


def _dumps(event: dict[str, Any]) -> bytes:
    # a value JSON cannot hold (a Decimal, a pydantic model in a tool result) is sent as its text: one such value
    # made orjson raise and the whole batch was lost; as text, only a value the contract refuses is refused
    return orjson.dumps(event, default=str)


class KafkaTransport:
    """Straight to the raw topics with the project's producer (idempotent, acks=all, keyed by session_id)."""

    def __init__(self, settings, **producer_overrides):
        from streams.producer import build_producer

        self.settings = settings
        self.producer = build_producer(settings, **producer_overrides)

    def send(self, events: list[dict[str, Any]]) -> int:
        futures = [self.producer.send(self.settings.topic("agent.raw"), key=e["session_id"].encode(), value=_dumps(e))
                   for e in events]
        self.producer.flush()
        # kafka-python's flush returns when the sends are done, failed ones included: each send's own future says
        # whether the broker has the record (the emitter counted failed sends as sent before)
        failed = [f for f in futures if f.failed()]
        if failed:
            log.warning("trajlake: %d of %d events not delivered to Kafka: %s", len(failed), len(events),
                        failed[0].exception)
        return len(failed)

    def close(self) -> None:
        self.producer.close()


class CollectorTransport:
    """Through the collector's POST /v1/events, retrying 429/5xx/network errors with backoff (event ids dedup).

    Requests are kept under `max_body_bytes` (the collector refuses a body over its limit, 1 MiB by default, as a
    whole: 200 full-context LLM calls passed it and were all lost), and a batch the collector still finds too
    large is halved until it takes it; an event too large on its own is counted as not delivered. Retries back
    off up to 30 s between attempts, for about five minutes by default, before the batch counts as not
    delivered."""

    def __init__(self, url: str, write_key: str, timeout: float = 10.0, retries: int = 15,
                 max_body_bytes: int = 512 * 1024):
        self.url, self.key, self.timeout, self.retries = url.rstrip("/") + "/v1/events", write_key, timeout, retries
        self.max_body_bytes = max_body_bytes
        self.rejected: list[dict[str, Any]] = []  # per-event answers the collector refused (with reasons)

    def send(self, events: list[dict[str, Any]]) -> int:
        failed, body, size = 0, [], 2
        for e in events:
            raw = _dumps(e)
            if body and size + len(raw) + 1 > self.max_body_bytes:
                failed += self._post(body)
                body, size = [], 2
            body.append(raw)
            size += len(raw) + 1
        return failed + (self._post(body) if body else 0)

    def _post(self, raws: list[bytes]) -> int:
        """POST one body of encoded events; how many of them could not be delivered."""
        body = b"[" + b",".join(raws) + b"]"
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url, data=body, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self.key}"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    answer = orjson.loads(r.read())
                bad = [x for x in answer.get("results", []) if x["status"] == "rejected"]
                if bad:
                    log.warning("collector rejected %d event(s): %s", len(bad), bad[0].get("detail"))
                    self.rejected.extend(bad)
                return 0
            except urllib.error.HTTPError as e:
                if e.code == 413:  # too large for the collector as a whole: halve it, or give up on one event
                    if len(raws) == 1:
                        log.warning("trajlake: an event of %d bytes is over the collector's request limit", len(body))
                        return 1
                    half = len(raws) // 2
                    return self._post(raws[:half]) + self._post(raws[half:])
                if e.code != 429 and e.code < 500:
                    raise RuntimeError(f"collector refused the batch ({e.code}): {e.read()[:300]!r}") from None
                wait = float(e.headers.get("Retry-After") or 0)
            except OSError:
                wait = 0.0
            if attempt < self.retries:
                time.sleep(max(wait, min(30.0, 0.25 * 2 ** attempt)))
        log.warning("trajlake: collector at %s did not take %d events after %d attempts", self.url, len(raws),
                    self.retries + 1)
        return len(raws)

    def close(self) -> None:
        pass


class Emitter:
    """A bounded queue drained by one daemon thread. `emit` never blocks: when the queue is full (the network is
    down for long), the event is dropped and counted, because an agent must not wait on telemetry."""

    def __init__(self, transport: Transport, max_queue: int = 10_000, batch: int = 200, linger: float = 0.2):
        self.transport, self.batch, self.linger = transport, batch, linger
        self.q: queue.Queue = queue.Queue(maxsize=max_queue)
        self.dropped = self.sent = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trajlake-sdk", daemon=True)
        self._thread.start()

    def emit(self, event: dict[str, Any]) -> None:
        try:
            self.q.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while not (self._stop.is_set() and self.q.empty()):
            try:
                first = self.q.get(timeout=self.linger)
            except queue.Empty:
                continue
            events = [first]
            while len(events) < self.batch:
                try:
                    events.append(self.q.get_nowait())
                except queue.Empty:
                    break
            try:
                lost = self.transport.send(events) or 0
                self.sent += len(events) - lost
                self.failed += lost
            except Exception as exc:  # telemetry must never take the agent down; count and log
                self.failed += len(events)
                log.warning("trajlake: %d events not delivered: %s", len(events), exc)

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop."""
        self._stop.set()
        self._thread.join(timeout)
        self.transport.close()


# ---- the API ---------------------------------------------------------------------------------------------
class AgentTracker:
    """Entry point: `with tracker.task(session_id, user_id) as task: ...`.

    Build one per process: AgentTracker.kafka(settings, ...) or AgentTracker.collector(url, key, ...)."""

    def __init__(self, transport: Transport, *, agent_version: str, prompt_variant: str, app: str | None = None,
                 max_queue: int = 10_000):
        self.agent_version, self.prompt_variant, self.app = agent_version, prompt_variant, app
        self.emitter = Emitter(transport, max_queue=max_queue)

    @classmethod
    def kafka(cls, settings, **kw) -> "AgentTracker":
        return cls(KafkaTransport(settings), **kw)

    @classmethod
    def collector(cls, url: str, write_key: str, **kw) -> "AgentTracker":
        return cls(CollectorTransport(url, write_key), **kw)

    def task(self, session_id: str, user_id: str, *, task_id: str | None = None, task_type: str | None = None,
             instruction: str | None = None, sla_seconds: float | None = None,
             repeat_of_task_id: str | None = None) -> "Task":
        """A task; `repeat_of_task_id` marks a rerun of an earlier task of the user (delegation is measured
        among repeat tasks)."""
        return Task(self, session_id, user_id, task_id or f"t-{uuid.uuid4()}", task_type, instruction, sla_seconds,
                    repeat_of_task_id)

    def close(self, timeout: float = 30.0) -> None:
        self.emitter.close(timeout)

    def __enter__(self) -> "AgentTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Task:
    """One agent task: task_started on enter, task_ended on exit (failure when an exception leaves the block)."""

    def __init__(self, tracker: AgentTracker, session_id: str, user_id: str, task_id: str, task_type: str | None,
                 instruction: str | None, sla_seconds: float | None, repeat_of_task_id: str | None = None):
        self.tracker, self.session_id, self.user_id, self.task_id = tracker, session_id, user_id, task_id
        self.task_type, self.instruction, self.sla_seconds = task_type, instruction, sla_seconds
        self.repeat_of_task_id = repeat_of_task_id
        self.status: str | None = None
        self.reward: float | None = None
        self.intent_id: str | None = None

    def emit(self, event_type: str, body: dict[str, Any], **ids: Any) -> dict[str, Any]:
        t = self.tracker
        e = agent_event(event_type, session_id=self.session_id, task_id=self.task_id, user_id=self.user_id,
                        agent_version=t.agent_version, prompt_variant=t.prompt_variant, task_type=self.task_type,
                        app=t.app, body=body, intent_id=ids.pop("intent_id", None) or self.intent_id, **ids)
        t.emitter.emit(e)
        return e

    def __enter__(self) -> "Task":
        body: dict[str, Any] = {}
        if self.instruction is not None:
            body["instruction"] = self.instruction
        if self.sla_seconds is not None:
            body["sla_seconds"] = self.sla_seconds
        if self.repeat_of_task_id is not None:
            body["repeat_of_task_id"] = self.repeat_of_task_id
        self.emit("task_started", body)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = self.status or ("failure" if exc_type else "success")
        body: dict[str, Any] = {"status": status, "reward": self.reward}
        if exc_type:
            body["attributes"] = {"error": f"{exc_type.__name__}: {exc}"[:2000]}
        self.emit("task_ended", body)

    def end(self, status: str, reward: float | None = None) -> None:
        """Say how the task ended (success, failure, escalated, unknown) instead of inferring it on exit."""
        self.status, self.reward = status, reward

    @contextmanager
    def llm_call(self, model: str, context: list[dict[str, Any]] | None = None) -> Iterator["LlmCall"]:
        call = LlmCall(model, context)
        started = time.perf_counter()
        try:
            yield call
        except BaseException as exc:
            call.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.emit("llm_call", call.body((time.perf_counter() - started) * 1000))

    @contextmanager
    def tool_call(self, tool: str, arguments: dict[str, Any] | None = None,
                  call_id: str | None = None) -> Iterator["ToolCall"]:
        call = ToolCall(tool, arguments or {}, call_id)
        started = time.perf_counter()
        try:
            yield call
        except BaseException as exc:
            call.status, call.result = "error", call.result if call.result is not None else {"error": str(exc)}
            raise
        finally:
            self.emit("tool_call", call.body((time.perf_counter() - started) * 1000))

    def propose(self, output: str, *, kind: str = "message", action_id: str | None = None,
                intent_id: str | None = None) -> str:
        """A user-visible output. Returns its action_id: hand it to the frontend, whose reactions reference it."""
        action_id = action_id or f"a-{uuid.uuid4()}"
        self.emit("action_proposed", {"output": output, "kind": kind}, action_id=action_id, intent_id=intent_id)
        return action_id

    @property
    def ids(self) -> dict[str, str]:
        """What the frontend tracker needs to attribute its events to this task."""
        return {"session_id": self.session_id, "task_id": self.task_id, "user_id": self.user_id,
                "agent_version": self.tracker.agent_version, "prompt_variant": self.tracker.prompt_variant}


class LlmCall:
    def __init__(self, model: str, context: list[dict[str, Any]] | None):
        self.model, self.context = model, context
        self.output: dict[str, Any] = {"role": "assistant", "content": None}
        self.usage: dict[str, Any] = {}
        self.error: str | None = None

    def record(self, output: dict[str, Any] | str, *, tokens_in: int | None = None, tokens_out: int | None = None,
               cost_usd: float | None = None, model: str | None = None) -> None:
        """The model's answer (a message dict, or its text) and usage."""
        self.output = {"role": "assistant", "content": output} if isinstance(output, str) else output
        self.model = model or self.model
        self.usage = {k: v for k, v in (("tokens_in", tokens_in), ("tokens_out", tokens_out),
                                        ("cost_usd", cost_usd)) if v is not None}

    def body(self, latency_ms: float) -> dict[str, Any]:
        b: dict[str, Any] = {"model": self.model, "output": self.output, "latency_ms": latency_ms, **self.usage}
        if self.context is not None:
            b.update(context_snapshot=self.context, context_mode="full")
        if self.error:
            b["attributes"] = {"error": self.error[:2000]}
        return b


class ToolCall:
    def __init__(self, tool: str, arguments: dict[str, Any], call_id: str | None):
        self.tool, self.arguments, self.call_id = tool, arguments, call_id
        self.result: Any = None
        self.status = "ok"

    def body(self, latency_ms: float) -> dict[str, Any]:
        b = {"tool": self.tool, "arguments": self.arguments, "status": self.status, "latency_ms": latency_ms,
             "result": self.result}
        if self.call_id:
            b["call_id"] = self.call_id
        return b
