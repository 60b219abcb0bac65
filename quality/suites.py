"""The Great Expectations suite of every lake table and of exports: what each layer must hold before it is published."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import great_expectations as gx

from schemas.contract import FAMILIES, Reason, event_types
from schemas.reward import RewardSpec
from schemas.tables import (BRONZE_DEADLETTER, BRONZE_EVENTS, GOLD_EPISODE_SCORES, GOLD_GUARDRAILS, GOLD_REVIEW_QUEUE,
                            GOLD_SCORECARDS, GOLD_STEP_SIGNALS, SILVER_EPISODES, SILVER_STEPS, TABLES)

E = gx.expectations
EXPORT_SUITE = "exports"
# the episode index an export is checked on (jobs/export.py builds it): ids, digests and counts, never content
EXPORT_INDEX_COLUMNS = ("episode_id", "split", "group_hash", "prompt_digest", "frozen_holdout", "pii_values")
STEP_OUTCOMES = ("accepted", "edited", "rejected", "undone", "retried", "superseded", "ignored")
EPISODE_OUTCOMES = ("completed", "reopened", "escalated", "abandoned", "timeout")
# the stream's stages (the join refuses events past a session's state budget), and the HTTP collector's (streams/collector/core.py), which dead-letters before Kafka
DEADLETTER_STAGES = ("parse", "validate", "scrub", "join", "collect")
# tolerance for floating-point sums that should sit exactly on a bound
EPS = 1e-9


@dataclass(frozen=True)
class Suite:
    """One table's expectations. `derived` are checks GE has no expectation for (order within an episode, one split
    per group): each is a boolean SQL expression (DuckDB, window functions allowed; the rows are the table `t`)
    added to the batch as a column the suite then expects to be true. The keys' uniqueness is checked on one more
    derived column, their hash (`KEY_HASH`). `critical` columns block a publish even under an explicit override."""

    name: str
    table: str
    keys: tuple[str, ...]
    expectations: tuple = ()
    derived: Mapping[str, str] = field(default_factory=dict)
    critical: frozenset[str] = frozenset()
    # whether failing rows are copied whole into the quarantine table (exports keep content out of the lake)
    quarantine_rows: bool = True

    @property
    def derived_columns(self) -> dict[str, str]:
        """{column: DuckDB SQL} of every column added to the rows before they are validated."""
        keys = {KEY_HASH: key_hash_sql(self.keys)} if self.keys else {}
        return {**self.derived, **keys}


# the column the keys' uniqueness is checked on: one 64-bit hash of the row's keys, a number GE factorizes in a
# tenth of the time it took to factorize the key columns themselves (a step id is ~80 characters): 1.3 of the 4.4 s
# gate of 1.87M step rows. Two different keys share a hash with a probability of ~1e-7 at 2M rows; that refuses a
# good publish (the exact key count of jobs.tables.check_before_publish runs first), and never lets a repeated key
# through. Failures name the key columns, not this one (quality.runner).
KEY_HASH = "key_hash"


def key_hash_sql(keys: tuple[str, ...]) -> str:
    quoted = ", ".join(f'"{k}"' for k in keys)
    return f"hash(row({quoted}))"


def _true(column: str, what: str) -> E.ExpectColumnValuesToBeInSet:
    return E.ExpectColumnValuesToBeInSet(column=column, value_set=[True], description=what)


def _not_null(*columns: str) -> list:
    return [E.ExpectColumnValuesToNotBeNull(column=c) for c in columns]


def _unit(*columns: str) -> list:
    return [E.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1) for c in columns]


def _non_negative(*columns: str) -> list:
    return [E.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in columns]


def _unique(keys: tuple[str, ...]) -> list:
    return [E.ExpectColumnValuesToBeUnique(column=KEY_HASH, description=f"the keys ({', '.join(keys)}) are unique")]


def _derived(checks: Mapping[str, tuple[str, str]]) -> tuple[dict[str, str], list]:
    """{column: (sql, meaning)} → the derived columns and the expectations that they hold."""
    return {c: sql for c, (sql, _) in checks.items()}, [_true(c, what) for c, (_, what) in checks.items()]


# ---- bronze -------------------------------------------------------------------------------------------------
def bronze_events() -> Suite:
    t = BRONZE_EVENTS
    derived, checks = _derived({
        "check_ts_sane": ("ts >= TIMESTAMPTZ '2000-01-01 00:00:00+00' AND ts <= ingested_at + INTERVAL 1 DAY",
                          "event time after 2000 and not more than a day after ingestion (client clocks drift)"),
        "check_body_is_object": ("coalesce(json_type(body) = 'OBJECT', false)", "the body is a JSON object"),
    })
    return Suite("bronze_events", t.id, t.keys, tuple(
        _not_null("event_id", "event_type", "ts", "session_id", "task_id", "user_id", "body", "policy_version")
        + _unique(t.keys)
        + [E.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(event_types())),
           E.ExpectColumnValuesToMatchRegex(column="schema", regex=rf"^(?:{'|'.join(FAMILIES)})/[0-9]+$"),
           # ids past the scrubber are pseudonyms, never the raw id (privacy/pseudonyms.py)
           E.ExpectColumnValuesToMatchRegex(column="user_id", regex=r"^u_[0-9a-f]{24}$"),
           E.ExpectColumnValuesToBeBetween(column="source_offset", min_value=0)]
        + checks), derived)


def bronze_deadletter() -> Suite:
    t = BRONZE_DEADLETTER
    return Suite("bronze_deadletter", t.id, t.keys, tuple(
        _not_null("reason", "stage", "detail", "original", "failed_at")
        + _unique(t.keys)
        + [E.ExpectColumnValuesToBeInSet(column="reason", value_set=[r.value for r in Reason]),
           E.ExpectColumnValuesToBeInSet(column="stage", value_set=list(DEADLETTER_STAGES)),
           E.ExpectColumnValuesToBeBetween(column="source_offset", min_value=0)]))


# ---- silver -------------------------------------------------------------------------------------------------
def silver_steps() -> Suite:
    t = SILVER_STEPS
    derived, checks = _derived({
        "check_ordered_in_episode": (
            "coalesce(proposed_at >= lag(proposed_at) OVER (PARTITION BY session_id, task_id "
            "ORDER BY step_index, revision), true)",
            "within an episode, a later step was not proposed before an earlier one"),
        "check_closed_after_proposed": ("closed_at >= proposed_at", "a step closes after it was proposed"),
        # the jobs key steps by these parts and write step_id from them (jobs/heuristics.py, `with_ids`); a null
        # part is the not-null check's to report
        "check_step_id_is_session_action": ("coalesce(step_id = session_id || '/' || action_id, true)",
                                            "a step's id is its session and action: session_id/action_id"),
        "check_edit_has_final_value": ("NOT edited OR final_value IS NOT NULL",
                                       "an edited step carries the user's final value"),
        "check_outcome_matches_flags": (
            "CASE outcome WHEN 'accepted' THEN accepted WHEN 'rejected' THEN rejected WHEN 'edited' THEN edited "
            "WHEN 'undone' THEN undone WHEN 'retried' THEN retried ELSE true END",
            "the step's outcome is one of the reactions it records"),
    })
    return Suite("silver_steps", t.id, t.keys, tuple(
        _not_null("step_id", "revision", "session_id", "task_id", "user_id", "action_id", "proposed_at", "outcome")
        + _unique(t.keys)
        + [E.ExpectColumnValuesToBeInSet(column="outcome", value_set=list(STEP_OUTCOMES))]
        + _unit("edit_distance")
        + _non_negative("revision", "step_index", "llm_calls", "tool_calls", "tool_errors", "tokens_in",
                        "tokens_out", "cost_usd", "latency_ms", "reaction_ms", "next_action_ms")
        + checks), derived)


def silver_episodes() -> Suite:
    t = SILVER_EPISODES
    derived, checks = _derived({
        # the jobs key episodes by these parts and write episode_id from them (jobs/heuristics.py, `with_ids`); a
        # null part is the not-null check's to report
        "check_episode_id_is_session_task": ("coalesce(episode_id = session_id || '/' || task_id, true)",
                                             "an episode's id is its session and task: session_id/task_id"),
        "check_duration_matches": ("duration_ms = epoch_ms(ended_at) - epoch_ms(started_at)",
                                   "duration is the time from the first to the last event"),
        # counts are of reaction events (an accept then an undo of one step counts both), so only a floor holds
        "check_reactions_need_steps": ("n_steps > 0 OR accepted + rejected + edited + undone = 0",
                                       "reactions in an episode mean it has at least one step"),
        # one direction only: rows written before these columns existed hold nulls (`trajlake migrate`)
        # not against started_at: that is task_started's time, and a frontend clock behind the agent's can put an
        # abandonment a moment before it
        "check_outcome_time_in_episode": ("outcome_at IS NULL OR outcome_at <= ended_at",
                                          "the task's first end comes no later than its last event"),
        "check_timeout_has_no_end": ("outcome <> 'timeout' OR outcome_at IS NULL",
                                     "a timed-out task reached no end"),
        "check_opt_out_time_means_opted_out": ("opted_out_at IS NULL OR opted_out",
                                               "an opt-out time belongs to an episode that opted out"),
    })
    return Suite("silver_episodes", t.id, t.keys, tuple(
        _not_null("episode_id", "revision", "session_id", "task_id", "user_id", "started_at", "ended_at", "outcome")
        + _unique(t.keys)
        + [E.ExpectColumnValuesToBeInSet(column="outcome", value_set=list(EPISODE_OUTCOMES)),
           E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="ended_at", column_B="started_at", or_equal=True)]
        + _non_negative("n_steps", "n_user_messages", "duration_ms", "llm_calls", "tool_calls", "tokens_in",
                        "tokens_out", "cost_usd")
        + checks), derived)


# ---- gold ---------------------------------------------------------------------------------------------------
def _version(spec: RewardSpec) -> list:
    return [E.ExpectColumnValuesToBeInSet(column="reward_version", value_set=[spec.version])]


def gold_step_signals(spec: RewardSpec) -> Suite:
    t = GOLD_STEP_SIGNALS
    derived, checks = _derived({
        "check_step_reward_mixes": (
            f"abs(step_reward - ({spec.step.own_weight} * own_reward + {1 - spec.step.own_weight} * credit_share)) "
            f"< 1e-6", "step reward = own_weight × own + (1 − own_weight) × credit share (the spec's rule)"),
    })
    return Suite("gold_step_signals", t.id, t.keys, tuple(
        _not_null("step_id", "episode_id", "step_reward")
        + _unique(t.keys) + _version(spec)
        + [E.ExpectColumnValuesToBeInSet(column="outcome", value_set=list(STEP_OUTCOMES))]
        + _unit("step_reward", "own_reward", "credit_share", "correction_penalty", "edit_distance")
        + _non_negative("intent_attempt", "intent_retries", "reaction_s", "next_action_s")
        + checks), derived)


def gold_episode_scores(spec: RewardSpec) -> Suite:
    t = GOLD_EPISODE_SCORES
    correct = ", ".join(f"'{o}'" for o in spec.outcome.correct_outcomes)
    poor = ", ".join(f"'{o}'" for o in spec.outcome.poor_outcomes)
    derived, checks = _derived({
        "check_gate_caps_composite": (f"gate_passed OR composite <= {spec.composite.ungated_scale} + {EPS}",
                                      "an episode that fails the outcome gate scores at most ungated_scale"),
        "check_gate_needs_correct_outcome": (f"NOT gate_passed OR outcome IN ({correct})",
                                             "only a correct outcome passes the gate"),
        "check_delegation_among_repeats": ("(delegated_when_repeat IS NOT NULL) = repeat_task",
                                           "delegation is measured among repeat tasks, and only there"),
        "check_opt_out_after_poor_only_when_poor": (
            f"(opted_out_after_poor IS NOT NULL) = (outcome IN ({poor}))",
            "opt-out after a poor outcome is measured on the poor episodes, and only there"),
    })
    return Suite("gold_episode_scores", t.id, t.keys, tuple(
        _not_null("episode_id", "composite", "gate_passed")
        + _unique(t.keys) + _version(spec)
        + [E.ExpectColumnValuesToBeInSet(column="outcome", value_set=list(EPISODE_OUTCOMES))]
        + _unit("composite", "correction_score", "friction_score", "outcome_score", "trust_score", "edit_rate",
                "accept_rate", "reject_rate", "undo_rate", "retry_rate", "dead_end_rate", "overwrite_rate",
                "sla_factor")
        + _non_negative("n_steps", "duration_s", "cost_usd")
        + checks), derived)


def gold_scorecards(spec: RewardSpec) -> Suite:
    from jobs.scorecards import METRICS

    t = GOLD_SCORECARDS
    derived, checks = _derived({
        "check_interval_brackets_value": (
            f"value IS NULL OR ci_low IS NULL OR (ci_low <= value + {EPS} AND value <= ci_high + {EPS})",
            "the 95% interval contains its estimate"),
    })
    return Suite("gold_scorecards", t.id, t.keys, tuple(
        _unique(t.keys) + _version(spec)
        + [E.ExpectColumnValuesToBeInSet(column="grain", value_set=["day", "week"]),
           E.ExpectColumnValuesToBeInSet(column="metric", value_set=[m.name for m in METRICS]),
           E.ExpectColumnValuesToBeInSet(column="better", value_set=[-1, 1])]
        + _non_negative("n", "baseline_n", "std")
        + checks), derived)


def gold_guardrails(spec: RewardSpec) -> Suite:
    t = GOLD_GUARDRAILS
    return Suite("gold_guardrails", t.id, t.keys, tuple(
        _not_null("check", "flagged", "detail") + _unique(t.keys) + _version(spec)
        + [E.ExpectColumnValuesToBeInSet(column="grain", value_set=["day", "week"])]))


def gold_review_queue(spec: RewardSpec) -> Suite:
    t = GOLD_REVIEW_QUEUE
    return Suite("gold_review_queue", t.id, t.keys, tuple(
        _unique(t.keys) + _version(spec) + _unit("composite")
        + [E.ExpectColumnValuesToBeInSet(column="outcome", value_set=list(EPISODE_OUTCOMES)),
           E.ExpectColumnValuesToBeBetween(column="rank", min_value=1),
           E.ExpectColumnValuesToBeBetween(column="weight", min_value=1)]))


# ---- exports ------------------------------------------------------------------------------------------------
def exports(splits: tuple[str, ...]) -> Suite:
    """Checked on the export's episode index (EXPORT_INDEX_COLUMNS), one row per exported episode."""
    derived, checks = _derived({
        # correlated aggregates, not window functions: DuckDB runs them as a grouping and a hash join, ~3x
        # faster on a 1M-episode index than two partitioned windows
        "check_one_split_per_group": (
            "(SELECT min(split) = max(split) FROM t g WHERE g.group_hash = t.group_hash)",
            "splits are disjoint by group: every episode of a group is in the same split"),
        "check_one_split_per_prompt": (
            "prompt_digest = '' OR (SELECT min(split) = max(split) FROM t p WHERE p.prompt_digest = t.prompt_digest)",
            "an identical prompt never appears in two splits"),
        "check_frozen_holdout_kept": ("NOT frozen_holdout OR split = 'holdout'",
                                      "a group frozen in the holdout stays in the holdout"),
    })
    pii = E.ExpectColumnValuesToBeBetween(column="pii_values", min_value=0, max_value=0,
                                          description="no PII pattern (email, phone, SSN, card, ground truth) "
                                                      "in any text of the episode")
    return Suite(EXPORT_SUITE, "exports", ("episode_id",), tuple(
        _not_null(*EXPORT_INDEX_COLUMNS) + _unique(("episode_id",))
        + [E.ExpectColumnValuesToBeInSet(column="split", value_set=list(splits)), pii]
        + checks), derived, critical=frozenset({"pii_values"}), quarantine_rows=False)


_TABLE_SUITES = {
    BRONZE_EVENTS.id: lambda spec: bronze_events(),
    BRONZE_DEADLETTER.id: lambda spec: bronze_deadletter(),
    SILVER_STEPS.id: lambda spec: silver_steps(),
    SILVER_EPISODES.id: lambda spec: silver_episodes(),
    GOLD_STEP_SIGNALS.id: gold_step_signals,
    GOLD_EPISODE_SCORES.id: gold_episode_scores,
    GOLD_SCORECARDS.id: gold_scorecards,
    GOLD_GUARDRAILS.id: gold_guardrails,
    GOLD_REVIEW_QUEUE.id: gold_review_queue,
}
# tables whose rows come from a run of the job, not the pipeline: checked by the runner that writes them
UNCHECKED = {tid for tid in TABLES if tid not in _TABLE_SUITES}


def suite_for(table_id: str, spec: RewardSpec) -> Suite:
    """The suite a table's rows must pass (gold suites depend on the reward spec they were scored with)."""
    try:
        return _TABLE_SUITES[table_id](spec)
    except KeyError:
        raise KeyError(f"no quality suite for {table_id!r}; suites: {', '.join(sorted(_TABLE_SUITES))}") from None


def checked_tables() -> tuple[str, ...]:
    return tuple(_TABLE_SUITES)
