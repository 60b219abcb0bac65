"""Ingest's exact dedup: event-id keys, the per-date key sets, the batch filter, and reading bronze/events."""
import json
import uuid
from datetime import date

import numpy as np
import pyarrow as pa
import pytest

from schemas.contract import CONTRACT_DIR
from streams import dedup
from streams.dedup import (BronzeEventIds, Claims, Duplicate, KeySet, SeenEvents, drop_seen, event_date, event_key,
                           keys_of, sorted_unique)
from streams.ingest import DeadLetter, SourceRecord, clean_record

EDITED = json.loads((CONTRACT_DIR / "examples/valid/action_edited.json").read_text())
D1, D2, D3 = date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)


def keys(some: list[str]) -> np.ndarray:
    """Sorted unique keys, as BronzeEventIds.read gives them."""
    return sorted_unique(keys_of(pa.array(some, pa.string())))


def ids(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [str(uuid.UUID(bytes=rng.bytes(16))) for _ in range(n)]


@pytest.mark.unit
def test_a_key_is_the_uuid_whatever_its_hex_case():
    eid = "0123ABCD-0000-4000-8000-00000000000a"
    assert event_key(eid) == event_key(eid.lower()) == uuid.UUID(eid).bytes


@pytest.mark.unit
def test_the_column_form_of_keys_equals_the_one_at_a_time_form():
    some = ids(1000) + [i.upper() for i in ids(10, seed=1)]
    some += some[:5]  # repeats count once
    expected = np.array([event_key(i) for i in some], dedup.KEY)
    column = pa.chunked_array([pa.array(some[:400]), pa.array(some[400:])])
    assert (keys_of(column) == expected).all()
    sliced = pa.array(["x" * 36] + some).slice(1)  # an array with an offset into its buffers
    assert (keys_of(sliced) == expected).all()
    assert len(keys_of(pa.array([], pa.string()))) == 0


@pytest.mark.unit
def test_a_key_set_holds_what_was_added_and_merged_and_nothing_else(monkeypatch):
    monkeypatch.setattr(dedup, "MERGE_FROM", 8)
    ks = KeySet()
    inside, outside = ids(100), ids(100, seed=9)
    ks.merge(keys(inside[:50]))
    for i in inside[50:]:
        ks.add(event_key(i))
    assert len(ks.pending) < 50  # merged along the way
    ks.add(event_key(inside[0]))  # again: no second copy after the next merge
    ks.merge(np.empty(0, dedup.KEY))
    assert len(ks) == 100 and list(ks.sorted) == sorted(ks.sorted)
    assert all(event_key(i) in ks for i in inside)
    assert not any(event_key(i) in ks for i in outside)
    # NumPy drops an S16 item's trailing NULs when it hands one out: keys that end in zero bytes must still
    # differ from their neighbours
    zeros = [f"00000000-0000-4000-8000-0000000000{b:02x}" for b in (0, 1)] + ["00000000-0000-4000-8000-000000000100"]
    for first in (KeySet.merge, KeySet.extend):  # into the sorted array, or (few keys) the pending set
        ks = KeySet()
        first(ks, keys(zeros[:1]))
        ks.add(event_key(zeros[2]))
        assert [z in ks for z in map(event_key, zeros)] == [True, False, True]
        ks.merge(np.empty(0, dedup.KEY))
        assert [z in ks for z in map(event_key, zeros)] == [True, False, True] and len(ks) == 2


@pytest.mark.unit
def test_a_few_keys_read_later_wait_in_the_pending_set_and_many_are_merged(monkeypatch):
    monkeypatch.setattr(dedup, "MERGE_FROM", 50)
    ks = KeySet()
    first, few, many = ids(200), ids(20, seed=5), ids(100, seed=6)
    ks.extend(keys(first))  # into an empty set: taken as it is
    assert len(ks.sorted) == 200 and not ks.pending
    ks.extend(keys(few + first[:5]))  # fewer than the bound: pending (repeats of sorted keys included)
    assert len(ks.sorted) == 200 and len(ks.pending) == 25
    ks.extend(keys(many))
    assert not ks.pending and len(ks.sorted) == 320 and list(ks.sorted) == sorted(ks.sorted)
    assert all(event_key(i) in ks for i in first + few + many)


@pytest.mark.unit
@pytest.mark.parametrize("ts,day", [("2026-11-02T23:59:59.5Z", D1), ("2026-11-02T23:30:00+00:00", D1),
                                    ("2026-11-02T20:30:00-05:00", D2), ("2026-11-03T01:00:00+02:00", D1),
                                    ("2026-11-02T23:59:59z", D1), ("2026-11-02T20:30:00.25-05:00", D2)])
def test_an_events_date_is_the_utc_date_its_bronze_row_gets(ts, day):
    from schemas.contract import validate_event
    from streams.sink import bronze_event_row

    event = {**EDITED, "ts": ts}
    assert validate_event(event) == event  # the contract lets each form in
    assert event_date(event) == day
    row = bronze_event_row(clean_record(event, SourceRecord("t", 0, 0, None, b""), ts, "privacy-2"))
    assert row["date"] == day  # the sink reads every form too (a lowercase "z" crashed it, and the join, before)
    from streams.join import _ms
    assert _ms(ts) == int(row["ts"].timestamp() * 1000)


@pytest.mark.unit
def test_files_are_read_once_and_least_recent_dates_go_first_beyond_the_bound():
    seen = SeenEvents(max_keys=170)
    listing = {D1: ["a", "b"], D2: ["c"], D3: ["d"]}
    assert seen.unread(listing, {D1}) == {D1: ["a", "b"]}
    seen.absorb({D1: (["a", "b"], keys(ids(100)))}, {D1})
    listing[D1].append("e")
    assert seen.unread(listing, {D2}) == {D1: ["e"], D2: ["c"]}  # only the new file of a date held
    seen.absorb({D1: (["e"], np.empty(0, dedup.KEY)), D2: (["c"], keys(ids(40, seed=2)))}, {D2})
    assert len(seen) == 140 and set(seen.dates) == {D1, D2}
    assert (event_key(ids(100)[0]), D1) in seen  # D1 used last
    seen.absorb({D3: (["d"], keys(ids(60, seed=3)))}, {D3})
    assert set(seen.dates) == {D1, D3}  # D2 went first
    with pytest.raises(KeyError, match="not loaded"):
        (event_key(ids(1)[0]), D2) in seen
    big = SeenEvents(max_keys=10)  # a batch's own dates stay, however many keys they hold
    big.absorb({D1: (["a"], keys(ids(100)))}, {D1})
    assert set(big.dates) == {D1}


@pytest.mark.unit
def test_a_batch_keeps_the_first_of_each_id_and_drops_the_seen_and_the_claimed():
    seen = SeenEvents(max_keys=1000)
    old, new, in_flight = ids(3)
    seen.absorb({D1: (["f"], keys([old]))}, {D1})
    dl = DeadLetter("invalid_json", "parse", "", None, "t", 0, 0, b"{", None, "")
    claimed = Claims()
    claimed.claim(event_key(in_flight), D1)
    batch = [{"event_id": old}, dl, {"event_id": new}, {"event_id": new.upper()}, {"event_id": in_flight}]
    out, passed = drop_seen(batch, [D1, None, D1, D1, D1], seen, claimed)
    assert out == [Duplicate(batch[0]), dl, batch[2], Duplicate(batch[3]), Duplicate(batch[4])]
    assert passed == [None, None, event_key(new), None, None]
    assert claimed.claimed == {event_key(in_flight): D1, event_key(new): D1} and claimed.dates() == {D1}
    seen.add(event_key(new), D1)
    assert (event_key(new), D1) in seen


@pytest.mark.component
def test_bronze_event_ids_lists_files_per_date_and_reads_their_ids(base_settings, tmp_path):
    from lake.tables import table_path
    from schemas.tables import BRONZE_EVENTS
    from streams.sink import SINK_TARGETS, DeltaSinkWriter, Record

    s = base_settings.model_copy(update={"lake_root": tmp_path / "lake"})
    reader = BronzeEventIds(s)
    assert reader.listing() == {}  # before the sink's first commit
    writer = DeltaSinkWriter(s, SINK_TARGETS["events.clean"], "g")
    written = {D1: ids(5), D2: ids(3, seed=4)}

    def commit(offset: int, pairs: list[tuple[date, str]]) -> None:
        records = [Record("tl.events.clean", 0, offset + i, clean_record(
            {**EDITED, "event_id": eid, "ts": f"{d.isoformat()}T12:00:00Z"},
            SourceRecord("tl.frontend.raw", 0, offset + i, None, b""), "2026-11-02T12:00:00+00:00", "privacy-2"))
            for i, (d, eid) in enumerate(pairs)]
        writer.commit(records)

    commit(0, [(D1, i) for i in written[D1][:3]] + [(D2, i) for i in written[D2]])
    commit(10, [(D1, i) for i in written[D1][3:]])
    listing = reader.listing()
    assert sorted(listing) == [D1, D2] and len(listing[D1]) == 2 and len(listing[D2]) == 1
    read = reader.read({D1: listing[D1], D2: []})
    assert read[D2][0] == [] and len(read[D2][1]) == 0
    assert sorted(read[D1][1].tolist()) == sorted(k.rstrip(b"\0") for k in map(event_key, written[D1]))
    seen = SeenEvents(max_keys=1000)
    seen.absorb(reader.read(seen.unread(listing, {D1, D2})), {D1, D2})
    assert all((event_key(i), d) in seen for d, some in written.items() for i in some)
    commit(20, [(D1, i) for i in ids(4, seed=8)])
    newer = reader.listing()  # from the table it opened: only the log's new commits are read
    assert len(newer[D1]) == 3 and seen.unread(newer, {D1}) == {D1: [f for f in newer[D1] if f not in listing[D1]],
                                                                 D2: []}
    # a file vacuumed between the listing and the read (an erasure's rewrite) is passed over, not fatal
    (table_path(s, BRONZE_EVENTS) / newer[D1][0]).unlink()
    assert len(reader.read({D1: newer[D1][:1]})[D1][1]) == 0


@pytest.mark.unit
def test_a_duplicate_goes_on_when_the_copy_passed_on_failed_to_scrub():
    claims, seen = Claims(), SeenEvents(max_keys=1000)
    seen.absorb({D1: ([], np.empty(0, dedup.KEY))}, {D1})
    first, second = {"event_id": ids(1)[0]}, {"event_id": ids(1)[0].upper()}  # the same id, sent twice
    (c1,), (k1,) = drop_seen([first], [D1], seen, claims)  # batch N claims it
    (c2,), (k2,) = drop_seen([second], [D1], seen, claims)  # batch N+1, while N is in flight: a duplicate
    assert c2 == Duplicate(second) and k2 is None
    assert claims.settle(c1, k1, scrubbed=False) is None  # N: the claim's copy fails (a dead letter)
    claims.release([k1])
    assert claims.settle(c2, k2, scrubbed=True) == (second, k1)  # N+1: the duplicate goes on in its place
    claims.release([k2])
    assert not claims.failed and not claims.claimed
    # once one copy went on, later duplicates stay duplicates, even scrubbed fine
    assert claims.settle(Duplicate(first), None, scrubbed=True) is None
    # a duplicate that fails too is dropped (the first's dead letter holds the event)
    claims.failed.add(k1)
    assert claims.settle(Duplicate(first), None, scrubbed=False) is None and k1 in claims.failed


@pytest.mark.unit
def test_a_failed_copy_is_forgotten_once_no_duplicate_of_it_can_be_in_flight():
    """The failed keys grew with every scrub failure whose event never came again, and a stale one waved a true
    duplicate on; they are kept for FAILED_KEPT_BATCHES delivered batches, more than can be in flight behind."""
    from streams.dedup import FAILED_KEPT_BATCHES, event_key

    claims = Claims()
    k1, k2 = event_key(ids(1)[0]), event_key(ids(2)[1])
    assert claims.settle({"event_id": "x"}, k1, scrubbed=False) is None
    for _ in range(FAILED_KEPT_BATCHES):
        claims.release([])
    assert k1 in claims.failed
    assert claims.settle({"event_id": "y"}, k2, scrubbed=False) is None  # another failure, later
    claims.release([])
    assert k1 not in claims.failed and k2 in claims.failed
    for _ in range(FAILED_KEPT_BATCHES):
        claims.release([])
    assert not claims.failed and not claims._failed_at


@pytest.mark.unit
def test_each_claim_keeps_its_own_events_date():
    seen, claims = SeenEvents(max_keys=1000), Claims()
    seen.absorb({D1: ([], np.empty(0, dedup.KEY)), D2: ([], np.empty(0, dedup.KEY))}, {D1, D2})
    a, b = ids(2, seed=11)
    drop_seen([{"event_id": a}, {"event_id": b}], [D1, D2], seen, claims)
    assert claims.claimed == {event_key(a): D1, event_key(b): D2} and claims.dates() == {D1, D2}
