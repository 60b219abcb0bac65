"""The schedule's pure core: parsing with every problem named, cron fire times, windows, due runs, lock verdicts."""
from datetime import date, datetime, timedelta, timezone

import pytest

from jobs.schedule import (Entry, Holder, ScheduleError, Verdict, command, cron_problem, due, fires_between,
                           latest_fire, load_schedule, lock_verdict, next_fire, next_wake, parse_schedule, unmet,
                           window_for)
from tests.conftest import REPO

pytestmark = pytest.mark.unit
UTC = timezone.utc


def t(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


def doc(*entries):
    return {"job": list(entries)}


HEUR = {"name": "h", "job": "heuristics", "cron": "30 1 * * *", "window": "previous_day"}


def test_the_committed_schedule_file_is_valid():
    s = load_schedule(REPO / "infra" / "schedule.toml")
    assert {e.job for e in s.entries} == {"heuristics", "scorecards", "export", "compact", "quality", "vacuum",
                                          "reconcile"}
    assert len({e.name for e in s.entries}) == len(s.entries)
    # the day's late events are in silver before the day's scoring reads it
    assert "reconcile-daily" in s.entry("heuristics-daily").after


def test_every_problem_is_listed_with_its_fix():
    with pytest.raises(ScheduleError) as e:
        parse_schedule(doc(
            {"name": "a", "job": "heuristic", "cron": "30 1 * * *", "window": "previous_day"},
            {"name": "b", "job": "scorecards", "cron": "61 1 * * *", "window": "previous_day"},
            {"name": "c", "job": "export", "cron": "0 6 * * 1", "window": "previous_week"},
            {"name": "c", "job": "compact", "cron": "0 6 * *", "options": {"tabel": "bronze/events"}},
            {"name": "d", "job": "heuristics", "cron": "@daily", "window": "last_day", "when": 1},
            {"name": "e", "job": "scorecards", "cron": "@daily"},
        ))
    text = str(e.value)
    assert "unknown job 'heuristic'" in text and "heuristics, scorecards, export, compact" in text
    assert "'61 1 * * *' is not a valid cron expression" in text
    assert "export needs option(s) ['name']" in text
    assert "used twice" in text and "has 4 fields" in text and "takes no option(s) ['tabel']" in text
    assert "window 'last_day'" in text and "unknown key(s) ['when']" in text
    assert "scorecards needs a window" in text
    assert len(e.value.problems) == 9


def test_option_types_are_checked_when_the_file_is_read():
    """A wrong option type fails when the file is read, not at 06:00 on Monday when the entry fires."""
    with pytest.raises(ScheduleError) as e:
        parse_schedule(doc(
            {"name": "a", "job": "heuristics", "cron": "@daily", "window": "previous_day",
             "options": {"reward_version": 2}},
            {"name": "b", "job": "export", "cron": "@daily", "window": "previous_week",
             "options": {"name": "../up", "formats": ["sft", 3]}},
            {"name": "c", "job": "compact", "cron": "@daily", "options": {"closed_after_days": "1", "min_files": 0}},
            {"name": "d", "job": "quality", "cron": "@daily", "window": "previous_day", "options": {"tables": "silver"}},
            {"name": "d2", "job": "quality", "cron": "@daily", "window": "previous_day",
             "options": {"tables": ["silver.steps"]}},
            {"name": "d3", "job": "compact", "cron": "@daily", "options": {"table": "no/such"}},
            # a table without a suite: refused here, not at every fire (suite_for's KeyError)
            {"name": "d4", "job": "quality", "cron": "@daily", "window": "previous_day",
             "options": {"tables": ["audit/erasures"]}},
        ))
    text = str(e.value)
    assert "entry 1 (a): option reward_version = 2 is wrong: write a version string" in text
    assert "option name = '../up' is wrong" in text and "option formats = ['sft', 3] is wrong" in text
    assert "option closed_after_days = '1' is wrong" in text and "option min_files = 0 is wrong" in text
    assert "option tables = 'silver' is wrong" in text
    assert "option tables = ['silver.steps'] is wrong" in text and 'tables = ["silver/steps"]' in text
    assert "option table = 'no/such' is wrong" in text
    assert "option tables = ['audit/erasures'] is wrong" in text and "quality suite checks" in text
    assert len(e.value.problems) == 9
    ok = parse_schedule(doc({"name": "e", "job": "export", "cron": "@daily", "window": "previous_week",
                             "options": {"name": "weekly", "formats": "sft,dpo", "reward_version": "reward-v2"}}))
    assert ok.entries[0].options["formats"] == "sft,dpo"


def test_the_daily_jobs_rescore_the_day_before_too():
    """Episodes close after midnight: the daily heuristics and scorecards cover the last two days."""
    s = load_schedule(REPO / "infra" / "schedule.toml")
    for name in ("heuristics-daily", "scorecards-daily"):
        assert window_for(s.entry(name), t("2026-11-04T01:30")) == (date(2026, 11, 2), date(2026, 11, 4))


def test_after_names_other_enabled_entries_without_cycles():
    with pytest.raises(ScheduleError) as e:
        parse_schedule(doc({**HEUR, "after": ["nope"]}, {**HEUR, "name": "self", "after": ["self"]},
                           {**HEUR, "name": "off", "enabled": False}, {**HEUR, "name": "on", "after": ["off"]},
                           {**HEUR, "name": "typed", "after": "h"}))
    text = str(e.value)
    assert "entry 1 (h): after names 'nope', which is not an entry" in text
    assert "entry 2 (self): after names the entry itself" in text
    assert "entry 4 (on): after names 'off', which is disabled" in text
    assert "entry 5 (typed): after must be a list of entry names" in text
    with pytest.raises(ScheduleError, match="after makes a cycle: a → b → c → a"):
        parse_schedule(doc({**HEUR, "name": "a", "after": ["b"]}, {**HEUR, "name": "b", "after": ["c"]},
                           {**HEUR, "name": "c", "after": ["a"]}))


def test_an_entry_waits_for_the_latest_fire_of_what_it_runs_after():
    s = parse_schedule(doc(HEUR, {"name": "cards", "job": "scorecards", "cron": "30 2 * * *",
                                  "window": "previous_day", "after": ["h"]}))
    cards, fire = s.entry("cards"), t("2026-11-04T02:30")
    done: set = set()
    assert unmet(s, cards, fire, lambda n, f: (n, f) in done) == [("h", t("2026-11-04T01:30"))]
    done.add(("h", t("2026-11-03T01:30")))   # yesterday's heuristics do not count for today's cards
    assert unmet(s, cards, fire, lambda n, f: (n, f) in done) == [("h", t("2026-11-04T01:30"))]
    done.add(("h", t("2026-11-04T01:30")))
    assert unmet(s, cards, fire, lambda n, f: (n, f) in done) == []
    assert unmet(s, s.entry("h"), fire, lambda n, f: False) == []


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ScheduleError, match="no schedule file"):
        load_schedule(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[[job]\nname = 1")
    with pytest.raises(ScheduleError, match="not valid TOML"):
        load_schedule(tmp_path / "bad.toml")


@pytest.mark.parametrize("expr", ["30 2 * * *", "*/15 * * * 1-5", "@daily", "0 4 * * mon"])
def test_cron_expressions_airflow_also_takes(expr):
    assert cron_problem(expr) is None


@pytest.mark.parametrize("expr", ["30 2 * * * *", "every day", "0 25 * * *", ""])
def test_cron_expressions_refused(expr):
    assert cron_problem(expr)


def test_fire_times():
    assert next_fire("30 1 * * *", t("2026-11-03T01:30")) == t("2026-11-04T01:30")  # strictly after
    assert next_fire("30 1 * * *", t("2026-11-03T01:29:59")) == t("2026-11-03T01:30")
    assert latest_fire("30 1 * * *", t("2026-11-03T01:30")) == t("2026-11-03T01:30")  # at or before
    assert latest_fire("30 1 * * *", t("2026-11-03T01:29:59")) == t("2026-11-02T01:30")
    assert latest_fire("0 4 * * 1", t("2026-11-04T00:00")) == t("2026-11-02T04:00")  # a Monday
    assert fires_between("0 */6 * * *", t("2026-11-03T00:00"), t("2026-11-03T12:00")) == [
        t("2026-11-03T06:00"), t("2026-11-03T12:00")]
    # an offset time is the same instant in UTC
    assert latest_fire("30 1 * * *", datetime.fromisoformat("2026-11-03T03:30+02:00")) == t("2026-11-03T01:30")
    with pytest.raises(ValueError, match="time zone"):
        next_fire("@daily", datetime(2026, 11, 3))


def test_windows_are_relative_to_the_fire_time():
    fire = t("2026-11-04T01:30")  # a Wednesday
    e = Entry("x", "heuristics", "30 1 * * *", "previous_day")
    assert window_for(e, fire) == (date(2026, 11, 3), date(2026, 11, 4))
    assert window_for(Entry("x", "scorecards", "@daily", "previous_week"), fire) == (date(2026, 10, 26),
                                                                                     date(2026, 11, 2))
    assert window_for(Entry("x", "export", "@daily", "previous_3_days"), fire) == (date(2026, 11, 1),
                                                                                   date(2026, 11, 4))
    assert window_for(Entry("x", "compact", "@daily"), fire) is None
    # a Monday's previous week is the whole week that just ended
    assert window_for(Entry("x", "scorecards", "@daily", "previous_week"), t("2026-11-02T04:00")) == (
        date(2026, 10, 26), date(2026, 11, 2))


def test_due_coalesces_missed_fires_and_respects_enabled_and_only():
    s = parse_schedule(doc(HEUR, {"name": "c", "job": "compact", "cron": "0 * * * *"},
                           {**HEUR, "name": "off", "enabled": False}))
    # asleep for three days: one run per entry, at its latest fire
    got = due(s, t("2026-11-01T00:00"), t("2026-11-04T02:10"))
    assert [(e.name, f) for e, f in got] == [("h", t("2026-11-04T01:30")), ("c", t("2026-11-04T02:00"))]
    assert [e.name for e, _ in due(s, t("2026-11-04T01:30"), t("2026-11-04T02:10"))] == ["c"]  # h already fired
    assert due(s, t("2026-11-04T02:00"), t("2026-11-04T02:10")) == []
    assert [e.name for e, _ in due(s, t("2026-11-01T00:00"), t("2026-11-04T02:10"), only=["h"])] == ["h"]
    assert next_wake(s, t("2026-11-04T02:10")) == (t("2026-11-04T03:00"), ["c"])


def test_lock_verdicts():
    now, lease = t("2026-11-04T02:00"), timedelta(minutes=5)
    fresh = Holder(1, "here", 42, now - timedelta(seconds=20))
    assert lock_verdict(None, host="here", pid_alive=False, now=now, lease=lease) is Verdict.START
    assert lock_verdict(fresh, host="here", pid_alive=True, now=now, lease=lease) is Verdict.SKIP
    # crashed on this host: its process is gone, take over at once (no waiting for the lease)
    assert lock_verdict(fresh, host="here", pid_alive=False, now=now, lease=lease) is Verdict.TAKE_OVER
    # another host's run: its pid means nothing here; only a stale heartbeat frees it
    assert lock_verdict(fresh, host="there", pid_alive=False, now=now, lease=lease) is Verdict.SKIP
    stale = Holder(1, "there", 42, now - timedelta(minutes=6))
    assert lock_verdict(stale, host="here", pid_alive=True, now=now, lease=lease) is Verdict.TAKE_OVER


def test_commands_match_what_trajlake_jobs_run_and_the_cli_take():
    w = (date(2026, 11, 3), date(2026, 11, 4))
    spark = command(Entry("h", "heuristics", "@daily", "previous_day", {"reward_version": "reward-v2"}), w,
                    python="/v/bin/python", repo="/r", master="yarn")
    assert "TRAJLAKE_SPARK_MASTER=''" in spark and "TRAJLAKE_REWARD_VERSION=reward-v2" in spark
    assert spark.endswith("/v/bin/spark-submit --master yarn --driver-memory 6g --driver-java-options "
                          "-XX:+UseParallelGC --conf spark.sql.codegen.cache.maxEntries=1000 "
                          "--packages \"$(/v/bin/python -m jobs.spark)\" "
                          "jobs/heuristics.py --start 2026-11-03 --end 2026-11-04")
    export = command(Entry("e", "export", "@daily", "previous_day", {"name": "weekly", "formats": ["sft", "dpo"]}),
                     w, python="/v/bin/python", repo="/r")
    assert export.endswith("-m trajlake.cli export weekly --since 2026-11-03 --until 2026-11-04 --format sft,dpo")
    compact = command(Entry("c", "compact", "@daily", "none", {"min_files": 4}), None, python="/v/bin/python",
                      repo="/r")
    assert compact.endswith("-m trajlake.cli compact --min-files 4")
    vacuum = command(Entry("v", "vacuum", "@weekly", "none", {"retention_hours": 24}), None, python="/v/bin/python",
                     repo="/r")
    assert vacuum.endswith("-m trajlake.cli vacuum --retention-hours 24")


@pytest.mark.unit
def test_vacuum_and_compact_take_no_window_by_default():
    """A vacuum entry without `window` was refused and told to give previous_day, which vacuum does not take."""
    s = parse_schedule(doc({"name": "v", "job": "vacuum", "cron": "@weekly"},
                           {"name": "c", "job": "compact", "cron": "@daily"}))
    assert [e.window for e in s.entries] == ["none", "none"]


@pytest.mark.unit
def test_reconcile_needs_a_window_and_runs_the_cli():
    with pytest.raises(ScheduleError, match="reconcile needs a window"):
        parse_schedule(doc({"name": "r", "job": "reconcile", "cron": "@daily"}))
    entry = parse_schedule(doc({"name": "r", "job": "reconcile", "cron": "@daily", "window": "previous_day"})).entries[0]
    cmd = command(entry, (date(2026, 11, 2), date(2026, 11, 3)), python="/v/bin/python", repo="/r")
    assert cmd.endswith("/v/bin/python -m trajlake.cli reconcile --start 2026-11-02 --end 2026-11-03")
