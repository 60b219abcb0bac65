"""DuckDB over the lake: every declared Delta table registered as a view (latest, or pinned per table)."""
from __future__ import annotations

from typing import Mapping

import duckdb

from lake.readers import table_dataset
from schemas.settings import Settings
from schemas.tables import TABLES


def view_name(table_id: str) -> str:
    """bronze/events → bronze_events."""
    return table_id.replace("/", "_")


def connect(settings: Settings, as_of: Mapping[str, int] | None = None,
            con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per lake table (DuckDB's delta extension is not needed).

    `as_of` pins tables to Delta versions, e.g. {"silver/steps": 12}.
    """
    con = con or duckdb.connect()
    as_of = dict(as_of or {})
    unknown = set(as_of) - set(TABLES)
    if unknown:
        raise KeyError(f"unknown table(s) {sorted(unknown)}; known: {', '.join(TABLES)}")
    for table_id in TABLES:
        con.register(view_name(table_id), table_dataset(settings, table_id, as_of.get(table_id)))
    return con
