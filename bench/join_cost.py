"""Benchmark: the join's pure core (fold and evaluate, as the worker calls them) per event, this checkout against
another commit's streams/join.py, interleaved in the same run.

  data      the seeded synthetic generator (seed 7), as the worker's join receives it, in batches of 500 with the
            wall clock moving 0.5 s per batch; `structural` leaves out the free-text event types
  measured  fold every event of a batch into its session's state, then evaluate each touched session; no Kafka,
            no RocksDB, no serialisation: the part of the worker's per-event cost that streams/join.py owns
  baseline  the same loop over `git show REV:streams/join.py`, loaded beside this checkout's module

Usage: .venv/bin/python bench/join_cost.py --against REV [--events 30000] [--runs 5] [--kind structural|mix]
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.interleaved import report, time_interleaved  # noqa: E402
from streams.sources.synthetic import synthetic_events  # noqa: E402

TEXT_TYPES = {"action_proposed", "action_edited", "user_message", "task_reopened"}


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def join_loop(J: ModuleType, events: list[dict]) -> int:
    t = J.Timeouts()
    budget = {"max_bytes": 4 << 20} if "max_bytes" in inspect.signature(J.fold_event).parameters else {}
    states: dict[str, dict] = {}
    wall, rows = 1000.0, 0
    for i in range(0, len(events), 500):
        touched = {}
        for e in events[i:i + 500]:
            st = touched[e["session_id"]] = states.setdefault(e["session_id"], J.new_session())
            J.fold_event(st, e, wall, **budget)
        for st in touched.values():
            rows += len(J.evaluate(st, wall, t))
        wall += 0.5
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="the commit whose streams/join.py is the baseline")
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kind", choices=("structural", "mix"), default="structural")
    a = ap.parse_args()
    source = subprocess.run(["git", "show", f"{a.against}:streams/join.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "join_baseline.py").write_text(source)
        baseline = load(Path(tmp) / "join_baseline.py", "join_baseline")
    current = load(REPO / "streams" / "join.py", "join_current")
    events = [e.event for e in synthetic_events(a.events, seed=7)]
    if a.kind == "structural":
        events = [e for e in events if e["event_type"] not in TEXT_TYPES]
    times, results = time_interleaved({"this checkout": lambda: join_loop(current, events),
                                       a.against: lambda: join_loop(baseline, events)}, a.runs)
    print(f"{a.kind}: {len(events):,} events; rows emitted: {results}")
    report(times, unit="µs/event", scale=1e6 / len(events), digits=1)


if __name__ == "__main__":
    main()
