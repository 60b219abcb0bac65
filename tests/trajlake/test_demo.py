"""`trajlake demo` runs the whole loop on the session's broker and ends with a scorecard and an export manifest."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, own_settings, settings_env

pytestmark = pytest.mark.integration


def test_the_demo_runs_the_whole_loop_and_ends_with_a_scorecard(kafka, tmp_path):
    s = own_settings(kafka, tmp_path).model_copy(update={"kafka_bootstrap": kafka.bootstrap})
    r = subprocess.run([sys.executable, "-m", "trajlake.cli", "demo", "--trajectories", "5", "--synthetic", "1500"],
                       env={**settings_env(s), "COLUMNS": "200"}, cwd=REPO, capture_output=True, text=True,
                       timeout=1200)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    for step in ("1.", "2.", "3.", "4.", "5.", "6.", "7.", "8."):
        assert step in out
    assert "9/9 table suites passed" in out, out
    assert "composite_ci95" in out and "completion_ci95" in out  # the scorecard table
    manifest = out.split("Export manifest:")[1].split()[0]
    assert (tmp_path / "state").as_posix() in manifest or (tmp_path / "lake").as_posix() in manifest
    assert manifest.endswith("manifest.json")
