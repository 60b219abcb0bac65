"""The versioned reward spec: loads schemas/reward/reward-vN.toml into a frozen, validated model."""
from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SPEC_DIR = Path(__file__).resolve().parent
OUTCOMES = ("completed", "reopened", "escalated", "abandoned", "timeout")
STEP_OUTCOMES = ("accepted", "rejected", "undone", "retried", "superseded", "ignored")
Unit = Field(ge=0.0, le=1.0)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _sums_to_one(weights: dict[str, float], what: str, keys: tuple[str, ...]) -> None:
    if missing := [k for k in keys if k not in weights]:
        # a missing weight would silently count as 0 (or break the gate's check): name them all
        raise ValueError(f"{what} weights lack {missing}; name every one of {list(keys)} (0 is allowed)")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"{what} weights must not be negative")
    if abs(sum(weights.values()) - 1.0) > 1e-9:
        raise ValueError(f"{what} weights must sum to 1, not {sum(weights.values())}")


class OutcomeSpec(_Frozen):
    values: dict[Literal[OUTCOMES], float]
    correct_outcomes: tuple[Literal[OUTCOMES], ...]
    external_reward_threshold: float
    poor_outcomes: tuple[Literal[OUTCOMES], ...]
    sla_grace: float = Field(gt=0)
    sla_floor: float = Unit

    @model_validator(mode="after")
    def _complete(self):
        if missing := set(OUTCOMES) - set(self.values):
            raise ValueError(f"outcome.values lacks {sorted(missing)}")
        if any(not 0 <= v <= 1 for v in self.values.values()):
            raise ValueError("outcome.values must lie in [0, 1]")
        if not self.correct_outcomes:
            raise ValueError("outcome.correct_outcomes is empty: no episode could pass the gate")
        return self


class CorrectionSpec(_Frozen):
    overwrite_threshold: float = Unit
    penalty: dict[Literal[STEP_OUTCOMES], float]

    @model_validator(mode="after")
    def _complete(self):
        if missing := set(STEP_OUTCOMES) - set(self.penalty):
            raise ValueError(f"correction.penalty lacks {sorted(missing)}")
        # the correction score (1 - the mean penalty) is a bucket score in [0, 1]; the gate's promise (a failed
        # episode never outscores a correct one) counts on every bucket score being at least 0
        if any(not 0 <= v <= 1 for v in self.penalty.values()):
            raise ValueError("correction.penalty values must lie in [0, 1]")
        return self


class FrictionSpec(_Frozen):
    next_action_ref_s: float = Field(gt=0)
    weights: dict[Literal["retry", "dead_end", "time"], float]

    @model_validator(mode="after")
    def _sum(self):
        _sums_to_one(self.weights, "friction", ("retry", "dead_end", "time"))
        return self


class TrustSpec(_Frozen):
    base: float = Unit
    delegated_bonus: float = Unit
    escalated_penalty: float = Unit
    opted_out_penalty: float = Unit
    # an opt-out by the user (in this task or a later one) counts as one after this task's poor outcome from the
    # outcome until this many hours after the task's end; specs written before the key get 24
    opt_out_within_hours: float = Field(default=24.0, gt=0)


class CompositeSpec(_Frozen):
    weights: dict[Literal["outcome", "correction", "friction", "trust"], float]
    ungated_scale: float = Unit

    @model_validator(mode="after")
    def _sum(self):
        _sums_to_one(self.weights, "composite", ("outcome", "correction", "friction", "trust"))
        return self


class StepSpec(_Frozen):
    own_weight: float = Unit
    dead_end_penalty: float = Unit
    credit: Literal["uniform", "discounted", "last"]
    gamma: float = Field(gt=0, le=1)


class Baseline(_Frozen):
    agent_version: str
    prompt_variant: str


class GuardrailSpec(_Frozen):
    ci_level: float = Field(gt=0.5, lt=1)
    flag_level: float = Field(gt=0.5, lt=1)
    min_n: int = Field(ge=2)
    baseline: Baseline
    proxy_metrics: tuple[str, ...]
    outcome_metrics: tuple[str, ...]
    psi_alert: float = Field(gt=0)
    review_per_stratum: int = Field(ge=1)
    review_bands: tuple[float, ...]


class ExportSpec(_Frozen):
    """What the training exports take as good enough to imitate (SFT), to prefer (pairs) or to label (KTO)."""

    sft_min_composite: float = Unit
    rft_requires_reference: bool = True
    pair_min_edit_distance: float = Unit
    kto_desirable: tuple[Literal[STEP_OUTCOMES], ...]
    kto_undesirable: tuple[Literal[STEP_OUTCOMES], ...]

    @model_validator(mode="after")
    def _disjoint(self):
        if both := set(self.kto_desirable) & set(self.kto_undesirable):
            raise ValueError(f"exports.kto_desirable and kto_undesirable share {sorted(both)}")
        return self


class RewardSpec(_Frozen):
    """One version of the reward policy; every gold row records `version`."""

    version: str = Field(pattern=r"^reward-v\d+$")
    description: str
    outcome: OutcomeSpec
    correction: CorrectionSpec
    friction: FrictionSpec
    trust: TrustSpec
    composite: CompositeSpec
    step: StepSpec
    guardrails: GuardrailSpec
    # reward-v1 predates the export policy; exports need a spec that has one (reward-v2 on)
    exports: ExportSpec | None = None

    @model_validator(mode="after")
    def _gate_holds(self):
        # A failed episode scores at most ungated_scale (its weighted score is at most 1); a correct one at least
        # w_outcome × (its outcome's value) × sla_floor, everything else 0. The gate is a promise only when the
        # first is below the second for every correct outcome.
        floor = self.composite.weights["outcome"] * min(self.outcome.values[c] for c in self.outcome.correct_outcomes) \
            * self.outcome.sla_floor
        if self.composite.ungated_scale >= floor:
            raise ValueError(
                f"composite.ungated_scale {self.composite.ungated_scale} must be below {floor:g} (outcome weight × "
                "the lowest value of a correct outcome × outcome.sla_floor): otherwise a failed episode could "
                "outscore a correct one that did everything else badly")
        return self


def reward_spec_digest(spec: RewardSpec) -> str:
    """sha256 of the spec's values (not its file's comments): an export's manifest records it, so a rebuild can
    tell a changed policy from other causes of a difference. A key added to the spec after specs were published
    (`ADDED_LATER`) counts only when a spec sets it to something else than its default, so the published specs
    keep their digests."""
    values = spec.model_dump(mode="json")
    for (section, key), default in ADDED_LATER.items():
        if values[section].get(key) == default:
            del values[section][key]
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


# (section, key) → the default a spec without the key gets
ADDED_LATER: dict[tuple[str, str], object] = {("trust", "opt_out_within_hours"): 24.0}


class RewardSpecError(ValueError):
    """The spec file is missing or invalid; the message names the file and the field."""


def available_versions() -> list[str]:
    return sorted((p.stem for p in SPEC_DIR.glob("reward-v*.toml")), key=lambda v: int(v.split("-v")[1]))


def load_reward_spec(version: str | Path | None = None) -> RewardSpec:
    """The spec of `version` ("reward-v1"), of a file path, or the newest one when None."""
    if version is None:
        versions = available_versions()
        if not versions:
            raise RewardSpecError(f"no reward-v*.toml in {SPEC_DIR}")
        version = versions[-1]
    path = Path(version) if str(version).endswith(".toml") else SPEC_DIR / f"{version}.toml"
    if not path.exists():
        raise RewardSpecError(f"no reward spec {path}; versions here: {', '.join(available_versions()) or 'none'}")
    try:
        spec = RewardSpec.model_validate(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise RewardSpecError(f"{path} is not valid TOML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RewardSpecError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    published = path.resolve().parent == SPEC_DIR
    if published and spec.version != path.stem:
        raise RewardSpecError(f"{path} declares version {spec.version!r}; the file name and version must agree")
    if not published and spec.version in available_versions():
        # a draft must not pass for a published policy: gold rows would carry a version whose numbers they lack
        if spec != load_reward_spec(spec.version):
            raise RewardSpecError(f"{path} declares version {spec.version!r}, which is published in "
                                  f"{SPEC_DIR / (spec.version + '.toml')} with other numbers: give the draft a new "
                                  "version (a policy change is a new version)")
    return spec
