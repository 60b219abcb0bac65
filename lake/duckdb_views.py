"""DuckDB over the lake: every declared Delta table registered as a view (latest, or pinned per table)."""
from __future__ import annotations

from typing import Mapping
from urllib.parse import unquote, urlparse

import duckdb
import pyarrow as pa

from lake.readers import readable_table, table_dataset
from lake.tables import spec
from schemas.settings import Settings
from schemas.tables import TABLES, TableSpec


def view_name(table_id: str) -> str:
    """bronze/events → bronze_events."""
    return table_id.replace("/", "_")


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def native_view_sql(con: duckdb.DuckDBPyConnection, settings: Settings, t: TableSpec,
                    version: int | None) -> str | None:
    """A SELECT reading the table's live parquet files (from the Delta log at `version`) with DuckDB's own parquet
    reader, every declared column in order and type; None when the table must be read through its pyarrow
    dataset instead (not written yet, no files, files not on the local disk or with glob characters in their
    paths, or partition values the paths URL-encode). A table or version neither can read is refused
    (`lake.readers.readable_table`).

    Why: DuckDB's reader filters before it decodes the other columns; pyarrow's dataset decodes every projected
    column of a row group and then filters: 0.36–0.57 of the time on the 1M lake's queries (bench/duckdb_views.py,
    bench/RESULTS.md)."""
    dt = readable_table(settings, t, version)
    if dt is None:
        return None
    uris = [urlparse(f) for f in dt.file_uris()]
    if not uris or any(u.scheme not in ("", "file") for u in uris):
        return None
    files = [unquote(u.path) if u.scheme else u.geturl() for u in uris]
    if any(ch in f for f in files for ch in "*?[{"):   # read_parquet would take them for globs
        return None
    # partition values come from the file paths (hive style, as delta-rs and Spark write them): only when every
    # path spells its logged values plainly (nothing URL-encoded, no nulls)
    actions = pa.table(dt.get_add_actions(flatten=True))
    segments = [p.split("/") for p in actions.column("path").to_pylist()]
    for c in t.partition_by:
        values = actions.column(f"partition.{c}").to_pylist()
        if any(v is None or f"{c}={v}" not in segs or "%" in str(v) for v, segs in zip(values, segments)):
            return None
    declared = con.from_arrow(t.schema.empty_table())
    types = dict(zip(declared.columns, map(str, declared.types)))
    hive = ", ".join(f"{_quote(c)}: {_quote(types[c])}" for c in t.partition_by)
    partitioning = f"hive_partitioning = true, hive_types = {{{hive}}}" if t.partition_by else "hive_partitioning = false"
    source = f"read_parquet([{', '.join(map(_quote, files))}], union_by_name = true, {partitioning})"
    present = set(con.sql(f"SELECT * FROM {source} LIMIT 0").columns)
    cols = []
    for name, typ in zip(declared.columns, declared.types):
        ident = '"' + name.replace('"', '""') + '"'
        # files older than a column hold no value for it (what the pyarrow dataset gives too: null)
        cols.append(f"CAST({ident} AS {typ}) AS {ident}" if name in present else f"CAST(NULL AS {typ}) AS {ident}")
    return f"SELECT {', '.join(cols)} FROM {source}"


def connect(settings: Settings, as_of: Mapping[str, int] | None = None,
            con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per lake table (DuckDB's delta extension is not needed): the table's
    live files at its version, read by DuckDB's parquet reader where it can (`native_view_sql`), else through
    the pyarrow dataset of lake/readers.py.

    `as_of` pins tables to Delta versions, e.g. {"silver/steps": 12}. Times are shown and cast in UTC, the lake's
    zone (`SET TimeZone` on the connection to see another).
    """
    con = con or duckdb.connect()
    as_of = dict(as_of or {})
    unknown = set(as_of) - set(TABLES)
    if unknown:
        raise KeyError(f"unknown table(s) {sorted(unknown)}; known: {', '.join(TABLES)}")
    # a view's footers are read again by every query that binds it; cached, they are read once
    con.execute("SET parquet_metadata_cache = true").fetchall()
    # the lake's days are UTC days (the `date` partitions, Spark's session, the scorecards' periods, the exports'
    # windows): in the machine's zone, `ts::DATE` and date_trunc disagreed with `date` and gold, and one query gave
    # other counts on another machine (found in review: 35/165 episodes per day in UTC, 69/131 in New York time)
    con.execute("SET TimeZone = 'UTC'").fetchall()
    for table_id in TABLES:
        version = as_of.get(table_id)
        sql = native_view_sql(con, settings, spec(table_id), version)
        con.execute(f"DROP VIEW IF EXISTS {view_name(table_id)}").fetchall()   # either kind, from an earlier call
        if sql is None:
            con.register(view_name(table_id), table_dataset(settings, table_id, version))
        else:
            con.execute(f"CREATE OR REPLACE TEMP VIEW {view_name(table_id)} AS {sql}").fetchall()
    return con
