"""Benchmark: cold and warm set-up time of the test command (`make setup` + broker jars + Delta jars via Ivy).

cold  = a fresh clone and an empty HOME: no pip, Maven or Ivy cache, no venv, no jars.
warm  = a fresh clone with the caches a previous set-up left in HOME.
baseline (same run, same HOME state) = `python -m venv` + `pip install pyspark==4.2.0` alone — the one
unavoidable large download — so each figure is also a ratio to something outside trajlake.

Usage: .venv/bin/python bench/setup_time.py [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROBE = ("import time; from schemas.settings import Settings; from infra.kafka.broker import ensure_jars; "
         "from jobs.spark import build_spark; s = Settings(spark_ui=False); ensure_jars(s); "
         "sp = build_spark(s); sp.range(1).count(); sp.stop()")


def timed(cmd: list[str] | str, cwd: Path, env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, shell=isinstance(cmd, str),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def one_setup(home: Path, work: Path) -> float:
    env = {**os.environ, "HOME": str(home), "PYENV_ROOT": os.environ.get("PYENV_ROOT", "/root/.pyenv")}
    env = {k: v for k, v in env.items() if not k.startswith(("VIRTUAL_ENV", "TRAJLAKE_"))}
    clone = work / f"clone-{time.time_ns()}"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone.parent / "shared").mkdir(exist_ok=True)
    t = timed(["make", "setup"], clone, env)
    t += timed([str(clone / ".venv/bin/python"), "-c", PROBE], clone, env)
    shutil.rmtree(clone)
    return t


def one_baseline(home: Path, work: Path) -> float:
    env = {**os.environ, "HOME": str(home), "PYENV_ROOT": os.environ.get("PYENV_ROOT", "/root/.pyenv")}
    venv = work / f"base-{time.time_ns()}"
    t = timed(f"python3 -m venv {venv} && {venv}/bin/pip install -q pyspark==4.2.0", work, env)
    shutil.rmtree(venv)
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, list[float]] = {"cold": [], "cold_baseline": [], "warm": [], "warm_baseline": []}
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            home, work = Path(d) / "home", Path(d) / "work"
            home.mkdir(), work.mkdir()
            results["cold_baseline"].append(one_baseline(home, work))
            shutil.rmtree(home), home.mkdir()          # both cold measurements start from an empty HOME
            results["cold"].append(one_setup(home, work))
            results["warm"].append(one_setup(home, work))
            results["warm_baseline"].append(one_baseline(home, work))
        print(f"run {i + 1}: " + ", ".join(f"{k}={v[-1]:.1f}s" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(json.dumps({"median_s": med, "runs": results,
                      "cold_ratio": med["cold"] / med["cold_baseline"],
                      "warm_ratio": med["warm"] / med["warm_baseline"]}, indent=2))


if __name__ == "__main__":
    main()
