"""Compaction of the stream sinks' small files, one closed date partition at a time."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from lake.tables import open_table
from schemas.settings import Settings
from schemas.tables import TableSpec

TARGET_FILE_BYTES = 128 * 1024 * 1024


@dataclass
class Compacted:
    table: str
    partitions: list[str] = field(default_factory=list)
    files_removed: int = 0
    files_added: int = 0


def small_file_partitions(settings: Settings, spec: TableSpec, before: date, min_files: int) -> dict[str, int]:
    """Date partitions older than `before` holding at least `min_files` files: date → file count."""
    dt = open_table(settings, spec)
    if dt is None or "date" not in spec.partition_by:
        return {}
    counts: dict[str, int] = {}
    for d in dt.get_add_actions(flatten=True).column("partition.date").to_pylist():
        key = d.isoformat() if isinstance(d, date) else str(d)
        counts[key] = counts.get(key, 0) + 1
    return {d: n for d, n in sorted(counts.items()) if d < before.isoformat() and n >= min_files}


def compact_closed_partitions(settings: Settings, spec: TableSpec, *, closed_after_days: int = 1,
                              min_files: int = 8, now: datetime | None = None) -> Compacted:
    """Rewrite each closed partition's small files into few large ones (delta-rs OPTIMIZE, bin-packing).

    A partition is closed when its date is more than `closed_after_days` before today (UTC): the sinks still
    append late events to it now and then, which is safe (OPTIMIZE only removes the files it read, and appends
    commute with it), it only means a later pass finds a few new small files. The table's data and its app
    transactions (the sinks' exactly-once offsets) are untouched; time travel to earlier versions still works.
    """
    today = (now or datetime.now(timezone.utc)).date()
    out = Compacted(spec.id)
    todo = small_file_partitions(settings, spec, today - timedelta(days=closed_after_days), min_files)
    for d in todo:
        dt = open_table(settings, spec)
        metrics = dt.optimize.compact(partition_filters=[("date", "=", d)], target_size=TARGET_FILE_BYTES)
        out.partitions.append(d)
        out.files_removed += int(metrics.get("numFilesRemoved", 0))
        out.files_added += int(metrics.get("numFilesAdded", 0))
    return out
