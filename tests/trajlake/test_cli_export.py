"""`trajlake export`: mistakes get one line naming the fix."""
import pytest

from tests.conftest import settings_env
from tests.trajlake.test_cli import assert_clean_error, run


@pytest.mark.unit
@pytest.mark.parametrize("args, needles", [
    (["export", "weekly"], ["give NAME, --since and --until", "--from-manifest"]),
    (["export", "weekly", "--since", "2026-11-02", "--until", "2026-11-09", "--format", "sft,parquet"],
     ["unknown format(s) parquet", "choose from sft"]),
    (["export", "weekly", "--since", "2026-11-31", "--until", "2026-12-09"], ["--since", "YYYY-MM-DD"]),
    (["export", "--from-manifest", "/nonexistent/manifest.json"], ["no manifest at", "manifest.json"]),
])
def test_export_mistakes_are_one_line(args, needles):
    assert_clean_error(run(args), *needles)


@pytest.mark.unit
def test_bad_split_ratios_name_the_variable(base_settings):
    env = settings_env(base_settings) | {"TRAJLAKE_EXPORT_RATIOS": '{"train": 0.9, "test": 0.3}'}
    assert_clean_error(run(["export", "x", "--since", "2026-11-02", "--until", "2026-11-03"], env),
                        "TRAJLAKE_EXPORT_RATIOS must give")


@pytest.mark.component
def test_export_before_scoring_says_which_job_to_run(base_settings, tmp_path):
    (tmp_path / "lake").mkdir()  # a lake with nothing scored yet (one that does not exist is named as such)
    s = base_settings.model_copy(update={"lake_root": tmp_path / "lake", "state_dir": tmp_path})
    assert_clean_error(run(["export", "x", "--since", "2026-11-02", "--until", "2026-11-03"], settings_env(s)),
                        "no gold/episode_scores yet", "trajlake jobs run all")
