"""The A/B benchmarks' alternation: both checkouts run every workload each round, in turn first."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from interleaved import alternate, medians  # noqa: E402

pytestmark = pytest.mark.unit


def test_the_checkouts_take_turns_going_first_and_every_run_is_kept():
    calls: list[tuple[str, str, int]] = []
    shown: list[tuple[int, str, str]] = []

    def run(checkout: Path, kind: str, r: int) -> dict:
        calls.append((checkout.name, kind, r))
        return {"rate": len(calls)}

    runs = alternate(Path("this"), Path("other"), ["mix", "structural"], 2, run,
                     lambda r, kind, name, res: shown.append((r, kind, name)), first="other")
    assert calls == [("other", "mix", 0), ("this", "mix", 0), ("other", "structural", 0), ("this", "structural", 0),
                     ("this", "mix", 1), ("other", "mix", 1), ("this", "structural", 1), ("other", "structural", 1)]
    assert shown[0] == (1, "mix", "other") and shown[-1] == (2, "structural", "other")
    assert runs["mix"] == {"other": [{"rate": 1}, {"rate": 6}], "this": [{"rate": 2}, {"rate": 5}]}
    assert medians(runs["mix"], "rate") == {"other": 3.5, "this": 3.5}
