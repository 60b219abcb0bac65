"""The reward spec loads, validates and refuses unsafe policies with a message naming the field."""
import pytest

from schemas.reward import RewardSpecError, available_versions, load_reward_spec


@pytest.mark.unit
def test_newest_spec_loads_and_is_versioned():
    spec = load_reward_spec()
    assert spec.version == available_versions()[-1] == "reward-v2"
    assert spec.exports is not None
    assert abs(sum(spec.composite.weights.values()) - 1) < 1e-12


@pytest.mark.unit
def test_a_failed_outcome_can_never_outscore_a_correct_one():
    spec = load_reward_spec("reward-v1")
    # the most an episode failing the gate can score, against the least a correct one (completed, SLA blown) scores
    assert spec.composite.ungated_scale * 1.0 < (spec.composite.weights["outcome"] * spec.outcome.values["completed"]
                                                 * spec.outcome.sla_floor)


@pytest.mark.unit
@pytest.mark.parametrize("edit, needle", [
    (("weights = { outcome = 0.5,", "weights = { outcome = 0.6,"), "composite weights must sum to 1"),
    (('credit = "discounted"', 'credit = "random"'), "step.credit"),
    (("ungated_scale = 0.2", "ungated_scale = 0.6"), "composite.ungated_scale 0.6 must be below 0.25"),
    # the gate also breaks when a blown SLA can take a correct outcome's value below what a failure keeps
    (("sla_floor = 0.5", "sla_floor = 0.3"), "composite.ungated_scale 0.2 must be below 0.15"),
    (("weights = { outcome = 0.5, correction = 0.25, friction = 0.15, trust = 0.10 }",
      "weights = { outcome = 0.6, correction = 0.25, friction = 0.15 }"), "composite weights lack ['trust']"),
    (('correct_outcomes = ["completed"]', "correct_outcomes = []"), "correct_outcomes is empty"),
    # a penalty above 1 would take the correction score below 0, and a completed episode below a failed one
    (("rejected = 1.0,", "rejected = 2.0,"), "correction.penalty values must lie in [0, 1]"),
    (('version = "reward-v1"', 'version = "v1"'), "version"),
    # a draft outside schemas/reward/ must not pass for a published version with other numbers
    (("base = 0.8", "base = 0.7"), "declares version 'reward-v1', which is published"),
])
def test_invalid_specs_are_refused_with_the_field(tmp_path, edit, needle):
    text = load_reward_spec.__globals__["SPEC_DIR"].joinpath("reward-v1.toml").read_text()
    assert edit[0] in text
    path = tmp_path / "mine.toml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(RewardSpecError) as exc:
        load_reward_spec(path)
    assert needle in str(exc.value) and str(path) in str(exc.value)


@pytest.mark.unit
def test_published_specs_load_by_any_path_and_unchanged_copies_are_accepted(tmp_path, monkeypatch):
    from schemas.reward import SPEC_DIR

    monkeypatch.chdir(SPEC_DIR.parent.parent)
    assert load_reward_spec("schemas/reward/reward-v1.toml") == load_reward_spec("reward-v1")
    copy = tmp_path / "copy.toml"
    copy.write_text((SPEC_DIR / "reward-v2.toml").read_text())
    assert load_reward_spec(copy) == load_reward_spec("reward-v2")
    wrong = tmp_path / "reward-v1.toml"
    wrong.write_text((SPEC_DIR / "reward-v2.toml").read_text())
    assert load_reward_spec(wrong).version == "reward-v2"  # outside the spec dir the file name is free


@pytest.mark.unit
def test_unknown_version_lists_the_known_ones():
    with pytest.raises(RewardSpecError, match="versions here: reward-v1, reward-v2"):
        load_reward_spec("reward-v9")


@pytest.mark.unit
def test_v2_scores_exactly_like_v1():
    """reward-v2 only adds the export policy: every scoring field equals v1's, so scores of both agree."""
    v1, v2 = load_reward_spec("reward-v1"), load_reward_spec("reward-v2")
    assert v1.exports is None
    assert v1.model_dump(exclude={"version", "description", "exports"}) == \
        v2.model_dump(exclude={"version", "description", "exports"})
