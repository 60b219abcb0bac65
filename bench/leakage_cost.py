"""Benchmark: the export's cross-split leakage check on a 1M-row index, this checkout against the obvious version.

The index is shaped like the 1M-episode export's (1,000,000 rows, 60,000 user groups in four splits, a distinct
prompt digest per row, 500 frozen holdout groups). The baseline, timed in the same run and interleaved, is the
check as it was until 2026-12-03: a set of splits per group and per prompt, kept for every key.

Usage: .venv/bin/python bench/leakage_cost.py [--rows 1000000] [--runs 3]
"""
from __future__ import annotations

import argparse
import hashlib
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.interleaved import report, time_interleaved  # noqa: E402
from jobs.splits import Leakage, leakage  # noqa: E402


def leakage_with_a_set_per_key(rows, frozen) -> Leakage:
    by_group: dict[str, set[str]] = {}
    by_prompt: dict[str, set[str]] = {}
    out = Leakage()
    for split, ghash, prompt in rows:
        by_group.setdefault(ghash, set()).add(split)
        if prompt:
            by_prompt.setdefault(prompt, set()).add(split)
        if ghash in frozen and split != "holdout":
            out.thawed.add(ghash)
    out.groups = {g: s for g, s in by_group.items() if len(s) > 1}
    out.prompts = {p: s for p, s in by_prompt.items() if len(s) > 1}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    rng = random.Random(1)
    groups = [hashlib.md5(str(i).encode()).hexdigest() for i in range(60_000)]
    split_of = {g: rng.choice(["train", "val", "test", "holdout"]) for g in groups}
    index = []
    for i in range(a.rows):
        g = groups[rng.randrange(len(groups))]
        index.append((f"ep{i}", split_of[g], g, hashlib.md5(str(i).encode()).hexdigest()))
    frozen = set(groups[:500])
    times, results = time_interleaved(
        {"this checkout": lambda: leakage(((s, g, p) for _, s, g, p in index), frozen),
         "baseline": lambda: leakage_with_a_set_per_key(((s, g, p) for _, s, g, p in index), frozen)}, a.runs)
    new, old = results["this checkout"], results["baseline"]
    assert (new.groups, new.prompts, new.thawed) == (old.groups, old.prompts, old.thawed)
    report(times)


if __name__ == "__main__":
    main()
