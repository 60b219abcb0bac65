"""Where each declared table lives under the lake root, and creating it with its declared schema."""
from __future__ import annotations

from pathlib import Path

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from schemas.settings import Settings
from schemas.tables import TABLES, TableSpec

# delta-rs and Spark both read and write these tables; no deletion vectors, append-friendly defaults
TABLE_CONFIGURATION = {
    "delta.enableDeletionVectors": "false",
    "delta.appendOnly": "false",
}


class UnknownTable(KeyError):
    def __str__(self) -> str:
        return f"no table {self.args[0]!r}; known tables: {', '.join(TABLES)}"


def spec(table_id: str) -> TableSpec:
    try:
        return TABLES[table_id.replace(".", "/")]
    except KeyError:
        raise UnknownTable(table_id) from None


def table_path(settings: Settings, table: TableSpec | str) -> Path:
    t = spec(table) if isinstance(table, str) else table
    return settings.lake / t.layer / t.name


def open_table(settings: Settings, table: TableSpec | str, version: int | None = None) -> DeltaTable | None:
    """The Delta table, or None when nothing has been written yet."""
    path = table_path(settings, table)
    try:
        return DeltaTable(str(path), version=version)
    except TableNotFoundError:
        return None


def ensure_table(settings: Settings, table: TableSpec | str) -> DeltaTable:
    """Open the table, creating it empty with its declared schema and partitioning if it does not exist."""
    t = spec(table) if isinstance(table, str) else table
    existing = open_table(settings, t)
    if existing is not None:
        return existing
    path = table_path(settings, t)
    path.mkdir(parents=True, exist_ok=True)
    return DeltaTable.create(str(path), schema=t.schema, partition_by=list(t.partition_by) or None,
                             mode="ignore", name=t.name, description=t.description,
                             configuration=TABLE_CONFIGURATION)
