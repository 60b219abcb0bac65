"""Synthetic product sessions: a seeded, lazy generator with planted behaviour per agent_version × prompt_variant × task_type.

The planted parameters (`planted()`) are what later jobs must recover; `replay synthetic` writes them beside the
data. Sessions are interleaved like real traffic and events are generated one at a time, so millions of events
stream in constant memory.
"""
from __future__ import annotations

import random
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from streams.sources.tau_bench import Emitted

AGENT_VERSIONS = ("agent-v1", "agent-v2")
PROMPT_VARIANTS = ("control", "concise")
TASK_TYPES = ("refund", "booking", "search")
START = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)
# what the task type plants: steps per task, the SLA (ample: a task that does not stall ends well within it),
# the share of tasks that stall past it, offsets of the escalation and delegation rates, and the share of tasks
# that repeat an earlier task of the user (delegation is measured among those)
TASK_STEPS = {"refund": 3.0, "booking": 4.0, "search": 2.0}
TASK_SLA_S = {"refund": 600.0, "booking": 900.0, "search": 450.0}
TASK_SLA_MISS = {"refund": 0.06, "booking": 0.10, "search": 0.15}
TASK_ESCALATE = {"refund": 0.03, "booking": 0.0, "search": -0.02}
TASK_DELEGATE = {"refund": 0.0, "booking": 0.10, "search": 0.05}
TASK_REPEAT = {"refund": 0.25, "booking": 0.50, "search": 0.35}
WORDS = ("order", "refund", "flight", "booking", "receipt", "policy", "account", "delivery", "invoice", "seat",
         "upgrade", "baggage", "credit", "schedule", "confirmation", "summary", "details", "request")


@dataclass(frozen=True)
class Behaviour:
    """Planted rates of one segment. Step reactions are exclusive; task outcomes are exclusive."""

    accept: float
    reject: float
    edit: float
    undo_after_accept: float
    retry: float
    edit_size: float          # share of the output's words the user changes when editing
    complete: float
    abandon: float
    escalate: float           # the rest of the outcome mass after complete/abandon/escalate is a reopen after completion
    repeat: float             # share of tasks that repeat an earlier task of the user (marked at task_started)
    delegate: float           # share of those repeat tasks the user hands to the agent
    opt_out_after_failure: float
    think_s: float            # mean user think time
    llm_latency_ms: float
    steps_mean: float         # a task takes 1 + ⌊Exp(steps_mean)⌋ steps
    sla_s: float              # the task's SLA: ample for a task that does not stall
    sla_miss: float           # share of tasks that stall (the user is away for twice the SLA): the SLA is missed
    text_share: float         # share of steps whose user also sends a free-text message

    @property
    def reopen(self) -> float:
        return max(0.0, 1.0 - self.complete - self.abandon - self.escalate)


def planted(seed: int) -> dict[tuple[str, str, str], Behaviour]:
    """The behaviour of every segment, derived from the seed, with a planted improvement and a gaming segment.

    agent-v2 accepts more, edits less and smaller, undoes less, escalates less, and users delegate more to it and
    opt out less after a failure; 'concise' is faster. The task type sets the SLA, how many steps a task takes
    and how often one escalates (refunds most), repeats an earlier task and, if so, is delegated (bookings most of
    both); the SLA is missed when a task
    stalls (`sla_miss`, highest for search). The segment (agent-v2, concise, search) games the proxies: the
    highest acceptance and the fastest reactions, but the lowest completion.
    """
    rng = random.Random(seed)
    out = {}
    for av in AGENT_VERSIONS:
        for pv in PROMPT_VARIANTS:
            for tt in TASK_TYPES:
                better = av == "agent-v2"
                concise = pv == "concise"
                gaming = (av, pv, tt) == ("agent-v2", "concise", "search")
                accept = (0.55 if better else 0.45) + rng.uniform(-0.03, 0.03) + (0.15 if gaming else 0)
                edit = (0.15 if better else 0.25) + rng.uniform(-0.02, 0.02)
                reject = 0.10 + rng.uniform(-0.02, 0.02)
                retry = 0.08 + rng.uniform(-0.02, 0.02)
                complete = (0.75 if better else 0.68) + rng.uniform(-0.03, 0.03) - (0.35 if gaming else 0)
                abandon = 0.12 + rng.uniform(-0.02, 0.02) + (0.25 if gaming else 0)
                escalate = (0.05 if better else 0.09) + TASK_ESCALATE[tt] + rng.uniform(-0.01, 0.01)
                escalate = min(escalate, 1.0 - round(complete, 4) - round(abandon, 4))  # no negative reopen rate
                delegate = (0.35 if better else 0.20) + TASK_DELEGATE[tt] + rng.uniform(-0.02, 0.02)
                out[(av, pv, tt)] = Behaviour(
                    accept=round(accept, 4), reject=round(reject, 4), edit=round(edit, 4),
                    undo_after_accept=0.04 if better else 0.07, retry=round(retry, 4),
                    edit_size=0.3 if better else 0.45, complete=round(complete, 4), abandon=round(abandon, 4),
                    escalate=round(escalate, 4), repeat=TASK_REPEAT[tt], delegate=round(delegate, 4),
                    opt_out_after_failure=0.15 if better else 0.25,
                    think_s=(4.0 if gaming else 8.0 if concise else 14.0),
                    llm_latency_ms=900.0 if concise else 1600.0, steps_mean=TASK_STEPS[tt], sla_s=TASK_SLA_S[tt],
                    sla_miss=round(TASK_SLA_MISS[tt] + (0.0 if better else 0.04), 4), text_share=0.25)
    return out


def planted_json(seed: int) -> dict[str, Any]:
    return {"seed": seed, "segments": [{"agent_version": av, "prompt_variant": pv, "task_type": tt, **asdict(b),
                                        "reopen": b.reopen} for (av, pv, tt), b in planted(seed).items()],
            "gaming_segment": {"agent_version": "agent-v2", "prompt_variant": "concise", "task_type": "search"}}


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _edit(rng: random.Random, text: str, size: float) -> str:
    words = text.rstrip(".").split()
    for i in range(len(words)):
        if rng.random() < size:
            words[i] = rng.choice(WORDS)
    return " ".join(words) + "."


def _session(rng: random.Random, n: int, seed: int, start: datetime, segments) -> Iterator[Emitted]:
    key = (rng.choice(AGENT_VERSIONS), rng.choice(PROMPT_VARIANTS), rng.choice(TASK_TYPES))
    b: Behaviour = segments[key]
    ns = uuid.UUID(int=(seed << 64) + n)
    ids = (str(uuid.uuid5(ns, str(i))) for i in range(1_000_000))
    sid, tid = f"s-{next(ids)}", f"t-{next(ids)}"
    base = {"session_id": sid, "task_id": tid, "user_id": f"user_{rng.randrange(1, 5000)}", "agent_version": key[0],
            "prompt_variant": key[1], "task_type": key[2], "client": {"app": "synthetic", "sdk": "trajlake", "version": "1"}}
    clock = start

    def ev(family: str, et: str, body: dict, **kw) -> Emitted:
        return Emitted(f"{family}.raw", {"schema": f"{family}/1", "event_id": next(ids), "event_type": et,
                                         "ts": clock.isoformat(timespec="milliseconds"), **base, **kw, "body": body})

    # whether the task repeats an earlier one and is delegated: drawn from its own generator, as the request below
    again = random.Random(f"{seed}/{n}/repeat")
    if again.random() < b.repeat:
        earlier = f"t-{uuid.uuid5(ns, 'earlier')}"
        yield ev("agent", "task_started", {"sla_seconds": b.sla_s, "repeat_of_task_id": earlier})
        if again.random() < b.delegate:  # the user hands the repeat to the agent as it starts
            yield ev("frontend", "delegated", {"repeat_of_task_id": earlier})
    else:
        yield ev("agent", "task_started", {"sla_seconds": b.sla_s})
    # the user's request opens the conversation (the prompt of every training row); drawn from its own generator
    # so the planted behaviour below sees the same random stream as without it
    ask = random.Random(f"{seed}/{n}/request")
    yield ev("frontend", "user_message", {"text": f"{key[2].capitalize()} request: {_sentence(ask, ask.randrange(8, 17))}"})
    steps = max(1, int(rng.expovariate(1 / b.steps_mean)) + 1)
    intent = f"i-{next(ids)}"
    for k in range(steps):
        lat = rng.expovariate(1 / b.llm_latency_ms)
        clock += timedelta(milliseconds=lat)
        tin, tout = rng.randrange(300, 3000), rng.randrange(20, 300)
        yield ev("agent", "llm_call", {"model": "gpt-4o-mini", "output": {"role": "assistant"}, "tokens_in": tin,
                                       "tokens_out": tout, "latency_ms": round(lat, 1),
                                       "cost_usd": round(tin * 1.5e-7 + tout * 6e-7, 7)}, intent_id=intent)
        action = f"a-{next(ids)}"
        output = _sentence(rng, rng.randrange(6, 16))
        yield ev("agent", "action_proposed", {"output": output, "kind": "message"}, action_id=action, intent_id=intent)
        clock += timedelta(milliseconds=rng.uniform(30, 200))
        yield ev("frontend", "action_shown", {"surface": "panel"}, action_id=action, intent_id=intent)
        clock += timedelta(seconds=rng.expovariate(1 / b.think_s))
        r = rng.random()
        if r < b.accept:
            yield ev("frontend", "action_accepted", {}, action_id=action, intent_id=intent)
            if rng.random() < b.undo_after_accept:
                clock += timedelta(seconds=rng.expovariate(1 / b.think_s))
                yield ev("frontend", "action_undone", {}, action_id=action, intent_id=intent)
        elif r < b.accept + b.edit:
            yield ev("frontend", "action_edited", {"final_value": _edit(rng, output, b.edit_size)},
                     action_id=action, intent_id=intent)
        elif r < b.accept + b.edit + b.reject:
            yield ev("frontend", "action_rejected", {}, action_id=action, intent_id=intent)
        elif r < b.accept + b.edit + b.reject + b.retry:
            yield ev("frontend", "action_retried", {}, action_id=action, intent_id=intent)
            continue  # the next action serves the same intent
        if rng.random() < b.text_share:
            clock += timedelta(seconds=rng.expovariate(1 / b.think_s))
            yield ev("frontend", "user_message", {"text": _sentence(rng, rng.randrange(4, 12))}, action_id=action)
        intent = f"i-{next(ids)}"
    clock += timedelta(seconds=rng.expovariate(1 / b.think_s))
    if rng.random() < b.sla_miss:
        clock += timedelta(seconds=2 * b.sla_s)  # the task stalls: the user comes back long after its SLA
    o = rng.random()
    yield ev("agent", "task_ended", {"status": "success" if o < b.complete + b.reopen else "failure"})
    if o < b.complete:
        yield ev("frontend", "task_completed", {"kpi": 1.0})
    elif o < b.complete + b.abandon:
        yield ev("frontend", "task_abandoned", {})
        if rng.random() < b.opt_out_after_failure:
            yield ev("frontend", "opted_out", {"scope": "agent"})
    elif o < b.complete + b.abandon + b.escalate:
        yield ev("frontend", "escalated", {"channel": "human_agent"})
    else:
        yield ev("frontend", "task_completed", {"kpi": 1.0})
        clock += timedelta(minutes=rng.uniform(1, 20))
        yield ev("frontend", "task_reopened", {"reason": _sentence(rng, 5)})


def synthetic_events(n_events: int, seed: int = 7, concurrent: int = 64,
                     sessions_per_minute: float = 120.0) -> Iterator[Emitted]:
    """`n_events` events from interleaved sessions (about `concurrent` open at a time), lazily."""
    rng = random.Random(seed)
    segments = planted(seed)
    open_: list[Iterator[Emitted]] = []
    started = 0
    emitted = 0
    while emitted < n_events:
        while len(open_) < concurrent:
            start = START + timedelta(minutes=started / sessions_per_minute)
            open_.append(_session(random.Random(rng.random()), started, seed, start, segments))
            started += 1
        i = rng.randrange(len(open_))
        try:
            yield next(open_[i])
            emitted += 1
        except StopIteration:
            open_[i] = open_[-1]
            open_.pop()
