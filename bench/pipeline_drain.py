"""Benchmark: a backlog drained through the whole pipeline, bronze and silver, this checkout's worker against another
commit's, alternating.

Each run: a broker of its own and fresh topics; N events of one workload produced; then `trajlake worker` started
and left until bronze/events holds all N and silver/steps and silver/episodes have had no new commit for
--quiet seconds. The times come from the Delta logs' commit timestamps, counted from bronze/events' first commit:
  - bronze: its last commit (the ingest drain alone, what bench/stream_profile.py's drain rate sees);
  - silver first: the first commit of steps or episodes (how long the join waited for its first records);
  - whole: the last commit of steps or episodes (the backlog through ingest and the join).
The events/s figures divide the events after bronze's first commit by those spans. A join that made no commit for
--quiet seconds after bronze is complete ends the run: with a join starved for longer than that, raise --quiet.

The other commit is checked out once as a git worktree (bench/out/ab/<rev>); this script is copied into it (over
the checkout's own copy, where it has one: that worktree is then left changed) and run there, so its worker is
that commit's. Per round the order alternates.

Usage: .venv/bin/python bench/pipeline_drain.py --against REV [--rounds 3] [--events 60000]
       [--kinds structural,mix20] [--quiet 8]
Writes bench/out/pipeline_drain.json and prints every run and the medians per workload.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))


def _commits(settings, spec) -> list[tuple[float, int]]:
    """(commit time in s, rows added) of each data commit of a table, oldest first."""
    from lake.tables import open_table

    dt = open_table(settings, spec)
    if dt is None:
        return []
    out = []
    for h in dt.history():
        rows = (h.get("operationMetrics") or {}).get("num_added_rows")
        if rows:
            out.append((h["timestamp"] / 1000.0, int(rows)))
    return sorted(out)


def drained(s, events: int, quiet: float) -> None:
    """Wait until bronze/events holds `events` rows and silver/steps and silver/episodes have had no new commit for
    `quiet` seconds (at most 900 s)."""
    from schemas.tables import BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS

    started, last_silver, seen = time.time(), None, (0, 0)
    while True:
        time.sleep(1.0)
        bronze = sum(r for _, r in _commits(s, BRONZE_EVENTS))
        silver = (len(_commits(s, SILVER_STEPS)), len(_commits(s, SILVER_EPISODES)))
        if silver != seen:
            seen, last_silver = silver, time.time()
        if bronze >= events and last_silver is not None and time.time() - last_silver >= quiet:
            return
        if time.time() - started > 900:
            raise RuntimeError(f"only {bronze} of {events} events in bronze after 900 s")


def one(kind: str, events: int, quiet: float) -> dict:
    import stream_throughput as st

    from infra.kafka import broker
    from schemas.tables import BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS

    work, base = st.private_broker("pipeline_drain")
    try:
        s = st.run_settings(base, work)
        st.send(s, st.workload(kind, events, 7))
        w = st.start_worker(s, work / "worker.log")
        try:
            drained(s, events, quiet)
            b = _commits(s, BRONZE_EVENTS)
            silver_commits = sorted(_commits(s, SILVER_STEPS) + _commits(s, SILVER_EPISODES))
        finally:
            st.stop_worker([w])
    finally:
        broker.stop(base)
    t0, after_first = b[0][0], events - b[0][1]
    bronze_s, silver_first_s, whole_s = b[-1][0] - t0, silver_commits[0][0] - t0, silver_commits[-1][0] - t0
    return {"bronze_s": round(bronze_s, 2), "silver_first_s": round(silver_first_s, 2), "whole_s": round(whole_s, 2),
            "bronze_per_s": round(after_first / max(bronze_s, 1e-6)),
            "whole_per_s": round(after_first / max(whole_s, 1e-6))}


def _run(checkout: Path, kind: str, events: int, quiet: float) -> dict:
    from interleaved import run_own_copy

    return run_own_copy(checkout, ["pipeline_drain.py"], ["--one", "--kinds", kind, "--events", str(events),
                                                          "--quiet", str(quiet)], "pipeline drain")


def _show(r: int, kind: str, name: str, res: dict) -> None:
    print(f"round {r} {kind:10} {name:5} bronze {res['bronze_s']:6.1f} s ({res['bronze_per_s']:,}/s)  "
          f"silver first {res['silver_first_s']:5.1f} s  whole {res['whole_s']:6.1f} s ({res['whole_per_s']:,}/s)",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", help="the commit whose worker is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--kinds", default="structural,mix20")
    ap.add_argument("--quiet", type=float, default=8.0, help="seconds without a silver commit that end a run")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.kinds, a.events, a.quiet)))
        return 0
    if not a.against:
        ap.error("--against REV is required: the commit whose worker is the baseline")
    from interleaved import alternate, medians, worktree

    against, other = worktree(a.against, OUT / "ab")
    kinds = a.kinds.split(",")
    runs = alternate(REPO, other, kinds, a.rounds, lambda c, kind, r: _run(c, kind, a.events, a.quiet), _show)
    summary: dict = {"against": against, "args": vars(a), "workloads": {}}
    print(f"\n| workload | measure | {against} | median | this | median | ratio |")
    print("|---|---|---|---|---|---|---|")
    for kind in kinds:
        summary["workloads"][kind] = runs[kind]
        for key, label in (("bronze_per_s", "bronze drain, events/s"), ("whole_per_s", "whole drain, events/s"),
                           ("silver_first_s", "first silver commit, s (lower is better)")):
            med = medians(runs[kind], key)
            fmt = {n: " / ".join(f"{x[key]:,}" for x in runs[kind][n]) for n in ("other", "this")}
            print(f"| {kind} | {label} | {fmt['other']} | **{med['other']:,}** | {fmt['this']} | "
                  f"**{med['this']:,}** | **{med['this'] / max(med['other'], 1e-6):.2f}** |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pipeline_drain.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
