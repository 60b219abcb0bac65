"""`trajlake jobs run`: mistakes get one line naming the fix; a run publishes the gold tables with progress."""
import subprocess
import sys

import pytest

from tests.conftest import REPO, settings_env
from tests.trajlake.test_cli import assert_clean_error, run


@pytest.mark.unit
@pytest.mark.parametrize("args", [["jobs"], ["jobs", "run"]])
def test_jobs_have_help(args):
    r = run([*args, "--help"])
    assert r.returncode == 0 and "Usage" in r.stdout


@pytest.mark.unit
@pytest.mark.parametrize("args, needles", [
    (["jobs", "run", "scores", "--start", "2026-11-01", "--end", "2026-11-02"], ["no job 'scores'", "heuristics"]),
    (["jobs", "run", "heuristics", "--start", "2026-11-31", "--end", "2026-12-02"], ["--start", "YYYY-MM-DD"]),
    (["jobs", "run", "heuristics", "--start", "2026-11-02", "--end", "2026-11-02"], ["must be after --start"]),
    (["jobs", "run", "all", "--start", "2026-11-01", "--end", "2026-11-02", "--reward-version", "reward-v9"],
     ["no reward spec", "reward-v1", "--reward-version"]),
])
def test_job_mistakes_are_one_line(args, needles):
    assert_clean_error(run(args), *needles)


@pytest.mark.integration
def test_jobs_run_all_on_an_empty_lake_publishes_empty_tables(base_settings, tmp_path):
    s = base_settings.model_copy(update={"lake_root": tmp_path / "lake", "state_dir": tmp_path})
    r = subprocess.run([sys.executable, "-m", "trajlake.cli", "jobs", "run", "all", "--start", "2026-11-01", "--end",
                        "2026-11-08"], capture_output=True, text=True, env=settings_env(s), cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for table in ("gold/step_signals", "gold/episode_scores", "gold/scorecards", "gold/guardrails",
                  "gold/review_queue"):
        assert f"{table}: 0 rows" in r.stdout
