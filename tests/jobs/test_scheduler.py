"""The embedded scheduler's shell: locks that survive a crashed run, run history, and real runs end to end (Spark
jobs and an export in-process on a small lake, compaction through `trajlake schedule --once`)."""
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, contextmanager
from datetime import date, datetime, timezone

import pytest

from jobs.schedule import Entry, parse_schedule
from jobs.scheduler import History, Runner, Skipped, run_due, run_entry
from tests.conftest import REPO, settings_env
from tests.trajlake.test_cli import assert_clean_error, run


UTC = timezone.utc
FIRE = datetime(2026, 11, 3, 1, 30, tzinfo=UTC)
HEUR = Entry("h", "heuristics", "30 1 * * *", "previous_day", {"reward_version": "reward-v2"})


@pytest.mark.component
def test_runs_of_one_entry_never_overlap(tmp_path):
    h = History(tmp_path / "history.sqlite3")
    first = h.acquire(HEUR, FIRE, None)
    assert isinstance(first, int)
    again = h.acquire(HEUR, FIRE, None)
    assert isinstance(again, Skipped) and "still running" in again.reason
    other = h.acquire(Entry("c", "compact", "@daily"), FIRE, None)  # other entries are not held up
    assert isinstance(other, int)
    h.finish(first, "succeeded")
    assert isinstance(h.acquire(HEUR, FIRE, None), int)


@pytest.mark.component
def test_a_run_whose_row_is_no_longer_running_keeps_it_and_says_so(tmp_path, caplog):
    h = History(tmp_path / "history.sqlite3")
    run_id = h.acquire(HEUR, FIRE, None)
    with closing(sqlite3.connect(tmp_path / "history.sqlite3")) as con, con:  # another run took the lock over
        con.execute("UPDATE runs SET status = 'crashed', error = 'stale heartbeat' WHERE run_id = ?", (run_id,))
    h.finish(run_id, "succeeded")
    with closing(sqlite3.connect(tmp_path / "history.sqlite3")) as con:
        assert con.execute("SELECT status, error FROM runs WHERE run_id = ?", (run_id,)).fetchone() == (
            "crashed", "stale heartbeat")
    assert "after its lock was taken over" in caplog.text


@pytest.mark.component
def test_a_failed_heartbeat_is_retried_not_fatal(tmp_path, monkeypatch):
    """A heartbeat that fails (the history database locked past its timeout) is logged and retried: a dead
    heartbeat thread would let another scheduler take the entry over while this run still works."""
    import time

    import jobs.scheduler as scheduler

    monkeypatch.setattr(scheduler, "HEARTBEAT_SECONDS", 0.05)

    class Flaky(History):
        calls = 0

        def heartbeat(self, run_id):
            Flaky.calls += 1
            if Flaky.calls <= 2:
                raise sqlite3.OperationalError("database is locked")
            super().heartbeat(run_id)

    h, said = Flaky(tmp_path / "history.sqlite3"), []
    out = run_entry(h, HEUR, FIRE, lambda e, w, log: time.sleep(0.6) or "ok", log=said.append)
    assert out.status == "succeeded" and Flaky.calls >= 4
    assert sum("heartbeat of run" in m and "database is locked" in m for m in said) == 2


@pytest.mark.component
def test_an_entry_waits_until_what_it_runs_after_succeeds(tmp_path):
    """scorecards `after` heuristics: in one pass the heuristics run first (fire order) and the cards follow; when
    the heuristics fail, the cards wait (nothing recorded) and run once the heuristics' fire succeeds."""
    sched = parse_schedule({"job": [
        {"name": "h", "job": "heuristics", "cron": "30 1 * * *", "window": "previous_day"},
        {"name": "cards", "job": "scorecards", "cron": "30 2 * * *", "window": "previous_day", "after": ["h"]}]})
    h = History(tmp_path / "history.sqlite3")
    ran, fail = [], {"h"}

    def runner(entry, window, log):
        ran.append(entry.name)
        if entry.name in fail:
            raise RuntimeError("spark died")
        return "ok"

    now = datetime(2026, 11, 4, 3, 0, tzinfo=timezone.utc)
    got = [(o.entry, o.status) for o in run_due(h, sched, datetime(2026, 11, 4, tzinfo=timezone.utc), now, runner)]
    assert got == [("h", "failed"), ("cards", "waiting")] and ran == ["h"]
    waiting = run_entry(h, sched.entry("cards"), datetime(2026, 11, 4, 2, 30, tzinfo=timezone.utc), runner,
                        schedule=sched)
    assert waiting.status == "waiting" and "h @ 2026-11-04 01:30" in waiting.detail
    assert [r.entry for r in h.runs()] == ["h"]   # a wait records nothing
    fail.clear()
    got = [(o.entry, o.status) for o in run_due(h, sched, datetime(2026, 11, 4, tzinfo=timezone.utc), now, runner)]
    assert got == [("h", "succeeded"), ("cards", "succeeded")] and ran == ["h", "h", "cards"]


@pytest.mark.component
def test_a_crashed_runs_lock_is_taken_over(tmp_path):
    """A real process takes the lock and dies hard mid-run; the next attempt records it as crashed and runs."""
    path = tmp_path / "history.sqlite3"
    code = ("import os, sys; from datetime import datetime, timezone; from jobs.scheduler import History; "
            "from jobs.schedule import Entry; "
            "History(__import__('pathlib').Path(sys.argv[1])).acquire(Entry('h', 'heuristics', '30 1 * * *', "
            "'previous_day'), datetime(2026, 11, 3, 1, 30, tzinfo=timezone.utc), None); os._exit(9)")
    r = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, timeout=60)
    assert r.returncode == 9
    h = History(path)
    assert [x.status for x in h.runs("h")] == ["running"]
    got = h.acquire(HEUR, FIRE, None)
    assert isinstance(got, int)
    crashed, = [x for x in h.runs("h") if x.run_id != got]
    assert crashed.status == "crashed" and "ended without finishing" in crashed.error and crashed.ended_at


@pytest.mark.component
def test_failures_are_recorded_and_successes_not_repeated(tmp_path):
    h = History(tmp_path / "history.sqlite3")

    def boom(entry, window, log):
        raise RuntimeError("the lake is on fire")

    failed = run_entry(h, HEUR, FIRE, boom)
    assert failed.status == "failed" and "the lake is on fire" in failed.detail
    assert failed.window == (date(2026, 11, 2), date(2026, 11, 3))
    row = h.last("h")
    assert row.status == "failed" and "RuntimeError: the lake is on fire" in row.error and row.ended_at
    ok = run_entry(h, HEUR, FIRE, lambda e, w, log: f"did {w[0]}")
    assert (ok.status, ok.detail) == ("succeeded", "did 2026-11-02")
    assert run_entry(h, HEUR, FIRE, lambda e, w, log: "again").status == "done-before"
    assert run_entry(h, HEUR, FIRE, lambda e, w, log: "again", force=True).status == "succeeded"
    assert [r.status for r in h.runs("h")] == ["succeeded", "succeeded", "failed"]


@pytest.mark.component
def test_a_refused_empty_publish_is_a_failed_run_with_its_reason(tmp_path):
    from quality.errors import EmptyPublishRefused

    h = History(tmp_path / "history.sqlite3")

    def refused(entry, window, log):
        raise EmptyPublishRefused("gold/episode_scores", "date >= '2026-11-02'", 207, ("silver/episodes",))

    out = run_entry(h, HEUR, FIRE, refused)
    assert out.status == "failed" and out.detail.startswith("EmptyPublishRefused: gold/episode_scores: ")
    row = h.last("h")
    assert row.status == "failed" and "holds 207 published rows" in row.error and "--allow-empty" in row.error
    assert not h.succeeded("h", FIRE)  # so `--once` runs that fire again, and entries `after` it wait


@pytest.mark.integration
def test_a_scheduled_run_over_a_window_without_input(spark, base_settings, tmp_path):
    """The real job: a window whose silver is missing but whose scores were published fails, keeps the scores and
    records why; a window with neither succeeds saying it had nothing to publish."""
    from jobs.tables import rows_in_window
    from lake.tables import open_table
    from schemas.tables import GOLD_EPISODE_SCORES, GOLD_STEP_SIGNALS
    from tests.jobs.test_tables import WINDOW, a_row, plant

    s = base_settings.model_copy(update={"lake_root": tmp_path / "lake", "state_dir": tmp_path / "state"})
    v = plant(s, GOLD_EPISODE_SCORES, a_row(GOLD_EPISODE_SCORES, episode_id="e1", date=date(2026, 11, 2),
                                            reward_version="reward-v2"))
    h, runner = History.for_settings(s), Runner(s, spark=spark)
    failed = run_entry(h, HEUR, FIRE, runner)  # [2026-11-02, 2026-11-03), which WINDOW is
    assert failed.status == "failed", failed.detail
    assert failed.detail.startswith("EmptyPublishRefused: gold/episode_scores: the run computed no rows")
    assert "silver/steps, silver/episodes" in failed.detail and "--allow-empty" in failed.detail
    assert h.last("h").status == "failed" and "holds 1 published rows" in h.last("h").error
    assert open_table(s, GOLD_EPISODE_SCORES).version() == v and rows_in_window(s, GOLD_EPISODE_SCORES, WINDOW) == 1
    later = datetime(2026, 11, 5, 1, 30, tzinfo=UTC)
    quiet = run_entry(h, HEUR, later, runner)
    assert quiet.status == "succeeded" and quiet.detail == (
        "nothing to publish: no rows computed for [2026-11-04, 2026-11-05) and none published there "
        "(gold/step_signals, gold/episode_scores); nothing written")
    assert open_table(s, GOLD_EPISODE_SCORES).version() == v and open_table(s, GOLD_STEP_SIGNALS) is None


@pytest.fixture(scope="module")
def small_lake(base_settings, tmp_path_factory):
    """~3k synthetic events on 2026-11-02 → bronze (scrubbed) and silver by the batch path."""
    from streams.recompute import bronze_through, write_silver
    from streams.sources.synthetic import synthetic_events

    tmp = tmp_path_factory.mktemp("schedule")
    s = base_settings.model_copy(update={"lake_root": tmp / "lake", "state_dir": tmp / "state"})
    write_silver(s, bronze_through(s, (e.event for e in synthetic_events(3_000, seed=3))))
    return s


@pytest.mark.integration
def test_scheduled_jobs_run_end_to_end(spark, small_lake):
    """heuristics, then scorecards, then an export, each at its fire time, over the window the fire implies."""
    from lake.readers import read_table
    from schemas.tables import GOLD_EPISODE_SCORES, GOLD_SCORECARDS, SILVER_EPISODES

    sched = parse_schedule({"job": [
        {"name": "h", "job": "heuristics", "cron": "30 1 * * *", "window": "previous_day",
         "options": {"reward_version": "reward-v2"}},
        {"name": "s", "job": "scorecards", "cron": "30 2 * * *", "window": "previous_day",
         "options": {"reward_version": "reward-v2"}},
        {"name": "x", "job": "export", "cron": "0 3 * * *", "window": "previous_day",
         "options": {"name": "nightly", "formats": ["sft", "steps"], "reward_version": "reward-v2"}},
        {"name": "q", "job": "quality", "cron": "30 3 * * *", "window": "previous_day",
         "options": {"reward_version": "reward-v2"}},
    ]})
    h = History.for_settings(small_lake)
    runner = Runner(small_lake, spark=spark)
    outcomes = list(run_due(h, sched, datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, 3, 35, tzinfo=UTC),
                            runner))
    assert [(o.entry, o.status) for o in outcomes] == [("h", "succeeded"), ("s", "succeeded"), ("x", "succeeded"),
                                                       ("q", "succeeded")], [o.detail for o in outcomes]
    assert outcomes[-1].detail.startswith("9 suites passed on ")  # the day's bronze, silver and gold, checked
    assert {o.window for o in outcomes} == {(date(2026, 11, 2), date(2026, 11, 3))}
    episodes = read_table(small_lake, SILVER_EPISODES, columns=["episode_id"]).num_rows
    assert read_table(small_lake, GOLD_EPISODE_SCORES, columns=["episode_id"]).num_rows == episodes > 0
    assert read_table(small_lake, GOLD_SCORECARDS, columns=["metric"]).num_rows > 0
    assert (small_lake.lake / "exports" / "nightly" / "v0001" / "manifest.json").is_file()
    runs = h.runs()
    assert all(r.status == "succeeded" and r.ended_at >= r.started_at for r in runs) and len(runs) == 4


@pytest.mark.integration
def test_trajlake_schedule_once_runs_a_job_and_keeps_its_history(small_lake, tmp_path):
    f = tmp_path / "schedule.toml"
    f.write_text('[[job]]\nname = "compact-now"\njob = "compact"\ncron = "15 0 * * *"\n'
                 'options = { closed_after_days = 0, min_files = 2 }\n')
    env = settings_env(small_lake.model_copy(update={"schedule_file": f})) | {"COLUMNS": "200"}
    dry = run(["schedule", "--dry-run", "--at", "2026-11-03T00:20"], env)
    assert dry.returncode == 0, dry.stderr
    assert "compact-now" in dry.stdout and "would run" in dry.stdout and "trajlake.cli compact" in dry.stdout
    r = run(["schedule", "--once", "--at", "2026-11-03T00:20"], env)
    assert r.returncode == 0, r.stderr
    assert "compact-now" in r.stdout and "succeeded" in r.stdout and "bronze/events" in r.stdout
    again = run(["schedule", "--once", "--at", "2026-11-03T00:20"], env)  # that fire time is done
    assert again.returncode == 0 and "done-before" in again.stdout
    hist = run(["schedule", "--history", "5"], env)
    assert hist.returncode == 0 and "succeeded" in hist.stdout and "compact-now" in hist.stdout
    listed = run(["schedule", "--list", "--at", "2026-11-03T00:20"], env)
    assert listed.returncode == 0 and "2026-11-04 00:15" in listed.stdout


@pytest.mark.integration
def test_a_scheduled_reconcile_runs_the_cli_with_the_schedulers_settings(small_lake, tmp_path):
    """The scheduler runs reconcile as a child process (jobs/ never loads streams/), with its own settings."""
    f = tmp_path / "schedule.toml"
    f.write_text('[[job]]\nname = "late"\njob = "reconcile"\ncron = "0 1 * * *"\nwindow = "previous_day"\n')
    env = settings_env(small_lake.model_copy(update={"schedule_file": f})) | {"COLUMNS": "200"}
    r = run(["schedule", "--once", "--at", "2026-11-03T01:10"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    said = " ".join(r.stdout.split())
    assert "late" in said and "succeeded" in said and "wrote 0 step and 0 episode row(s)" in said


@pytest.mark.unit
def test_schedule_mistakes_are_one_line(base_settings, tmp_path):
    f = tmp_path / "schedule.toml"
    f.write_text('[[job]]\nname = "h"\njob = "heuristic"\ncron = "99 * * * *"\nwindow = "previous_day"\n')
    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path, "schedule_file": f}))
    assert_clean_error(run(["schedule", "--list"], env), "unknown job", "not a valid cron")
    assert_clean_error(run(["schedule", "--list", "--file", str(tmp_path / "none.toml")], env), "no schedule file")
    ok = settings_env(base_settings.model_copy(update={"state_dir": tmp_path}))
    assert_clean_error(run(["schedule", "--once", "--job", "nope"], ok), "no entry named 'nope'")
    assert_clean_error(run(["schedule", "--once", "--at", "tomorrow"], ok), "--at")


@contextmanager
def scheduler_service(s, log_path):
    """`trajlake schedule` as a service with settings `s`, output to `log_path`; on leaving, SIGTERM must stop it
    with a non-zero status (a run in progress is recorded as crashed)."""
    import signal

    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "trajlake.cli", "schedule"],
                                env=settings_env(s) | {"COLUMNS": "200"}, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            yield proc
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) != 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.integration
def test_the_scheduler_loop_fires_on_cron_and_stops_on_sigterm(base_settings, tmp_path):
    """`trajlake schedule` as a service runs it: it catches up on the fire just missed at start, an every-minute
    entry fires on cron, SIGTERM stops it."""
    from tests.conftest import wait_until

    f = tmp_path / "schedule.toml"
    f.write_text('[[job]]\nname = "tick"\njob = "compact"\ncron = "* * * * *"\n')
    s = base_settings.model_copy(update={"state_dir": tmp_path / "state", "schedule_file": f})
    # the service takes seconds to start: started near the end of a minute, its catch-up is of the next minute's
    # fire, which is right but after `started` (seen in CI at 11:00:59.9), so start early in a minute
    if (second := datetime.now(timezone.utc).second) >= 40:
        time.sleep(61 - second)
    started = datetime.now(timezone.utc)
    history = s.state_dir.resolve() / "schedule" / "history.sqlite3"
    with scheduler_service(s, tmp_path / "schedule.log"):
        wait_until(lambda: history.exists() and any(r.status == "succeeded" for r in History(history).runs("tick")),
                   150, interval=1, message="a scheduled run to succeed")
    run_ = History(history).runs("tick")[-1]
    assert run_.fire_time.second == 0 and run_.window is None and run_.status == "succeeded"
    # the first run is the catch-up of the fire just before the start, not the next minute's
    assert run_.fire_time <= started
    assert "tick" in (tmp_path / "schedule.log").read_text()


@pytest.mark.integration
def test_the_scheduler_loop_holds_an_entry_whose_dependency_failed(base_settings, tmp_path):
    """`after` in the service: the dependency fails at the catch-up, so its dependant is reported waiting (and
    not run, nothing recorded) while the scheduler keeps serving; SIGTERM stops it."""
    from tests.conftest import wait_until

    f = tmp_path / "schedule.toml"
    # an export of a lake with nothing scored fails at run time (a table name the schedule does not know is refused
    # when the file is read)
    f.write_text('[[job]]\nname = "first"\njob = "export"\ncron = "* * * * *"\nwindow = "previous_day"\n'
                 'options = { name = "x" }\n'
                 '[[job]]\nname = "second"\njob = "compact"\ncron = "* * * * *"\nafter = ["first"]\n')
    s = base_settings.model_copy(update={"state_dir": tmp_path / "state", "schedule_file": f})
    log_path = tmp_path / "schedule.log"
    history = s.state_dir.resolve() / "schedule" / "history.sqlite3"
    with scheduler_service(s, log_path) as proc:
        wait_until(lambda: "waiting for first @" in log_path.read_text(), 120, interval=1,
                   message="the dependant to be reported waiting")
        assert proc.poll() is None   # still serving
    runs = History(history).runs()
    assert {r.entry for r in runs} == {"first"} and all(r.status == "failed" for r in runs)
