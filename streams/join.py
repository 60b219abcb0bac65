"""The action ⋈ outcome join as pure functions: per-session state in, step and episode rows (with revisions) out.

Rows are always recomputed from the task's collected events sorted by (ts, event_id), never from arrival order,
so the stream and a batch recomputation over the same events agree (stream/batch parity), and out-of-order
arrival only changes *when* a row is emitted, not what it says.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Iterable

import orjson
from rapidfuzz.distance import Levenshtein

from schemas.contract import parse_timestamp

REACTIONS = ("action_shown", "action_accepted", "action_rejected", "action_edited", "action_undone", "action_retried")
TERMINAL_REACTIONS = {"action_accepted", "action_rejected", "action_edited", "action_undone", "action_retried"}
TERMINAL_TASK = {"task_completed", "task_abandoned"}
# user events that count as "the next meaningful action" after an agent action
MEANINGFUL = {"action_accepted", "action_rejected", "action_edited", "action_undone", "action_retried",
              "user_message", "task_completed", "task_abandoned", "task_reopened", "escalated", "delegated",
              "opted_out", "feedback"}
# outcome of a step, most telling first
STEP_OUTCOMES = (("undone", "action_undone"), ("edited", "action_edited"), ("rejected", "action_rejected"),
                 ("retried", "action_retried"), ("accepted", "action_accepted"))
CONTENT_EXCLUDE = ("revision", "closed_reason", "closed_at")
# the policy version of an event that carries none: join state from before versions were recorded, and batch
# paths that join events no scrubber saw (synthetic backfills). Sorts below every real version.
UNRECORDED_POLICY = "unrecorded"


@dataclass(frozen=True)
class Timeouts:
    step_s: float = 600
    episode_s: float = 1800
    grace_s: float = 30         # wait this long after a user's terminal event for the agent's task_ended
    retention_s: float = 3600   # forget a closed task's events once it has had none for this long


def _ms(ts: str) -> int:
    return int(parse_timestamp(ts).timestamp() * 1000)


def compact(event: dict[str, Any]) -> dict[str, Any]:
    """The part of a clean event the join keeps in state."""
    b = event.get("body") or {}
    c: dict[str, Any] = {"id": event["event_id"], "t": event["event_type"], "ts": _ms(event["ts"]),
                         "a": event.get("action_id"), "i": event.get("intent_id")}
    if event.get("policy_version"):
        c["pv"] = event["policy_version"]
    et = event["event_type"]
    if et == "action_proposed":
        c["out"] = b.get("output", "")
    elif et == "action_edited":
        c["fv"] = b.get("final_value", "")
    elif et == "llm_call":
        c.update(tin=b.get("tokens_in") or 0, tout=b.get("tokens_out") or 0, cost=b.get("cost_usd") or 0.0,
                 lat=b.get("latency_ms") or 0.0)
    elif et == "tool_call":
        c.update(cost=b.get("cost_usd") or 0.0, lat=b.get("latency_ms") or 0.0, err=b.get("status") == "error")
    elif et == "task_started":
        c["sla"] = b.get("sla_seconds")
        if b.get("repeat_of_task_id"):
            c["rep"] = b["repeat_of_task_id"]
    elif et == "task_ended":
        c.update(status=b.get("status"), reward=b.get("reward"))
    elif et == "task_completed":
        c["kpi"] = b.get("kpi")
    elif et == "feedback":
        c["rating"] = b.get("rating")
    return c


def dimensions(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event.get(k) for k in ("session_id", "task_id", "user_id", "agent_version", "prompt_variant",
                                      "task_type")}


# ---- rows from a task's events ------------------------------------------------------------------------
def _ordered(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: (e["ts"], e["id"]))


def step_rows(dims: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Content of every step of a task whose proposal has arrived, keyed by action_id."""
    evs = _ordered(events)
    proposals = [e for e in evs if e["t"] == "action_proposed" and e["a"]]
    rows: dict[str, dict[str, Any]] = {}
    prev_ts = None
    for index, p in enumerate(proposals):
        aid = p["a"]
        reactions = [e for e in evs if e["a"] == aid and e["t"] in REACTIONS]
        kinds = {e["t"] for e in reactions}
        outcome = next((name for name, t in STEP_OUTCOMES if t in kinds), None)
        if outcome is None:
            later_same_intent = any(q["ts"] > p["ts"] and q["i"] == p["i"] and p["i"] for q in proposals[index + 1:])
            outcome = "superseded" if later_same_intent else "ignored"
        edits = [e for e in reactions if e["t"] == "action_edited"]
        final_value = edits[-1]["fv"] if edits else None
        first_reaction = next((e for e in reactions if e["t"] in TERMINAL_REACTIONS), None)
        # the user's next move on *this* action: before the agent proposes its next one
        until = proposals[index + 1]["ts"] if index + 1 < len(proposals) else None
        next_action = next((e for e in evs if e["ts"] >= p["ts"] and e["t"] in MEANINGFUL
                            and (until is None or e["ts"] < until)), None)
        work = [e for e in evs if e["t"] in ("llm_call", "tool_call") and e["ts"] <= p["ts"]
                and (prev_ts is None or e["ts"] > prev_ts)]
        llm = [e for e in work if e["t"] == "llm_call"]
        tools = [e for e in work if e["t"] == "tool_call"]
        rows[aid] = {
            "step_id": f"{dims['session_id']}/{aid}", **dims, "action_id": aid, "intent_id": p["i"],
            "step_index": index, "proposed_at": p["ts"], "output": p["out"], "outcome": outcome,
            "shown": "action_shown" in kinds, "accepted": "action_accepted" in kinds,
            "rejected": "action_rejected" in kinds, "edited": bool(edits), "undone": "action_undone" in kinds,
            "retried": "action_retried" in kinds, "final_value": final_value,
            "edit_distance": None if final_value is None else Levenshtein.normalized_distance(p["out"], final_value),
            "reaction_ms": None if first_reaction is None else first_reaction["ts"] - p["ts"],
            "next_action_ms": None if next_action is None else next_action["ts"] - p["ts"],
            "llm_calls": len(llm), "tool_calls": len(tools), "tool_errors": sum(1 for t in tools if t.get("err")),
            "tokens_in": sum(e["tin"] for e in llm), "tokens_out": sum(e["tout"] for e in llm),
            "cost_usd": round(sum(e["cost"] for e in work), 9), "latency_ms": round(sum(e["lat"] for e in work), 3),
            "policy_version": policy_version([p, *reactions, *work]),  # the events whose content the row carries
            "date": _date(p["ts"]),
        }
        prev_ts = p["ts"]
    return rows


def episode_row(dims: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Content of a task's episode row from all its events."""
    evs = _ordered(events)
    kinds = [e["t"] for e in evs]
    steps = step_rows(dims, evs)
    started = next((e["ts"] for e in evs if e["t"] == "task_started"), evs[0]["ts"])
    closing = [e for e in evs if e["t"] in TERMINAL_TASK or e["t"] == "task_reopened"]
    last = closing[-1] if closing else None
    first_terminal = next((e for e in closing if e["t"] in TERMINAL_TASK), None)
    reopened = first_terminal is not None and any(e["t"] == "task_reopened" and e["ts"] >= first_terminal["ts"]
                                                  for e in closing)
    escalated = "escalated" in kinds
    if last is not None and last["t"] == "task_reopened" and reopened:
        outcome = "reopened"
    elif last is not None and last["t"] == "task_completed":
        outcome = "completed"
    elif escalated:
        outcome = "escalated"
    elif last is not None and last["t"] == "task_abandoned":
        outcome = "abandoned"
    else:
        outcome = "timeout"
    # when the user first met an end of the task (its first completion, abandonment or escalation), whatever came
    # after: a reopened task's poor outcome began at the completion it reopened, an escalation after an abandonment
    # at the abandonment. An opt-out from then on is an opt-out after the outcome (jobs/heuristics.py)
    first_escalation = next((e for e in evs if e["t"] == "escalated"), None)
    ends = [e["ts"] for e in (first_terminal, first_escalation) if e is not None]
    ended = evs[-1]["ts"]
    work = [e for e in evs if e["t"] in ("llm_call", "tool_call")]
    llm = [e for e in work if e["t"] == "llm_call"]
    tools = [e for e in work if e["t"] == "tool_call"]
    task_ended = next((e for e in reversed(evs) if e["t"] == "task_ended"), None)
    completed = next((e for e in reversed(evs) if e["t"] == "task_completed"), None)
    first_start = next((e for e in evs if e["t"] == "task_started"), None)
    sla = first_start and first_start.get("sla")
    opted_out = next((e for e in reversed(evs) if e["t"] == "opted_out"), None)  # the latest: "one after t" is it
    return {
        "episode_id": f"{dims['session_id']}/{dims['task_id']}", **dims, "started_at": started, "ended_at": ended,
        "duration_ms": ended - started, "outcome": outcome, "n_steps": len(steps),
        "n_user_messages": kinds.count("user_message"),
        **{k: sum(1 for s in steps.values() if s[k]) for k in ("accepted", "rejected", "edited", "undone", "retried")},
        "escalated": escalated, "delegated": "delegated" in kinds, "opted_out": "opted_out" in kinds,
        "repeat_of_task_id": first_start and first_start.get("rep"),
        "outcome_at": min(ends) if ends else None, "opted_out_at": opted_out and opted_out["ts"],
        "reopened": reopened, "feedback_up": sum(1 for e in evs if e["t"] == "feedback" and e.get("rating") == "up"),
        "feedback_down": sum(1 for e in evs if e["t"] == "feedback" and e.get("rating") == "down"),
        "sla_seconds": sla, "agent_status": task_ended and task_ended.get("status"),
        "external_reward": task_ended and task_ended.get("reward"), "kpi": completed and completed.get("kpi"),
        "llm_calls": len(llm), "tool_calls": len(tools), "tool_errors": sum(1 for t in tools if t.get("err")),
        "tokens_in": sum(e["tin"] for e in llm), "tokens_out": sum(e["tout"] for e in llm),
        "cost_usd": round(sum(e["cost"] for e in work), 9), "latency_ms": round(sum(e["lat"] for e in work), 3),
        "policy_version": policy_version(evs),
        "date": _date(started),
    }


def policy_version(events: Iterable[dict[str, Any]]) -> str:
    """The oldest privacy policy among a row's events: a row is only as clean as its least-scrubbed input, so a
    query for rows a faulty policy touched finds every one of them."""
    return min((e.get("pv") or UNRECORDED_POLICY for e in events), key=_policy_order, default=UNRECORDED_POLICY)


def _policy_order(version: str) -> tuple[int, str]:
    # privacy-10 is newer than privacy-9: compare the trailing number, not the text
    head, _, number = version.rpartition("-")
    return (int(number), head) if number.isdigit() else (-1, version)


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).date().isoformat()


def content_hash(row: dict[str, Any]) -> str:
    return hashlib.sha1(orjson.dumps({k: v for k, v in row.items() if k not in CONTENT_EXCLUDE},
                                     option=orjson.OPT_SORT_KEYS)).hexdigest()


# ---- the streaming state machine ------------------------------------------------------------------------
@dataclass(frozen=True)
class Emit:
    kind: str  # "step" | "episode"
    row: dict[str, Any]


class Folded(str, Enum):
    """What `fold_event` did with an event."""

    folded = "folded"
    duplicate = "duplicate"      # a resend or a redelivery
    forgotten = "forgotten"      # its task closed and passed retention: never merged into a partial episode
    state_full = "state_full"    # the session's state would outgrow its budget


# The byte budget bounds the whole saved state, not only the events. Every task keeps its own count (`bytes`), the
# session's is their sum plus a fixed part. Per task: its record (with its dimensions and id) and a staged
# episode row (the dimensions again). Per kept event: its compact form and its `seen` entry; for a proposal also
# a staged step row (the dimensions, its ids and its output again) and its revision record; for an edit its
# final value again. Fixed sizes round measured ones up; everything that varies is counted in UTF-8 bytes.
STATE_FORMAT = 3              # bumped when the count's unit changes: older states are recounted once
_SESSION_BYTES = 256          # the session's own fields
_EVENT_OVERHEAD = 40          # per kept event: JSON punctuation, its `seen` entry's timestamp
_ROW_BYTES = 1_280            # a staged step or episode row, without its dimensions, ids and texts
_STEP_META_BYTES = 96         # a step's revision record, without its key
_TASK_BYTES = 768             # a task's record, without its dimensions and id (with where they came from)
_MARKER_BYTES = 96            # what stays of a forgotten task, without its id


def new_session() -> dict[str, Any]:
    return {"seen": {}, "tasks": {}, "wall": 0.0, "max_ts": 0, "size": _SESSION_BYTES, "v": STATE_FORMAT}


def _b(value: Any) -> int:
    return len(value.encode()) if isinstance(value, str) else 0


def _dims_bytes(dims: dict[str, Any]) -> int:
    return len(orjson.dumps(dims))


def _event_bytes(c: dict[str, Any], dims_bytes: int, session_id_bytes: int) -> int:
    n = len(orjson.dumps(c)) + _b(c["id"]) + _EVENT_OVERHEAD
    if c["t"] == "action_proposed":
        # its step row: dimensions, step_id (session + action), action_id, intent_id, output; its revision key
        n += (_ROW_BYTES + dims_bytes + session_id_bytes + 3 * _b(c.get("a")) + _b(c.get("i"))
              + len(orjson.dumps(c.get("out"))) + _STEP_META_BYTES)
    elif c["t"] == "action_edited":
        n += len(orjson.dumps(c.get("fv")))
    elif c["t"] == "task_started":
        n += _b(c.get("rep"))  # again in the staged episode row
    return n


def _task_bytes(task_id: str, dims_bytes: int, session_id_bytes: int) -> int:
    # its record (key, dimensions) and its staged episode row (episode_id = session + task, dimensions)
    return _TASK_BYTES + _b(task_id) + dims_bytes + _ROW_BYTES + dims_bytes + session_id_bytes + _b(task_id)


def _marker(task_wall: float) -> dict[str, Any]:
    return {"forgotten": True, "closed": True, "events": [], "wall": task_wall, "bytes": _MARKER_BYTES}


def _recount(state: dict[str, Any]) -> None:
    """Bring a state saved by an older format up to this one: tasks get the session's clock as their own (else a
    busy session's old closed tasks would never pass retention), forgotten tasks become markers, `seen` keeps only
    the ids of kept events, and the byte count is made afresh."""
    kept: dict[str, Any] = {}
    size = _SESSION_BYTES
    for task_id, task in list(state["tasks"].items()):
        task.setdefault("wall", state["wall"])
        if task["forgotten"]:
            state["tasks"][task_id] = task = _marker(task["wall"])
            task["bytes"] += _b(task_id)
        else:
            sid = _b(task["dims"].get("session_id"))
            db = _dims_bytes(task["dims"])
            task["bytes"] = _task_bytes(task_id, db, sid) + sum(_event_bytes(c, db, sid) for c in task["events"])
            for c in task["events"]:
                kept[c["id"]] = state["seen"].get(c["id"], c["ts"])
        size += task["bytes"]
    state.update(seen=kept, size=size, v=STATE_FORMAT)


def state_bytes(state: dict[str, Any]) -> int:
    """A bound on the size of a session's serialised state, its outbox included: what the byte budget limits.

    Kept as a running count (per task, and their sum); a state saved by an older format is recounted once."""
    if state.get("v") != STATE_FORMAT or "size" not in state:
        _recount(state)
    return state["size"]


def fold_event(state: dict[str, Any], event: dict[str, Any], wall: float, max_bytes: int | None = None,
               t: Timeouts | None = None) -> Folded:
    """Fold one clean event into its session's state without emitting.

    With `max_bytes`, an event that would take `state_bytes` past that many bytes is refused (`state_full`) and
    the state is left as it was: a session's state is one changelog record, and the broker refuses records over
    its limit. Room comes back as the session's closed tasks pass retention. An event of a task that closed and
    passed retention is refused too (`forgotten`). The worker dead-letters both. With `t`, only the other open
    tasks that the session's newer event time can time out are marked for evaluation; without it, all of them."""
    eid = event["event_id"]
    size = state_bytes(state)
    if eid in state["seen"]:
        return Folded.duplicate
    task_id = event["task_id"]
    task = state["tasks"].get(task_id)
    if task is not None and task["forgotten"]:
        return Folded.forgotten
    c = compact(event)
    sid = _b(event["session_id"])
    if task is None:
        dims, origin = task_dimensions(None, {}, event, c)
        db = _dims_bytes(dims)
        grow = _task_bytes(task_id, db, sid)
    else:
        dims, origin = task_dimensions(task["dims"], task, event, c)
        grow = 0
        if dims is not task["dims"]:
            # the task's record, its episode row and every step row it has staged so far get the new dimensions
            rows = 2 + sum(1 for e in task["events"] if e["t"] == "action_proposed")
            grow = rows * (_dims_bytes(dims) - _dims_bytes(task["dims"]))
        db = _dims_bytes(dims)
    grow += _event_bytes(c, db, sid)
    if max_bytes is not None and size + grow > max_bytes:
        return Folded.state_full
    state["size"] = size + grow
    state["seen"][eid] = c["ts"]
    state["wall"] = wall
    if c["ts"] > state["max_ts"]:
        state["max_ts"] = c["ts"]
        # the session moving on in event time can time out a step or the episode of its other open tasks
        # (`_evaluate`): those are evaluated now, not at their wall-clock timeout, which `next_due` relies on
        for other in state["tasks"].values():
            if not other["closed"] and (t is None or _event_due(other, t) < c["ts"]):
                other["dirty"] = True
    if task is None:
        task = state["tasks"][task_id] = {"dims": dims, "events": [], "closed": False, "rev": -1, "hash": None,
                                          "steps": {}, "terminal_wall": None, "forgotten": False, "bytes": 0}
    task["dims"] = dims
    task.update(origin)
    task["bytes"] = task.get("bytes", 0) + grow
    task["events"].append(c)
    task["wall"] = wall
    task["dirty"] = True
    if c["t"] in TERMINAL_TASK and task["terminal_wall"] is None:
        task["terminal_wall"] = wall
    return Folded.folded


def task_dimensions(dims: dict[str, Any] | None, origin: dict[str, Any], event: dict[str, Any],
                    c: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A task's dimensions after `event` (compacted: `c`), and where they now come from if that changed.

    The dimensions are those of the task's earliest event in event time (ts, then id), and its type that of the
    earliest event that has one: the same whatever order the events arrive in, on the stream's two raw topics
    or in a batch recomputation. `origin` holds `first` and `type_at`, the (ts, id) they came from (a state saved
    before they were kept has neither, and keeps the dimensions it has). Returns `dims` itself when unchanged."""
    at = [c["ts"], c["id"]]
    changed: dict[str, Any] = {}
    new = dims
    if dims is None:
        new, changed["first"], changed["type_at"] = dimensions(event), at, None
    elif origin.get("first") is not None and at < origin["first"]:
        new, changed["first"] = {**dimensions(event), "task_type": dims.get("task_type")}, at
    type_at = changed.get("type_at", origin.get("type_at"))
    if event.get("task_type") and (
            (type_at is None and (new.get("task_type") is None or dims is None)) or (type_at is not None and at < type_at)):
        new, changed["type_at"] = {**new, "task_type": event["task_type"]}, at
    if dims is not None and new == dims:
        return dims, changed  # where they come from may still have moved earlier
    return new, changed


def _event_due(task: dict[str, Any], t: Timeouts) -> float:
    """The session's event time (ms) past which one of the task's open steps or its episode times out, from what
    its last evaluation recorded (the newest event time, the earliest open proposal); 0 if never evaluated."""
    times = task.get("event_times")
    if not times:
        return 0
    last_ts, open_from = times
    due = last_ts + t.episode_s * 1000
    return due if open_from is None else min(due, open_from + t.step_s * 1000)


def refusal_detail(folded: Folded, state: dict[str, Any], event: dict[str, Any], max_bytes: int) -> str:
    """The dead letter's sentence for an event `fold_event` refused."""
    where = "it is in bronze/events but in no step or episode"
    if folded is Folded.forgotten:
        return (f"task {event['task_id']} of session {event['session_id']} closed and had no event for "
                f"join_retention_seconds, so the join forgot it; this event came later. {where.capitalize()}; "
                f"raise TRAJLAKE_JOIN_RETENTION_SECONDS to keep closed tasks open to late events longer")
    return (f"session {event['session_id']} already takes about {state_bytes(state):,} bytes of join state, and "
            f"this event would take it past join_state_max_bytes ({max_bytes:,}); {where}. Closed tasks free "
            f"their room after join_retention_seconds; raise TRAJLAKE_JOIN_STATE_MAX_BYTES (at most a third of "
            f"the 16 MiB record limit) or start a new session for long-running work")


def evaluate(state: dict[str, Any], wall: float, t: Timeouts) -> list[Emit]:
    """Rows to emit for the tasks that changed since the last evaluation (one revision per changed row)."""
    out: list[Emit] = []
    for task in state["tasks"].values():
        if task.pop("dirty", False) and not task["forgotten"]:
            out += _evaluate(state, task, wall, t)
    return out


def apply_event(state: dict[str, Any], event: dict[str, Any], wall: float, t: Timeouts) -> list[Emit]:
    """Fold one event and evaluate at once (the per-event form of fold_event + evaluate)."""
    return evaluate(state, wall, t) if fold_event(state, event, wall, t=t) is Folded.folded else []


def tick(state: dict[str, Any], wall: float, t: Timeouts) -> list[Emit]:
    """Close what timed out; forget closed tasks past retention, and drop what is left of them after twice
    that. Called periodically for every session."""
    state_bytes(state)  # a state saved by an older format is brought up to this one first
    out: list[Emit] = []
    for task in state["tasks"].values():
        if not task["forgotten"]:
            task.pop("dirty", None)  # evaluated here, as the join would
            out += _evaluate(state, task, wall, t)
    state["dirty"] = bool(out)
    # a task with rows waiting for delivery is forgotten at a later tick: the byte count covers staged rows only
    # through the tasks that staged them
    staged = {e.row["task_id"] for e in out} | {row["task_id"] for _, row in state.get("outbox", ())}
    for task_id, task in list(state["tasks"].items()):
        # per task, not per session: a session that stays busy all day would otherwise keep every event of
        # every task it ever closed, and its state (one changelog record) would grow without bound
        if not task["forgotten"]:
            if task["closed"] and wall - task.setdefault("wall", state["wall"]) > t.retention_s \
                    and task_id not in staged:
                _forget(state, task_id, task)
        elif wall - task.setdefault("wall", state["wall"]) > 2 * t.retention_s:
            # as long as a whole idle session is kept: after that, a late event starts afresh either way
            del state["tasks"][task_id]
            state["size"] -= task["bytes"]
            state["dirty"] = True
    return out


def _forget(state: dict[str, Any], task_id: str, task: dict[str, Any]) -> None:
    """Drop a closed task's events, their ids, its dimensions and revisions. A marker stays, so a late event for
    it is recognised and refused rather than taken for a new task."""
    for c in task["events"]:
        state["seen"].pop(c["id"], None)
    marker = state["tasks"][task_id] = _marker(task["wall"])
    marker["bytes"] += _b(task_id)
    state["size"] += marker["bytes"] - task["bytes"]
    state["dirty"] = True


def next_due(state: dict[str, Any], t: Timeouts) -> float:
    """The earliest wall time at which `tick` could change this session.

    Without new events, only wall-clock conditions move: an open step's timeout, an open episode's timeout or
    grace period, a closed task's retention, the session's expiry. (Event-time conditions change only when an
    event arrives, and the join evaluates then.) The worker's timer visits a session only once this time has
    passed, instead of re-reading and re-evaluating every session in the table every tick. Due early is
    harmless (a visit that changes nothing); due late would delay a timeout, so every bound here is the
    earliest the matching condition in `_evaluate` or `tick` can hold.
    """
    if state.get("outbox"):
        return 0.0  # rows a crash left undelivered: re-send at the next tick
    wall, due = state["wall"], []
    for task in state["tasks"].values():
        if task["forgotten"]:
            due.append(task.get("wall", wall) + 2 * t.retention_s)
            continue
        if task["closed"]:
            due.append(task.get("wall", wall) + t.retention_s)
            continue
        due.append(wall + t.episode_s)
        if task["terminal_wall"] is not None:
            due.append(task["terminal_wall"] + t.grace_s)
        if task.get("dirty") or any(not m["closed"] for m in task["steps"].values()):
            due.append(wall + t.step_s)
    if not due:  # every task forgotten
        due.append(wall + 2 * t.retention_s)
    return min(due)


class DueIndex:
    """The worker timer's index: session key → (partition, the wall time the session is next due, `next_due`).

    Reading and re-evaluating every session in the join table each tick cost as much as the join itself with
    only minutes of sessions in retention, and it grows with the table; with the index a tick visits only the
    sessions that are due. The join notes every session it saves. Sessions the index has never seen (restored
    from the changelog after a rebalance or a restart) come from a scan of the table, which the timer runs
    when the active partitions change and every `rescan_s` as a backstop. A scan runs while the join goes on,
    so what it reads may already be stale: it never overwrites an entry the join noted meanwhile.
    """

    def __init__(self, t: Timeouts, rescan_s: float):
        self.t, self.rescan_s = t, rescan_s
        self._due: dict[bytes, tuple[int, float]] = {}
        self._active: frozenset[int] | None = None
        self._scanned_at = 0.0

    def __len__(self) -> int:
        return len(self._due)

    def note(self, key: bytes, partition: int, state: dict[str, Any]) -> None:
        self._due[key] = (partition, next_due(state, self.t))

    def forget(self, key: bytes) -> None:
        self._due.pop(key, None)

    @property
    def active(self) -> frozenset[int] | None:
        """The active partitions at the last scan."""
        return self._active

    def needs_scan(self, active: set[int], wall: float) -> bool:
        return active != self._active or wall - self._scanned_at >= self.rescan_s

    def start_scan(self, active: set[int], wall: float) -> None:
        self._active, self._scanned_at = frozenset(active), wall
        self._due.clear()

    def scanned(self, key: bytes, partition: int, state: dict[str, Any]) -> None:
        self._due.setdefault(key, (partition, next_due(state, self.t)))

    def abandon_scan(self) -> None:
        """A scan cut short (a rebalance began): the next tick scans again."""
        self._active = None

    def due_now(self, wall: float, active: set[int]) -> list[tuple[bytes, int]]:
        return [(key, p) for key, (p, at) in self._due.items() if at <= wall and p in active]


def expired(state: dict[str, Any], wall: float, t: Timeouts) -> bool:
    """A session whose tasks are all forgotten, with nothing left to deliver, idle twice the retention, can go."""
    return (all(task["forgotten"] for task in state["tasks"].values()) and not state.get("outbox")
            and wall - state["wall"] > 2 * t.retention_s)


# ---- the outbox: rows stay in the session's state until the broker has acknowledged them ------------------
def stage(state: dict[str, Any], emits: list[Emit]) -> None:
    """Queue rows for delivery. The state (with its outbox) is persisted before anything is sent, so a crash
    after the state is saved but before the rows are acknowledged re-sends them instead of losing them."""
    if emits:
        state.setdefault("outbox", []).extend([e.kind, e.row] for e in emits)


def outbox(state: dict[str, Any]) -> list[Emit]:
    """Rows staged but not yet acknowledged: after a crash, these are re-sent (the sinks drop repeats)."""
    return [Emit(kind, row) for kind, row in state.get("outbox", ())]


def delivered(state: dict[str, Any]) -> None:
    """Every staged row is acknowledged by the broker."""
    state.pop("outbox", None)


def _evaluate(state: dict[str, Any], task: dict[str, Any], wall: float, t: Timeouts) -> list[Emit]:
    evs = task["events"]
    if not evs:
        return []
    out: list[Emit] = []
    kinds = {e["t"] for e in evs}
    idle = wall - state["wall"]
    last_ts = max(e["ts"] for e in evs)
    session_ahead_ms = state["max_ts"] - last_ts
    episode_timed_out = idle > t.episode_s or session_ahead_ms > t.episode_s * 1000
    terminal = bool(kinds & TERMINAL_TASK)
    episode_closing = task["closed"] or episode_timed_out or (
        terminal and ("task_ended" in kinds or (task["terminal_wall"] is not None and
                                                wall - task["terminal_wall"] >= t.grace_s)))
    rows = step_rows(task["dims"], evs)
    for aid, row in rows.items():
        meta = task["steps"].setdefault(aid, {"rev": -1, "closed": False, "hash": None})
        h = content_hash(row)
        if meta["closed"]:
            if h != meta["hash"]:
                meta["rev"] += 1
                meta["hash"] = h
                out.append(Emit("step", {**row, "revision": meta["rev"], "closed_reason": "late", "closed_at": wall}))
            continue
        reactions = {e["t"] for e in evs if e["a"] == aid}
        later_same_intent = row["outcome"] == "superseded"
        timed_out = (wall - state["wall"] > t.step_s) or (state["max_ts"] - row["proposed_at"] > t.step_s * 1000)
        reason = ("terminal" if reactions & TERMINAL_REACTIONS else "next_action" if later_same_intent
                  else "task_end" if episode_closing else "timeout" if timed_out else None)
        if reason:
            meta.update(closed=True, rev=0, hash=h)
            out.append(Emit("step", {**row, "revision": 0, "closed_reason": reason, "closed_at": wall}))
    if not episode_closing:
        # what `_event_due` needs to tell when the session's event time can time this task out (see fold_event)
        open_at = [row["proposed_at"] for aid, row in rows.items() if not task["steps"][aid]["closed"]]
        task["event_times"] = [last_ts, min(open_at) if open_at else None]
    if episode_closing:
        row = episode_row(task["dims"], evs)
        h = content_hash(row)
        if h != task["hash"]:
            reason = "late" if task["closed"] else ("terminal" if terminal else "timeout")
            task.update(closed=True, rev=task["rev"] + 1, hash=h)
            out.append(Emit("episode", {**row, "revision": task["rev"], "closed_reason": reason, "closed_at": wall}))
    return out


# ---- batch recomputation (for parity checks and backfills) -----------------------------------------------
def batch_join(events: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Steps and episodes recomputed from a set of clean events, without any stream state."""
    tasks: dict[tuple[str, str], dict[str, Any]] = {}
    seen: set[str] = set()
    for e in events:
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        key = (e["session_id"], e["task_id"])
        task = tasks.setdefault(key, {"dims": None, "events": []})
        c = compact(e)
        dims, origin = task_dimensions(task["dims"], task, e, c)
        task["dims"] = dims
        task.update(origin)
        task["events"].append(c)
    steps = [row for task in tasks.values() for row in step_rows(task["dims"], task["events"]).values()]
    episodes = [episode_row(task["dims"], task["events"]) for task in tasks.values()]
    return steps, episodes
