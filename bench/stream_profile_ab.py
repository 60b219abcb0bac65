"""Benchmark: cold drains of a backlog by this checkout's worker against another commit's, alternating, each run a
`bench/stream_profile.py --no-py-spy` (its own broker, fresh topics and lake; the drain rate of a backlog and every
process's CPU from /proc, with the machine's idle share).

The backlog is produced before the worker starts, so the drain is not shared with a producer, and the /proc table
says where the CPU went and how much of the machine sat idle. The other commit is checked out once as a git
worktree (bench/out/ab/<rev>) and runs its own profile script and worker with this venv; per round the order
alternates (this checkout first in odd rounds), so a machine whose speed drifts affects both alike.

Usage: .venv/bin/python bench/stream_profile_ab.py --against REV [--rounds 3] [--events 60000] [--seconds 10]
       [--kinds mix20,structural]
Writes bench/out/stream_profile_ab.json and prints every run and the medians per workload.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO / "bench"))

from interleaved import alternate, medians, worktree  # noqa: E402

DRAINED = re.compile(r"drained in [\d.]+ s \(([\d,]+)/s\)")
SHARE = re.compile(r"^\s*([\d.]+)%\s+(.*)$")


def _run(checkout: Path, kind: str, events: int, seconds: int) -> dict:
    proc = subprocess.run([sys.executable, str(checkout / "bench" / "stream_profile.py"), "--kind", kind,
                           "--events", str(events), "--seconds", str(seconds), "--no-py-spy"], cwd=checkout,
                          capture_output=True, text=True)
    drained = DRAINED.search(proc.stdout)
    if proc.returncode or not drained:
        sys.exit(f"the stream profile of {checkout} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    shares: dict[str, list[float]] = {}
    for line in proc.stdout.splitlines():
        m = SHARE.match(line)
        if m:
            role = m.group(2).split(" (")[0]
            shares.setdefault(role, []).append(float(m.group(1)))
    return {"drain_per_s": float(drained.group(1).replace(",", "")),
            "worker_pct": sum(shares.get("worker", [0.0])),
            "scrub_pct": shares.get("scrub process", []),
            "idle_pct": sum(shares.get("idle", [0.0]))}


def _show(r: int, kind: str, name: str, res: dict) -> None:
    scrub = " / ".join(f"{s:.0f}%" for s in res["scrub_pct"])
    print(f"round {r} {kind:10} {name:5} drain {res['drain_per_s']:8.0f}/s  worker {res['worker_pct']:.0f}%  "
          f"scrub {scrub}  idle {res['idle_pct']:.0f}% of 200%", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="the commit whose worker is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--seconds", type=int, default=10, help="the /proc window inside each drain")
    ap.add_argument("--kinds", default="mix20,structural")
    a = ap.parse_args()
    against, other = worktree(a.against, OUT / "ab")
    kinds = a.kinds.split(",")
    runs = alternate(REPO, other, kinds, a.rounds, lambda c, kind, r: _run(c, kind, a.events, a.seconds), _show)
    summary: dict = {"against": against, "args": vars(a), "workloads": {}}
    print(f"\n| workload | {against} drains (events/s) | median | this | median | ratio | idle medians (of 200%) |")
    print("|---|---|---|---|---|---|---|")
    for kind in kinds:
        med, idle = medians(runs[kind], "drain_per_s"), medians(runs[kind], "idle_pct")
        summary["workloads"][kind] = {"runs": runs[kind], "median_drain": med, "median_idle": idle}
        fmt = {n: " / ".join(f"{x['drain_per_s']:,.0f}" for x in runs[kind][n]) for n in ("other", "this")}
        print(f"| {kind} | {fmt['other']} | **{med['other']:,.0f}** | {fmt['this']} | **{med['this']:,.0f}** | "
              f"**{med['this'] / med['other']:.2f}** | {idle['other']:.0f}% → {idle['this']:.0f}% |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "stream_profile_ab.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
