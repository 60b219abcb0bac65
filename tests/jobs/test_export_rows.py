"""Training rows from one episode: what the user refused is never a target, and tool calls stay calls."""
from __future__ import annotations

import pytest

from jobs.conversations import conversation
from jobs.export_rows import Episode, dpo_rows, kept_turns, kto_rows, preference_pairs, sft_rows
from schemas.reward import load_reward_spec

pytestmark = pytest.mark.unit
SPEC = load_reward_spec().exports


def step(action, intent, output, **flags):
    base = dict(accepted=False, rejected=False, edited=False, undone=False, retried=False, overwritten=False,
                final_value=None, edit_distance=None, outcome="accepted", step_reward=0.5, own_reward=0.5,
                credit_share=0.1, step_index=0, step_id=f"s/{action}")
    return {**base, "action_id": action, "intent_id": intent, "output": output, **flags}


def episode(*steps):
    return Episode("s/t", "u_1", "t", "refund", "v1", "p1", "completed", 0.9, True, "train", tuple(steps))


def tool_call_conversation():
    """The model calls cancel_reservation(R1), the user rejects it, then a text reply is accepted."""
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "cancel_reservation", "arguments": '{"id": "R1"}'}}]}
    return conversation([
        ("llm_call", None, {"context_snapshot": [{"role": "system", "content": "sys"},
                                                 {"role": "user", "content": "cancel R1"}], "output": call}),
        ("action_proposed", "x1", {}),
        ("llm_call", None, {"context_snapshot": [{"role": "tool", "tool_call_id": "c1", "content": "rejected by the user"},
                                                 {"role": "user", "content": "no, just tell me the fee"}],
                            "output": {"content": "The fee is $50."}}),
        ("action_proposed", "x2", {}),
    ])


def test_a_refused_tool_call_is_no_sft_target_and_its_results_go_with_it():
    conv = tool_call_conversation()
    ep = episode(step("x1", "i1", "cancel_reservation(R1)", rejected=True, outcome="rejected"),
                 step("x2", "i2", "The fee is $50.", accepted=True))
    turns = kept_turns(ep, conv)
    assert not any(m.get("tool_calls") for m in turns) and not any(m["role"] == "tool" for m in turns)
    assert [m["content"] for m in turns] == ["sys", "cancel R1", "no, just tell me the fee", "The fee is $50."]
    (row, _), = sft_rows(ep, conv, SPEC, "reward-v2")
    assert row["messages"] == turns
    # an edited call is left out too: its correction is text, not a call
    edited = episode(step("x1", "i1", "cancel_reservation(R1)", edited=True, final_value="cancel R2 instead",
                          edit_distance=0.6, outcome="edited"), step("x2", "i2", "The fee is $50.", accepted=True))
    assert not any(m.get("tool_calls") for m in kept_turns(edited, conv))
    assert not list(preference_pairs(edited, conv, SPEC))  # no text-over-call pair
    # an accepted call stays, with its result
    kept = episode(step("x1", "i1", "cancel_reservation(R1)", accepted=True), step("x2", "i2", "The fee is $50.",
                                                                                   accepted=True))
    assert sum(1 for m in kept_turns(kept, conv) if m.get("tool_calls") or m["role"] == "tool") == 2


def test_kto_and_pairs_give_the_models_own_tool_call_not_its_text():
    conv = tool_call_conversation()
    ep = episode(step("x1", "i1", "cancel_reservation(R1)", rejected=True, outcome="rejected"),
                 step("x2", "i2", "The fee is $50.", accepted=True))
    rows = {r["completion"][0].get("content") or "call": r["label"] for r, _ in kto_rows(ep, conv, SPEC, "reward-v2")}
    assert rows == {"call": False, "The fee is $50.": True}
    (row, _), = [r for r in kto_rows(ep, conv, SPEC, "reward-v2") if not r[0]["label"]]
    assert row["completion"][0]["tool_calls"][0]["function"]["name"] == "cancel_reservation"


def product_conversation(*outputs):
    events = [("user_message", None, {"text": "refund my order"})]
    for action, _ in outputs:
        events.append(("action_proposed", action, {"output": dict(outputs)[action]}))
    return conversation(events)


def test_an_edit_the_user_undid_is_no_preference_and_the_chosen_side_was_kept():
    conv = product_conversation(("a1", "Refund $120 to card"), ("a2", "Refund $120 to store credit"))
    undone_edit = episode(step("a1", "i1", "Refund $120 to card", edited=True, undone=True, edit_distance=0.8,
                               final_value="Refund $1,200 for all future bookings", outcome="edited"))
    assert not list(preference_pairs(undone_edit, conv, SPEC))
    # within an intent: the chosen side must be kept as made, not an accepted step the user then overwrote
    overwritten = episode(step("a1", "i1", "Refund $120 to card", retried=True, outcome="retried"),
                          step("a2", "i1", "Refund $120 to store credit", accepted=True, overwritten=True))
    assert not list(preference_pairs(overwritten, conv, SPEC))
    clean = episode(step("a1", "i1", "Refund $120 to card", retried=True, outcome="retried"),
                    step("a2", "i1", "Refund $120 to store credit", accepted=True))
    (row, meta), = dpo_rows(clean, conv, SPEC, "reward-v2")
    assert row["chosen"] == [{"role": "assistant", "content": "Refund $120 to store credit"}]
    assert row["rejected"] == [{"role": "assistant", "content": "Refund $120 to card"}]
    assert meta["source"] == "alternative"
