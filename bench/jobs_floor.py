"""Benchmark: Spark's floor for the jobs benchmark — the jobs' own transforms from silver to the scorecard rows in
one Spark plan, collected, with nothing published — next to DuckDB's query of the same aggregates.

bench/jobs_speed.py times the two jobs as they run: both gold tables of the heuristics collected, checked, gated
by Great Expectations and written, the gold rows read back by the scorecards, the guardrails and the review
sample computed, gated and written. This takes all of that away and keeps the computation DuckDB's query does:
latest revisions, step signals, episode scores, step rewards (`jobs.heuristics`), the day sums and the day and
week scorecard rows with their intervals (`jobs.scorecards`), as one plan from the silver tables, its 2,880 rows
(at 10M events) collected. The step signals and episode scores are cached as the job caches them. Its ratio to
DuckDB is what Spark needs on this machine before any publishing; what the jobs take beyond it is publishing.

Runs alternate floor / DuckDB on one warm SparkSession, --runs times (the first is cold); medians reported.

Usage: .venv/bin/python bench/jobs_floor.py [--size 10000000] [--runs 4]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")


def floor_rows(spark, s, start, end, spec) -> int:
    """The scorecard rows of [start, end) from silver, by the jobs' transforms, collected; returns their count."""
    from jobs import heuristics as h
    from jobs import scorecards as sc

    steps, episodes = h.latest_silver(spark, s, start, end)  # as the heuristics job reads them
    signals = h.step_signals(steps, spec).cache()
    scores = h.episode_scores(episodes, signals, spec).cache()
    try:
        rewards = h.step_rewards(signals, scores, spec).select(*sc.STEP_COLUMNS)
        return len(sc.scorecards(spark, sc.daily_sums(rewards, scores), spec).collect())
    finally:
        signals.unpersist()
        scores.unpersist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=4)
    a = ap.parse_args()
    import jobs_speed as js

    from jobs.spark import build_spark
    from schemas.reward import load_reward_spec

    s, spec = js.built_lake(a.size), load_reward_spec()
    start, end = js.window(s)
    spark = build_spark(s, app_name="bench-jobs-floor")
    times: dict[str, list[float]] = {"spark floor": [], "duckdb": []}
    for r in range(a.runs):
        began = time.perf_counter()
        rows = floor_rows(spark, s, start, end, spec)
        times["spark floor"].append(time.perf_counter() - began)
        began = time.perf_counter()
        duck = js.run_duckdb(s, spec)
        times["duckdb"].append(time.perf_counter() - began)
        assert rows == duck.num_rows, (rows, duck.num_rows)
        print(f"run {r + 1}: Spark floor {times['spark floor'][-1]:.1f} s, DuckDB {times['duckdb'][-1]:.1f} s "
              f"({rows:,} rows each)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"size": a.size, "runs": times, "median": med, "ratio": med["spark floor"] / med["duckdb"]}))
    print(f"\nmedians: Spark floor {med['spark floor']:.1f} s, DuckDB {med['duckdb']:.1f} s, "
          f"ratio {med['spark floor'] / med['duckdb']:.2f}×")


if __name__ == "__main__":
    main()
