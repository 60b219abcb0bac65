"""Ingest's pure core: raw records become valid events or typed dead letters that keep the original bytes."""
import json

import orjson
import pytest

from schemas.contract import CONTRACT_DIR
from streams.ingest import DeadLetter, SourceRecord, check_record, clean_record
from streams.sink import bronze_event_row, deadletter_row

pytestmark = pytest.mark.unit

FAMILIES = {"tl.frontend.raw": "frontend", "tl.agent.raw": "agent"}
EDITED = json.loads((CONTRACT_DIR / "examples/valid/action_edited.json").read_text())


def rec(value: bytes, topic="tl.frontend.raw", offset=7) -> SourceRecord:
    return SourceRecord(topic, 2, offset, b"s-3f2a", value)


def test_a_valid_event_passes():
    assert check_record(rec(orjson.dumps(EDITED)), FAMILIES) == EDITED


@pytest.mark.parametrize("value,reason,stage", [
    (b"\xff\xfe not json", "invalid_json", "parse"),
    (b'{"schema": "frontend/1"}', "schema_violation", "validate"),
    (b"[]", "not_an_object", "validate"),
])
def test_rejects_become_dead_letters_with_original_bytes(value, reason, stage):
    dl = check_record(rec(value), FAMILIES)
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.stage) == (reason, stage)
    assert dl.original == value and dl.original_key == b"s-3f2a"
    assert (dl.source_topic, dl.source_partition, dl.source_offset) == ("tl.frontend.raw", 2, 7)
    assert DeadLetter.from_json(dl.to_json()) == dl


def test_an_event_on_the_wrong_family_topic_is_rejected():
    dl = check_record(rec(orjson.dumps(EDITED), topic="tl.agent.raw"), FAMILIES)
    assert isinstance(dl, DeadLetter) and dl.reason == "wrong_topic"
    assert dl.event_id == EDITED["event_id"]
    assert "frontend.raw" in dl.detail


def test_clean_record_becomes_a_bronze_row():
    row = bronze_event_row(clean_record(EDITED, rec(b""), "2026-11-02T08:00:00+00:00", "privacy-1", "ur1.x"))
    assert row["event_id"] == EDITED["event_id"]
    assert row["ts"].utcoffset().total_seconds() == 0 and row["ts"].hour == 8  # 09:15+01:00 → 08:15Z
    assert row["date"].isoformat() == "2026-11-02"
    assert json.loads(row["body"]) == EDITED["body"]
    assert (row["source_topic"], row["source_partition"], row["source_offset"]) == ("tl.frontend.raw", 2, 7)
    assert row["client_app"] == "helpdesk-web"
    assert (row["policy_version"], row["user_ref"]) == ("privacy-1", "ur1.x")


def test_a_clean_record_from_before_policy_versions_is_privacy_1():
    """Records a worker wrote before versions were recorded were scrubbed by privacy-1, the only policy then."""
    import orjson

    legacy = orjson.dumps({"event": EDITED, "source": {"topic": "t", "partition": 0, "offset": 1},
                           "ingested_at": "2026-11-02T08:00:00+00:00"})
    row = bronze_event_row(legacy)
    assert (row["policy_version"], row["user_ref"]) == ("privacy-1", None)
    # and the join reads it as privacy-1 too, so a recomputation of silver from bronze gives the same rows
    from streams.ingest import clean_event
    assert clean_event(legacy)["policy_version"] == "privacy-1"


def test_dead_letter_becomes_a_deadletter_row():
    dl = check_record(rec(b"nope"), FAMILIES)
    row = deadletter_row(dl.to_json())
    assert row["original"] == b"nope" and row["reason"] == "invalid_json"
