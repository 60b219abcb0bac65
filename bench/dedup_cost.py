"""Benchmark: ingest's exact dedup (streams/dedup.py) against a Python set of the id strings, in the same run.

  data      N held event ids (random UUIDs, an Arrow column as bronze/events gives them), and batches of 500
            candidate ids as ingest checks them: half resends of held ids, half new
  measured  load    the held ids into the structure (ours: `keys_of`, sorted → one date's keys; baseline:
                    `set(column.to_pylist())`)
            check   every batch through `drop_seen` (ours, keys claimed as ingest claims them) against
                    `eid in held` per event (baseline); both find the same duplicates
            memory  bytes per held id: the sorted array against the set and its strings (sys.getsizeof)
            refresh a new file of 5,000 ids read into the date held (ours: `absorb`; the first form, 5e91af6's:
                    the date's whole array re-sorted with them; baseline: `set.update`)
Each candidate once per round, rounds interleaved, medians reported with their ratio.

Usage: .venv/bin/python bench/dedup_cost.py [--sizes 1000000,5000000] [--runs 3] [--batches 200]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import uuid
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.interleaved import report, time_interleaved  # noqa: E402
from streams.dedup import Claims, SeenEvents, drop_seen, keys_of, sorted_unique  # noqa: E402

DAY = date(2026, 12, 5)


def uuids(n: int, rng: np.random.Generator) -> list[str]:
    raw = rng.bytes(16 * n)
    return [str(uuid.UUID(bytes=raw[i:i + 16])) for i in range(0, 16 * n, 16)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,5000000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batches", type=int, default=200)
    args = ap.parse_args()
    out = []
    for n in (int(s) for s in args.sizes.split(",")):
        rng = np.random.default_rng(n)
        held_ids = uuids(n, rng)
        column = pa.array(held_ids)
        fresh = uuids(250 * args.batches, rng)
        picks = rng.integers(0, n, 250 * args.batches)
        batches = [[{"event_id": e} for pair in zip(fresh[i:i + 250], (held_ids[j] for j in picks[i:i + 250]))
                     for e in pair] for i in range(0, 250 * args.batches, 250)]
        del held_ids
        print(f"== {n:,} held ids, {args.batches} batches of 500 (half resends)")

        def load_ours() -> SeenEvents:
            seen = SeenEvents(max_keys=10 * n)
            seen.absorb({DAY: (["f"], sorted_unique(keys_of(column)))}, {DAY})
            return seen

        def load_set() -> set[str]:
            return set(column.to_pylist())

        times, built = time_interleaved({"keys_of (ours)": load_ours, "set of str": load_set}, args.runs)
        print("load:")
        load = report(times)
        seen, held = built["keys_of (ours)"], built["set of str"]
        arr = seen.dates[DAY].keys.sorted
        ours_b = arr.nbytes / n
        set_b = (sys.getsizeof(held) + sum(sys.getsizeof(s) for s in held)) / n
        print(f"memory: {ours_b:.1f} bytes per id (ours) against {set_b:.1f} (set of str): ratio {ours_b / set_b:.3f}")
        dates = [DAY] * 500

        def check_ours() -> int:
            claimed = Claims()
            return sum(sum(1 for c in drop_seen(b, dates, seen, claimed)[0] if not isinstance(c, dict))
                       for b in batches)

        def check_set() -> int:
            return sum(sum(1 for c in b if c["event_id"] in held) for b in batches)

        times, found = time_interleaved({"drop_seen (ours)": check_ours, "set of str": check_set}, args.runs)
        assert found["drop_seen (ours)"] == found["set of str"] == 250 * args.batches, found
        print("check, µs per event:")
        check = report(times, unit="µs", scale=1e6 / (500 * args.batches))
        # a refresh: the sink's newest file (5,000 ids) read into the date held, as every `dedup_refresh_seconds`
        newest = pa.array(uuids(5000, rng))

        def refresh_ours() -> int:
            seen.absorb({DAY: ([f"new-{len(seen.dates[DAY].files)}"], sorted_unique(keys_of(newest)))}, {DAY})
            return len(seen)

        def refresh_resort() -> int:  # 5e91af6's first form: each file merged into the date's array, re-sorted
            keys = np.sort(np.concatenate([seen.dates[DAY].keys.sorted, keys_of(newest)]))  # its default sort
            keep = np.ones(len(keys), bool)
            keep[1:] = keys[1:] != keys[:-1]
            return len(keys[keep])

        def refresh_set() -> int:
            held.update(newest.to_pylist())
            return len(held)

        times, _ = time_interleaved({"absorb (ours)": refresh_ours, "re-sort (5e91af6)": refresh_resort,
                                     "set.update": refresh_set}, args.runs)
        print("refresh, ms per file of 5,000 ids:")
        refresh = report(times, unit="ms", scale=1e3)
        out.append({"held": n, "load_s": load, "check_us": check, "refresh_ms": refresh,
                    "bytes_per_id": {"ours": ours_b, "set": set_b}})
        del seen, held, built
    target = REPO / "bench/out/dedup_cost.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "python":
                                  platform.python_version(), "results": out}, indent=1))


if __name__ == "__main__":
    main()
