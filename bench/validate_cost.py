"""Benchmark: contract validation per event, the validator specialised to each (schema, event_type) against the
full contract compiled whole, on the same synthetic events in the same run (interleaved).

Usage: .venv/bin/python bench/validate_cost.py [--events 20000] [--runs 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.contract import _validator, _validator_of  # noqa: E402
from streams.sources.synthetic import synthetic_events  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    events = [e.event for e in synthetic_events(a.events, seed=3)]
    full = _validator()
    for e in events:  # compile every specialised validator before timing
        _validator_of(e)(e)
    checks = {"specialised": lambda e: _validator_of(e)(e), "full contract (baseline)": full}
    per_event: dict[str, list[float]] = {k: [] for k in checks}
    for _ in range(a.runs):
        for name, check in checks.items():
            t0 = time.perf_counter()
            for e in events:
                check(e)
            per_event[name].append((time.perf_counter() - t0) / len(events) * 1e6)
    med = {k: statistics.median(v) for k, v in per_event.items()}
    for k, v in per_event.items():
        print(f"{k}: {' / '.join(f'{x:.1f}' for x in v)} µs per event, median {med[k]:.1f}")
    print(f"ratio {med['specialised'] / med['full contract (baseline)']:.3f}")


if __name__ == "__main__":
    main()
