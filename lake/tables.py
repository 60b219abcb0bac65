"""Where each declared table lives under the lake root, creating it with its declared schema, and adding the
columns a newer declaration has to a table on disk."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Schema
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
        if self.missing and not self.extra and not self.changed:
            return (f"{self.table_id} at {self.path} has an older schema ({what}): run `trajlake migrate` to add "
                    "them (null in the rows written before; 'Schema changes' in docs/design.md says what to rerun)")
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


class UnreadableTable(Exception):
    """A table, or a pinned version of it, whose rows trajlake's readers cannot give (`lake.readers.readable_table`):
    the message names the table, why, and what to do."""


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


def add_missing_columns(settings: Settings, t: TableSpec, dry_run: bool = False) -> list[str]:
    """Add the declared columns a table on disk lacks, as nullable columns (null in the rows written before), in
    one commit; the names added. Only additions: a table with extra or retyped columns is refused (SchemaMismatch),
    since no rewrite can be right for every such change. Nullability is not compared (`schema_differences`), so a
    NOT NULL column added here passes every check and the jobs fill it when they rerun the window."""
    table = open_table(settings, t)
    if table is None:
        return []
    missing, extra, changed = schema_differences(table, t)
    if extra or changed:
        raise SchemaMismatch(t.id, table_path(settings, t), missing, extra, changed)
    if missing and not dry_run:
        fields = pa.schema([t.schema.field(name).with_nullable(True) for name in missing])
        table.alter.add_columns(list(Schema.from_arrow(fields).fields),
                                commit_properties=CommitProperties(custom_metadata={"trajlake.migrate": "add columns"}))
    return missing
