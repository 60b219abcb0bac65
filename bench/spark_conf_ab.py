"""Benchmark: the heuristics job under two values of runtime Spark SQL settings, alternating in one session.

One SparkSession on the jobs benchmark's lake (bench/out/jobs/<size>, built by bench/jobs_speed.py); a warm-up
run, then --rounds rounds of `jobs.heuristics.run` with each arm's settings applied through `spark.conf.set`, in
alternating order. Only SQL settings that take effect per query can be compared this way (e.g.
spark.sql.inMemoryColumnarStorage.*, spark.sql.shuffle.partitions), not the ones read when the JVM starts.

Usage: .venv/bin/python bench/spark_conf_ab.py [--size 10000000] [--rounds 3]
       [--setting spark.sql.inMemoryColumnarStorage.compressed --baseline true --candidate false]
Writes bench/out/spark_conf_ab.json and prints the line for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

OUT = REPO / "bench" / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--setting", default="spark.sql.inMemoryColumnarStorage.compressed")
    ap.add_argument("--baseline", default="true")
    ap.add_argument("--candidate", default="false")
    args = ap.parse_args()

    import jobs_speed as js

    from jobs import heuristics
    from jobs.spark import build_spark
    from schemas.reward import load_reward_spec

    s = js.built_lake(args.size)
    start, end = js.window(s)
    spec = load_reward_spec()
    spark = build_spark(s, app_name="spark-conf-ab")
    arms = {"baseline": args.baseline, "candidate": args.candidate}
    times: dict[str, list[float]] = {k: [] for k in arms}
    spark.conf.set(args.setting, args.baseline)
    heuristics.run(spark, s, start, end, spec=spec)  # warm-up: JIT, the Delta log, the OS cache
    for r in range(args.rounds):
        for arm in (arms if r % 2 == 0 else dict(reversed(arms.items()))):
            spark.conf.set(args.setting, arms[arm])
            began = time.perf_counter()
            heuristics.run(spark, s, start, end, spec=spec)
            times[arm].append(time.perf_counter() - began)
            print(f"  {arm} ({args.setting}={arms[arm]}): {times[arm][-1]:.1f} s", flush=True)
    spark.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    (OUT / "spark_conf_ab.json").write_text(json.dumps({
        "size": args.size, "setting": args.setting, "arms": arms, "runs": times, "median": med,
        "machine": platform.platform(), "cpus": os.cpu_count()}, indent=1))
    print(f"\n| heuristics job, {args.size:,} events | {args.setting}={args.baseline} runs (s) | median | "
          f"={args.candidate} runs (s) | median | ratio |\n|---|---|---|---|---|---|\n"
          f"| | {' / '.join(f'{x:.1f}' for x in times['baseline'])} | {med['baseline']:.1f} | "
          f"{' / '.join(f'{x:.1f}' for x in times['candidate'])} | {med['candidate']:.1f} | "
          f"{med['candidate'] / med['baseline']:.2f} |")


if __name__ == "__main__":
    main()
