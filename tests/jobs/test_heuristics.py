"""Heuristic signals, bucket scores, the gated composite and step credit on hand-built silver rows (real Spark)."""
from datetime import date, datetime, timedelta, timezone

import pytest

from jobs.heuristics import episode_scores, step_rewards, step_signals
from jobs.tables import declared_schema
from schemas.reward import load_reward_spec
from schemas.tables import SILVER_EPISODES, SILVER_STEPS

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
SPEC = load_reward_spec("reward-v1")


def step(task: str, index: int, outcome: str, intent: str | None = None, **kw):
    flags = {k: False for k in ("accepted", "rejected", "edited", "undone", "retried")}
    flags.update({"accepted": outcome in ("accepted", "undone"), "rejected": outcome == "rejected",
                  "edited": outcome == "edited", "undone": outcome == "undone", "retried": outcome == "retried"})
    row = {f.name: None for f in SILVER_STEPS.schema}
    row.update(step_id=f"s1/a-{task}-{index}", revision=0, session_id="s1", task_id=task, user_id="u_1",
               agent_version="agent-v1", prompt_variant="control", task_type="refund", action_id=f"a-{task}-{index}",
               intent_id=intent, step_index=index, proposed_at=T0 + timedelta(minutes=index), output="x",
               outcome=outcome, shown=True, **flags, reaction_ms=4000, next_action_ms=6000, llm_calls=1, tool_calls=0,
               tool_errors=0, tokens_in=1, tokens_out=1, cost_usd=0.0, latency_ms=1.0, closed_reason="terminal",
               closed_at=T0, date=date(2026, 11, 2))
    if "policy_version" in row:
        row["policy_version"] = "privacy-1"
    row.update(kw)
    return row


def episode(task: str, outcome: str, **kw):
    row = {f.name: None for f in SILVER_EPISODES.schema}
    row.update(episode_id=f"s1/{task}", revision=0, session_id="s1", task_id=task, user_id="u_1",
               agent_version="agent-v1", prompt_variant="control", task_type="refund", started_at=T0,
               ended_at=T0 + timedelta(seconds=60), duration_ms=60_000, outcome=outcome, n_steps=1,
               n_user_messages=0, accepted=0, rejected=0, edited=0, undone=0, retried=0, escalated=False,
               delegated=False, opted_out=False, reopened=outcome == "reopened", feedback_up=0, feedback_down=0,
               sla_seconds=120.0, llm_calls=1, tool_calls=0, tool_errors=0, tokens_in=1, tokens_out=1, cost_usd=0.0,
               latency_ms=1.0, closed_reason="terminal", closed_at=T0, date=date(2026, 11, 2))
    if "policy_version" in row:
        row["policy_version"] = "privacy-1"
    row.update(kw)
    return row


def frames(spark, steps, episodes):
    return (spark.createDataFrame(steps, declared_schema(SILVER_STEPS)),
            spark.createDataFrame(episodes, declared_schema(SILVER_EPISODES)))


@pytest.mark.integration
def test_dead_ends_overwrites_and_penalties(spark):
    steps, _ = frames(spark, [
        step("t1", 0, "rejected", "i1"), step("t1", 1, "accepted", "i1"),   # rejected, then kept: no dead end
        step("t1", 2, "retried", "i2"), step("t1", 3, "undone", "i2"),      # nothing kept in i2: both dead ends
        step("t1", 4, "edited", "i3", final_value="y", edit_distance=0.7),  # a big edit is an overwrite
        step("t1", 5, "edited", "i4", final_value="y", edit_distance=0.1),
        step("t1", 6, "ignored", None),                                      # no intent: its own
    ], [])
    rows = {r.step_index: r for r in step_signals(steps, SPEC).collect()}
    assert [rows[i].dead_end for i in range(7)] == [False, False, True, True, False, False, True]
    assert [rows[i].overwritten for i in range(7)] == [False, False, False, False, True, False, False]
    assert [rows[i].correction_penalty for i in range(7)] == [1.0, 0.0, 0.5, 1.0, 0.7, 0.1, 0.25]
    assert rows[1].intent_attempt == 2 and rows[3].intent_retries == 1 and rows[6].intent_id == "a-t1-6"
    assert rows[2].own_reward == 0.0 and rows[5].own_reward == pytest.approx(0.9)
    assert rows[0].reaction_s == 4.0 and rows[0].next_action_s == 6.0


@pytest.mark.integration
def test_the_gate_keeps_proxies_alone_from_scoring_well(spark):
    """A perfect-looking failed episode (all accepted, instant) scores below a slow, heavily edited success."""
    steps, episodes = frames(spark, [
        step("gamer", 0, "accepted", reaction_ms=100, next_action_ms=100),
        step("worker", 0, "edited", final_value="y", edit_distance=0.9, reaction_ms=90_000, next_action_ms=90_000),
    ], [episode("gamer", "abandoned"), episode("worker", "completed", duration_ms=240_000)])
    signals = step_signals(steps, SPEC)
    scores = {r.task_id: r for r in episode_scores(episodes, signals, SPEC).collect()}
    gamer, worker = scores["gamer"], scores["worker"]
    assert not gamer.gate_passed and worker.gate_passed
    assert gamer.correction_score == 1.0 and gamer.friction_score > worker.friction_score
    assert gamer.composite <= SPEC.composite.ungated_scale < worker.composite
    # 240 s against a 120 s SLA is 2× the SLA: the factor has fallen to the floor
    assert worker.within_sla is False and worker.sla_factor == SPEC.outcome.sla_floor
    assert worker.completion_time_s == 240.0 and gamer.completion_time_s is None
    assert gamer.reward_version == "reward-v1" and str(worker.week) == "2026-11-02"


@pytest.mark.integration
def test_outside_grade_gates_too_and_opt_out_counts_after_poor_outcomes(spark):
    steps, episodes = frames(spark, [step("a", 0, "accepted"), step("b", 0, "accepted"), step("c", 0, "accepted")], [
        episode("a", "completed", external_reward=0.0),   # the user completed, the grader says wrong
        episode("b", "escalated", escalated=True, opted_out=True, outcome_at=T0 + timedelta(seconds=50),
                opted_out_at=T0 + timedelta(seconds=55)),
        episode("c", "completed", opted_out=True, delegated=True)])
    scores = {r.task_id: r for r in episode_scores(episodes, step_signals(steps, SPEC), SPEC).collect()}
    assert not scores["a"].gate_passed
    assert scores["b"].opted_out_after_poor is True and scores["c"].opted_out_after_poor is None
    assert scores["b"].trust_score == 0.0 and scores["c"].trust_score == pytest.approx(0.2)


@pytest.mark.integration
def test_an_opt_out_counts_after_a_poor_outcome_in_the_task_or_a_later_one_within_the_hours(spark):
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    out = dict(opted_out=True)
    _, episodes = frames(spark, [], [
        episode("after", "abandoned", user_id="u_a", outcome_at=at(60), opted_out_at=at(70), **out),
        episode("before", "abandoned", user_id="u_b", outcome_at=at(60), opted_out_at=at(10), **out),
        episode("timeout", "timeout", user_id="u_t", opted_out_at=at(30), **out),  # no end met: from its start
        # a later task of the user, within a day of this one's end
        episode("poor", "abandoned", user_id="u_n", outcome_at=at(60)),
        episode("next", "completed", user_id="u_n", started_at=at(7200), outcome_at=at(7300),
                opted_out_at=at(7210), **out),
        # more than a day later: not linked
        episode("poor2", "escalated", user_id="u_l", escalated=True, outcome_at=at(60)),
        episode("late", "completed", user_id="u_l", started_at=at(30 * 3600), opted_out_at=at(30 * 3600 + 5), **out),
        # an overlapping task that started before the outcome is no obstacle: the opt-out two tasks on counts
        episode("poor3", "abandoned", user_id="u_m", outcome_at=at(100)),
        episode("overlap", "completed", user_id="u_m", started_at=at(50)),
        episode("third", "completed", user_id="u_m", started_at=at(1200), opted_out_at=at(1210), **out),
        # an opt-out in another task before this outcome does not count
        episode("poor4", "abandoned", user_id="u_o", started_at=at(0), outcome_at=at(500)),
        episode("earlier", "completed", user_id="u_o", started_at=at(100), opted_out_at=at(200), **out),
        # an opt-out in the task itself, a day after its first end but before its last event, counts
        episode("long", "escalated", user_id="u_g", escalated=True, outcome_at=at(60),
                ended_at=at(50 * 3600), opted_out_at=at(26 * 3600), **out),
        # rows written before silver recorded these times (`trajlake migrate`): the old definition, an opt-out
        # anywhere in the poor episode, and none from the user's other tasks
        episode("old", "abandoned", user_id="u_x", **out),
        episode("old2", "abandoned", user_id="u_x"),
        # a pseudonym many people share (the OTLP default user): its tasks see their own opt-outs only
        episode("anon_poor", "abandoned", user_id="u_shared", outcome_at=at(60)),
        episode("anon_out", "completed", user_id="u_shared", started_at=at(600), opted_out_at=at(610), **out),
    ])
    scores = {r.task_id: r.opted_out_after_poor for r in episode_scores(episodes, step_signals(
        spark.createDataFrame([], declared_schema(SILVER_STEPS)), SPEC), SPEC, shared_users=("u_shared",)).collect()}
    assert scores == {"after": True, "before": False, "timeout": True, "poor": True, "next": None, "poor2": False,
                      "late": None, "poor3": True, "overlap": None, "third": None, "poor4": False, "earlier": None,
                      "long": True, "old": True, "old2": False, "anon_poor": False, "anon_out": None}


@pytest.mark.integration
def test_delegation_is_a_rate_among_repeat_tasks(spark):
    _, episodes = frames(spark, [], [
        episode("r1", "completed", repeat_of_task_id="t0", delegated=True),
        episode("r2", "completed", repeat_of_task_id="t0"),
        episode("new", "completed", delegated=True),  # a delegated event without the repeat marker: no repeat
        episode("plain", "completed")])
    scores = {r.task_id: (r.repeat_task, r.delegated_when_repeat) for r in episode_scores(episodes, step_signals(
        spark.createDataFrame([], declared_schema(SILVER_STEPS)), SPEC), SPEC).collect()}
    assert scores == {"r1": (True, True), "r2": (True, False), "new": (False, None), "plain": (False, None)}


@pytest.mark.integration
@pytest.mark.parametrize("credit,gamma", [("uniform", None), ("discounted", None), ("discounted", 1.0),
                                         ("last", None)])
def test_step_credit_shares_sum_to_the_episode_composite(spark, credit, gamma):
    """Shares against the weights summed by hand: the job sums them in closed form (γ = 1 is uniform)."""
    step_spec = {"credit": credit} | ({"gamma": gamma} if gamma else {})
    spec = SPEC.model_copy(update={"step": SPEC.step.model_copy(update=step_spec)})
    steps, episodes = frames(spark, [step("t", i, "accepted") for i in range(4)], [episode("t", "completed", n_steps=4)])
    signals = step_signals(steps, spec)
    scores = episode_scores(episodes, signals, spec)
    composite = scores.first().composite
    rows = sorted(step_rewards(signals, scores, spec).collect(), key=lambda r: r.step_index)
    shares = [r.credit_share for r in rows]
    assert sum(shares) == pytest.approx(composite)
    expected = {"uniform": [1, 1, 1, 1], "last": [0, 0, 0, 1],
                "discounted": [spec.step.gamma ** (3 - i) for i in range(4)]}[credit]
    assert shares == pytest.approx([composite * w / sum(expected) for w in expected])
    assert all(r.step_reward == pytest.approx(spec.step.own_weight * r.own_reward
                                              + (1 - spec.step.own_weight) * r.credit_share) for r in rows)


def test_the_latest_revision_is_the_highest_then_the_later_closed(spark):
    """A key written twice at one revision (a task the join had forgotten, started again by a late event) is taken
    as every reader of silver takes it: the row closed later (docs/design.md)."""
    from jobs.tables import latest_revisions

    steps, _ = frames(spark, [step("t", 0, "accepted"), step("t", 0, "rejected", revision=1),
                              step("u", 0, "accepted"), step("u", 0, "edited", closed_at=T0 + timedelta(days=1))], [])
    got = {r["task_id"]: r["outcome"] for r in latest_revisions(steps, "action_id", within=("session_id", "task_id"))
           .collect()}
    assert got == {"t": "rejected", "u": "edited"}
