"""The event contract: every example validates, every counter-example fails with its typed, readable reason."""
import json
from pathlib import Path

import pytest

from schemas.contract import CONTRACT_DIR, ContractError, Reason, event_types, parse_event, validate_event

pytestmark = pytest.mark.unit

VALID = sorted((CONTRACT_DIR / "examples" / "valid").glob("*.json"))
INVALID = sorted((CONTRACT_DIR / "examples" / "invalid").glob("*.json"))


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_examples_validate(path: Path):
    event = json.loads(path.read_text())
    assert validate_event(event) is event


def test_every_event_type_has_an_example():
    assert {p.stem for p in VALID} == set(event_types())


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_counter_examples_fail_with_readable_reason(path: Path):
    case = json.loads(path.read_text())
    result = validate_event(case["event"])
    assert isinstance(result, ContractError)
    assert result.reason.value == case["expect"]["reason"]
    assert case["expect"]["detail_contains"] in result.detail


def test_families_partition_the_event_types():
    frontend, agent = set(event_types("frontend")), set(event_types("agent"))
    assert not frontend & agent
    assert frontend | agent == set(event_types())


@pytest.mark.parametrize("raw,reason", [
    (b"{not json", Reason.invalid_json),
    (b"[1, 2]", Reason.not_an_object),
    (b'"hello"', Reason.not_an_object),
    (b'{"schema": 3}', Reason.unknown_schema),
    (b"", Reason.invalid_json),
])
def test_parse_rejects_garbage(raw, reason):
    result = parse_event(raw)
    assert isinstance(result, ContractError) and result.reason is reason


def test_contract_covers_the_minimum_trajectory_logging_schema():
    """Context snapshot, action sequence, final output, outcome, cost: each has a home in the contract."""
    defs = json.loads((CONTRACT_DIR / "events-v1.json").read_text())["definitions"]
    assert "context_snapshot" in defs["body_llm_call"]["properties"]
    assert "output" in defs["body_action_proposed"]["properties"]
    assert "final_value" in defs["body_action_edited"]["properties"]
    assert {"kpi", "human_approved"} <= set(defs["body_task_completed"]["properties"])
    assert {"tokens_in", "tokens_out", "cost_usd", "latency_ms"} <= set(defs["body_llm_call"]["properties"])
    assert {"cost_usd", "latency_ms", "status"} <= set(defs["body_tool_call"]["properties"])
