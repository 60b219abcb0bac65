"""Same-run A/B timing for the micro-benchmarks: each candidate once per round, rounds repeated, medians compared;
other commits checked out beside this one for the A/B benchmarks."""
from __future__ import annotations

import statistics
import subprocess
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
