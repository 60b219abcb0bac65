"""Each table's suite passes rows that keep the contracts and catches the rows that break them (hand-built rows)."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
import pytest

from quality.runner import validate, with_derived
from quality.suites import checked_tables, exports, suite_for
from schemas.reward import load_reward_spec
from schemas.tables import CHECKED_TABLES, TABLES

pytestmark = pytest.mark.component
SPEC = load_reward_spec("reward-v2")
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def table(table_id: str, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TABLES[table_id].schema)


def step(i: int, **kw) -> dict:
    row = dict(step_id=f"sess/a{i}", revision=0, session_id="sess", task_id="t1", user_id="u_" + "a" * 24,
               agent_version="a1", prompt_variant="p1", task_type="refund", action_id=f"a{i}", intent_id=f"i{i}",
               step_index=i, proposed_at=T0 + timedelta(seconds=10 * i), output="draft", outcome="accepted",
               shown=True, accepted=True, rejected=False, edited=False, undone=False, retried=False,
               final_value=None, edit_distance=None, reaction_ms=1000, next_action_ms=2000, llm_calls=1,
               tool_calls=0, tool_errors=0, tokens_in=10, tokens_out=5, cost_usd=0.001, latency_ms=300.0,
               policy_version="privacy-1", closed_reason="reaction", closed_at=T0 + timedelta(seconds=10 * i + 5),
               date=T0.date())
    row.update(kw)
    return row


def failed(settings, table_id, rows) -> dict[str, int]:
    report, _ = validate(settings, suite_for(table_id, SPEC), table(table_id, rows))
    return {f.column: f.unexpected for f in report.failures}


def test_every_table_the_pipeline_fills_has_a_suite():
    assert set(checked_tables()) == {"bronze/events", "bronze/deadletter", "silver/steps", "silver/episodes",
                                     "gold/step_signals", "gold/episode_scores", "gold/scorecards",
                                     "gold/guardrails", "gold/review_queue"}
    assert set(checked_tables()) == set(CHECKED_TABLES)   # the schedule's checks read the declaration
    for tid in checked_tables():
        suite = suite_for(tid, SPEC)
        assert suite.table == tid and suite.keys == TABLES[tid].keys
        names = set(TABLES[tid].schema.names) | set(suite.derived_columns)
        for e in suite.expectations:  # every expectation names a real column: a typo would silently check nothing
            cols = [e.column] if hasattr(e, "column") else getattr(e, "column_list", None) or \
                [getattr(e, "column_A", None), getattr(e, "column_B", None)]
            assert set(cols) <= names, (tid, e)


def test_good_steps_pass(lake_settings):
    assert failed(lake_settings, "silver/steps", [step(0), step(1), step(2)]) == {}


def test_steps_out_of_order_duplicated_or_inconsistent_fail(lake_settings):
    rows = [step(0), step(1, proposed_at=T0 - timedelta(minutes=5)),              # proposed before step 0
            step(2, outcome="edited"),                                            # edited without the flag or value
            step(3, edit_distance=1.5, edited=True, outcome="edited", final_value="x", accepted=False),
            step(0),                                                              # a repeated (step_id, revision)
            step(4, step_id="sess/a5")]                                           # an id not session_id/action_id
    got = failed(lake_settings, "silver/steps", rows)
    assert got["check_ordered_in_episode"] == 1
    assert got["check_outcome_matches_flags"] == 1
    assert got["edit_distance"] == 1
    assert got["step_id,revision"] == 2
    assert got["check_step_id_is_session_action"] == 1


def test_episode_times_that_contradict_the_outcome_fail_silver(lake_settings):
    good = {f.name: None for f in TABLES["silver/episodes"].schema}
    good.update(episode_id="s/t0", revision=0, session_id="s", task_id="t0", user_id="u_" + "a" * 24,
                agent_version="a", prompt_variant="p", started_at=T0, ended_at=T0 + timedelta(minutes=5),
                duration_ms=300_000, outcome="abandoned", n_steps=1, n_user_messages=0, accepted=0, rejected=0,
                edited=0, undone=0, retried=0, escalated=False, delegated=False, opted_out=True, reopened=False,
                feedback_up=0, feedback_down=0, llm_calls=1, tool_calls=0, tool_errors=0, tokens_in=1, tokens_out=1,
                cost_usd=0.0, latency_ms=1.0, policy_version="privacy-6", closed_reason="terminal",
                closed_at=T0 + timedelta(minutes=6), date=T0.date(), outcome_at=T0 + timedelta(minutes=4),
                opted_out_at=T0 + timedelta(minutes=5))
    row = lambda k, **kw: dict(good, episode_id=f"s/t{k}", task_id=f"t{k}", **kw)  # noqa: E731
    rows = [good, row(1, opted_out_at=None),                          # a row from before the columns: passes
            row(2, outcome_at=T0 + timedelta(minutes=9)),             # an end after the episode's last event
            row(5, outcome_at=T0 - timedelta(seconds=2)),             # a clock behind: passes
            row(3, outcome="timeout"),                                # a timeout that reached an end
            row(4, opted_out=False),                                  # an opt-out time without the opt-out
            dict(row(6), task_id="t7")]                               # an id that is not session_id/task_id
    assert failed(lake_settings, "silver/episodes", rows) == {
        "check_outcome_time_in_episode": 1, "check_timeout_has_no_end": 1, "check_opt_out_time_means_opted_out": 1,
        "check_episode_id_is_session_task": 1}


def test_raw_ids_and_unknown_event_types_fail_bronze(lake_settings):
    base = dict(schema="frontend/1", ts=T0, session_id="s", task_id="t", action_id=None, intent_id=None,
                agent_version="a", prompt_variant="p", task_type=None, client_app=None, body="{}",
                policy_version="privacy-1", user_ref=None, source_topic="tl.frontend", source_partition=0,
                ingested_at=T0, date=T0.date())
    rows = [dict(base, event_id="e1", event_type="task_started", user_id="u_" + "0" * 24, source_offset=1),
            dict(base, event_id="e2", event_type="task_exploded", user_id="u_" + "0" * 24, source_offset=2),
            dict(base, event_id="e3", event_type="task_started", user_id="mia_li_3668", source_offset=3),
            dict(base, event_id="e4", event_type="task_started", user_id="u_" + "0" * 24, source_offset=4,
                 ts=T0 + timedelta(days=3), body="[1]")]
    got = failed(lake_settings, "bronze/events", rows)
    assert got == {"event_type": 1, "user_id": 1, "check_ts_sane": 1, "check_body_is_object": 1}


def test_gold_scores_break_the_gate(lake_settings):
    from schemas.tables import GOLD_EPISODE_SCORES

    row = {f.name: None for f in GOLD_EPISODE_SCORES.schema}
    row.update(episode_id="e1", revision=0, session_id="s", task_id="t", user_id="u", agent_version="a",
               prompt_variant="p", task_type="x", started_at=T0, week=date(2026, 11, 2), outcome="abandoned",
               n_steps=1, completed=False, reopened=False, duration_s=3.0, sla_factor=1.0, escalated=False,
               delegated=False, repeat_task=False, opted_out=False, opted_out_after_poor=False, cost_usd=0.0,
               tokens_in=1, tokens_out=1,
               correction_score=1.0,
               friction_score=1.0, outcome_score=0.0, trust_score=0.8, gate_passed=False, composite=0.9,
               reward_version="reward-v2", date=T0.date())
    got = failed(lake_settings, "gold/episode_scores", [
        row, dict(row, episode_id="e2", gate_passed=True, composite=0.5),
        dict(row, episode_id="e3", composite=0.1, delegated_when_repeat=True),
        dict(row, episode_id="e4", composite=0.1, outcome="completed")])
    # a failed gate scoring 0.9 (proxies alone), a gate passed without a correct outcome, a delegation rate on a
    # task that is no repeat, an opt-out-after-poor value on a good outcome
    assert got == {"check_gate_caps_composite": 1, "check_gate_needs_correct_outcome": 1,
                   "check_delegation_among_repeats": 1, "check_opt_out_after_poor_only_when_poor": 1}


def test_exports_must_keep_groups_and_prompts_in_one_split():
    suite = exports(("train", "validation", "test", "holdout"))
    idx = pa.table({"episode_id": ["a", "b", "c", "d"], "split": ["train", "test", "train", "test"],
                    "group_hash": ["g1", "g1", "g2", "g3"], "prompt_digest": ["p1", "p2", "p3", "p3"],
                    "frozen_holdout": [False, False, True, False], "pii_values": [0, 0, 0, 2]})
    out = with_derived(suite, idx).to_pylist()
    by = {r["episode_id"]: r for r in out}
    assert not by["a"]["check_one_split_per_group"] and not by["b"]["check_one_split_per_group"]
    assert not by["c"]["check_one_split_per_prompt"] and not by["c"]["check_frozen_holdout_kept"]
    assert by["d"]["check_one_split_per_group"] and "pii_values" in suite.critical
