"""Erase, the pure parts: whom a request names, how raw bytes are matched, and an audit row that names no one."""
from datetime import datetime, timezone

import pytest

from privacy import POLICY_VERSION
from privacy.erase import Subject, audit_record, scrub_note, subject_digest, subject_for
from privacy.pseudonyms import pseudonym

pytestmark = pytest.mark.unit
KEY = b"k"


def test_a_raw_id_becomes_the_pseudonym_the_lake_holds():
    s = subject_for(KEY, raw_id="mia_li_3668")
    assert s == Subject(pseudonym(KEY, "u", "mia_li_3668"), "mia_li_3668") and s.matched_by == "raw_id"
    p = subject_for(KEY, pseudonym=s.pseudonym)
    assert p == Subject(s.pseudonym) and p.matched_by == "pseudonym"


@pytest.mark.parametrize("kw,problem", [
    ({}, "exactly one"), ({"raw_id": "a", "pseudonym": "u_" + "0" * 24}, "exactly one"),
    ({"raw_id": "ab"}, "at least 3"), ({"raw_id": " mia "}, "surrounding spaces"),
    ({"pseudonym": "mia_li_3668"}, "u_ followed by 24 hex"), ({"pseudonym": "u_XYZ"}, "u_ followed by 24 hex"),
])
def test_bad_requests_are_errors_as_data(kw, problem):
    assert problem in subject_for(KEY, **kw)


def test_patterns_match_the_id_where_it_stands_alone():
    pats = subject_for(KEY, raw_id="mia_li_36").patterns()

    def hit(b):
        return any(p.search(b) for p in pats)

    assert hit(b'{"user_id": "mia_li_36"}') and hit(b"user mia_li_36.")
    assert not hit(b'{"user_id": "mia_li_3668"}') and not hit(b"xmia_li_36")


def test_the_audit_names_no_one():
    s = subject_for(KEY, raw_id="mia_li_3668")
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    row = audit_record(KEY, s, t0, t0, [("bronze/events", 5, 2), ("gold/scorecards", 0, 0)], True,
                       "ticket 7: mia_li_3668 asked by mail (mia@example.com)")
    assert row["subject"] == subject_digest(KEY, s.pseudonym) != s.pseudonym
    assert row["subject"].startswith("erased_")
    text = repr(row)
    assert "mia_li_3668" not in text and s.pseudonym not in text and "mia@example.com" not in text
    assert (row["rows_deleted"], row["files_removed"], row["policy_version"]) == (5, 2, POLICY_VERSION)
    assert row["tables"][0] == {"table": "bronze/events", "rows_deleted": 5, "files_removed": 2}
    assert "ticket 7" in row["note"]
    assert audit_record(KEY, s, t0, t0, [], False, "")["note"] is None


def test_a_note_keeps_what_is_not_personal():
    s = Subject("u_" + "a" * 24, None)
    assert scrub_note(KEY, "GDPR ticket 1234 for u_" + "a" * 24, s) == "GDPR ticket 1234 for <USER>"
