"""Exact dedup by event id at ingest: the ids bronze/events holds per event date, and those passed since."""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import date, timezone
from typing import Any, Iterable
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lake.tables import open_table, table_path
from schemas.contract import event_timestamp
from schemas.settings import Settings
from schemas.tables import BRONZE_EVENTS

# A key is an event id's 16 UUID bytes (the contract makes every event id a UUID; hex case does not matter, as
# for any UUID). Held sorted in a NumPy array of fixed-width bytes: 16 bytes per event, against ~127 for a Python
# set of the strings (bench/RESULTS.md, "Ingest's dedup"), and a whole batch is looked up with one `searchsorted`.
KEY = np.dtype("S16")
# the positions of the 32 hex digits in a canonical UUID string (8-4-4-4-12), and each pair of digits' byte,
# looked up by the pair read as one little-endian uint16
_HEX_AT = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])
_NIBBLE = np.zeros(256, np.uint16)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _NIBBLE[_c] = 10 + _i
_pairs = np.arange(65536)
_BYTE_OF_PAIR = ((_NIBBLE[_pairs & 0xFF] << 4) | _NIBBLE[_pairs >> 8]).astype(np.uint8)
# at least this many keys wait in the pending set before being merged into the sorted array, and at most a
# sixteenth of the array's (a pending key is a Python bytes object, ~90 bytes against 16 in the array)
MERGE_FROM = 65_536
MERGE_SHARE = 16


def event_key(event_id: str) -> bytes:
    """The dedup key of a contract event id (a UUID in any hex case)."""
    return bytes.fromhex(event_id.replace("-", ""))


def keys_of(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The keys of a column of canonical UUID strings (as the contract lets in), in column order, without a
    Python object per id."""
    if len(ids) == 0:
        return np.empty(0, KEY)
    fixed = pc.cast(pc.cast(ids, pa.binary()), pa.binary(36))
    if isinstance(fixed, pa.ChunkedArray):
        fixed = fixed.combine_chunks()
    chars = np.frombuffer(fixed.buffers()[1], np.uint8, count=36 * len(fixed),
                          offset=36 * fixed.offset).reshape(-1, 36)
    digits = np.ascontiguousarray(chars[:, _HEX_AT])
    return _BYTE_OF_PAIR[digits.view(np.uint16)].view(KEY).ravel()


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """`keys` sorted, each once. A stable sort is a merge sort that finds sorted runs: two sorted arrays joined
    are merged in linear time. (np.unique sorted fixed-width bytes ~6x slower.)"""
    keys = np.sort(keys, kind="stable")
    keep = np.ones(len(keys), bool)
    keep[1:] = keys[1:] != keys[:-1]
    return keys[keep]


def _exact(keys: np.ndarray) -> list[bytes]:
    # each key's 16 bytes: NumPy hands an S16 item out without its trailing NULs
    raw = keys.tobytes()
    return [raw[i:i + 16] for i in range(0, len(raw), 16)]


class KeySet:
    """A growing set of keys: a sorted array, and a set of those added since it was last merged."""

    def __init__(self) -> None:
        self.sorted = np.empty(0, KEY)
        self.pending: set[bytes] = set()

    def __len__(self) -> int:
        return len(self.sorted) + len(self.pending)

    def __contains__(self, key: bytes) -> bool:
        return bool(self.contains([key])[0])

    def contains(self, keys: list[bytes]) -> np.ndarray:
        """Whether each of `keys` (16 bytes each) is in the set."""
        wanted = np.array(keys, KEY)
        found = np.zeros(len(keys), bool)
        if len(self.sorted):
            at = np.minimum(np.searchsorted(self.sorted, wanted), len(self.sorted) - 1)
            found = self.sorted[at] == wanted  # whole fixed-width values: NumPy compares all 16 bytes
        if self.pending:
            found |= np.fromiter((k in self.pending for k in keys), bool, len(keys))
        return found

    def add(self, key: bytes) -> None:
        self.pending.add(key)
        self._merge_if_due()

    def extend(self, keys: np.ndarray) -> None:
        """Add sorted, unique `keys`: a few wait in the pending set, many are merged at once."""
        if len(self.pending) + len(keys) < max(MERGE_FROM, len(self.sorted) // MERGE_SHARE):
            self.pending.update(_exact(keys))
        elif not len(self.sorted) and not self.pending:
            self.sorted = keys
        else:
            self.merge(keys)

    def _merge_if_due(self) -> None:
        if len(self.pending) >= max(MERGE_FROM, len(self.sorted) // MERGE_SHARE):  # O(n) each: amortised O(1)
            self.merge(np.empty(0, KEY))

    def merge(self, keys: np.ndarray) -> None:
        """Add sorted, unique `keys` and the pending ones to the sorted array (three sorted runs, merged)."""
        parts = [self.sorted, keys]
        if self.pending:
            parts.append(np.sort(np.array(list(self.pending), KEY)))
            self.pending = set()
        self.sorted = sorted_unique(np.concatenate(parts))


@dataclass
class DateKeys:
    """One event date's keys, and the files of bronze/events they were read from."""

    keys: KeySet = field(default_factory=KeySet)
    files: set[str] = field(default_factory=set)


def event_date(event: dict[str, Any]) -> date:
    """The UTC date of a valid event's `ts`: the bronze/events partition its row lands in."""
    ts = event["ts"]
    if ts[-1:] in ("Z", "z") or ts.endswith("+00:00"):
        return date.fromisoformat(ts[:10])
    return event_timestamp(event).astimezone(timezone.utc).date()


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An event whose id bronze/events already holds or this worker already passed: scrubbed, so its session's
    dictionary learns what it reveals as it did the first time, then acked and not passed on."""

    event: dict[str, Any]


class SeenEvents:
    """The ids of events that bronze/events holds (per event date, as its files were read) or that this process
    passed on since; exact for the dates it holds, and dates are loaded whole, so it never guesses.

    A resend keeps its event time, so its row would land in the same date partition as the first: only the dates
    a batch touches are held, least recently used dropped first beyond `max_keys` (and read again if needed).
    Files are tracked by path, so a file another worker wrote, a compaction or an erasure rewrote, is read once.
    """

    def __init__(self, max_keys: int):
        self.max_keys = max_keys
        self.dates: OrderedDict[date, DateKeys] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(d.keys) for d in self.dates.values())

    def unread(self, listing: dict[date, list[str]], dates: Iterable[date]) -> dict[date, list[str]]:
        """Of the table's files (`listing`, per date), those not yet read, for `dates` and the dates held."""
        wanted = set(dates) | set(self.dates)
        return {d: [f for f in listing.get(d, ()) if f not in (self.dates[d].files if d in self.dates else ())]
                for d in wanted}

    def absorb(self, read: dict[date, tuple[list[str], np.ndarray]], batch_dates: Iterable[date]) -> None:
        """Take the keys read from files (per date: the files, their sorted unique keys); the dates of the batch
        at hand stay, whatever the bound."""
        for d, (files, keys) in read.items():
            held = self.dates.get(d)
            if held is None:
                held = self.dates[d] = DateKeys()
            held.files.update(files)
            if len(keys):
                held.keys.extend(keys)
        self._evict(keep=set(batch_dates))

    def __contains__(self, item: tuple[bytes, date]) -> bool:
        key, d = item
        return bool(self.contains([key], d)[0])

    def contains(self, keys: list[bytes], d: date) -> np.ndarray:
        """Whether each of `keys`, of events dated `d`, was seen."""
        held = self.dates.get(d)
        if held is None:
            raise KeyError(f"{d} is not loaded: call unread/absorb for a batch's dates first")
        self.dates.move_to_end(d)
        return held.keys.contains(keys)

    def add(self, key: bytes, d: date) -> None:
        """An event passed on (its row is on its way to bronze/events)."""
        held = self.dates.get(d)
        if held is None:  # evicted since its batch was checked: read again (with this key) when next needed
            return
        held.keys.add(key)

    def _evict(self, keep: set[date]) -> None:
        total = len(self)
        for d in list(self.dates):
            if total <= self.max_keys:
                return
            if d not in keep:
                total -= len(self.dates.pop(d).keys)


FAILED_KEPT_BATCHES = 8  # more than the batches in flight behind one (scrubbing ahead, delivery, the next)


class Claims:
    """The events passed on in batches not yet delivered (key → date), and the keys whose passed-on copy failed
    to scrub, so that a copy marked a duplicate behind it can go on instead."""

    def __init__(self) -> None:
        self.claimed: dict[bytes, date] = {}
        self.failed: set[bytes] = set()
        # when each failed key was added (in batches released): a copy marked a duplicate behind a failed one is
        # in a batch in flight behind it, so after FAILED_KEPT_BATCHES more batches no such copy can come; the
        # set grew by every scrub failure whose event never came again, and a stale key waved a true duplicate on
        self._released = 0
        self._failed_at: deque[tuple[int, bytes]] = deque()
        self._failed_gen: dict[bytes, int] = {}

    def __contains__(self, key: bytes) -> bool:
        return key in self.claimed

    def claim(self, key: bytes, d: date) -> None:
        self.claimed[key] = d

    def dates(self) -> set[date]:
        """The dates of the batches in flight: the key sets must keep them until those are delivered."""
        return set(self.claimed.values())

    def settle(self, c: dict[str, Any] | Duplicate, key: bytes | None,
               scrubbed: bool) -> tuple[dict[str, Any], bytes] | None:
        """At delivery, a scrubbed event or duplicate: (the event, its key) if it goes on to `events.clean`, None
        if not (a duplicate; or an event that failed to scrub, then a dead letter, whose duplicate may go)."""
        if isinstance(c, Duplicate):
            key = event_key(c.event["event_id"])
            if key not in self.failed or not scrubbed:
                return None
            c = c.event
        if key is None:
            return None
        if not scrubbed:
            self.failed.add(key)
            self._failed_at.append((self._released, key))
            self._failed_gen[key] = self._released
            return None
        self.failed.discard(key)
        return c, key

    def release(self, keys: Iterable[bytes | None]) -> None:
        """A batch delivered: its claims end (its passed keys are in the key sets by now)."""
        for key in keys:
            self.claimed.pop(key, None)
        self._released += 1
        while self._failed_at and self._failed_at[0][0] < self._released - FAILED_KEPT_BATCHES:
            gen, key = self._failed_at.popleft()
            if self._failed_gen.get(key) == gen:  # not failed again since
                del self._failed_gen[key]
                self.failed.discard(key)


def drop_seen(checked: list[Any], dates: list[date | None], seen: SeenEvents,
              claimed: Claims) -> tuple[list[Any], list[bytes | None]]:
    """Each valid event already in `seen` or `claimed` (passed on in an earlier batch still in flight, or earlier
    in this one) becomes a Duplicate; the others are claimed. Returns the batch and each passed event's key."""
    keys = [None if d is None else event_key(c["event_id"]) for c, d in zip(checked, dates)]
    by_date: dict[date, list[int]] = {}
    for i, d in enumerate(dates):
        if d is not None:
            by_date.setdefault(d, []).append(i)
    held = np.zeros(len(checked), bool)
    for d, at in by_date.items():
        held[at] = seen.contains([keys[i] for i in at], d)
    out: list[Any] = []
    passed: list[bytes | None] = []
    for c, key, d, old in zip(checked, keys, dates, held.tolist()):
        if key is None:  # a dead letter
            out.append(c)
            passed.append(None)
        elif old or key in claimed:
            out.append(Duplicate(c))
            passed.append(None)
        else:
            claimed.claim(key, d)
            out.append(c)
            passed.append(key)
    return out, passed


class BronzeEventIds:
    """The shell: bronze/events' files per date from its Delta log, and the event ids in some of them."""

    def __init__(self, settings: Settings):
        self.settings, self.path = settings, table_path(settings, BRONZE_EVENTS)
        self.table: Any = None

    def listing(self) -> dict[date, list[str]]:
        """The table's live files, per date partition (none before the sink's first commit)."""
        if self.table is None:
            self.table = open_table(self.settings, BRONZE_EVENTS)
            if self.table is None:
                return {}
        else:
            self.table.update_incremental()
        actions = pa.table(self.table.get_add_actions(flatten=True)).select(["path", "partition.date"])
        out: dict[date, list[str]] = {}
        for path, d in zip(actions.column(0).to_pylist(), actions.column(1).to_pylist()):
            out.setdefault(d, []).append(path)
        return out

    def read(self, unread: dict[date, list[str]]) -> dict[date, tuple[list[str], np.ndarray]]:
        """Per date, its files and the sorted, unique keys of the event ids they hold (sorted here, in the
        caller's thread, not on the event loop)."""
        out = {}
        for d, files in unread.items():
            columns = []
            for f in files:
                try:
                    columns.append(pq.read_table(self.path / unquote(f), columns=["event_id"]).column("event_id"))
                except FileNotFoundError:
                    # vacuumed since the listing (an erasure's rewrite): its rows are in files a later listing has
                    continue
            ids = pa.chunked_array([c for col in columns for c in col.chunks], pa.string())
            out[d] = (files, sorted_unique(keys_of(ids)))
        return out


__all__ = ["BronzeEventIds", "Claims", "Duplicate", "KeySet", "SeenEvents", "drop_seen", "event_date", "event_key", "keys_of",
           "sorted_unique"]
