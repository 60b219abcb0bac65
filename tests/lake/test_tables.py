"""Tables on disk must match their declaration: an older lake is refused with a message naming the fix."""
import datetime as dt
import subprocess
import sys

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from lake.readers import read_table
from lake.tables import SchemaMismatch, add_missing_columns, ensure_table, schema_mismatches, table_path
from schemas.tables import BRONZE_EVENTS, SILVER_EPISODES
from tests.conftest import REPO, settings_env
from tests.jobs.test_tables import a_row

pytestmark = pytest.mark.component


def test_a_table_from_an_older_schema_is_refused(lake_settings):
    old = pa.schema([f for f in BRONZE_EVENTS.schema if f.name not in ("policy_version", "user_ref")])
    path = table_path(lake_settings, BRONZE_EVENTS)
    path.mkdir(parents=True)
    DeltaTable.create(str(path), schema=old, partition_by=["date"])
    with pytest.raises(SchemaMismatch) as exc:
        ensure_table(lake_settings, BRONZE_EVENTS)
    msg = str(exc.value)
    assert "missing columns: policy_version, user_ref" in msg and "trajlake migrate" in msg and "docs/design.md" in msg
    assert [m.table_id for m in schema_mismatches(lake_settings)] == ["bronze/events"]


def test_a_table_of_the_declared_schema_opens(lake_settings):
    ensure_table(lake_settings, BRONZE_EVENTS)
    assert ensure_table(lake_settings, BRONZE_EVENTS).version() == 0
    assert schema_mismatches(lake_settings) == []


def test_migrate_adds_the_missing_columns_and_keeps_the_rows(lake_settings):
    new = ("repeat_of_task_id", "outcome_at", "opted_out_at")
    old = pa.schema([f for f in SILVER_EPISODES.schema if f.name not in new])
    path = table_path(lake_settings, SILVER_EPISODES)
    path.mkdir(parents=True)
    DeltaTable.create(str(path), schema=old, partition_by=["date"])
    write_deltalake(str(path), pa.Table.from_pylist([a_row(SILVER_EPISODES)], schema=old), mode="append")
    assert add_missing_columns(lake_settings, SILVER_EPISODES, dry_run=True) == list(new)
    assert DeltaTable(str(path)).version() == 1  # a dry run changes nothing
    assert add_missing_columns(lake_settings, SILVER_EPISODES) == list(new)
    ensure_table(lake_settings, SILVER_EPISODES)  # the declared schema now
    rows = read_table(lake_settings, SILVER_EPISODES).to_pylist()
    assert len(rows) == 1 and rows[0]["episode_id"] == "x" and all(rows[0][c] is None for c in new)
    # the sink's rows, with the new columns, append to it
    write_deltalake(str(path), pa.Table.from_pylist([a_row(SILVER_EPISODES)], schema=SILVER_EPISODES.schema),
                    mode="append")
    assert len(read_table(lake_settings, SILVER_EPISODES)) == 2
    assert add_missing_columns(lake_settings, SILVER_EPISODES) == []  # a rerun adds nothing


def test_migrate_refuses_a_table_it_cannot_migrate_with_one_line(lake_settings):
    odd = pa.schema([*BRONZE_EVENTS.schema, pa.field("something_else", pa.string())])
    path = table_path(lake_settings, BRONZE_EVENTS)
    path.mkdir(parents=True)
    DeltaTable.create(str(path), schema=odd, partition_by=["date"])
    with pytest.raises(SchemaMismatch, match="columns no longer declared: something_else"):
        add_missing_columns(lake_settings, BRONZE_EVENTS)
    r = subprocess.run([sys.executable, "-m", "trajlake.cli", "migrate"], capture_output=True, text=True, cwd=REPO,
                       env=settings_env(lake_settings))
    assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout
    assert "something_else" in r.stderr + r.stdout and "migrate adds columns only" in r.stderr + r.stdout


def test_a_job_on_a_lake_not_yet_migrated_names_the_fix(lake_settings):
    """The jobs select the declared silver columns: on an older table Spark failed deep in its plan with an
    unresolved column; the input's schema is checked first and names `trajlake migrate`."""
    from jobs.tables import read_window

    old = pa.schema([f for f in SILVER_EPISODES.schema if f.name != "opted_out_at"])
    path = table_path(lake_settings, SILVER_EPISODES)
    path.mkdir(parents=True)
    DeltaTable.create(str(path), schema=old, partition_by=["date"])
    with pytest.raises(SchemaMismatch, match="missing columns: opted_out_at.*trajlake migrate"):
        read_window(None, lake_settings, SILVER_EPISODES, dt.date(2026, 11, 2), dt.date(2026, 11, 3))
