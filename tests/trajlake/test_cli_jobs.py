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
def test_jobs_run_over_a_window_without_input(base_settings, tmp_path):
    """A window with no input and nothing published is left alone, saying so (exit 0, no table created); once the
    window holds published scores, a run without input refuses in one line and the scores stay."""
    from datetime import date

    from jobs.tables import rows_in_window
    from schemas.reward import load_reward_spec
    from schemas.tables import GOLD_EPISODE_SCORES
    from tests.jobs.test_tables import a_row, plant

    s = base_settings.model_copy(update={"lake_root": tmp_path / "lake", "state_dir": tmp_path})
    env = settings_env(s) | {"COLUMNS": "200"}

    def jobs_run(*args):
        return subprocess.run([sys.executable, "-m", "trajlake.cli", "jobs", "run", *args, "--start", "2026-11-01",
                               "--end", "2026-11-08"], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)

    assert_clean_error(jobs_run("all"), f"no lake at {s.lake}", "TRAJLAKE_LAKE_ROOT")  # a mistyped lake
    s.lake.mkdir(parents=True)
    r = jobs_run("all")
    assert r.returncode == 0, r.stderr[-2000:]
    for table in ("gold/step_signals", "gold/episode_scores", "gold/scorecards", "gold/guardrails",
                  "gold/review_queue"):
        assert f"{table}: nothing to publish" in r.stdout
        assert not (s.lake / table).exists()

    version = load_reward_spec(s.reward_version).version
    plant(s, GOLD_EPISODE_SCORES, a_row(GOLD_EPISODE_SCORES, date=date(2026, 11, 3), reward_version=version))
    assert_clean_error(jobs_run("heuristics"), "error: gold/episode_scores: the run computed no rows",
                       "holds 1 published rows", "silver/steps, silver/episodes", "--allow-empty")
    assert rows_in_window(s, GOLD_EPISODE_SCORES, "true") == 1
