"""Benchmark: one quality gate's wall time against the number of validation runs already stored, with the Data Docs
index bounded (`quality_docs_runs`, the default) and unbounded (every stored run linked, as before the bound).

Per stored-run count: a fresh state dir is seeded with that many stored runs (gates of a small table), then the
gate of a real gold table (the jobs benchmark's 1M lake: bench/out/jobs/1000000, built by bench/jobs_speed.py) is
timed --runs times with each setting, alternating. The bounded gate's ratio to the unbounded one is reported.

Usage: .venv/bin/python bench/gate_cost.py [--stored 0,100,400] [--runs 3] [--table gold/episode_scores]
Writes bench/out/gate_cost.json and prints the table for bench/RESULTS.md.
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
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
