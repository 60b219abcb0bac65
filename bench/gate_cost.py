"""Benchmark: one quality gate's wall time against the number of validation runs already stored, with the Data Docs
index bounded (`quality_docs_runs`, the default) and unbounded (every stored run linked, as before the bound).

Per stored-run count: a fresh state dir is seeded with that many stored runs (gates of a small table), then the
gate of a real gold table (the jobs benchmark's 1M lake: bench/out/jobs/1000000, built by bench/jobs_speed.py) is
timed --runs times with each setting, alternating. The bounded gate's ratio to the unbounded one is reported.

With --round: the gates of one jobs round instead (heuristics' two gold tables, then scorecards' three, the 1M
lake's rows of each), on a state dir seeded with --stored runs; each gate building its own Data Docs, against
each job's gates building them once on the way out (`quality.runner.data_docs_once`), alternating.

With --frame: one gate of --table on the --size lake's rows, Great Expectations given every column as collected
(numbers in their declared widths, as before `quality.runner.frame_for_expectations`) against the columns its
expectations read with numbers widened to 64 bits, alternating.

Usage: .venv/bin/python bench/gate_cost.py [--stored 0,100,400] [--runs 3] [--table gold/episode_scores]
       .venv/bin/python bench/gate_cost.py --round [--stored 100] [--runs 5]
       .venv/bin/python bench/gate_cost.py --frame [--size 10000000] [--table gold/step_signals] [--runs 3]
Writes bench/out/gate_cost.json (gate_cost_round.json, gate_cost_frame.json) and prints the table for
bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from schemas.settings import Settings  # noqa: E402

OUT = REPO / "bench" / "out"
UNBOUNDED = 10_000_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stored", default="0,100,400", help="stored validation runs before the timed gates")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--table", default="gold/episode_scores")
    ap.add_argument("--round", action="store_true", help="a jobs round's five gates, docs per gate vs per job")
    ap.add_argument("--frame", action="store_true", help="GE given every column vs only the ones it reads")
    ap.add_argument("--size", type=int, default=1_000_000, help="with --frame: the jobs benchmark lake to read")
    args = ap.parse_args()
    if args.round:
        return jobs_round(int(args.stored.split(",")[0]), args.runs)
    if args.frame:
        return frame_given(args.size, args.table, args.runs)

    from lake.readers import read_table
    from quality.runner import gate
    from quality.suites import suite_for
    from schemas.reward import load_reward_spec
    from schemas.tables import TABLES

    from jobs_speed import settings_for

    spec = load_reward_spec()
    lake = settings_for(1_000_000).lake
    if not (lake / args.table).exists():
        sys.exit(f"no {args.table} under {lake}: run `.venv/bin/python bench/jobs_speed.py --sizes 1000000 "
                 "--runs 1` first, which builds and scores that lake")
    table = TABLES[args.table]
    data = read_table(Settings(lake_root=lake, state_dir=OUT / "gate_cost" / "unused"), table)
    small = data.slice(0, 100)
    suite = suite_for(table.id, spec)
    results = {}
    for stored in [int(x) for x in args.stored.split(",")]:
        state = OUT / "gate_cost" / f"stored-{stored}"
        shutil.rmtree(state, ignore_errors=True)
        seed = Settings(lake_root=lake, state_dir=state, quality_docs_runs=1)
        for i in range(stored):
            gate(seed, suite, small)
            if (i + 1) % 100 == 0:
                print(f"  seeded {i + 1}/{stored} stored runs", flush=True)
        times: dict[str, list[float]] = {"bounded": [], "unbounded": []}
        for _ in range(args.runs):
            for kind in ("unbounded", "bounded"):
                s = Settings(lake_root=lake, state_dir=state,
                             quality_docs_runs=UNBOUNDED if kind == "unbounded" else Settings().quality_docs_runs)
                began = time.perf_counter()
                gate(s, suite, data)
                times[kind].append(time.perf_counter() - began)
        med = {k: statistics.median(v) for k, v in times.items()}
        results[stored] = {"runs": times, "median": med, "ratio": med["bounded"] / med["unbounded"]}
        print(f"stored {stored}: bounded {med['bounded']:.2f}s, unbounded {med['unbounded']:.2f}s, "
              f"ratio {results[stored]['ratio']:.2f}", flush=True)
    (OUT / "gate_cost.json").write_text(json.dumps({"table": args.table, "rows": data.num_rows,
                                                    "machine": platform.platform(), "cpus": os.cpu_count(),
                                                    "results": results}, indent=1))
    print(f"\n| stored runs before | {args.table} gate, index of the newest {Settings().quality_docs_runs} (median s) "
          "| every stored run linked (median s) | ratio |\n|---|---|---|---|")
    for stored, r in results.items():
        print(f"| {stored} | {r['median']['bounded']:.2f} | {r['median']['unbounded']:.2f} | {r['ratio']:.2f} |")


def jobs_round(stored: int, runs: int) -> None:
    from lake.readers import read_table
    from quality.runner import data_docs_once, gate
    from quality.suites import suite_for
    from schemas.reward import load_reward_spec
    from schemas.tables import TABLES

    from jobs_speed import settings_for

    spec = load_reward_spec()
    lake = settings_for(1_000_000).lake
    jobs = [["gold/step_signals", "gold/episode_scores"], ["gold/scorecards", "gold/guardrails", "gold/review_queue"]]
    if not all((lake / t).exists() for job in jobs for t in job):
        sys.exit(f"no gold tables under {lake}: run `.venv/bin/python bench/jobs_speed.py --sizes 1000000 --runs 1` "
                 "first, which builds and scores that lake")
    unused = Settings(lake_root=lake, state_dir=OUT / "gate_cost" / "unused")
    data = {t: read_table(unused, TABLES[t]) for job in jobs for t in job}
    state = OUT / "gate_cost" / f"round-{stored}"
    shutil.rmtree(state, ignore_errors=True)
    s = Settings(lake_root=lake, state_dir=state)
    small = data["gold/episode_scores"].slice(0, 100)
    for _ in range(stored):
        gate(s, suite_for("gold/episode_scores", spec), small)
    times: dict[str, list[float]] = {"per gate": [], "per job": []}
    for _ in range(runs):
        for kind in ("per gate", "per job"):
            began = time.perf_counter()
            for job in jobs:
                with data_docs_once(s) if kind == "per job" else nullcontext():
                    for t in job:
                        gate(s, suite_for(t, spec), data[t])
            times[kind].append(time.perf_counter() - began)
            print(f"  {kind}: {times[kind][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {t: d.num_rows for t, d in data.items()}
    (OUT / "gate_cost_round.json").write_text(json.dumps({"rows": rows, "stored": stored, "runs": times,
                                                          "median": med, "machine": platform.platform(),
                                                          "cpus": os.cpu_count()}, indent=1))
    print(f"\nrows: {rows}\n| five gates of a jobs round, {stored} runs stored | Data Docs per gate (median s) "
          f"| once per job (median s) | ratio |\n|---|---|---|---|\n"
          f"| runs: {' / '.join(f'{x:.2f}' for x in times['per gate'])} vs "
          f"{' / '.join(f'{x:.2f}' for x in times['per job'])} | {med['per gate']:.2f} | {med['per job']:.2f} "
          f"| {med['per job'] / med['per gate']:.2f} |")


def frame_given(size: int, table_id: str, runs: int) -> None:
    from unittest import mock

    from lake.readers import read_table
    from quality import runner
    from quality.suites import suite_for
    from schemas.reward import load_reward_spec
    from schemas.tables import TABLES

    from jobs_speed import settings_for

    spec = load_reward_spec()
    lake = settings_for(size).lake
    if not (lake / table_id).exists():
        sys.exit(f"no {table_id} under {lake}: run `.venv/bin/python bench/jobs_speed.py --sizes {size} --runs 1` "
                 "first, which builds and scores that lake")
    state = OUT / "gate_cost" / "frame"
    shutil.rmtree(state, ignore_errors=True)
    s = Settings(lake_root=lake, state_dir=state)
    data = read_table(s, TABLES[table_id])
    suite = suite_for(table_id, spec)
    runner.gate(s, suite, data.slice(0, 100))  # the context opened, the templates compiled
    times: dict[str, list[float]] = {"every column": [], "columns read": []}
    for _ in range(runs):
        for kind in times:
            with (mock.patch.object(runner, "frame_for_expectations", lambda suite, frame: frame)
                  if kind == "every column" else nullcontext()):
                began = time.perf_counter()
                runner.gate(s, suite, data)
                times[kind].append(time.perf_counter() - began)
            print(f"  {kind}: {times[kind][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    (OUT / "gate_cost_frame.json").write_text(json.dumps({"table": table_id, "rows": data.num_rows, "runs": times,
                                                          "median": med, "machine": platform.platform(),
                                                          "cpus": os.cpu_count()}, indent=1))
    print(f"\n| {table_id} gate, {data.num_rows:,} rows | every column (median s) | the columns read, 64-bit "
          f"(median s) | ratio |\n|---|---|---|---|\n"
          f"| runs: {' / '.join(f'{x:.2f}' for x in times['every column'])} vs "
          f"{' / '.join(f'{x:.2f}' for x in times['columns read'])} | {med['every column']:.2f} "
          f"| {med['columns read']:.2f} | {med['columns read'] / med['every column']:.2f} |")


if __name__ == "__main__":
    main()
