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


def _outcome(validator, event) -> str:
    import fastjsonschema

    try:
        validator(event)
    except fastjsonschema.JsonSchemaValueException as exc:
        return f"{exc.name}: {exc.message}"
    return "ok"


def _mutants(event: dict):
    """Each example broken one way at a time: a field dropped, retyped, emptied, or an extra one; the body's too;
    and the event retagged as every other type and family."""
    bad_values = (None, 1, "", [], {}, "x" * 600, True)
    for key in list(event):
        yield {k: v for k, v in event.items() if k != key}
        for v in bad_values:
            yield {**event, key: v}
    yield {**event, "surprise": 1}
    for key in list(event.get("body", {})):
        yield {**event, "body": {k: v for k, v in event["body"].items() if k != key}}
        for v in bad_values:
            yield {**event, "body": {**event["body"], key: v}}
    for etype in event_types():
        for tag in ("frontend/1", "agent/1"):
            yield {**event, "event_type": etype, "schema": tag}


def test_dispatched_validator_decides_exactly_as_the_full_contract():
    """The per-(schema, event_type) validators are an optimisation only: over every example and thousands of
    mutants, they accept what the full contract accepts and reject with the same message."""
    from schemas.contract import _validator, _validator_of

    full, checked, rejected = _validator(), 0, 0
    for path in VALID:
        for event in _mutants(json.loads(path.read_text())):
            if event.get("schema") not in ("frontend/1", "agent/1"):
                continue  # validate_event answers these before any validator runs
            want = _outcome(full, event)
            assert _outcome(_validator_of(event), event) == want, event
            checked += 1
            rejected += want != "ok"
    assert checked > 2000 and rejected > checked // 2
