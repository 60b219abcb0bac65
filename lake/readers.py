"""Readers for analysts and training jobs: a table at its latest or a pinned Delta version, as Arrow or pandas."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from lake.tables import UnreadableTable, open_table, spec, table_path
from schemas.settings import Settings
from schemas.tables import TableSpec

# reader features that make a table's parquet files alone an incomplete picture of its rows: trajlake writes
# neither (lake/tables.py TABLE_CONFIGURATION), another writer could turn them on
NEEDS_DELTA_READER = {"deletionVectors", "columnMapping"}


def readable_table(settings: Settings, t: TableSpec, version: int | None = None) -> DeltaTable | None:
    """The table at `version` (latest when None), whose live files read as plain parquet give its rows; None when
    it has never been written and no version is pinned (it reads as empty).

    Refused (UnreadableTable) rather than read wrong: a protocol with deletion vectors or column mapping, where
    plain parquet reads bring deleted rows back or read every column as null (no error, found in review); a
    pinned version the table never had, or whose files are gone (removed by `trajlake vacuum` once older than
    TRAJLAKE_VACUUM_RETENTION_HOURS), which pyarrow and DuckDB report as a missing file with no cause; a pin on a
    table never written, which read as empty."""
    try:
        dt = open_table(settings, t, version)
    except DeltaError as exc:
        if version is None:
            raise
        latest = open_table(settings, t)
        have = f"its latest is {latest.version()}" if latest is not None else "it has none"
        raise UnreadableTable(f"{t.id} has no version {version} ({have}; `trajlake status` lists each table's "
                              f"latest): {str(exc).splitlines()[0]}") from None
    if dt is None:
        if version is not None:
            raise UnreadableTable(f"{t.id} has never been written: there is no version {version} of it to pin; "
                                  "drop the pin to read it as empty")
        return None
    features = NEEDS_DELTA_READER & set(dt.protocol().reader_features or ())
    if dt.metadata().configuration.get("delta.columnMapping.mode", "none") != "none":
        features.add("columnMapping")
    if features:
        raise UnreadableTable(
            f"{t.id} at {table_path(settings, t)} uses {' and '.join(sorted(features))}, which trajlake's readers "
            "do not apply (they read the live parquet files as they are, and would return deleted rows or null "
            "columns): another writer turned them on. Rewrite the table without them (Spark with delta-spark: "
            "REORG TABLE … APPLY (PURGE) for deletion vectors; a new table for column mapping), then read it again")
    if version is not None:
        uris = [urlparse(u) for u in dt.file_uris()]
        gone = [u for u in uris if u.scheme in ("", "file") and not Path(unquote(u.path)).exists()]
        if gone:
            raise UnreadableTable(
                f"{t.id} version {version}: {len(gone):,} of its {len(uris):,} files are gone (removed by `trajlake "
                "vacuum` once older than TRAJLAKE_VACUUM_RETENTION_HOURS, or by hand); that version can no longer "
                f"be read. Pin a later version (the latest is {open_table(settings, t).version()})")
    return dt


def table_dataset(settings: Settings, table: TableSpec | str, version: int | None = None) -> ds.Dataset:
    """A pyarrow Dataset of the table's live files at `version` (latest when None).

    The file list comes from the Delta log (delta-rs); the scan is pyarrow's own over the local
    filesystem. This avoids delta-rs's Python filesystem bridge, whose scanner threads can abort the
    interpreter at exit (delta-rs#2184, arrow#34314), and lets DuckDB push filters into the scan.
    """
    t = spec(table) if isinstance(table, str) else table
    dt = readable_table(settings, t, version)
    if dt is None:
        return ds.dataset(pa.table({f.name: pa.array([], f.type) for f in t.schema}, schema=t.schema))
    return files_dataset(settings, t, dt.file_uris())


def files_dataset(settings: Settings, t: TableSpec, uris: list[str]) -> ds.Dataset:
    """A pyarrow Dataset of some of a table's files (URIs as delta-rs lists them), partition columns included."""
    part_schema = pa.schema([t.schema.field(c) for c in t.partition_by])
    return ds.dataset(
        uris, schema=t.schema, format="parquet",
        partitioning=ds.partitioning(part_schema, flavor="hive") if t.partition_by else None,
        partition_base_dir=str(table_path(settings, t)),
    )


def row_count(settings: Settings, t: TableSpec, dt: DeltaTable) -> int:
    """The rows of `dt` at its version: from the Delta log's per-file record counts, or by counting the files when
    a file has none logged. The same version as `dt`, which opening the table again need not be."""
    counts = pa.table(dt.get_add_actions(flatten=True)).column("num_records")
    if counts.null_count == 0:
        return sum(counts.to_pylist())
    return files_dataset(settings, t, dt.file_uris()).count_rows()


def read_table(settings: Settings, table: TableSpec | str, version: int | None = None,
               columns: list[str] | None = None, filter: ds.Expression | None = None) -> pa.Table:
    """The table (or some columns, filtered) as one Arrow table."""
    return table_dataset(settings, table, version).to_table(columns=columns, filter=filter)


def table_version(settings: Settings, table: TableSpec | str) -> int | None:
    dt = open_table(settings, table)
    return None if dt is None else dt.version()
