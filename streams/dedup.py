"""Exact dedup by event id at ingest: the ids bronze/events holds per event date, and those passed since."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

# A key is an event id's 16 UUID bytes (the contract makes every event id a UUID; hex case does not matter, as
# for any UUID). Held sorted in a NumPy array of fixed-width bytes: 16 bytes per event, against ~100 for a
# Python set of strings. NumPy reads an "S16" item without its trailing NUL bytes, so the set compares keys in
# that form too (`_item`): still one to one, as every key has 16 bytes.
KEY = np.dtype("S16")
_NIBBLE = np.zeros(256, np.uint8)
for _c in b"0123456789":
    _NIBBLE[_c] = _c - ord("0")
for _c in b"abcdef":
    _NIBBLE[_c] = _c - ord("a") + 10
# at least this many keys wait in the pending set before being merged into the sorted array
MERGE_FROM = 65_536


def event_key(event_id: str) -> bytes:
    """The dedup key of a contract event id (a UUID in any hex case)."""
    return bytes.fromhex(event_id.replace("-", ""))


def keys_of(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The keys of a column of event ids, sorted and unique, without a Python object per id."""
    if len(ids) == 0:
        return np.empty(0, KEY)
    hexes = pc.utf8_lower(pc.replace_substring(ids, "-", ""))
    fixed = pc.cast(pc.cast(hexes, pa.binary()), pa.binary(32))
    if isinstance(fixed, pa.ChunkedArray):
        fixed = fixed.combine_chunks()
    digits = np.frombuffer(fixed.buffers()[1], np.uint8, count=32 * len(fixed),
                           offset=32 * fixed.offset).reshape(-1, 2)
    packed = (_NIBBLE[digits[:, 0]] << 4) | _NIBBLE[digits[:, 1]]
    return np.unique(packed.view(KEY))


def _item(key: bytes) -> bytes:
    return key.rstrip(b"\0")


class KeySet:
    """A growing set of keys: a sorted array, and a set of those added since it was last merged."""

    def __init__(self) -> None:
        self.sorted = np.empty(0, KEY)
        self.pending: set[bytes] = set()

    def __len__(self) -> int:
        return len(self.sorted) + len(self.pending)

    def __contains__(self, key: bytes) -> bool:
        key = _item(key)
        if key in self.pending:
            return True
        i = int(np.searchsorted(self.sorted, key))
        return i < len(self.sorted) and self.sorted[i] == key

    def add(self, key: bytes) -> None:
        self.pending.add(_item(key))
        if len(self.pending) >= max(MERGE_FROM, len(self.sorted) // 4):  # each merge costs O(n): amortised O(1)
            self.merge(np.empty(0, KEY))

    def merge(self, keys: np.ndarray) -> None:
        """Add sorted `keys` (and the pending ones) to the sorted array."""
        parts = [self.sorted, keys]
        if self.pending:
            parts.append(np.array(list(self.pending), KEY))
            self.pending = set()
        self.sorted = np.unique(np.concatenate(parts))


@dataclass
class DateKeys:
    """One event date's keys, and the files of bronze/events they were read from."""

    keys: KeySet = field(default_factory=KeySet)
    files: set[str] = field(default_factory=set)


def event_date(ts: str) -> date:
    """The UTC date of an event's `ts`: the bronze/events partition its row lands in."""
    if ts.endswith("Z") or ts.endswith("+00:00"):
        return date.fromisoformat(ts[:10])
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(timezone.utc).date()


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An event whose id bronze/events already holds or this worker already passed: acked, not passed on."""

    event_id: str


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
        """Take the keys read from files (per date: the files, their sorted keys); the dates of the batch at hand
        stay, whatever the bound."""
        for d, (files, keys) in read.items():
            held = self.dates.get(d)
            if held is None:
                held = self.dates[d] = DateKeys()
            held.files.update(files)
            if len(keys):
                held.keys.merge(keys)
        self._evict(keep=set(batch_dates))

    def __contains__(self, item: tuple[bytes, date]) -> bool:
        key, d = item
        held = self.dates.get(d)
        if held is None:
            raise KeyError(f"{d} is not loaded: call unread/absorb for a batch's dates first")
        self.dates.move_to_end(d)
        return key in held.keys

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


def drop_seen(checked: list[Any], dates: list[date | None], seen: SeenEvents,
              claimed: set[bytes]) -> tuple[list[Any], list[bytes | None]]:
    """Each valid event already in `seen` or `claimed` (passed on in an earlier batch still in flight, or earlier
    in this one) becomes a Duplicate; the others are claimed. Returns the batch and each passed event's key."""
    out: list[Any] = []
    keys: list[bytes | None] = []
    for c, d in zip(checked, dates):
        if d is None:  # a dead letter
            out.append(c)
            keys.append(None)
            continue
        key = event_key(c["event_id"])
        if key in claimed or (key, d) in seen:
            out.append(Duplicate(c["event_id"]))
            keys.append(None)
            continue
        claimed.add(key)
        out.append(c)
        keys.append(key)
    return out, keys


class BronzeEventIds:
    """The shell: bronze/events' files per date from its Delta log, and the event ids in some of them."""

    def __init__(self, path: Path):
        self.path = path
        self.table: Any = None

    def listing(self) -> dict[date, list[str]]:
        """The table's live files, per date partition (none before the sink's first commit)."""
        from deltalake import DeltaTable  # the worker's only Delta reader outside the sink: imported where used
        if self.table is None:
            if not DeltaTable.is_deltatable(str(self.path)):
                return {}
            self.table = DeltaTable(str(self.path))
        else:
            self.table.update_incremental()
        actions = pa.table(self.table.get_add_actions(flatten=True)).select(["path", "partition.date"])
        out: dict[date, list[str]] = {}
        for path, d in zip(actions.column(0).to_pylist(), actions.column(1).to_pylist()):
            out.setdefault(d, []).append(path)
        return out

    def read(self, unread: dict[date, list[str]]) -> dict[date, tuple[list[str], np.ndarray]]:
        """Per date, its files and the sorted keys of the event ids they hold."""
        out = {}
        for d, files in unread.items():
            if files:
                ids = ds.dataset([str(self.path / unquote(f)) for f in files], format="parquet").to_table(
                    columns=["event_id"]).column("event_id")
                out[d] = (files, keys_of(ids))
            else:
                out[d] = ([], np.empty(0, KEY))
        return out


__all__ = ["BronzeEventIds", "Duplicate", "KeySet", "SeenEvents", "drop_seen", "event_date", "event_key", "keys_of"]
