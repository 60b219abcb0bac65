"""lake/readers.py: a table's rows counted at the version the caller holds."""
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from lake.readers import row_count
from lake.tables import table_path
from schemas.tables import TableSpec

pytestmark = pytest.mark.component

NUMBERS = TableSpec("test", "numbers", pa.schema([("n", pa.int64())]), (), ("n",), "a test table")


def test_row_count_is_the_versions_own_whatever_was_committed_since(lake_settings):
    path = str(table_path(lake_settings, NUMBERS))
    write_deltalake(path, pa.table({"n": [1, 2, 3]}))
    held = DeltaTable(path)
    write_deltalake(path, pa.table({"n": [4, 5]}), mode="append")   # a commit after the caller opened it
    # `trajlake status` showed the version it opened beside a count of the table opened again
    assert row_count(lake_settings, NUMBERS, held) == 3
    assert row_count(lake_settings, NUMBERS, DeltaTable(path)) == 5
