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


def _nested(depth: int):
    from schemas.contract import CONTRACT_DIR

    event = json.loads((CONTRACT_DIR / "examples/valid/feedback.json").read_text())
    value = "x"
    for _ in range(depth - 2):  # the event and its body are two levels; attributes is the first of these
        value = {"a": value}
    event["body"]["attributes"] = value
    return event


@pytest.mark.unit
def test_an_event_nested_deeper_than_the_worker_can_write_is_refused():
    """300 levels of attributes passed the contract, and orjson, which reads 1,024 levels but writes 255, raised
    when the worker wrote the clean record: the ingest agent stopped on that batch at every restart."""
    import orjson

    from schemas.contract import MAX_NESTING, nesting
    from streams.ingest import SourceRecord, clean_record

    deep = json.dumps(_nested(300)).encode()
    result = parse_event(deep)
    assert isinstance(result, ContractError) and result.reason is Reason.schema_violation
    assert f"at most {MAX_NESTING}" in result.detail and "300 levels" in result.detail
    ok = parse_event(json.dumps(_nested(MAX_NESTING)).encode())
    assert isinstance(ok, dict) and nesting(ok) == MAX_NESTING
    # what the contract lets in, the worker can write: its clean record wraps the event in one more level
    orjson.loads(clean_record(ok, SourceRecord("tl.frontend.raw", 0, 1, None, b""), "2026-11-02T08:00:00+00:00",
                              "privacy-4"))
    assert nesting({"a": [1, {"b": []}], "c": 2}) == 4 and nesting("x") == 0


@pytest.mark.unit
def test_the_collector_refuses_a_too_deep_event_at_the_door():
    from streams.collector.core import Limits, check_batch

    checked = check_batch([_nested(300), _nested(10)], "helpdesk-web", Limits(max_event_bytes=1_000_000, max_batch_events=500))
    assert [r.reason for r in checked.rejected] == ["schema_violation"] and len(checked.accepted) == 1
