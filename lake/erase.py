"""Erase one user from every Delta table and export under the lake: delete, vacuum, and scrub the Delta log."""
from __future__ import annotations

import json
import math
import os
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from lake.locks import erasing
from lake.tables import ensure_table, table_path
from schemas.settings import Settings
from schemas.tables import AUDIT_ERASURES, TABLES

# columns that tie a row to a user's session when a table has no user_id (a per-episode review sample)
LINK_COLUMNS = ("session_id", "episode_id", "step_id")
# dead-letter tables keep the original bytes; these columns are searched for the user's raw id
RAW_COLUMNS = ("original", "original_key", "detail")
QUARANTINE_KEYS = ("source_topic", "source_partition", "source_offset")
# an untracked data file younger than this may be a writer's commit in flight: never delete it, report it
ORPHAN_MIN_AGE_S = 600
ERASED = "<erased>"
EXPORT_TEXT = (".jsonl", ".json", ".ndjson", ".csv", ".txt")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """The user's rows as the lake sees them: `user_id` columns hold the pseudonym; raw bytes (dead letters, the
    Delta log, export files) are searched with `patterns` (the pseudonym and, when known, the raw id)."""

    user_id: str
    patterns: tuple[re.Pattern[bytes], ...]


@dataclass
class TableErasure:
    table: str
    rows_deleted: int = 0
    files_removed: int = 0
    kind: str = "untouched"  # user | quarantine | linked | export | untouched


@dataclass
class LakeErasure:
    tables: list[TableErasure] = field(default_factory=list)
    # files that still mention the user after the erase: a writer's commit in flight, or a format we cannot edit
    residual: list[str] = field(default_factory=list)

    @property
    def rows_deleted(self) -> int:
        return sum(t.rows_deleted for t in self.tables)


# ---- where the user's rows can be ------------------------------------------------------------------------
def delta_tables(settings: Settings) -> list[tuple[str, Path]]:
    """Every Delta table under the lake: the declared ones that exist, plus any other (exports, tables added
    later), so an erase covers tables nobody told it about."""
    root = settings.lake
    found: dict[Path, str] = {}
    for tid, spec in TABLES.items():
        path = table_path(settings, spec)
        if (path / "_delta_log").is_dir():
            found[path] = tid
    if root.is_dir():
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            if "_delta_log" in dirnames:
                found.setdefault(here, here.relative_to(root).as_posix())
                dirnames.clear()  # a table's partitions hold no tables
            else:
                dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]
    return sorted(((name, path) for path, name in found.items()), key=lambda t: t[0])


def _dataset(dt: DeltaTable, path: Path) -> ds.Dataset:
    """The live files of a table as a pyarrow dataset (the same way lake/readers.py reads, for any table)."""
    schema = pa.schema(dt.schema().to_arrow())
    parts = dt.metadata().partition_columns
    return ds.dataset(dt.file_uris(), schema=schema, format="parquet",
                      partitioning=ds.partitioning(pa.schema([schema.field(c) for c in parts]), flavor="hive")
                      if parts else None, partition_base_dir=str(path))


def _kind(columns: set[str]) -> str:
    if "user_id" in columns:
        return "user"
    if "original" in columns and set(QUARANTINE_KEYS) <= columns:
        return "quarantine"
    if columns & set(LINK_COLUMNS):
        return "linked"
    return "untouched"


def _mentions(patterns: Iterable[re.Pattern[bytes]], data: bytes | str | None) -> bool:
    if data is None:
        return False
    b = data.encode() if isinstance(data, str) else data
    return any(p.search(b) for p in patterns)


def _quote(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"cannot name partition value {value!r} in a predicate")
    return str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"


Match = Callable[[pa.Table], pa.Array]  # a table → which of its rows are the user's


def _matcher(kind: str, columns: set[str], target: Target, links: dict[str, set[str]]
             ) -> tuple[list[str], Match] | None:
    """The columns to read and the row mask of the user's rows in a table of this kind (None: nothing to match).

    Masks are computed in memory, not as dataset filters: files delta-rs rewrites can store strings as
    string_view, which pyarrow cannot compare with a string literal in a pushed-down filter."""
    if kind == "user" and "row" in columns:
        # quality/quarantine: a row quarantined from a table without user_id has a null user_id, and its `row`
        # JSON holds what the user's row held (a dead letter's original bytes with the raw id, a review-queue
        # row's episode id): matched on the pseudonym, the raw id and the user's link ids in that text too
        pats = [*target.patterns, *_standalone(_all_links(links))]
        return ["user_id", "row"], lambda t: pa.array(
            [uid == target.user_id or _mentions(pats, row)
             for uid, row in zip(t.column("user_id").to_pylist(), t.column("row").to_pylist())], pa.bool_())
    if kind == "user":
        return ["user_id"], lambda t: pc.fill_null(pc.equal(t.column("user_id").cast(pa.string()),
                                                            pa.scalar(target.user_id)), False)
    if kind == "quarantine":
        cols = [c for c in RAW_COLUMNS if c in columns]
        return cols, lambda t: pa.array([any(_mentions(target.patterns, v) for v in row)
                                         for row in zip(*(t.column(c).to_pylist() for c in cols))], pa.bool_())
    if kind == "linked":
        present = [c for c in LINK_COLUMNS if c in columns and links.get(c)]
        if not present:
            return None

        def linked(t: pa.Table) -> pa.Array:
            mask = pa.array([False] * t.num_rows, pa.bool_())
            for c in present:
                hit = pc.is_in(t.column(c).cast(pa.string()), value_set=pa.array(sorted(links[c]), pa.string()))
                mask = pc.or_(mask, pc.fill_null(hit, False))
            return mask

        return present, linked
    return None


@dataclass
class _Plan:
    """The user's rows in one table now: how many, and in which partitions (values of the partition columns)."""

    name: str
    path: Path
    kind: str
    rows: int
    partitions: list[dict[str, Any]]
    match: Match | None = None


def _plan(name: str, path: Path, target: Target, links: dict[str, set[str]]) -> _Plan:
    dt = DeltaTable(str(path))
    columns = {f.name for f in dt.schema().fields}
    kind = _kind(columns)
    found = _matcher(kind, columns, target, links)
    if found is None:
        return _Plan(name, path, kind, 0, [])
    cols, match = found
    parts = list(dt.metadata().partition_columns)
    t = _dataset(dt, path).to_table(columns=cols + parts)
    mask = match(t)
    hits = t.filter(mask)
    partitions = [dict(zip(parts, key)) for key in sorted({tuple(r[c] for c in parts) for r in
                                                           hits.select(parts).to_pylist()})] if parts else (
        [{}] if hits.num_rows else [])
    return _Plan(name, path, kind, hits.num_rows, partitions, match)


def _links(tables: list[tuple[str, Path]], target: Target) -> dict[str, set[str]]:
    """The user's session, episode and step ids, read before anything is deleted."""
    links: dict[str, set[str]] = {c: set() for c in LINK_COLUMNS}
    for _, path in tables:
        dt = DeltaTable(str(path))
        columns = {f.name for f in dt.schema().fields}
        present = [c for c in LINK_COLUMNS if c in columns]
        if "user_id" in columns and present:
            t = _dataset(dt, path).to_table(columns=["user_id"] + present)
            t = t.filter(pc.fill_null(pc.equal(t.column("user_id").cast(pa.string()), pa.scalar(target.user_id)),
                                      False))
            for c in present:
                links[c].update(v for v in t.column(c).to_pylist() if v is not None)
    return links


def survey(settings: Settings, target: Target) -> list[TableErasure]:
    """What an erase would delete now (rows per table), changing nothing."""
    tables = delta_tables(settings)
    links = _links(tables, target)
    out = [TableErasure(p.name, p.rows, 0, p.kind) for p in (_plan(n, path, target, links) for n, path in tables)]
    out += [TableErasure(name, rows, 0, "export") for name, rows in _export_files(settings, target, dry_run=True)]
    return out


# ---- deleting with retries ---------------------------------------------------------------------------------
def _retrying(action: Callable[[], Any], attempts: int, what: str, progress: Progress) -> Any:
    """Run `action`, retrying when a concurrent writer (the stream sink, compaction) committed first."""
    for attempt in range(attempts):
        try:
            return action()
        except (CommitFailedError, DeltaError) as exc:
            conflict = isinstance(exc, CommitFailedError) or any(
                w in str(exc).lower() for w in ("conflict", "concurrent", "already exists"))
            if not conflict or attempt == attempts - 1:
                raise
            progress(f"{what}: a concurrent commit won, retrying ({attempt + 1}/{attempts - 1})")
            time.sleep(min(0.1 * 2 ** attempt, 3.0) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _rewrite_partition(path: Path, partition: dict[str, Any], match: Match) -> int:
    """Replace one partition (the whole table when unpartitioned) with its rows minus the user's, in one commit
    that reads and replaces exactly that partition, so a writer appending to it meanwhile makes the commit fail
    (and retry) instead of losing its rows. Returns the rows dropped.

    Why not DELETE: its predicate (the pseudonym) would be written into the log, and the files it rewrites store
    strings as string_view, which the lake's pyarrow readers then cannot filter."""
    dt = DeltaTable(str(path))
    data = _dataset(dt, path)
    where = None
    for col, value in partition.items():
        cond = ds.field(col) == value
        where = cond if where is None else where & cond
    t = data.to_table(filter=where)
    mask = match(t)
    dropped = pc.sum(mask).as_py() or 0
    if dropped:
        predicate = " AND ".join(f"{c} = {_quote(v.isoformat() if hasattr(v, 'isoformat') else v)}"
                                 for c, v in partition.items()) or None
        write_deltalake(dt, t.filter(pc.invert(mask)), mode="overwrite", predicate=predicate,
                        partition_by=list(partition) or None)
    return dropped


def _delete(plan: _Plan, target: Target, links: dict[str, set[str]], attempts: int, progress: Progress) -> int:
    """Drop the user's rows partition by partition until the table holds none (a writer may add some meanwhile)."""
    deleted = 0
    for _ in range(attempts):
        assert plan.match is not None
        for part in plan.partitions:
            deleted += _retrying(lambda: _rewrite_partition(plan.path, part, plan.match), attempts,
                                 f"deleting from {plan.name}", progress)
        plan = _plan(plan.name, plan.path, target, links)
        if plan.rows == 0:
            break
    return deleted


def erase_user(settings: Settings, target: Target, progress: Progress = lambda _: None,
               attempts: int = 8) -> LakeErasure:
    """Delete the user's rows from every table and export file, vacuum the files that held them, and scrub the
    Delta log of every touched table so no commit, checkpoint or file statistic names the user.

    Holds the erase lock for the whole run (`lake.locks.erasing`): it waits for the jobs runs and exports in
    flight, and those that start meanwhile wait for it, so none writes back rows it read before the erase."""
    with erasing(settings.lake, progress):
        return _erase_user(settings, target, progress, attempts)


def _erase_user(settings: Settings, target: Target, progress: Progress, attempts: int) -> LakeErasure:
    tables = delta_tables(settings)
    progress(f"looking for the user's rows in {len(tables)} tables")
    links = _links(tables, target)
    result = LakeErasure()
    for name, path in tables:
        plan = _plan(name, path, target, links)
        done = TableErasure(name, 0, 0, plan.kind)
        if plan.rows:
            progress(f"{name}: deleting {plan.rows} rows")
            done.rows_deleted = _delete(plan, target, links, attempts, progress)
        log_mentions = _log_mentions(path, target.patterns, set())
        # vacuum and scrub the log where rows went, and where an earlier, interrupted erase left the log dirty
        if done.rows_deleted or log_mentions:
            progress(f"{name}: vacuuming and scrubbing the Delta log")
            done.files_removed = _vacuum(path, attempts, progress)
            done.files_removed += _remove_orphans(path, target, result)
            _scrub_log(path, target.patterns, _all_links(links))
            result.residual += [str(p) for p in _log_mentions(path, target.patterns, set())]
        result.tables.append(done)
    for name, rows in _export_files(settings, target, dry_run=False, residual=result.residual):
        result.tables.append(TableErasure(name, rows, 1, "export"))
    return result


def _all_links(links: dict[str, set[str]]) -> set[str]:
    return set().union(*links.values())


def _vacuum(path: Path, attempts: int, progress: Progress) -> int:
    """VACUUM with the retention override, for erase only: the removed files go now, not after 7 days.

    Lite mode (full=False) deletes only files the log has removed; files a concurrent writer has written but not
    yet committed are not in the log at all, and full mode would delete them from under it."""
    removed = _retrying(lambda: DeltaTable(str(path)).vacuum(
        retention_hours=0, enforce_retention_duration=False, dry_run=False, full=False), attempts,
        f"vacuuming {path.name}", progress)
    # Lite mode misses files removed before the latest checkpoint's memory (a checkpoint forgets removals older
    # than delta.deletedFileRetentionDuration): those are in no commit, so full mode deletes them, but only when
    # older than ORPHAN_MIN_AGE_S (rounded up to the hour delta-rs counts in), so that no writer can be about to
    # commit them. Younger unreferenced files are `_remove_orphans`' (when they hold the user).
    hours = math.ceil(ORPHAN_MIN_AGE_S / 3600)
    old = _retrying(lambda: DeltaTable(str(path)).vacuum(
        retention_hours=hours, enforce_retention_duration=False, dry_run=False, full=True), attempts,
        f"vacuuming {path.name}'s forgotten files", progress)
    return len(removed) + len(old)


def _remove_orphans(path: Path, target: Target, result: LakeErasure) -> int:
    """Data files no commit references (a writer that crashed between writing and committing) that hold the user:
    deleted when old enough that no writer can still be about to commit them, reported otherwise."""
    dt = DeltaTable(str(path))
    live = {Path(u.removeprefix("file://")).resolve() for u in dt.file_uris()}
    removed = 0
    for f in path.rglob("*.parquet"):
        if "_delta_log" in f.parts or f.resolve() in live or not _parquet_mentions(f, target):
            continue
        if time.time() - f.stat().st_mtime >= ORPHAN_MIN_AGE_S:
            f.unlink()
            removed += 1
        else:
            result.residual.append(str(f))
    return removed


def _parquet_mentions(f: Path, target: Target) -> bool:
    try:
        t = pq.read_table(f)
    except (OSError, pa.ArrowInvalid):
        return False
    if "user_id" in t.column_names and target.user_id in set(t.column("user_id").to_pylist()):
        return True
    return any(_mentions(target.patterns, v) for c in RAW_COLUMNS if c in t.column_names
               for v in t.column(c).to_pylist())


# ---- the Delta log ---------------------------------------------------------------------------------------
def _log_version(f: Path) -> int | None:
    head = f.name.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _standalone(values: Iterable[str]) -> list[re.Pattern[bytes]]:
    """Patterns for literal values (session ids a predicate named), matched only where they stand alone."""
    vs = sorted({v for v in values if v}, key=len, reverse=True)
    return [re.compile(rb"(?<![A-Za-z0-9_-])(?:" + b"|".join(re.escape(v.encode()) for v in vs[i:i + 500]) +
                       rb")(?![A-Za-z0-9_-])") for i in range(0, len(vs), 500)]


def _log_mentions(path: Path, patterns: tuple[re.Pattern[bytes], ...], needles: set[str]) -> list[Path]:
    """Log files (commits, checkpoints, checksums) that still name the user or one of the deleted values."""
    patterns = (*patterns, *_standalone(needles))
    out = []
    log = path / "_delta_log"
    if not log.is_dir():
        return out
    for f in sorted(log.iterdir()):
        if not f.is_file():
            continue
        data = f.read_bytes()
        if f.suffix == ".parquet":
            try:
                data = orjson.dumps(pq.read_table(f).to_pylist(), default=str)
            except (OSError, pa.ArrowInvalid):
                pass
        if any(p.search(data) for p in patterns):
            out.append(f)
    return out


def _scrub_log(path: Path, patterns: tuple[re.Pattern[bytes], ...], needles: set[str]) -> None:
    """Leave no trace of the user in the log.

    Commits before the erase carry the user in file statistics (min/max of user_id) and the delete commit carries
    the predicate. A checkpoint at the current version holds the whole table state, so: write one, drop older
    checkpoints and checksum files, and rewrite older commits without the statistics and predicates that name
    the user. Commit files are rewritten in place, never deleted: a writer that read an older version commits
    by creating the next file only if it does not exist, so a deleted commit file could be silently re-created.
    """
    dt = DeltaTable(str(path))
    dt.create_checkpoint()
    version = dt.version()
    patterns = (*patterns, *_standalone(needles))

    def names_user(text: str) -> bool:
        b = text.encode()
        return any(p.search(b) for p in patterns)

    log = path / "_delta_log"
    for f in sorted(log.iterdir()):
        v = _log_version(f)
        if v is None or not f.is_file() or v > version:
            continue
        if (".checkpoint." in f.name and v < version) or f.suffix == ".crc":
            f.unlink()  # optional files: the checkpoint at `version` supersedes them
        elif f.suffix == ".json" and names_user(f.read_text()):
            lines = [_scrub_action(line, names_user) for line in f.read_text().splitlines() if line.strip()]
            tmp = log / f".erase-{uuid.uuid4().hex}.tmp"
            tmp.write_text("\n".join(lines) + "\n")
            os.replace(tmp, f)  # atomic: a reader sees the old or the new commit, never half of one


def _scrub_action(line: str, names_user: Callable[[str], bool]) -> str:
    if not names_user(line):
        return line
    action = json.loads(line)
    for kind in ("add", "remove", "cdc"):
        if kind in action:
            action[kind].pop("stats", None)  # optional; only data skipping of an old version uses it
            action[kind].pop("stats_parsed", None)
    info = action.get("commitInfo")
    if info:
        params = info.get("operationParameters") or {}
        for k, v in params.items():
            if names_user(json.dumps(v, ensure_ascii=False)):
                params[k] = ERASED
    return json.dumps(action, separators=(",", ":"), ensure_ascii=False)


# ---- export files that are not Delta tables --------------------------------------------------------------
def _export_files(settings: Settings, target: Target, dry_run: bool,
                  residual: list[str] | None = None) -> list[tuple[str, int]]:
    """Rows of the user in plain export files under <lake>/exports (JSON Lines, Parquet); rewritten without them.

    A manifest's checksums of a rewritten file no longer match: the export job must re-issue that export."""
    root = settings.lake / "exports"
    out: list[tuple[str, int]] = []
    if not root.is_dir():
        return out
    delta_dirs = [p for _, p in delta_tables(settings)]
    for f in sorted(root.rglob("*")):
        if not f.is_file() or any(f.is_relative_to(d) for d in delta_dirs):
            continue
        name = f.relative_to(settings.lake).as_posix()
        if f.suffix == ".parquet":
            t = pq.read_table(f)
            if "user_id" not in t.column_names:
                if _parquet_mentions(f, target) and residual is not None:
                    residual.append(str(f))
                continue
            keep = pc.not_equal(t.column("user_id"), pa.scalar(target.user_id))
            keep = pc.fill_null(keep, True)
            rows = t.num_rows - pc.sum(keep).as_py() if t.num_rows else 0
            if rows and not dry_run:
                _atomic(f, lambda tmp: pq.write_table(t.filter(keep), tmp))
        elif f.suffix in EXPORT_TEXT:
            lines = f.read_bytes().splitlines(keepends=True)
            kept = [ln for ln in lines if not _mentions(target.patterns, ln)]
            rows = len(lines) - len(kept)
            if rows and not dry_run:
                _atomic(f, lambda tmp: tmp.write_bytes(b"".join(kept)))
        else:
            if _mentions(target.patterns, f.read_bytes()) and residual is not None:
                residual.append(str(f))
            continue
        if rows:
            out.append((name, rows))
    return out


def _atomic(f: Path, write: Callable[[Path], None]) -> None:
    tmp = f.with_name(f".erase-{uuid.uuid4().hex}.tmp")
    write(tmp)
    os.replace(tmp, f)


# ---- the audit table ---------------------------------------------------------------------------------------
def append_audit(settings: Settings, row: dict[str, Any], attempts: int = 8) -> int:
    """Append one audit/erasures row (retrying on a concurrent commit); returns the table version."""
    table = ensure_table(settings, AUDIT_ERASURES)
    batch = pa.Table.from_pylist([row], schema=AUDIT_ERASURES.schema)
    path = table_path(settings, AUDIT_ERASURES)
    _retrying(lambda: write_deltalake(DeltaTable(str(path)), batch, mode="append"), attempts, "auditing",
              lambda _: None)
    table.update_incremental()
    return table.version()


def audited(settings: Settings, subject: str) -> int:
    """How many earlier erasures the audit table holds for `subject` (its digest)."""
    try:
        dt = DeltaTable(str(table_path(settings, AUDIT_ERASURES)))
    except TableNotFoundError:
        return 0
    subjects = _dataset(dt, table_path(settings, AUDIT_ERASURES)).to_table(columns=["subject"]).column("subject")
    return subjects.to_pylist().count(subject)
