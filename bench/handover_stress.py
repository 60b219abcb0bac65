"""Stress: the two-worker handover test, run again and again while other processes keep both cores busy.

The test (tests/streams/test_worker_group.py) hands partitions from one worker to two and back to one; its
losses showed only under load (docs/design.md, "Six faust-streaming traps", 1 and 5). Each run is a fresh
pytest session (its own broker); the burners are plain busy loops. Counts the failed runs and the stall watch's
two kinds of warning in the workers' logs (a stalled partition; a hole at the head of a commit).

Usage: .venv/bin/python bench/handover_stress.py [--runs 24] [--burners 2] [--keep-going]
"""
from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "handover_stress"
TEST = "tests/streams/test_worker_group.py"
STALL = "has records up to offset"
HOLE = "never reached the streams"  # a hole at the head, sought back (docs/design.md, trap 6)


def _burn(stop: multiprocessing.synchronize.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--burners", type=int, default=2, help="busy processes beside the test")
    ap.add_argument("--keep-going", action="store_true", help="go on after a failed run")
    args = ap.parse_args()
    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.burners)]
    for b in burners:
        b.start()
    failed = stalls = holes = 0
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        for i in range(1, args.runs + 1):
            base = OUT / f"run{i}"
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", TEST,
                                   f"--basetemp={base}"], cwd=REPO, capture_output=True, text=True)
            logs = list(base.glob("test_*0/*.log"))
            texts = [p.read_text(errors="replace") for p in logs]
            fired, filled = sum(t.count(STALL) for t in texts), sum(t.count(HOLE) for t in texts)
            failed += proc.returncode != 0
            stalls += fired
            holes += filled
            print(f"run {i}: {'passed' if proc.returncode == 0 else 'FAILED'} in {time.monotonic() - started:.0f} s, "
                  f"stall watch fired {fired}×, holes at the head sought back {filled}×", flush=True)
            if proc.returncode and not args.keep_going:
                print(proc.stdout[-4000:])
                break
    finally:
        stop.set()
        for b in burners:
            b.join()
    print(f"{i} runs: {failed} failed, the stall watch fired {stalls}×, holes at the head sought back {holes}× "
          f"(burners: {args.burners})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
