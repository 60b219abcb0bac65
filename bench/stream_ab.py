"""Benchmark: this checkout's stream worker against another commit's, alternating, each run a full
`bench/stream_throughput.py --runs 1` (its own broker, fresh topics and lake; throughput of a drained backlog,
then produce→Delta latency at 70% of it).

The other commit is checked out once as a git worktree (bench/out/ab/<rev>) and runs its own benchmark script and
worker with this venv. Per round r and workload, both checkouts run with seed 7 + r, the order alternating
(other first in even rounds), so a machine whose speed drifts affects both alike.

Usage: .venv/bin/python bench/stream_ab.py --against REV [--rounds 3] [--events 15000] [--kinds mix,structural]
Writes bench/out/stream_ab.json and prints every run and the medians per workload.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO / "bench"))

from interleaved import worktree  # noqa: E402


def _run(checkout: Path, kind: str, events: int, seed: int) -> dict:
    proc = subprocess.run([sys.executable, str(checkout / "bench" / "stream_throughput.py"), "--events", str(events),
                           "--runs", "1", "--seed", str(seed), "--kinds", kind], cwd=checkout,
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        sys.exit(f"the stream benchmark of {checkout} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="the commit whose worker is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=15_000)
    ap.add_argument("--kinds", default="mix,structural")
    a = ap.parse_args()
    against, other = worktree(a.against, OUT / "ab")
    kinds = a.kinds.split(",")
    runs: dict[str, dict[str, list[dict]]] = {k: {"other": [], "this": []} for k in kinds}
    for r in range(a.rounds):
        for kind in kinds:
            order = [("other", other), ("this", REPO)]
            for name, checkout in (order if r % 2 == 0 else order[::-1]):
                res = _run(checkout, kind, a.events, 7 + r)
                runs[kind][name].append(res)
                print(f"round {r + 1} {kind:10} {name:5} {res['events_per_s']:8.1f} events/s  p50 {res['p50_s']:.2f} s"
                      f"  p99 {res['p99_s']:.2f} s  Faust drain {res['faust_drain_per_s']:8.1f}/s  "
                      f"not visible {res['not_visible']}"
                      + (f"  drain {res['drain_per_s']:8.1f}/s" if "drain_per_s" in res else ""), flush=True)
    summary: dict = {"against": against, "args": vars(a), "workloads": {}}
    print(f"\n| workload | {summary['against']} events/s | median | this | median | ratio | p99 medians (s) |")
    print("|---|---|---|---|---|---|---|")
    for kind, by in runs.items():
        med = {n: statistics.median(x["events_per_s"] for x in rs) for n, rs in by.items()}
        p99 = {n: statistics.median(x["p99_s"] for x in rs) for n, rs in by.items()}
        summary["workloads"][kind] = {"medians": med, "p99_medians": p99, "ratio": round(med["this"] / med["other"], 3),
                                      "runs": by}
        fmt = lambda rs: " / ".join(f"{x['events_per_s']:,.0f}" for x in rs)  # noqa: E731
        print(f"| {kind} | {fmt(by['other'])} | **{med['other']:,.0f}** | {fmt(by['this'])} | **{med['this']:,.0f}** "
              f"| **{med['this'] / med['other']:.2f}** | {p99['other']:.2f} → {p99['this']:.2f} |")
    (OUT / "stream_ab.json").write_text(json.dumps(summary, indent=2))
    lost = sum(x["not_visible"] for by in runs.values() for rs in by.values() for x in rs)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
