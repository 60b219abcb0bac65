"""Readers for analysts and training jobs: a table at its latest or a pinned Delta version, as Arrow or pandas."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as ds

from lake.tables import open_table, spec, table_path
from schemas.settings import Settings
from schemas.tables import TableSpec


def table_dataset(settings: Settings, table: TableSpec | str, version: int | None = None) -> ds.Dataset:
    """A pyarrow Dataset of the table's live files at `version` (latest when None).

    The file list comes from the Delta log (delta-rs); the scan is pyarrow's own over the local
    filesystem. This avoids delta-rs's Python filesystem bridge, whose scanner threads can abort the
    interpreter at exit (delta-rs#2184, arrow#34314), and lets DuckDB push filters into the scan.
    """
    t = spec(table) if isinstance(table, str) else table
    dt = open_table(settings, t, version)
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


def read_table(settings: Settings, table: TableSpec | str, version: int | None = None,
               columns: list[str] | None = None, filter: ds.Expression | None = None) -> pa.Table:
    """The table (or some columns, filtered) as one Arrow table."""
    return table_dataset(settings, table, version).to_table(columns=columns, filter=filter)


def table_version(settings: Settings, table: TableSpec | str) -> int | None:
    dt = open_table(settings, table)
    return None if dt is None else dt.version()
