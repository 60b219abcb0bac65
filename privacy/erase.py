"""Erase, the pure parts: whom to erase (pseudonym and byte patterns), the keyed subject digest, the PII-free audit row."""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from privacy import POLICY_VERSION
from privacy.pseudonyms import pseudonym as hmac_pseudonym
from privacy.scrub import EventScrubber, SessionDictionary

PSEUDONYM = re.compile(r"^u_[0-9a-f]{24}$")
# a raw id shorter than this would match inside unrelated dead letters ("ab" is in half of them)
MIN_RAW_ID = 3


@dataclass(frozen=True)
class Subject:
    """The user to erase: always the pseudonym; the raw id when the operator gave it (dead letters hold raw bytes)."""

    pseudonym: str
    raw_id: str | None = None

    @property
    def matched_by(self) -> str:
        return "raw_id" if self.raw_id is not None else "pseudonym"

    def patterns(self) -> tuple[re.Pattern[bytes], ...]:
        """Byte patterns that find the user in raw bytes (dead letters, the Delta log, export files).

        The raw id must stand alone: `mia_li_36` must not erase `mia_li_3668`'s dead letters."""
        values = [self.pseudonym] + ([self.raw_id] if self.raw_id is not None else [])
        return tuple(re.compile(rb"(?<![A-Za-z0-9_])" + re.escape(v.encode()) + rb"(?![A-Za-z0-9_])")
                     for v in values)


def subject_for(key: bytes, raw_id: str | None = None, pseudonym: str | None = None) -> Subject | str:
    """The subject of an erase request, or what is wrong with the request (errors as data)."""
    if (raw_id is None) == (pseudonym is None):
        return "pass exactly one of --user RAW_ID or --pseudonym u_…"
    if pseudonym is not None:
        if not PSEUDONYM.match(pseudonym):
            return f"--pseudonym {pseudonym!r} is not a user pseudonym: they look like u_ followed by 24 hex digits"
        return Subject(pseudonym)
    assert raw_id is not None
    if raw_id != raw_id.strip() or len(raw_id) < MIN_RAW_ID:
        return (f"--user {raw_id!r}: a raw user id is at least {MIN_RAW_ID} characters without surrounding spaces; "
                "pass it exactly as the product sends it")
    return Subject(hmac_pseudonym(key, "u", raw_id), raw_id)


def subject_digest(key: bytes, pseudonym: str) -> str:
    """What the audit stores instead of the pseudonym: a keyed digest in its own namespace, so the audit table
    names no one (a file scan for the pseudonym finds nothing) yet whoever holds the key can check a user."""
    return hmac_pseudonym(key, "erased", pseudonym)


def scrub_note(key: bytes, note: str, subject: Subject) -> str:
    """The operator's note without the user's ids and with the policy's patterns applied (no NER: the note is
    short and written by staff)."""
    ctx = SessionDictionary()
    for value in (subject.raw_id, subject.pseudonym):
        if value:
            ctx.learn(value, "USER", "<USER>")
    return EventScrubber(key, use_ner=False).scrub_text(note, ctx)


def audit_record(key: bytes, subject: Subject, requested_at: datetime, finished_at: datetime,
                 tables: Iterable[tuple[str, int, int]], key_shredded: bool, note: str) -> dict[str, Any]:
    """One audit/erasures row; `tables` is (table, rows deleted, files removed) for every table looked at."""
    per_table = [{"table": t, "rows_deleted": r, "files_removed": f} for t, r, f in tables]
    return {
        "erasure_id": str(uuid.uuid4()), "subject": subject_digest(key, subject.pseudonym),
        "matched_by": subject.matched_by, "requested_at": requested_at, "finished_at": finished_at,
        "tables": per_table, "rows_deleted": sum(t["rows_deleted"] for t in per_table),
        "files_removed": sum(t["files_removed"] for t in per_table), "key_shredded": key_shredded,
        "policy_version": POLICY_VERSION, "note": scrub_note(key, note, subject) if note else None,
    }
