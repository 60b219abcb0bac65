"""The benchmarks behind bench/RESULTS.md, each with the command its headline figure was measured with.

Usage: make bench [ONLY="export_speed jobs_speed"]      (all of them by default; some take many minutes)
       .venv/bin/python bench/run.py --list
Each benchmark prints its own table (with its same-run baseline) and writes its raw output under bench/out/.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name → (arguments, what it measures, rough minutes on the 2-core machine, its first run building its data)
BENCHMARKS: dict[str, tuple[list[str], str, int]] = {
    "setup_time": (["--runs", "3"], "cold and warm set-up of the test command", 25),
    "stream_throughput": (["--events", "15000", "--runs", "3"], "stream worker events/s and produce→Delta latency", 15),
    "faust_dispatch": (["--events", "60000", "--runs", "3"], "Faust draining the raw topics: upstream loop against the "
                       "worker's eager dispatch", 6),
    "validate_cost": (["--events", "20000", "--runs", "3"], "contract validation per event", 1),
    "join_cost": (["--against", "HEAD", "--runs", "3"], "the join core per event (here against itself: a noise floor)", 3),
    "scrub_speed": (["--runs", "3"], "the scrubber against vanilla Presidio, speed and recall", 10),
    "leak_scan": (["--runs", "3"], "the ground-truth leak scan against the obvious regex", 2),
    "jobs_speed": (["--sizes", "1000000", "--runs", "3"], "Spark heuristics + scorecards against DuckDB", 30),
    "collector_load": (["--runs", "3"], "events/s through the HTTP collector into bronze", 10),
    "leakage_cost": (["--runs", "3"], "the export's cross-split leakage check", 1),
    "duckdb_views": (["--runs", "5"], "DuckDB's parquet reader against pyarrow datasets on the 1M lake", 8),
    "export_speed": (["--runs", "3"], "the 1M-episode training export against a bare dump", 40),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("only", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, (extra, what, minutes) in BENCHMARKS.items():
            print(f"{name:18} ~{minutes:>3} min  {what}\n{'':25} bench/{name}.py {' '.join(extra)}")
        return 0
    unknown = [n for n in args.only if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from: {', '.join(BENCHMARKS)} "
              "(e.g. make bench ONLY=export_speed)", file=sys.stderr)
        return 2
    names = args.only or list(BENCHMARKS)
    failed = []
    for k, name in enumerate(names, 1):
        extra, what, minutes = BENCHMARKS[name]
        cmd = [sys.executable, str(REPO / "bench" / f"{name}.py"), *extra]
        print(f"\n[{k}/{len(names)}] {name}: {what} (~{minutes} min)\n$ {' '.join(cmd[1:])}", flush=True)
        began = time.perf_counter()
        rc = subprocess.call(cmd, cwd=REPO)
        print(f"[{k}/{len(names)}] {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in "
              f"{time.perf_counter() - began:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
