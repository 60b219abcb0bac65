"""The jobs' entry point without the CLI: `spark-submit jobs/<job>.py --start D --end D` on any master."""
from __future__ import annotations

import argparse
from datetime import date
from typing import Callable

JOBS = ("heuristics", "scorecards")


def job_runner(name: str) -> Callable:
    """The `run(spark, settings, start, end, …)` of a job by name."""
    if name == "heuristics":
        from jobs.heuristics import run
    elif name == "scorecards":
        from jobs.scorecards import run
    else:
        raise ValueError(f"no job {name!r}; jobs: {', '.join(JOBS)}")
    return run


def main(name: str, argv: list[str]) -> int:
    from jobs.spark import build_spark
    from schemas.settings import Settings

    parser = argparse.ArgumentParser(prog=f"spark-submit jobs/{name}.py",
                                     description=f"Run the {name} job over [start, end).")
    parser.add_argument("--start", type=date.fromisoformat, required=True, help="first day, YYYY-MM-DD")
    parser.add_argument("--end", type=date.fromisoformat, required=True, help="day after the last, YYYY-MM-DD")
    parser.add_argument("--allow-empty", action="store_true",
                        help="let a window, or a day of it, that computes no rows delete the rows published in it")
    args = parser.parse_args(argv)
    if args.end <= args.start:
        parser.error(f"--end {args.end} must be after --start {args.start}")
    settings = Settings()
    if args.allow_empty:
        settings = settings.model_copy(update={"job_allow_empty": True})
    spark = build_spark(settings, app_name=f"trajlake-{name}")
    for published in job_runner(name)(spark, settings, args.start, args.end, progress=print):
        print(f"{published.table}: {published.note}" if not published.written else
              f"{published.table}: {published.rows} rows → version {published.version}"
              + (f" ({published.note})" if published.note else ""))
    return 0
