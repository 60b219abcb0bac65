"""Tables on disk must match their declaration: an older lake is refused with a message naming the fix."""
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lake.tables import SchemaMismatch, ensure_table, schema_mismatches, table_path
from schemas.tables import BRONZE_EVENTS

pytestmark = pytest.mark.component


def test_a_table_from_an_older_schema_is_refused(lake_settings):
    old = pa.schema([f for f in BRONZE_EVENTS.schema if f.name not in ("policy_version", "user_ref")])
    path = table_path(lake_settings, BRONZE_EVENTS)
    path.mkdir(parents=True)
    DeltaTable.create(str(path), schema=old, partition_by=["date"])
    with pytest.raises(SchemaMismatch) as exc:
        ensure_table(lake_settings, BRONZE_EVENTS)
    msg = str(exc.value)
    assert "missing columns: policy_version, user_ref" in msg and "rm -rf" in msg and "docs/design.md" in msg
    assert [m.table_id for m in schema_mismatches(lake_settings)] == ["bronze/events"]


def test_a_table_of_the_declared_schema_opens(lake_settings):
    ensure_table(lake_settings, BRONZE_EVENTS)
    assert ensure_table(lake_settings, BRONZE_EVENTS).version() == 0
    assert schema_mismatches(lake_settings) == []
