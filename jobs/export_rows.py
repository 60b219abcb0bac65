"""Training rows in the formats trainers read (SFT, TRL and OpenAI preference pairs, KTO, RFT, step-level), built
from one episode's conversation, scores and steps. Pure functions: no I/O."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from jobs.conversations import Conversation
from schemas.reward import ExportSpec

# format → what its files hold; docs/exports.md shows a row of each
FORMATS = {
    "sft": "chat `messages` (+ `tools`) of episodes that pass the gate above the spec's composite threshold",
    "dpo": "TRL conversational preference pairs: `prompt`, `chosen`, `rejected`",
    "openai_dpo": "OpenAI DPO: `input.messages` (+ `tools`), `preferred_output`, `non_preferred_output`",
    "kto": "TRL unpaired preference: `prompt`, `completion`, `label`",
    "rft": "RL/RFT prompts: `messages` ending in the user's request, `tools` and `reference_answer` for the grader",
    "steps": "step-level trajectories (rLLM Episode → Trajectory → Step) with per-step rewards",
}


@dataclass(frozen=True)
class Episode:
    """What the export knows of one episode: ids, the split it falls in, its scores and its steps (dicts of
    silver/steps ⋈ gold/step_signals columns, in step order)."""

    episode_id: str
    user_id: str
    task_id: str
    task_type: str
    agent_version: str
    prompt_variant: str
    outcome: str
    composite: float
    gate_passed: bool
    split: str
    steps: tuple[dict[str, Any], ...]


Row = tuple[dict[str, Any], dict[str, Any]]


def _meta(ep: Episode, reward_version: str, **extra: Any) -> dict[str, Any]:
    # Each builder yields (content, meta): the trainer's columns, and where the row came from. The file row is
    # both; duplicates are judged on the content alone. user_id is the pseudonym, so `trajlake erase` finds the
    # row and removes it.
    return {"split": ep.split, "episode_id": ep.episode_id, "user_id": ep.user_id, "reward_version": reward_version,
            **extra}


def _assistant(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": text}]


def _lost(s: dict[str, Any]) -> bool:
    """The user did not keep this action as the agent made it."""
    return bool(s["rejected"] or s["undone"] or s["retried"])


def kept_turns(ep: Episode, conv: Conversation) -> list[dict[str, Any]]:
    """The conversation as the user left it: an edited action's turn says what the user submitted instead, and
    actions the user rejected, undid or retried are left out, so SFT imitates only what was kept.

    A tool call the user rejected, undid, retried or edited is left out with its results: its corrected form is
    the user's text, not a call, and keeping it taught the model the very call the user refused."""
    replace: dict[int, str | None] = {}
    dropped_calls: set[str] = set()
    for s in ep.steps:
        at = conv.action_at.get(s["action_id"])
        if at is None:
            continue
        calls = conv.messages[at].get("tool_calls")
        if calls:
            if _lost(s) or s["edited"]:
                replace[at] = None
                dropped_calls |= {c["id"] for c in calls if c.get("id")}
        elif _lost(s):
            replace[at] = None
        elif s["edited"] and s["final_value"]:
            replace[at] = s["final_value"]
    out = []
    for i, m in enumerate(conv.messages):
        if m.get("role") == "tool" and m.get("tool_call_id") in dropped_calls:
            continue
        if i not in replace:
            out.append(m)
        elif replace[i] is not None:
            out.append({**m, "content": replace[i]})
    return out


def agent_turn(conv: Conversation, s: dict[str, Any]) -> list[dict[str, Any]]:
    """What the agent produced for step `s`, as an assistant turn: the model's own message when the action is
    placed at one with tool calls (the call, not its text rendering), else the action's output."""
    at = conv.action_at.get(s["action_id"])
    if at is not None and conv.messages[at].get("tool_calls"):
        return [conv.messages[at]]
    return _assistant(s["output"])


def _is_call(conv: Conversation, s: dict[str, Any]) -> bool:
    at = conv.action_at.get(s["action_id"])
    return at is not None and bool(conv.messages[at].get("tool_calls"))


def sft_rows(ep: Episode, conv: Conversation, spec: ExportSpec, reward_version: str) -> Iterator[Row]:
    """Rejection sampling: the conversation of an episode that passed the gate with a composite at least the
    spec's threshold, as the user left it (`kept_turns`), cut after its last assistant turn."""
    if not ep.gate_passed or ep.composite < spec.sft_min_composite:
        return
    msgs = kept_turns(ep, conv)
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None or not any(m["role"] == "user" for m in msgs[:last]):
        return
    row: dict[str, Any] = {"messages": msgs[:last + 1]}
    tools = conv.tools()
    if tools:
        row["tools"] = tools
    yield row, _meta(ep, reward_version, reward=ep.composite)


def sft_eligible_sql(spec: ExportSpec) -> str:
    """`sft_rows`' first test as SQL over the export's episode columns, so episodes it would refuse are never
    grouped or parsed (the same comparison in the same float arithmetic: a superset of what it yields)."""
    return f"(gate_passed AND composite >= {float(spec.sft_min_composite)!r}::DOUBLE)"


def _prompt(conv: Conversation, action_id: str) -> list[dict[str, Any]] | None:
    at = conv.action_at.get(action_id)
    if at is None:
        return None
    prompt = conv.messages[:at]
    return prompt if any(m["role"] == "user" for m in prompt) else None


def preference_pairs(ep: Episode, conv: Conversation, spec: ExportSpec) -> Iterator[tuple[list, list, list, str]]:
    """(prompt, chosen turn, rejected turn, source) from behaviour:
    - edit: the user's final value over the agent's output, when the edit changed at least the spec's share and
      stayed (an edit the user then undid, or retried, is no preference); not for a tool call, whose corrected
      form is text;
    - alternative: within one intent, the output the user kept (accepted, never undone, retried, rejected or
      overwritten) over each output they rejected, undid or retried; the prompt is the context before the first
      attempt. Each side is the agent's own turn (`agent_turn`): a tool call stays a call."""
    for s in ep.steps:
        if s["edited"] and s["final_value"] and (s["edit_distance"] or 0) >= spec.pair_min_edit_distance \
                and s["final_value"] != s["output"] and not _lost(s) and not _is_call(conv, s):
            prompt = _prompt(conv, s["action_id"])
            if prompt:
                yield prompt, _assistant(s["final_value"]), agent_turn(conv, s), "edit"
    by_intent: dict[str, list[dict[str, Any]]] = {}
    for s in ep.steps:
        by_intent.setdefault(s["intent_id"] or s["action_id"], []).append(s)
    for attempts in by_intent.values():
        kept = [s for s in attempts if s["accepted"] and not _lost(s) and not s.get("overwritten")]
        lost = [s for s in attempts if _lost(s)]
        if not kept or not lost:
            continue
        prompt = _prompt(conv, attempts[0]["action_id"])
        if not prompt:
            continue
        chosen = agent_turn(conv, kept[0])
        for loser in lost:
            rejected = agent_turn(conv, loser)
            if rejected != chosen:
                yield prompt, chosen, rejected, "alternative"


_last_pairs: tuple[Episode, Conversation, ExportSpec, list[tuple[list, list, list, str]]] | None = None


def _pairs(ep: Episode, conv: Conversation, spec: ExportSpec) -> list[tuple[list, list, list, str]]:
    """`preference_pairs` of the episode the builders are on, computed once for both pair formats."""
    global _last_pairs
    if _last_pairs is None or _last_pairs[0] is not ep or _last_pairs[1] is not conv or _last_pairs[2] is not spec:
        _last_pairs = (ep, conv, spec, list(preference_pairs(ep, conv, spec)))
    return _last_pairs[3]


def dpo_rows(ep: Episode, conv: Conversation, spec: ExportSpec, reward_version: str) -> Iterator[Row]:
    """TRL's conversational preference format."""
    for prompt, chosen, rejected, source in _pairs(ep, conv, spec):
        yield ({"prompt": prompt, "chosen": chosen, "rejected": rejected},
               _meta(ep, reward_version, source=source))


def openai_dpo_rows(ep: Episode, conv: Conversation, spec: ExportSpec, reward_version: str) -> Iterator[Row]:
    """OpenAI's preference fine-tuning format."""
    tools = conv.tools()
    for prompt, chosen, rejected, source in _pairs(ep, conv, spec):
        inp: dict[str, Any] = {"messages": prompt}
        if tools:
            inp["tools"] = tools
        yield ({"input": inp, "preferred_output": chosen, "non_preferred_output": rejected},
               _meta(ep, reward_version, source=source))


def kto_rows(ep: Episode, conv: Conversation, spec: ExportSpec, reward_version: str) -> Iterator[Row]:
    """One row per step the user clearly judged: kept (label true) or rejected, undone or overwritten (false)."""
    for s in ep.steps:
        outcome = "undone" if s["undone"] else s["outcome"]
        if outcome in spec.kto_desirable:
            label = True
        elif outcome in spec.kto_undesirable or (s["edited"] and s["overwritten"]):
            label = False
        else:
            continue
        prompt = _prompt(conv, s["action_id"])
        if prompt:
            yield ({"prompt": prompt, "completion": agent_turn(conv, s), "label": label},
                   _meta(ep, reward_version, step_id=s["step_id"]))


def rft_rows(ep: Episode, conv: Conversation, spec: ExportSpec, reward_version: str) -> Iterator[Row]:
    """The task as the user first posed it, for a policy to attempt, with the references a grader compares
    against (τ-bench: the expected tool actions and outputs)."""
    end = conv.first_user_turn
    if end is None or (spec.rft_requires_reference and not conv.grader):
        return
    grader = conv.grader or {}
    row: dict[str, Any] = {"messages": conv.messages[:end]}
    tools = conv.tools()
    if tools:
        row["tools"] = tools
    row["reference_answer"] = {"actions": grader.get("expected_actions") or [],
                               "outputs": grader.get("expected_outputs") or [],
                               "source": grader.get("source")}
    yield row, _meta(ep, reward_version, observed_reward=ep.composite)


def step_rows(ep: Episode, conv: Conversation, spec: ExportSpec, reward_version: str) -> Iterator[Row]:
    """rLLM-style Episode → Trajectory → Step: each step's chat so far, the model's response, what the user did
    (the observation) and the step reward from gold/step_signals; the trajectory reward is the composite."""
    steps = []
    placed = [s for s in ep.steps if s["action_id"] in conv.action_at]
    for k, s in enumerate(placed):
        at = conv.action_at[s["action_id"]]
        steps.append({
            "step_index": s["step_index"], "action_id": s["action_id"],
            "chat_completions": conv.messages[:at + 1], "model_response": s["output"],
            "observation": {"outcome": s["outcome"], "final_value": s["final_value"]},
            "reward": s["step_reward"], "done": k == len(placed) - 1,
            "info": {"own_reward": s["own_reward"], "credit_share": s["credit_share"]},
        })
    if not steps:
        return
    yield {
           "task": {"task_id": ep.task_id, "task_type": ep.task_type,
                    "prompt": conv.messages[:conv.first_user_turn or 0]},
           "is_correct": ep.gate_passed, "termination_reason": ep.outcome,
           "trajectories": [{"name": ep.agent_version, "reward": ep.composite, "steps": steps}],
           "metrics": {"composite": ep.composite, "n_steps": len(steps)}}, _meta(ep, reward_version, id=ep.episode_id)


# format → a SQL predicate (from the spec) that every episode yielding a row of it satisfies; formats absent here
# may yield a row from any episode
ELIGIBLE = {"sft": sft_eligible_sql}


def eligible_sql(formats: tuple[str, ...], spec: ExportSpec) -> str | None:
    """The episodes that any of `formats` can make a row of, as a SQL predicate; None when that is every episode."""
    if any(f not in ELIGIBLE for f in formats):
        return None
    return " OR ".join(ELIGIBLE[f](spec) for f in formats)


BUILDERS = {"sft": sft_rows, "dpo": dpo_rows, "openai_dpo": openai_dpo_rows, "kto": kto_rows, "rft": rft_rows,
            "steps": step_rows}

# The grader beside the RFT prompts: OpenAI's python grader (grade(sample, item) → [0, 1]); it scores a sampled
# trajectory by the share of the expected database-changing actions it performed with the expected arguments.
RFT_GRADER = {
    "type": "python",
    "name": "expected_actions",
    "source": '''import json

def grade(sample, item):
    expected = item.get("reference_answer", {}).get("actions") or []
    if not expected:
        return 0.0
    calls = []
    for call in sample.get("output_tools") or []:
        fn = call.get("function", call)
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = {}
        calls.append((fn.get("name"), args or {}))
    hit = sum(1 for a in expected if (a.get("name"), a.get("kwargs") or a.get("arguments") or {}) in calls)
    return hit / len(expected)
''',
}
