"""The quality gate's exception, apart from the suites: the CLI catches it without importing Great Expectations."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quality.runner import QualityReport


class QualityGateFailed(RuntimeError):
    """A suite failed; nothing was published. `report` says what and where the failing rows went."""

    def __init__(self, report: "QualityReport"):
        super().__init__(report.summary() + "\nNothing was published.")
        self.report = report
