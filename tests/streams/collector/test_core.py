"""The collector's pure core: write keys, token buckets, and batches checked into accepted events and dead letters."""
import json

import orjson
import pytest
from pydantic import SecretStr

from schemas.contract import CONTRACT_DIR
from streams.collector.core import (BatchError, Limits, app_for_key, check_batch, decode_batch,
                                    presented_key, take)
from streams.ingest import DeadLetter
from streams.sink import deadletter_row

pytestmark = pytest.mark.unit

KEYS = {"helpdesk-web": SecretStr("wk_helpdesk"), "support-agent": SecretStr("wk_agent")}
LIMITS = Limits(max_event_bytes=4096, max_batch_events=10)
EDITED = json.loads((CONTRACT_DIR / "examples/valid/action_edited.json").read_text())
LLM = json.loads((CONTRACT_DIR / "examples/valid/llm_call.json").read_text())


def test_a_key_names_its_app_and_nothing_else_does():
    assert app_for_key("wk_helpdesk", KEYS) == "helpdesk-web"
    assert app_for_key("wk_agent", KEYS) == "support-agent"
    for wrong in ("", None, "wk_helpdes", "wk_helpdeskX", "WK_HELPDESK", "wk_helpdesk "):
        assert app_for_key(wrong, KEYS) is None
    assert app_for_key("anything", {}) is None


def test_the_key_is_read_from_bearer_header_custom_header_or_query():
    assert presented_key({"Authorization": "Bearer k1"}, {}) == "k1"
    assert presented_key({"Authorization": "bearer  k1 "}, {}) == "k1"
    assert presented_key({"X-Trajlake-Key": "k2"}, {}) == "k2"
    assert presented_key({}, {"key": "k3"}) == "k3"  # sendBeacon cannot set headers
    assert presented_key({"Authorization": "Basic abc"}, {}) is None


def test_token_bucket_allows_a_burst_then_refills_at_the_rate():
    b, wait = take(None, 10, now=0.0, rate=5, burst=10)
    assert wait == 0 and b.tokens == 0
    b, wait = take(b, 1, now=0.0, rate=5, burst=10)
    assert wait == pytest.approx(0.2)  # one token comes back after 1/5 s
    b, wait = take(b, 5, now=1.0, rate=5, burst=10)
    assert wait == 0 and b.tokens == pytest.approx(0)
    b, wait = take(b, 1, now=100.0, rate=5, burst=10)  # refill is capped at the burst
    assert wait == 0 and b.tokens == pytest.approx(9)
    _, wait = take(b, 11, now=200.0, rate=5, burst=10)
    assert wait == float("inf")  # more than a burst never fits


def test_a_batch_is_split_into_accepted_and_rejected_in_order():
    no_final = {**EDITED, "event_id": "00000000-0000-0000-0000-00000000beef", "body": {}}
    checked = check_batch([EDITED, no_final, "text", LLM], "helpdesk-web", LIMITS)
    assert [a.index for a in checked.accepted] == [0, 3]
    assert [a.family for a in checked.accepted] == ["frontend", "agent"]
    assert checked.accepted[0].key == b"s-3f2a"
    assert orjson.loads(checked.accepted[0].value) == EDITED
    results = checked.results()
    assert [r["status"] for r in results] == ["accepted", "rejected", "rejected", "accepted"]
    assert results[1]["reason"] == "schema_violation" and results[1]["event_id"] == no_final["event_id"]
    assert "final_value" in results[1]["detail"]
    assert results[2]["reason"] == "not_an_object"


def test_rejected_events_become_dead_letters_the_sink_can_store():
    bad = {**EDITED, "ts": "2026-11-02 09:15"}
    checked = check_batch([bad], "helpdesk-web", LIMITS)
    d = checked.rejected[0].dead
    assert isinstance(d, DeadLetter)
    assert (d.stage, d.source_topic, d.source_partition) == ("collect", "collector:helpdesk-web:/v1/events", -1)
    assert orjson.loads(d.original) == bad and d.original_key == b"s-3f2a"
    row = deadletter_row(d.to_json())
    assert row["reason"] == checked.rejected[0].reason and row["source_offset"] >= 0
    # a retried batch dead-letters to the same coordinates, so bronze/deadletter keeps it once
    again = check_batch([bad], "helpdesk-web", LIMITS).rejected[0].dead
    assert (again.source_topic, again.source_offset) == (d.source_topic, d.source_offset)


def test_the_key_stamps_the_app_and_another_apps_events_are_refused():
    no_client = {k: v for k, v in EDITED.items() if k != "client"}
    checked = check_batch([no_client, EDITED], "support-agent", LIMITS)
    assert orjson.loads(checked.accepted[0].value)["client"] == {"app": "support-agent"}
    assert checked.rejected[0].reason == "wrong_app" and "helpdesk-web" in checked.rejected[0].detail


def test_an_event_over_the_size_limit_is_rejected_and_kept():
    big = {**EDITED, "body": {"final_value": "x" * 5000}}
    r = check_batch([big], "helpdesk-web", LIMITS).rejected[0]
    assert r.reason == "event_too_large" and "4096" in r.detail
    assert len(r.dead.original) > 4096


def test_batches_decode_from_an_array_or_an_events_object():
    assert decode_batch(orjson.dumps([EDITED]), "a", LIMITS) == [EDITED]
    assert decode_batch(orjson.dumps({"events": [EDITED]}), "a", LIMITS) == [EDITED]
    bad = decode_batch(b"{nope", "a", LIMITS)
    assert isinstance(bad, BatchError) and bad.status == 400 and bad.dead.original == b"{nope"
    too_many = decode_batch(orjson.dumps([EDITED] * 11), "a", LIMITS)
    assert isinstance(too_many, BatchError) and too_many.status == 413 and too_many.dead is None
    assert decode_batch(b'{"events": 3}', "a", LIMITS).reason == "not_an_object"

