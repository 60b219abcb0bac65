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
