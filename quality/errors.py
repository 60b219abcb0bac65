"""The publish gates' exceptions, apart from the suites: the CLI catches them without importing Great Expectations
or Spark."""
from __future__ import annotations

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
