"""The embedded scheduler's shell: run history and per-entry locks in SQLite, running an entry's job in-process."""
from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import traceback
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

from jobs.schedule import Entry, Holder, Schedule, Verdict, due, lock_verdict, unmet, window_for
from schemas.settings import Settings

log = logging.getLogger(__name__)

Log = Callable[[str], None]
HEARTBEAT_SECONDS = 30.0
# a run whose heartbeat is older than this is presumed dead (its process hung up, or it ran on another host)
LEASE = timedelta(minutes=5)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  run_id       INTEGER PRIMARY KEY AUTOINCREMENT,
  entry        TEXT NOT NULL,
  job          TEXT NOT NULL,
  fire_time    TEXT NOT NULL,
  window_start TEXT,
  window_end   TEXT,
  started_at   TEXT NOT NULL,
  ended_at     TEXT,
  status       TEXT NOT NULL,      -- running | succeeded | failed | crashed
  error        TEXT,
  host         TEXT NOT NULL,
  pid          INTEGER NOT NULL,
  heartbeat_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_entry ON runs (entry, status);
"""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclass(frozen=True)
class Run:
    run_id: int
    entry: str
    job: str
    fire_time: datetime
    window: tuple[date, date] | None
    started_at: datetime
    ended_at: datetime | None
    status: str
    error: str | None
    host: str
    pid: int

    @property
    def seconds(self) -> float | None:
        return None if self.ended_at is None else (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class Skipped:
    entry: str
    reason: str


class History:
    """Run history in `<state_dir>/schedule/history.sqlite3`; a `running` row is the entry's lock.

    Taking the lock is one IMMEDIATE transaction (SQLite's write lock), so two schedulers on the same state dir
    cannot both start an entry. A crashed run's row stays `running` until the next attempt sees its process gone
    (or its heartbeat stale) and marks it `crashed`.
    """

    def __init__(self, path: Path, host: str | None = None, pid: int | None = None):
        self.path, self.host, self.pid = path, host or socket.gethostname(), pid or os.getpid()
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con:
            con.executescript(_SCHEMA)

    @classmethod
    def for_settings(cls, settings: Settings) -> "History":
        return cls(settings.state_dir.resolve() / "schedule" / "history.sqlite3")

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        return con

    def acquire(self, entry: Entry, fire: datetime, window: tuple[date, date] | None,
                pid_alive: Callable[[int], bool] = _pid_alive, now: datetime | None = None) -> int | Skipped:
        now = now or _now()
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute("SELECT run_id, host, pid, heartbeat_at FROM runs WHERE entry = ? AND status = "
                                  "'running' ORDER BY run_id DESC LIMIT 1", (entry.name,)).fetchone()
                holder = None if row is None else Holder(row["run_id"], row["host"], row["pid"],
                                                         datetime.fromisoformat(row["heartbeat_at"]))
                verdict = lock_verdict(holder, host=self.host, now=now, lease=LEASE,
                                       pid_alive=holder is not None and pid_alive(holder.pid))
                if verdict is Verdict.SKIP:
                    con.execute("ROLLBACK")
                    return Skipped(entry.name, f"run {holder.run_id} (pid {holder.pid} on {holder.host}) is still "
                                               "running: runs of one entry never overlap")
                if verdict is Verdict.TAKE_OVER:
                    con.execute("UPDATE runs SET status = 'crashed', ended_at = ?, error = ? WHERE run_id = ?",
                                (now.isoformat(), f"the run's process (pid {holder.pid} on {holder.host}) ended "
                                 "without finishing it; lock taken over", holder.run_id))
                cur = con.execute(
                    "INSERT INTO runs (entry, job, fire_time, window_start, window_end, started_at, status, host, pid,"
                    " heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                    (entry.name, entry.job, fire.isoformat(), *((str(window[0]), str(window[1])) if window else (None, None)),
                     now.isoformat(), self.host, self.pid, now.isoformat()))
                con.execute("COMMIT")
                return int(cur.lastrowid)
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def heartbeat(self, run_id: int) -> None:
        with closing(self._connect()) as con:
            con.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ? AND status = 'running'",
                        (_now().isoformat(), run_id))

    def finish(self, run_id: int, status: str, error: str | None = None) -> None:
        # only a run still marked running: one whose lock another run took over (its heartbeat went stale) stays
        # 'crashed' with the reason, rather than being marked succeeded beside the run that replaced it
        with closing(self._connect()) as con:
            done = con.execute("UPDATE runs SET status = ?, ended_at = ?, error = ? WHERE run_id = ? AND "
                               "status = 'running'", (status, _now().isoformat(), error, run_id)).rowcount
        if not done:
            log.warning("run %d ended %s after its lock was taken over; its history row stays as it was",
                        run_id, status)

    def succeeded(self, entry: str, fire: datetime) -> bool:
        with closing(self._connect()) as con:
            return con.execute("SELECT 1 FROM runs WHERE entry = ? AND fire_time = ? AND status = 'succeeded'",
                               (entry, fire.isoformat())).fetchone() is not None

    def runs(self, entry: str | None = None, limit: int = 50) -> list[Run]:
        sql, args = "SELECT * FROM runs", []
        if entry:
            sql, args = sql + " WHERE entry = ?", [entry]
        with closing(self._connect()) as con:
            rows = con.execute(sql + " ORDER BY run_id DESC LIMIT ?", (*args, limit)).fetchall()
        return [_run(r) for r in rows]

    def last(self, entry: str) -> Run | None:
        runs = self.runs(entry, 1)
        return runs[0] if runs else None


def _run(r: sqlite3.Row) -> Run:
    window = None if r["window_start"] is None else (date.fromisoformat(r["window_start"]),
                                                     date.fromisoformat(r["window_end"]))
    return Run(r["run_id"], r["entry"], r["job"], datetime.fromisoformat(r["fire_time"]), window,
               datetime.fromisoformat(r["started_at"]),
               None if r["ended_at"] is None else datetime.fromisoformat(r["ended_at"]), r["status"], r["error"],
               r["host"], r["pid"])


# ---- running one entry ----------------------------------------------------------------------------------------------
class Runner:
    """Runs entries' jobs in this process; one SparkSession, built on first need, serves every Spark job."""

    def __init__(self, settings: Settings, spark=None):
        self.settings = settings
        self._spark, self._own_spark = spark, spark is None

    def spark(self):
        if self._spark is None:
            from jobs.spark import build_spark

            self._spark = build_spark(self.settings, app_name="trajlake-schedule")
        return self._spark

    def stop(self) -> None:
        if self._spark is not None and self._own_spark:
            self._spark.stop()
            self._spark = None

    def __call__(self, entry: Entry, window: tuple[date, date] | None, log: Log) -> str:
        """Run the job; return a one-line summary. Raises whatever the job raises."""
        opts = dict(entry.options)
        s = self.settings
        if opts.get("reward_version"):
            s = s.model_copy(update={"reward_version": opts["reward_version"]})
        if entry.job in ("heuristics", "scorecards"):
            from jobs.submit import job_runner
            from schemas.reward import load_reward_spec

            spec = load_reward_spec(s.reward_version)
            # a window whose input is missing, for all or some of its days, raises EmptyPublishRefused or
            # EmptyDaysRefused: a failed run, its message the reason
            published = list(job_runner(entry.job)(self.spark(), s, *window, spec=spec, progress=log))
            if not any(p.written for p in published):  # a success, but not one to mistake for scores published
                return (f"nothing to publish: no rows computed for [{window[0]}, {window[1]}) and none published "
                        f"there ({', '.join(p.table for p in published)}); nothing written")
            return ", ".join(f"{p.table} {p.rows} rows → v{p.version}" for p in published)
        if entry.job == "export":
            from jobs.export import ExportRequest, run
            from jobs.export_rows import FORMATS

            formats = opts.get("formats", FORMATS)
            formats = tuple(formats.split(",")) if isinstance(formats, str) else tuple(formats)
            result = run(s, ExportRequest(str(opts["name"]), formats, *window, opts.get("reward_version")),
                         progress=log)
            return f"export {result.manifest['name']} {result.manifest['version']} at {result.path}"
        if entry.job == "quality":
            from quality.lake_checks import check_lake
            from schemas.reward import load_reward_spec

            reports = check_lake(s, load_reward_spec(s.reward_version), opts.get("tables") or None, *window,
                                 progress=log)
            failed = [r for r in reports if not r.success]
            if failed:  # a failed suite is a failed run: the history records the report
                raise RuntimeError("\n".join(r.summary() for r in failed))
            return f"{len(reports)} suites passed on {sum(r.rows for r in reports):,} rows"
        if entry.job == "compact":
            from lake.compaction import compact_closed_partitions
            from lake.tables import spec as table_spec
            from schemas.tables import STREAM_TABLES

            specs = ([table_spec(opts["table"])] if opts.get("table") else list(STREAM_TABLES))
            parts = []
            for t in specs:
                done = compact_closed_partitions(s, t, closed_after_days=int(opts.get("closed_after_days", 1)),
                                                 min_files=int(opts.get("min_files", s.compact_min_files)))
                parts.append(f"{t.id} {len(done.partitions)} partitions {done.files_removed}→{done.files_added} files")
            return "; ".join(parts)
        if entry.job == "reconcile":
            # the stream's join run in batch (streams/reconcile.py): in a child process, the CLI Airflow runs too,
            # so the scheduler never loads streams/ (jobs/ is the batch side, tests/jobs/test_dependencies.py)
            import subprocess
            import sys

            from schemas.settings import settings_env

            r = subprocess.run([sys.executable, "-m", "trajlake.cli", "reconcile", "--start", str(window[0]),
                                "--end", str(window[1])], capture_output=True, text=True,
                               env=settings_env(s, os.environ) | {"COLUMNS": "200"},
                               cwd=Path(__file__).resolve().parent.parent)
            said = " ".join((r.stdout + r.stderr).split())
            if r.returncode != 0:
                raise RuntimeError(f"trajlake reconcile exited with {r.returncode}: {said[-2000:]}")
            return said
        if entry.job == "vacuum":
            from lake.tables import spec as table_spec
            from lake.vacuum import vacuum_table
            from schemas.tables import TABLES

            specs = [table_spec(opts["table"])] if opts.get("table") else list(TABLES.values())
            hours = float(opts.get("retention_hours", s.vacuum_retention_hours))
            done = [vacuum_table(s, t, retention_hours=hours) for t in specs]
            return (f"{sum(d.files for d in done)} files ({sum(d.bytes for d in done) / 2**20:,.1f} MiB) deleted "
                    f"from {len(done)} tables, replaced over {hours:g} h ago")
        raise ValueError(f"no job {entry.job!r}")


@dataclass(frozen=True)
class Outcome:
    entry: str
    fire: datetime
    window: tuple[date, date] | None
    status: str          # succeeded | failed | skipped | done-before | waiting (an `after` entry has not succeeded)
    detail: str
    run_id: int | None = None


def run_entry(history: History, entry: Entry, fire: datetime, runner: Callable[[Entry, tuple | None, Log], str],
              log: Log = lambda _: None, force: bool = False, schedule: Schedule | None = None) -> Outcome:
    """One entry at one fire time: skip it if that fire already succeeded (unless `force`), if an entry it runs
    `after` has not succeeded for its latest fire (`waiting`, nothing recorded: it is tried again), or if a live
    run holds the entry; otherwise lock, run, heartbeat while running, and record the outcome (errors as data,
    never raised)."""
    window = window_for(entry, fire)
    if not force and history.succeeded(entry.name, fire):
        return Outcome(entry.name, fire, window, "done-before", "this fire time already succeeded (--force reruns)")
    if schedule is not None and (waits := unmet(schedule, entry, fire, history.succeeded)):
        return Outcome(entry.name, fire, window, "waiting", "waiting for " + ", ".join(
            f"{name} @ {f:%Y-%m-%d %H:%M} to succeed" for name, f in waits))
    got = history.acquire(entry, fire, window)
    if isinstance(got, Skipped):
        return Outcome(entry.name, fire, window, "skipped", got.reason)
    run_id, stop = got, threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                history.heartbeat(run_id)
            except Exception as exc:  # noqa: BLE001 — a missed beat is retried; a dead thread would lose the lock
                # (after LEASE without beats another scheduler takes the entry over while this run still works)
                log(f"heartbeat of run {run_id} failed ({type(exc).__name__}: {exc}); retrying")

    t = threading.Thread(target=beat, name=f"heartbeat-{entry.name}", daemon=True)
    t.start()
    try:
        detail = runner(entry, window, log)
    except Exception as exc:  # a failed job is recorded and the scheduler goes on
        error = f"{type(exc).__name__}: {exc}"
        history.finish(run_id, "failed", error + "\n" + traceback.format_exc(limit=8))
        return Outcome(entry.name, fire, window, "failed", error, run_id)
    except BaseException:  # Ctrl-C / SIGTERM: the run did not finish
        history.finish(run_id, "crashed", "interrupted")
        raise
    finally:
        stop.set()
        t.join()
    history.finish(run_id, "succeeded")
    return Outcome(entry.name, fire, window, "succeeded", detail, run_id)


def run_due(history: History, schedule: Schedule, after: datetime, now: datetime, runner, log: Log = lambda _: None,
            only: list[str] | None = None, force: bool = False,
            on_start: Callable[[Entry, datetime], None] = lambda e, f: None) -> Iterator[Outcome]:
    """Run every entry due in (after, now], in fire order."""
    for entry, fire in due(schedule, after, now, only):
        on_start(entry, fire)
        yield run_entry(history, entry, fire, runner, log, force, schedule)


def sleep_until(when: datetime, stop: threading.Event) -> bool:
    """Sleep until `when` (wall clock, re-checked so a suspended laptop catches up); False if stopped."""
    while (left := (when - _now()).total_seconds()) > 0:
        if stop.wait(min(left, 60)):
            return False
    return not stop.is_set()
