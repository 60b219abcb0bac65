"""Profile: where a warm round of heuristics + scorecards goes, on the jobs benchmark's 1M lake.

Runs both jobs --rounds times on one SparkSession with Spark's event log on, then reports for the last round:
each phase's wall time (the jobs' own progress messages), the Spark jobs it ran (count, wall time inside jobs,
the rest being driver work: Great Expectations gates, Delta commits, planning), and its longest stages with their
task time and CPU time. The lake is the one bench/jobs_speed.py builds for that size (bench/out/jobs/<size>).

Usage: .venv/bin/python bench/jobs_profile.py [--size 1000000] [--rounds 3] [--stages 12]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

OUT = REPO / "bench" / "out"


def read_event_log(directory: Path) -> list[dict]:
    events = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name.startswith("events_")):
        raw = path.read_bytes()
        if path.suffix == ".zstd":  # Spark compresses event logs with zstd by default
            raw = subprocess.run(["zstd", "-dc"], input=raw, capture_output=True, check=True).stdout
        events += [json.loads(line) for line in raw.decode().splitlines() if line]
    return events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1_000_000, help="events in the lake (built by bench/jobs_speed.py)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stages", type=int, default=12)
    args = ap.parse_args()

    import jobs_speed as js

    from jobs import heuristics, scorecards
    from jobs.spark import build_spark
    from schemas.reward import load_reward_spec

    s = js.built_lake(args.size)
    start, end = js.window(s)
    spec = load_reward_spec()
    logs = OUT / "jobs_profile"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    spark = build_spark(s, app_name="jobs-profile",
                        extra={"spark.eventLog.enabled": "true", "spark.eventLog.dir": logs.resolve().as_uri()})
    marks: list[tuple[float, str]] = []

    def progress(message: str) -> None:
        marks.append((time.time(), message))

    for r in range(args.rounds):
        began = time.time()
        marks.clear()
        progress("round starts")
        heuristics.run(spark, s, start, end, spec=spec, progress=progress)
        progress("heuristics done")
        scorecards.run(spark, s, start, end, spec=spec, progress=progress)
        progress("scorecards done")
        print(f"round {r + 1}: {time.time() - began:.1f} s", flush=True)
    spark.stop()
    from bench.lakes import vacuum_gold

    vacuum_gold(s)  # the replaced gold files of these rounds

    t0, t1 = marks[0][0] * 1000, marks[-1][0] * 1000
    jobs: dict[int, dict] = {}
    stages: dict[int, dict] = {}
    for e in read_event_log(logs):
        kind = e["Event"]
        if kind == "SparkListenerJobStart":
            props = e.get("Properties") or {}
            jobs[e["Job ID"]] = {"start": e["Submission Time"], "stages": e["Stage IDs"],
                                 "what": props.get("spark.job.description") or props.get("callSite.short") or "?"}
        elif kind == "SparkListenerJobEnd":
            jobs[e["Job ID"]]["end"] = e["Completion Time"]
        elif kind == "SparkListenerStageCompleted":
            info = e["Stage Info"]
            acc = {a["Name"]: a.get("Value", 0) for a in info.get("Accumulables", [])}
            if "Submission Time" in info and "Completion Time" in info:
                stages[info["Stage ID"]] = {
                    "wall": (info["Completion Time"] - info["Submission Time"]) / 1000, "tasks": info["Number of Tasks"],
                    "run": acc.get("internal.metrics.executorRunTime", 0) / 1000,
                    "cpu": acc.get("internal.metrics.executorCpuTime", 0) / 1e9,
                    "gc": acc.get("internal.metrics.jvmGCTime", 0) / 1000,
                    "spill": acc.get("internal.metrics.diskBytesSpilled", 0) / 2**20,
                    "name": info["Stage Name"][:60]}
    last = sorted((j for j in jobs.values() if t0 <= j["start"] <= t1), key=lambda j: j["start"])
    busy, cur = 0.0, None
    for j in last:  # the union of the jobs' intervals: time the driver waited on Spark
        if cur is None or j["start"] > cur[1]:
            busy += (cur[1] - cur[0]) if cur else 0
            cur = [j["start"], j["end"]]
        else:
            cur[1] = max(cur[1], j["end"])
    busy += (cur[1] - cur[0]) if cur else 0
    wall = (t1 - t0) / 1000
    print(f"\nlast round: {wall:.1f} s; {len(last)} Spark jobs, {busy / 1000:.1f} s inside them, "
          f"{wall - busy / 1000:.1f} s on the driver between them")
    print("\nphases (from the jobs' progress messages):")
    for (a, m), (b, _) in zip(marks, marks[1:]):
        print(f"  {b - a:6.2f} s  {m}")
    print(f"\nlongest stages of the last round:")
    ids = [sid for j in last for sid in j["stages"] if sid in stages]
    for sid in sorted(ids, key=lambda i: -stages[i]["wall"])[:args.stages]:
        st = stages[sid]
        print(f"  {st['wall']:6.2f} s wall, {st['tasks']:3d} tasks, {st['run']:6.2f} s task time, {st['cpu']:6.2f} s CPU, "
              f"{st['gc']:5.2f} s GC, {st['spill']:4.0f} MiB spilled  {st['name']}")


if __name__ == "__main__":
    main()
