"""The publish gates' exceptions, apart from the suites: the CLI catches them without importing Great Expectations
or Spark."""
from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quality.runner import QualityReport


class QualityGateFailed(RuntimeError):
    """A suite failed; nothing was published. `report` says what and where the failing rows went."""

    def __init__(self, report: "QualityReport"):
        super().__init__(report.summary() + "\nNothing was published.")
        self.report = report


class PublishRefused(RuntimeError):
    """The rows failed a pre-publish check (declared columns, NOT NULL, unique keys); nothing was written."""


class EmptyPublishRefused(PublishRefused):
    """A job computed no rows for a window that holds published rows: the overwrite would have deleted them all.

    Nothing of the job was written. The usual cause is missing input (its days not written yet, lost or vacuumed;
    a wrong --start/--end), not a window that has really become empty, so emptying it takes an explicit override.
    A PublishRefused, so everything that reports a refused publish as one line reports this one too.
    """

    def __init__(self, table: str, where: str, held: int, inputs: tuple[str, ...] = ()):
        self.table, self.where, self.held, self.inputs = table, where, held, inputs
        read = f"that {', '.join(inputs)} hold rows for those days" if inputs else "that the job's input holds rows"
        super().__init__(
            f"{table}: the run computed no rows for its window ({where}), which holds {held:,} published rows; "
            f"publishing would delete them all, so nothing was published. Check {read} and that --start/--end and "
            "the reward version are the ones meant, or rerun with --allow-empty (TRAJLAKE_JOB_ALLOW_EMPTY=true) "
            "to empty the window on purpose")


class EmptyDaysRefused(PublishRefused):
    """A job computed rows for its window but none for some of its days (a table's day partitions) that hold
    published rows: the overwrite replaces the whole window, so it would have deleted those days' rows.

    The sibling of EmptyPublishRefused for a partly missing input: silver gone for two days of a week-long window,
    a weekly scorecards run over a week whose heuristics ran only for some days. Nothing of the job was written.
    `days` is ((the day's partition values, the reward version aside), rows held) in order; `by` names those
    partition columns. A PublishRefused, so it is reported as one line like any other refused publish.
    """

    def __init__(self, table: str, where: str, days: tuple[tuple[tuple, int], ...], by: tuple[str, ...],
                 inputs: tuple[str, ...] = ()):
        self.table, self.where, self.days, self.by, self.inputs = table, where, days, by, inputs
        self.held = sum(rows for _, rows in days)
        read = f"that {', '.join(inputs)} hold rows for those days" if inputs else "that the job's input holds rows"
        one = len(days) == 1
        super().__init__(
            f"{table}: the run computed rows for its window ({where}) but none for {len(days)} "
            f"{'/'.join(by)} partition{'' if one else 's'} of it that hold{'s' if one else ''} published rows: "
            f"{days_listed(days)}; publishing would delete those {self.held:,} rows, so nothing was published. "
            f"Check {read}, or rerun over only the days that have input (--start/--end), or rerun with "
            "--allow-empty (TRAJLAKE_JOB_ALLOW_EMPTY=true) to empty those days on purpose")


def days_listed(days: tuple[tuple[tuple, int], ...], limit: int = 8) -> str:
    """`days` ((partition values, rows) in order) as a short list: a run of consecutive dates as one item
    ("2026-11-03…2026-11-05 (3 days, 621 rows)"), anything else item by item ("week 2026-11-02 (900 rows)"), at
    most `limit` items and how many more: a backfill over months of missing silver stays one readable line."""
    runs: list[list] = []  # [values before the date, first date, last date, days, rows]
    for values, rows in days:
        head, day = tuple(values[:-1]), values[-1]
        last = runs[-1] if runs else None
        if last and last[0] == head and isinstance(day, date) and isinstance(last[2], date) \
                and day - last[2] == timedelta(days=1):
            last[2:] = [day, last[3] + 1, last[4] + rows]
        else:
            runs.append([head, day, day, 1, rows])
    said = [" ".join([*map(str, head), f"{first} ({rows:,} rows)" if n == 1 else
                      f"{first}…{last} ({n} days, {rows:,} rows)"])
            for head, first, last, n, rows in runs[:limit]]
    return ", ".join(said + ([f"and {len(runs) - limit} more"] if len(runs) > limit else []))
