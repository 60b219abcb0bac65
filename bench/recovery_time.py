"""Benchmark: how long a restarted worker takes to restore its tables from their changelogs, this checkout's worker
against another commit's, alternating.

Each run: a broker of its own and fresh topics; N events of one workload produced; `trajlake worker` started and
left until bronze/events holds all N and silver/steps and silver/episodes have had no new commit for --quiet
seconds; then stopped, its local table stores (RocksDB, `<state_dir>/faust`) deleted, as on a new machine, and
started again. Timed from the restarted worker's log (`--loglevel info`, Faust's recovery lines):
  - restore: from Faust's first recovery line to "Restore complete!" (reading the join state's and the scrub
    dictionaries' changelogs back into RocksDB);
  - ready: from the restart to "Restore complete!" (the process's start-up included).
The changelog records read are the changelog topics' end offsets at the restart (what a restore reads at most).

Why: the worker's consumer hands out at most 1,000 records per poll (streams/app.py, POLL_RECORDS), and Faust
reads changelogs through the same consumer, so a restore takes more polls than with no cap.

The other commit is checked out once as a git worktree (bench/out/ab/<rev>); this script is copied into it with
bench/pipeline_drain.py (whose drain it waits for) and run there. Per round the order alternates.

Usage: .venv/bin/python bench/recovery_time.py --against REV [--rounds 3] [--events 60000] [--kinds mix20]
       [--quiet 8]
Writes bench/out/recovery_time.json and prints every run and the medians per workload.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _log_time(line: str) -> float | None:
    m = STAMP.match(line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def _start(s, log: Path) -> subprocess.Popen:
    from schemas.settings import settings_env

    return subprocess.Popen([sys.executable, "-m", "trajlake.cli", "worker", "--loglevel", "info"], cwd=REPO,
                            env=settings_env(s, os.environ), stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _changelog_records(s) -> dict[str, int]:
    """The end offsets of the worker's changelog topics, summed per table (the records a restore reads at most)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=s.bootstrap)
    try:
        # the broker is this run's own: every changelog topic on it is the worker's
        tps = [TopicPartition(t, p) for t in c.topics() if t.endswith("-changelog")
               for p in (c.partitions_for_topic(t) or ())]
        out: dict[str, int] = {}
        for tp, end in (c.end_offsets(tps) if tps else {}).items():
            table = tp.topic.removeprefix(f"{s.worker_id}-").removesuffix("-changelog")
            out[table] = out.get(table, 0) + end
        return out
    finally:
        c.close()


def one(kind: str, events: int, quiet: float) -> dict:
    import stream_throughput as st
    from pipeline_drain import drained

    from infra.kafka import broker

    work, base = st.private_broker("recovery_time")
    try:
        s = st.run_settings(base, work)
        s = s.model_copy(update={"state_dir": s.state_dir / "worker" / s.worker_id})
        st.send(s, st.workload(kind, events, 7))
        w = _start(s, work / "worker.log")
        try:
            drained(s, events, quiet)
        finally:
            st.stop_worker([w])
        records = _changelog_records(s)
        shutil.rmtree(s.state_dir / "faust")
        log = work / "restart.log"
        restarted = time.time()
        w = _start(s, log)
        try:
            first = done = None
            while done is None:
                time.sleep(0.5)
                if w.poll() is not None:
                    raise RuntimeError(f"the restarted worker exited ({w.returncode}); see {log}")
                if time.time() - restarted > 600:
                    raise RuntimeError(f"no 'Restore complete!' in {log} after 600 s")
                for line in log.read_text(errors="replace").splitlines():
                    t = _log_time(line)
                    if t is None:
                        continue
                    if first is None and "Recovery" in line:
                        first = t
                    if "Restore complete!" in line:
                        done = t
                        break
        finally:
            st.stop_worker([w])
    finally:
        broker.stop(base)
    return {"changelog_records": sum(records.values()), "per_table": records,
            "restore_s": round(done - (first or done), 2), "ready_s": round(done - restarted, 2)}


def _run(checkout: Path, kind: str, events: int, quiet: float) -> dict:
    from interleaved import run_own_copy

    # with pipeline_drain.py, whose drain it waits for: a baseline's own copy may predate it
    return run_own_copy(checkout, ["recovery_time.py", "pipeline_drain.py"],
                        ["--one", "--kinds", kind, "--events", str(events), "--quiet", str(quiet)],
                        "recovery benchmark")


def _show(r: int, kind: str, name: str, res: dict) -> None:
    print(f"round {r} {kind:10} {name:5} restore {res['restore_s']:6.2f} s  ready {res['ready_s']:6.2f} s  "
          f"changelog records {res['changelog_records']:,} "
          f"({', '.join(f'{t} {n:,}' for t, n in sorted(res.get('per_table', {}).items()))})", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", help="the commit whose worker is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--kinds", default="mix20")
    ap.add_argument("--quiet", type=float, default=8.0, help="seconds without a silver commit that end the drain")
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
    summary: dict = {"against": against, "args": vars(a), "workloads": runs}
    print(f"\n| workload | measure | {against} | median | this | median | ratio |")
    print("|---|---|---|---|---|---|---|")
    for kind in kinds:
        for key, label in (("restore_s", "restore, s"), ("ready_s", "restart to restored, s")):
            med = medians(runs[kind], key)
            fmt = {n: " / ".join(f"{x[key]:.2f}" for x in runs[kind][n]) for n in ("other", "this")}
            print(f"| {kind} | {label} | {fmt['other']} | **{med['other']:.2f}** | {fmt['this']} | "
                  f"**{med['this']:.2f}** | **{med['this'] / max(med['other'], 1e-6):.2f}** |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "recovery_time.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
