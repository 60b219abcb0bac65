"""Where each declared table lives under the lake root, and creating it with its declared schema."""
from __future__ import annotations

from pathlib import Path

from deltalake import DeltaTable, Schema
from deltalake.exceptions import TableNotFoundError

from schemas.settings import Settings
from schemas.tables import TABLES, TableSpec

# delta-rs and Spark both read and write these tables; no deletion vectors, append-friendly defaults
TABLE_CONFIGURATION = {
    "delta.enableDeletionVectors": "false",
    "delta.appendOnly": "false",
}


class SchemaMismatch(Exception):
    """A table on disk was created with another version of its declared schema."""

    def __init__(self, table_id: str, path: Path, missing: list[str], extra: list[str], changed: list[str]):
        self.table_id, self.path, self.missing, self.extra, self.changed = table_id, path, missing, extra, changed
        super().__init__(table_id)

    def __str__(self) -> str:
        what = "; ".join(f"{label}: {', '.join(cols)}" for label, cols in (
            ("missing columns", self.missing), ("columns no longer declared", self.extra),
            ("columns of another type", self.changed)) if cols)
        return (f"{self.table_id} at {self.path} has an older schema ({what}) — see 'Schema changes' in "
                f"docs/design.md; for a demo or test lake, remove it (rm -rf {self.path.parent.parent}) and replay")


def schema_differences(table: DeltaTable, t: TableSpec) -> tuple[list[str], list[str], list[str]]:
    """(missing, extra, changed) columns of a table on disk against its declaration. Nullability is not compared:
    Spark may relax NOT NULL when it writes, and a looser column still holds every declared row."""
    have = {f.name: f.type for f in table.schema().fields}
    want = {f.name: f.type for f in Schema.from_arrow(t.schema).fields}
    return ([c for c in want if c not in have], [c for c in have if c not in want],
            [c for c in want if c in have and have[c] != want[c]])


def check_schema(table: DeltaTable, t: TableSpec, path: Path) -> None:
    missing, extra, changed = schema_differences(table, t)
    if missing or extra or changed:
        raise SchemaMismatch(t.id, path, missing, extra, changed)


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
    """Open the table, creating it empty with its declared schema and partitioning if it does not exist.

    A table created from an older declaration is refused (SchemaMismatch) rather than written with rows it
    cannot hold: schema changes are deliberate and listed in docs/design.md."""
    t = spec(table) if isinstance(table, str) else table
    existing = open_table(settings, t)
    if existing is not None:
        check_schema(existing, t, table_path(settings, t))
        return existing
    path = table_path(settings, t)
    path.mkdir(parents=True, exist_ok=True)
    return DeltaTable.create(str(path), schema=t.schema, partition_by=list(t.partition_by) or None,
                             mode="ignore", name=t.name, description=t.description,
                             configuration=TABLE_CONFIGURATION)


def schema_mismatches(settings: Settings) -> list[SchemaMismatch]:
    """Declared tables on disk whose schema is not the declared one (checked before a worker starts writing)."""
    out = []
    for t in TABLES.values():
        existing = open_table(settings, t)
        if existing is not None:
            try:
                check_schema(existing, t, table_path(settings, t))
            except SchemaMismatch as exc:
                out.append(exc)
    return out
