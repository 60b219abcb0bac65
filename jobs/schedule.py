"""The job schedule (pure): the schedule file's entries, their cron fire times and windows, and overlap decisions."""
from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from croniter import croniter

# Only stdlib and croniter here: the Airflow DAG (infra/airflow/) imports this module in Airflow's own venv.

JOBS = ("heuristics", "scorecards", "export", "compact", "quality", "vacuum", "reconcile")
SPARK_JOBS = ("heuristics", "scorecards")
# what each job accepts in its `options` table, and which of them it cannot do without
OPTIONS = {
    "heuristics": {"reward_version"},
    "scorecards": {"reward_version"},
    "export": {"name", "formats", "reward_version"},
    "compact": {"table", "closed_after_days", "min_files"},
    # the Great Expectations suites over the window (the stream's bronze and silver are checked this way)
    "quality": {"tables", "reward_version"},
    # deleting the files overwrites and compaction replaced, past the retention (TRAJLAKE_VACUUM_RETENTION_HOURS)
    "vacuum": {"table", "retention_hours"},
    # late events the stream's join could not apply, joined again from bronze into new silver revisions
    "reconcile": set(),
}
REQUIRED = {"export": {"name"}}
# entry names become Airflow ids, export names directories: one rule for both
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _table_ids() -> frozenset[str]:
    from schemas.tables import TABLES

    return frozenset(TABLES)


def _checked_table_ids() -> frozenset[str]:
    from schemas.tables import CHECKED_TABLES

    return frozenset(CHECKED_TABLES)


def _strings(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v)


# each option's type check and how to write it right (a wrong type would otherwise fail at fire time, hours later)
OPTION_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "reward_version": (lambda v: isinstance(v, str) and bool(re.fullmatch(r"reward-v\d+", v)),
                       'a version string, e.g. reward_version = "reward-v2"'),
    "name": (lambda v: isinstance(v, str) and bool(_NAME.fullmatch(v)),
             'letters, digits, "-", "_" or "." (it names a directory), e.g. name = "weekly"'),
    "formats": (lambda v: _strings(v) or (isinstance(v, str) and bool(v.strip())),
                'a list of formats, e.g. formats = ["sft", "dpo"], or "sft,dpo"'),
    # checked against the tables a suite checks when the file is read: a name the quality job does not know (a table
    # without a suite too, such as audit/erasures) failed at every fire
    "tables": (lambda v: _strings(v) and all(t in _checked_table_ids() for t in v),
               'a list of table ids, e.g. tables = ["silver/steps"] (one of the tables a quality suite checks: '
               'bronze/*, silver/*, gold/*)'),
    "table": (lambda v: isinstance(v, str) and v.replace(".", "/") in _table_ids(),
              'a table id, e.g. table = "bronze/events" (one of the lake\'s tables)'),
    "closed_after_days": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                          "a whole number of days ≥ 0, e.g. closed_after_days = 1"),
    # as `trajlake compact --min-files` (its Airflow form): one file is already compact
    "min_files": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2,
                  "a whole number ≥ 2, e.g. min_files = 8"),
    "retention_hours": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                        "a number of hours ≥ 0, e.g. retention_hours = 168"),
}
ENTRY_KEYS = {"name", "job", "cron", "window", "options", "enabled", "after"}
CRON_ALIASES = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight")
_DAYS = re.compile(r"previous_(\d+)_days")


class ScheduleError(ValueError):
    """The schedule file is wrong; every problem is listed, each naming the entry and the fix."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Entry:
    """One scheduled job: `name` is unique (history, locks and Airflow task ids use it)."""

    name: str
    job: str
    cron: str
    window: str = "none"
    options: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    # entries whose latest fire at or before this one's must have succeeded first (e.g. scorecards after heuristics)
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Schedule:
    entries: tuple[Entry, ...]
    source: Path | None = None

    def entry(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise ScheduleError([f"no entry named {name!r} in the schedule; entries: "
                             f"{', '.join(e.name for e in self.entries) or '(none)'}"])


# ---- parsing ------------------------------------------------------------------------------------------------------
def cron_problem(expr: str) -> str | None:
    """None if `expr` is a 5-field cron expression (or an @alias) that both croniter and Airflow accept."""
    expr = expr.strip()
    if expr in CRON_ALIASES:
        return None
    if len(expr.split()) != 5:
        return f"{expr!r} has {len(expr.split())} fields; write minute hour day-of-month month day-of-week, " \
               "e.g. '30 2 * * *' (02:30 UTC daily), or an alias like @daily"
    if not croniter.is_valid(expr):
        return f"{expr!r} is not a valid cron expression (e.g. '30 2 * * *' for 02:30 UTC daily)"
    return None


def window_problem(window: str) -> str | None:
    if window in ("none", "previous_day", "previous_week") or (_DAYS.fullmatch(window)
                                                               and int(_DAYS.fullmatch(window)[1]) >= 1):
        return None
    return f"window {window!r}: choose previous_day, previous_week, previous_N_days (N ≥ 1) or none"


def parse_schedule(doc: Mapping[str, Any], source: Path | None = None) -> Schedule:
    """Validate a parsed schedule document ({"job": [{name, job, cron, window, options}, …]}); raise ScheduleError
    listing every problem at once."""
    problems: list[str] = []
    unknown_top = set(doc) - {"job"}
    if unknown_top:
        problems.append(f"unknown top-level key(s) {sorted(unknown_top)}: entries go in [[job]] tables")
    raw = doc.get("job", [])
    if not isinstance(raw, list):
        raise ScheduleError(["'job' must be an array of tables: write each entry under [[job]]"])
    entries, seen = [], set()
    for i, item in enumerate(raw, 1):
        where = f"entry {i} ({item.get('name', 'unnamed')})" if isinstance(item, dict) else f"entry {i}"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a table")
            continue
        extra = set(item) - ENTRY_KEYS
        if extra:
            problems.append(f"{where}: unknown key(s) {sorted(extra)}; allowed: {', '.join(sorted(ENTRY_KEYS))}")
        name, job, cron = item.get("name"), item.get("job"), item.get("cron")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.append(f"{where}: name must be letters, digits, '-', '_' or '.' (it becomes an Airflow id)")
        elif name in seen:
            problems.append(f"{where}: the name {name!r} is used twice; names must be unique")
        seen.add(name)
        if job not in JOBS:
            problems.append(f"{where}: unknown job {job!r}; jobs: {', '.join(JOBS)}")
        if not isinstance(cron, str):
            problems.append(f"{where}: cron is missing, e.g. cron = \"30 2 * * *\"")
        elif (p := cron_problem(cron)):
            problems.append(f"{where}: cron {p}")
        # the jobs without a window (compact, vacuum) default to none: a vacuum entry without one was told to give
        # previous_day, which it does not take (found in review)
        window = item.get("window", "none" if job in ("compact", "vacuum") else None)
        if window is None:
            problems.append(f"{where}: {job} needs a window (previous_day, previous_week or previous_N_days)")
        elif not isinstance(window, str) or (p := window_problem(window)):
            problems.append(f"{where}: {p or 'window must be a string'}")
        elif job in SPARK_JOBS + ("export", "quality", "reconcile") and window == "none":
            problems.append(f"{where}: {job} needs a window, not none")
        options = item.get("options", {})
        if not isinstance(options, dict):
            problems.append(f"{where}: options must be a table, e.g. options = {{ reward_version = \"reward-v1\" }}")
            options = {}
        elif job in OPTIONS:
            bad = set(options) - OPTIONS[job]
            if bad:
                problems.append(f"{where}: {job} takes no option(s) {sorted(bad)}; it takes "
                                f"{', '.join(sorted(OPTIONS[job]))}")
            for key in sorted(set(options) & OPTIONS[job]):
                ok, how = OPTION_TYPES[key]
                if not ok(options[key]):
                    problems.append(f"{where}: option {key} = {options[key]!r} is wrong: write {how}")
            missing = REQUIRED.get(job, set()) - set(options)
            if missing:
                problems.append(f"{where}: {job} needs option(s) {sorted(missing)}, e.g. options = {{ name = \"weekly\" }}")
        enabled = item.get("enabled", True)
        if not isinstance(enabled, bool):
            problems.append(f"{where}: enabled must be true or false")
        after = item.get("after", [])
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            problems.append(f"{where}: after must be a list of entry names, e.g. after = [\"heuristics-daily\"]")
            after = []
        entries.append(Entry(str(name), str(job), str(cron).strip(), str(window), dict(options), bool(enabled),
                             tuple(after)))
    by_name = {e.name: e for e in entries}
    for i, e in enumerate(entries, 1):
        for dep in e.after:
            if dep == e.name:
                problems.append(f"entry {i} ({e.name}): after names the entry itself")
            elif dep not in by_name:
                problems.append(f"entry {i} ({e.name}): after names {dep!r}, which is not an entry; entries: "
                                f"{', '.join(sorted(by_name))}")
            elif e.enabled and not by_name[dep].enabled:
                problems.append(f"entry {i} ({e.name}): after names {dep!r}, which is disabled: {e.name} would "
                                "wait for it forever")
    if not problems and (cycle := _cycle(entries)):
        problems.append(f"after makes a cycle: {' → '.join(cycle)}; no entry could ever run")
    if problems:
        raise ScheduleError(problems)
    return Schedule(tuple(entries), source)


def _cycle(entries: list[Entry]) -> list[str] | None:
    deps = {e.name: e.after for e in entries}
    state: dict[str, int] = {}   # 1 visiting, 2 done

    def visit(n: str, path: list[str]) -> list[str] | None:
        if state.get(n) == 1:
            return path[path.index(n):] + [n]
        if state.get(n) == 2:
            return None
        state[n] = 1
        for d in deps[n]:
            if (found := visit(d, path + [n])):
                return found
        state[n] = 2
        return None

    for name in deps:
        if (found := visit(name, [])):
            return found
    return None


def load_schedule(path: Path) -> Schedule:
    """Read and validate a schedule file (TOML)."""
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ScheduleError([f"no schedule file at {path}: create it (see infra/schedule.toml) or set "
                             "TRAJLAKE_SCHEDULE_FILE"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleError([f"{path} is not valid TOML: {exc}"]) from None
    return parse_schedule(doc, path)


# ---- time ---------------------------------------------------------------------------------------------------------
def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"{t} has no time zone: schedules run in UTC, pass an aware datetime")
    return t.astimezone(timezone.utc)


def next_fire(cron: str, after: datetime) -> datetime:
    """The first fire time strictly after `after` (UTC)."""
    return croniter(cron, _utc(after)).get_next(datetime)


def latest_fire(cron: str, at: datetime) -> datetime:
    """The last fire time at or before `at` (UTC)."""
    at = _utc(at)
    if croniter.match(cron, at) and at.second == 0 and at.microsecond == 0:
        return at
    return croniter(cron, at).get_prev(datetime)


def fires_between(cron: str, after: datetime, until: datetime) -> list[datetime]:
    """Every fire time in (after, until]."""
    out, t = [], _utc(after)
    while (t := next_fire(cron, t)) <= _utc(until):
        out.append(t)
    return out


def window_for(entry: Entry, fire: datetime) -> tuple[date, date] | None:
    """The days [start, end) a run fired at `fire` covers: the day before the fire's date, the ISO week before the
    fire's week, or the N days before the fire's date; None for jobs without a window (compact)."""
    day = _utc(fire).date()
    if entry.window == "previous_day":
        return day - timedelta(days=1), day
    if entry.window == "previous_week":
        monday = day - timedelta(days=day.weekday())
        return monday - timedelta(days=7), monday
    if (m := _DAYS.fullmatch(entry.window)):
        return day - timedelta(days=int(m[1])), day
    return None


def unmet(schedule: Schedule, entry: Entry, fire: datetime,
          succeeded: Callable[[str, datetime], bool]) -> list[tuple[str, datetime]]:
    """The entries `entry` waits for at `fire`: each of its `after` entries whose latest fire at or before `fire`
    has not succeeded (`succeeded(name, fire)` asks the run history), with that fire time."""
    out = []
    for name in entry.after:
        dep = schedule.entry(name)
        dep_fire = latest_fire(dep.cron, fire)
        if not succeeded(name, dep_fire):
            out.append((name, dep_fire))
    return out


def due(schedule: Schedule, after: datetime, now: datetime,
        only: Iterable[str] | None = None) -> list[tuple[Entry, datetime]]:
    """Entries with a fire time in (after, now], each with its latest such fire (fires missed while the scheduler
    was busy or asleep coalesce into one run, as cron's would; older windows are backfilled with --at)."""
    names = set(only) if only is not None else None
    out = []
    for e in schedule.entries:
        if not e.enabled or (names is not None and e.name not in names):
            continue
        fire = latest_fire(e.cron, now)
        if fire > _utc(after):
            out.append((e, fire))
    return sorted(out, key=lambda p: (p[1], p[0].name))


def next_wake(schedule: Schedule, now: datetime) -> tuple[datetime, list[str]] | None:
    """When the scheduler must wake next and which entries fire then."""
    fires = [(next_fire(e.cron, now), e.name) for e in schedule.entries if e.enabled]
    if not fires:
        return None
    first = min(t for t, _ in fires)
    return first, sorted(n for t, n in fires if t == first)


# ---- overlap ------------------------------------------------------------------------------------------------------
class Verdict(str, Enum):
    START = "start"            # nothing else runs this entry
    SKIP = "skip"              # a live run holds the entry: no overlapping runs
    TAKE_OVER = "take_over"    # the holder died without finishing: record it as crashed, then start


@dataclass(frozen=True)
class Holder:
    """The running record that holds an entry's lock."""

    run_id: int
    host: str
    pid: int
    heartbeat_at: datetime


def lock_verdict(holder: Holder | None, *, host: str, pid_alive: bool, now: datetime,
                 lease: timedelta) -> Verdict:
    """Whether a new run may start. A holder on this host whose process is gone crashed (take over at once); any
    holder whose heartbeat is older than the lease is presumed dead (another host, or a recycled pid that is not
    heartbeating); otherwise the entry is busy."""
    if holder is None:
        return Verdict.START
    if holder.host == host and not pid_alive:
        return Verdict.TAKE_OVER
    if _utc(now) - _utc(holder.heartbeat_at) > lease:
        return Verdict.TAKE_OVER
    return Verdict.SKIP


# ---- commands for other runners (Airflow) -------------------------------------------------------------------------
def _driver_options() -> str:
    """The driver settings `build_spark` gives the JVM it starts, for spark-submit's command line: under
    spark-submit the driver JVM is running before the job's code sets anything, so these set there are ignored.
    Without them an Airflow run had Spark's default 1 GiB heap where `trajlake jobs run` has 6 GiB (2 GiB already
    ran out at 10M events), G1 instead of the parallel collector, and 100 codegen cache entries instead of 1000."""
    from jobs.spark import LOCAL_DEFAULTS

    q = shlex.quote
    return (f"--driver-memory {q(LOCAL_DEFAULTS['spark.driver.memory'])} "
            f"--driver-java-options {q(LOCAL_DEFAULTS['spark.driver.extraJavaOptions'])} "
            f"--conf spark.sql.codegen.cache.maxEntries={q(LOCAL_DEFAULTS['spark.sql.codegen.cache.maxEntries'])}")
def command(entry: Entry, window: tuple[date, date] | None, *, python: str, repo: str,
            master: str = "local[*]") -> str:
    """The shell command that runs one entry outside this process: spark-submit for the Spark jobs (the packages
    are asked of the trajlake venv at run time, as `trajlake jobs run` builds them), the CLI for the others.
    Environment: the TRAJLAKE_* settings; TRAJLAKE_SPARK_MASTER is emptied so the submit's --master wins."""
    py, q = shlex.quote(python), shlex.quote
    opts = dict(entry.options)
    env = f"cd {q(repo)} && export PYTHONPATH={q(repo)} PYSPARK_PYTHON={py} TRAJLAKE_SPARK_MASTER=''"
    if opts.get("reward_version"):
        env += f" TRAJLAKE_REWARD_VERSION={q(str(opts['reward_version']))}"
    if entry.job in SPARK_JOBS:
        assert window is not None
        bin_dir = q(str(Path(python).parent))
        return (f"{env} && {bin_dir}/spark-submit --master {q(master)} {_driver_options()} "
                f"--packages \"$({py} -m jobs.spark)\" jobs/{entry.job}.py --start {window[0]} --end {window[1]}")
    if entry.job == "export":
        assert window is not None
        cmd = f"{py} -m trajlake.cli export {q(str(opts['name']))} --since {window[0]} --until {window[1]}"
        if opts.get("formats"):
            cmd += f" --format {q(_formats(opts['formats']))}"
        return f"{env} && {cmd}"
    if entry.job == "quality":
        assert window is not None
        tables = " ".join(q(t) for t in opts.get("tables", ()))
        cmd = f"{py} -m trajlake.cli quality check {tables + ' ' if tables else ''}--start {window[0]} --end {window[1]}"
        return f"{env} && {cmd}"
    if entry.job == "reconcile":
        assert window is not None
        return f"{env} && {py} -m trajlake.cli reconcile --start {window[0]} --end {window[1]}"
    if entry.job == "vacuum":
        cmd = f"{py} -m trajlake.cli vacuum"
        for key in ("table", "retention_hours"):
            if key in opts:
                cmd += f" --{key.replace('_', '-')} {q(str(opts[key]))}"
        return f"{env} && {cmd}"
    cmd = f"{py} -m trajlake.cli compact"
    for key in ("table", "closed_after_days", "min_files"):
        if key in opts:
            cmd += f" --{key.replace('_', '-')} {q(str(opts[key]))}"
    return f"{env} && {cmd}"


def _formats(value: Any) -> str:
    return ",".join(value) if isinstance(value, (list, tuple)) else str(value)
