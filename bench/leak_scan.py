"""Benchmark: the ground-truth leak scan (privacy/leakage.py::LeakScanner) against the obvious regex version.

Texts: every string of the 200 τ-bench airline trajectories (the raw source, full of PII: ~2.8 MB), scanned for
every name, e-mail, date of birth, street and card last-four of the customer database. The baseline, timed in the
same run and interleaved, is the scanner as it was until 2026-12-03: one case-insensitive regex alternation of
all ~2,800 values behind a look-behind. Both must report the same values. The export's PII scan (when a ground
truth is set), the leak test and the PII-audit notebook run this scan.

Usage: .venv/bin/python bench/leak_scan.py [--runs 3] [--repeat 1]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.interleaved import report, time_interleaved  # noqa: E402
from privacy.leakage import CARD_WORDS, GroundTruth, Leaks, LeakScanner, strings_of  # noqa: E402

TAU = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tau-bench"


class RegexLeakScanner:
    """The baseline: one compiled alternation of every value (word-bounded, case-insensitive)."""

    def __init__(self, truth: GroundTruth):
        self.kind_of = {v.lower(): kind for kind, values in truth.pii.items() for v in values}
        alternatives = sorted(self.kind_of, key=len, reverse=True)
        self.values = re.compile(r"(?<![\w@.])(" + "|".join(map(re.escape, alternatives)) + r")(?![\w@])", re.I)
        self.cards = re.compile(CARD_WORDS + r"[^\n\d]{0,12}(" + "|".join(sorted(truth.card_last_four))
                                + r")(?!\d)", re.I)

    def scan(self, texts) -> Leaks:
        leaks = Leaks()
        for text in texts:
            for m in self.values.finditer(text):
                leaks.found.setdefault(self.kind_of[m.group(1).lower()], set()).add(m.group(1))
            for m in self.cards.finditer(text):
                leaks.found.setdefault("card_last_four", set()).add(m.group(1))
        return leaks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="scan the texts this many times per run")
    args = ap.parse_args()
    truth = GroundTruth.load(TAU / "airline-users.json")
    raw = orjson.loads((TAU / "gpt-4o-airline.json").read_bytes())
    texts = [s for r in raw for s in strings_of(r["traj"])] * args.repeat
    mb = sum(map(len, texts)) / 1e6
    scanners = {"this checkout": LeakScanner(truth), "baseline (regex alternation)": RegexLeakScanner(truth)}
    times, found = time_interleaved({name: (lambda sc=sc: sc.scan(texts).found) for name, sc in scanners.items()},
                                    args.runs)
    new, old = found.values()
    assert new == old, (new, old)
    print(f"{len(texts):,} texts, {mb:.2f} MB; {sum(map(len, new.values()))} distinct values found by both")
    report(times, digits=3, extra=lambda median: f" ({mb / median:.2f} MB/s)")


if __name__ == "__main__":
    main()
