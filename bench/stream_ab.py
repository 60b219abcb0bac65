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
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO / "bench"))

from interleaved import alternate, last_json_line, medians, worktree  # noqa: E402


def _run(checkout: Path, kind: str, events: int, seed: int) -> dict:
    return last_json_line([sys.executable, str(checkout / "bench" / "stream_throughput.py"), "--events", str(events),
                           "--runs", "1", "--seed", str(seed), "--kinds", kind], checkout, "stream benchmark")


def _show(r: int, kind: str, name: str, res: dict) -> None:
    print(f"round {r} {kind:10} {name:5} {res['events_per_s']:8.1f} events/s  p50 {res['p50_s']:.2f} s"
          f"  p99 {res['p99_s']:.2f} s  Faust drain {res['faust_drain_per_s']:8.1f}/s  not visible {res['not_visible']}"
          + (f"  drain {res['drain_per_s']:8.1f}/s" if "drain_per_s" in res else ""), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="the commit whose worker is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=15_000)
    ap.add_argument("--kinds", default="mix,structural")
    a = ap.parse_args()
    against, other = worktree(a.against, OUT / "ab")
    kinds = a.kinds.split(",")
    runs = alternate(REPO, other, kinds, a.rounds, lambda c, kind, r: _run(c, kind, a.events, 7 + r), _show,
                     first="other")
    summary: dict = {"against": against, "args": vars(a), "workloads": {}}
    print(f"\n| workload | {summary['against']} events/s | median | this | median | ratio | p99 medians (s) |")
    print("|---|---|---|---|---|---|---|")
    for kind, by in runs.items():
        med, p99 = medians(by, "events_per_s"), medians(by, "p99_s")
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
