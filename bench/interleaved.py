"""Same-run A/B timing for the micro-benchmarks: each candidate once per round, rounds repeated, medians compared;
other commits checked out beside this one for the A/B benchmarks."""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent


def worktree(rev: str, under: Path) -> tuple[str, Path]:
    """`rev` checked out once as a git worktree at `under`/<short sha> (reused while it exists): (short sha, path).
    Exits with a message naming the problem when `rev` is not a commit of this repository."""
    sha = subprocess.run(["git", "rev-parse", "--verify", "--short", f"{rev}^{{commit}}"], cwd=REPO,
                         capture_output=True, text=True)
    if sha.returncode:
        raise SystemExit(f"--against {rev}: not a commit of this repository ({sha.stderr.strip()})")
    short = sha.stdout.strip()
    path = under / short
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(path), short], cwd=REPO, check=True,
                       capture_output=True)
    return short, path


def time_interleaved(candidates: dict[str, Callable[[], Any]],
                     runs: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run every candidate once per round, `runs` rounds, so a drift of the machine's speed hits them alike.
    Returns the seconds of each run per candidate and each candidate's last result (to check they agree)."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    results: dict[str, Any] = {}
    for _ in range(runs):
        for name, run in candidates.items():
            t0 = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - t0)
    return times, results


def report(times: dict[str, list[float]], unit: str = "s", scale: float = 1.0, digits: int = 2,
           extra: Callable[[float], str] = lambda _: "") -> dict[str, float]:
    """Print each candidate's runs and median (times × `scale`, in `unit`), then the first's median over the
    last's (this checkout over the baseline); returns the medians."""
    med = {k: statistics.median(v) * scale for k, v in times.items()}
    for k, v in times.items():
        print(f"{k}: {' / '.join(f'{x * scale:.{digits}f}' for x in v)} {unit}, median {med[k]:.{digits}f} {unit}"
              + extra(med[k]))
    first, *_, last = med.values()
    print(f"median ratio ({next(iter(med))} / {list(med)[-1]}): {first / last:.4f}")
    return med


def last_json_line(cmd: list[str], checkout: Path, what: str) -> dict[str, Any]:
    """Run a checkout's own benchmark script (`cmd`, in `checkout`) and return the JSON object on its last line that
    holds one; exits naming `what` and showing the script's stderr when it fails or prints none."""
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"the {what} of {checkout} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def run_own_copy(checkout: Path, scripts: list[str], args: list[str], what: str) -> dict[str, Any]:
    """Run this checkout's bench/`scripts[0]` in `checkout` with `args`, after copying `scripts` (it and the bench
    modules it imports) over that checkout's own (a baseline worktree is left changed), so the benchmark is the
    same and the worker is that checkout's; its last JSON line (`last_json_line`)."""
    if checkout != REPO:
        for name in scripts:
            shutil.copyfile(REPO / "bench" / name, checkout / "bench" / name)
    return last_json_line([sys.executable, str(checkout / "bench" / scripts[0]), *args], checkout, what)


Runs = dict[str, dict[str, list[dict[str, Any]]]]


def alternate(this: Path, other: Path, kinds: list[str], rounds: int,
              run: Callable[[Path, str, int], dict[str, Any]], show: Callable[[int, str, str, dict[str, Any]], None],
              first: str = "this") -> Runs:
    """Every workload in `kinds` run by both checkouts each round (`run(checkout, kind, round)`), `first` first in
    odd rounds and last in even ones, so a machine whose speed drifts affects both alike; `show(round, kind, name,
    result)` prints each run as it ends. Returns {kind: {"other": [results], "this": [results]}}."""
    runs: Runs = {k: {"other": [], "this": []} for k in kinds}
    order = [("this", this), ("other", other)]
    if first == "other":
        order.reverse()
    for r in range(rounds):
        for kind in kinds:
            for name, checkout in (order if r % 2 == 0 else order[::-1]):
                res = run(checkout, kind, r)
                runs[kind][name].append(res)
                show(r + 1, kind, name, res)
    return runs


def medians(by: dict[str, list[dict[str, Any]]], key: str) -> dict[str, float]:
    """The median of `key` over each checkout's runs of one workload."""
    return {name: statistics.median(x[key] for x in rs) for name, rs in by.items()}
