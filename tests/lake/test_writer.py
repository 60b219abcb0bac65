"""Exactly-once appends into Delta: offsets ride in the same commit as the data and cannot move backwards."""
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from lake.readers import read_table, table_version
from lake.tables import ensure_table, open_table
from lake.writer import app_id, append_exactly_once, committed_offset
from schemas.tables import BRONZE_DEADLETTER

pytestmark = pytest.mark.component


def _rows(offsets):
    now = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
    return pa.Table.from_pylist([
        {"reason": "invalid_json", "stage": "parse", "detail": "x", "event_id": None, "source_topic": "t",
         "source_partition": 0, "source_offset": o, "original": b"{", "original_key": None, "failed_at": now,
         "date": now.date()} for o in offsets], schema=BRONZE_DEADLETTER.schema)


def test_offsets_commit_with_the_data(lake_settings):
    table = ensure_table(lake_settings, BRONZE_DEADLETTER)
    app = app_id("g", "t", 0)
    assert committed_offset(table, app) == -1
    append_exactly_once(table, BRONZE_DEADLETTER, _rows([0, 1, 2]), {app: 2})
    reopened = open_table(lake_settings, BRONZE_DEADLETTER)
    assert committed_offset(reopened, app) == 2
    assert committed_offset(reopened, app_id("g", "t", 1)) == -1
    assert read_table(lake_settings, BRONZE_DEADLETTER).num_rows == 3


def test_a_committed_offset_is_refused(lake_settings):
    table = ensure_table(lake_settings, BRONZE_DEADLETTER)
    app = app_id("g", "t", 0)
    append_exactly_once(table, BRONZE_DEADLETTER, _rows([0, 1]), {app: 1})
    with pytest.raises(ValueError, match="already committed"):
        append_exactly_once(table, BRONZE_DEADLETTER, _rows([1]), {app: 1})
    assert read_table(lake_settings, BRONZE_DEADLETTER).num_rows == 2


def test_time_travel_reads_a_pinned_version(lake_settings):
    table = ensure_table(lake_settings, BRONZE_DEADLETTER)
    app = app_id("g", "t", 0)
    append_exactly_once(table, BRONZE_DEADLETTER, _rows([0]), {app: 0})
    v1 = table_version(lake_settings, BRONZE_DEADLETTER)
    append_exactly_once(table, BRONZE_DEADLETTER, _rows([1, 2]), {app: 2})
    assert read_table(lake_settings, BRONZE_DEADLETTER, version=v1).num_rows == 1
    assert read_table(lake_settings, BRONZE_DEADLETTER).num_rows == 3


def test_tables_keep_the_protocol_spark_and_delta_rs_share(lake_settings):
    table = ensure_table(lake_settings, BRONZE_DEADLETTER)
    assert table.metadata().configuration.get("delta.enableDeletionVectors") == "false"
    assert table.metadata().partition_columns == ["date"]
