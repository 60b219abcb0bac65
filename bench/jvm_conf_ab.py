"""Benchmark: a jobs round (heuristics then scorecards) under Spark settings that need a JVM of their own (driver
Java options, shuffle settings), one process per setting in turn, --rounds times.

Each process builds its SparkSession with `build_spark(extra=<setting>)` on the --size lake (bench/out/jobs/<size>,
built by bench/jobs_speed.py) and runs `jobs.heuristics.run` then `jobs.scorecards.run` over the lake's window
--runs times (the first run is cold). The first setting is the baseline; `{}` means the project's defaults. For
settings a running JVM can take, bench/spark_conf_ab.py alternates them inside one session instead.

Usage: .venv/bin/python bench/jvm_conf_ab.py [--size 10000000] [--rounds 2] [--runs 3]
           [--setting '{"spark.driver.extraJavaOptions": "-XX:+UseG1GC"}' --setting '{}' …]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

# G1 (the JVM's default, named because the project's local default is now ParallelGC), ParallelGC (the project's
# default), and uncompressed shuffle files
DEFAULT_SETTINGS = ('{"spark.driver.extraJavaOptions": "-XX:+UseG1GC"}', '{}',
                    '{"spark.shuffle.compress": "false", "spark.shuffle.spill.compress": "false"}')


def one_process(size: int, runs: int, extra: dict) -> list[float]:
    """The runs' wall times (s) of both jobs on one SparkSession built with `extra`."""
    from jobs import heuristics, scorecards
    from jobs.spark import build_spark
    from jobs_speed import built_lake, window
    from schemas.reward import load_reward_spec

    s, spec = built_lake(size), load_reward_spec()
    start, end = window(s)
    spark = build_spark(s, app_name="bench-jvm-conf", extra=extra)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        heuristics.run(spark, s, start, end, spec=spec)
        scorecards.run(spark, s, start, end, spec=spec)
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--setting", action="append", help="a JSON object of Spark conf; repeat (default: G1, "
                                                       "the project's defaults, uncompressed shuffle)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(one_process(a.size, a.runs, json.loads(a.child))))
        return
    settings = a.setting or list(DEFAULT_SETTINGS)
    results: dict[str, list[list[float]]] = {x: [] for x in settings}
    for r in range(1, a.rounds + 1):
        for x in settings:
            out = subprocess.run([sys.executable, __file__, "--size", str(a.size), "--runs", str(a.runs),
                                  "--child", x], capture_output=True, text=True, check=True)
            times = json.loads(out.stdout.strip().splitlines()[-1])
            results[x].append(times)
            print(f"round {r} {x}: {' / '.join(f'{t:.1f}' for t in times)} s", flush=True)
    print("\n| setting | runs (s), per round | medians |\n|---|---|---|")
    for x, rounds in results.items():
        print(f"| `{x}` | {' · '.join(' / '.join(f'{t:.1f}' for t in ts) for ts in rounds)} "
              f"| {', '.join(f'{statistics.median(ts):.1f}' for ts in rounds)} |")


if __name__ == "__main__":
    main()
