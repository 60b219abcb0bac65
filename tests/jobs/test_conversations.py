"""An episode's chat rebuilt from its events: message shapes trainers read."""
from __future__ import annotations

import orjson
import pytest

from jobs.conversations import conversation, message

pytestmark = pytest.mark.unit


def test_content_parts_become_their_text_and_other_structures_json():
    """OpenAI's text content parts are the message's text (a trainer reads a string, not a JSON dump of parts);
    parts a text model cannot read stay JSON, so every content is a string and `datasets` loads the column."""
    parts = [{"type": "text", "text": "Change my flight"}, {"type": "input_text", "text": "to Friday"}]
    assert message({"role": "user", "content": parts})["content"] == "Change my flight\nto Friday"
    image = [{"type": "text", "text": "this one"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    assert orjson.loads(message({"role": "user", "content": image})["content"]) == image
    assert message({"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}]}) == {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}


def test_agent_view_uses_the_snapshots_and_places_actions_at_their_message():
    conv = conversation([
        ("llm_call", None, {"context_snapshot": [{"role": "system", "content": "sys"},
                                                 {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                            "output": {"content": "hello"}}),
        ("action_proposed", "a1", {}),
        ("task_ended", None, {"grader": {"actions": []}}),
    ])
    assert [m["content"] for m in conv.messages] == ["sys", "hi", "hello"]
    assert conv.action_at == {"a1": 2} and conv.grader == {"actions": []} and conv.first_user_turn == 2


def test_a_trimmed_full_snapshot_re_places_actions_at_their_own_message():
    """A full snapshot that drops the context's start (a sliding window) shifts the messages: an action keeps its
    own message, and one whose message is gone is no longer placed (the old index pointed x1 at the user's q3)."""
    def call(snapshot, out):
        return ("llm_call", None, {"context_mode": "full", "output": {"content": out},
                                   "context_snapshot": [{"role": r, "content": c} for r, c in snapshot]})

    conv = conversation([
        call([("system", "S"), ("user", "q1")], "A1"), ("action_proposed", "x1", {}),
        call([("system", "S"), ("user", "q1"), ("assistant", "A1"), ("user", "q2")], "A2"),
        ("action_proposed", "x2", {}),
        call([("system", "S"), ("assistant", "A2"), ("user", "q3")], "A3"), ("action_proposed", "x3", {}),
    ])
    assert [m["content"] for m in conv.messages] == ["S", "A2", "q3", "A3"]
    assert conv.action_at == {"x2": 1, "x3": 3}
    # a snapshot that restates the context and goes on moves nothing
    conv = conversation([call([("system", "S"), ("user", "q1")], "A1"), ("action_proposed", "x1", {}),
                         call([("system", "S"), ("user", "q1"), ("assistant", "A1"), ("user", "q2")], "A2")])
    assert conv.action_at == {"x1": 2}
