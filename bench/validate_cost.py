"""Benchmark: contract validation per event, the validator specialised to each (schema, event_type) against the
full contract compiled whole, on the same synthetic events in the same run (interleaved).

Usage: .venv/bin/python bench/validate_cost.py [--events 20000] [--runs 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.interleaved import report, time_interleaved  # noqa: E402
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

    def every_event(check):
        def run():
            for e in events:
                check(e)
        return run

    times, _ = time_interleaved({"specialised": every_event(lambda e: _validator_of(e)(e)),
                                 "full contract (baseline)": every_event(full)}, a.runs)
    report(times, unit="µs per event", scale=1e6 / len(events), digits=1)


if __name__ == "__main__":
    main()
