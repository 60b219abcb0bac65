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
