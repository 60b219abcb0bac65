"""Compaction of closed partitions: fewer files, the same rows, the sinks' offsets intact, safe beside appends."""
import threading
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from lake.compaction import compact_closed_partitions, small_file_partitions
from lake.readers import read_table
from lake.tables import ensure_table, open_table
from lake.writer import app_id, append_exactly_once, committed_offset
from schemas.tables import BRONZE_DEADLETTER

pytestmark = pytest.mark.component
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def _rows(offsets, day):
    at = datetime(day.year, day.month, day.day, 9, 0, tzinfo=timezone.utc)
    return pa.Table.from_pylist([
        {"reason": "invalid_json", "stage": "parse", "detail": "x", "event_id": None, "source_topic": "t",
         "source_partition": 0, "source_offset": o, "original": b"{", "original_key": None, "failed_at": at,
         "date": at.date()} for o in offsets], schema=BRONZE_DEADLETTER.schema)


def _fill(settings, day, first, n, app):
    table = ensure_table(settings, BRONZE_DEADLETTER)
    for i in range(first, first + n):
        append_exactly_once(table, BRONZE_DEADLETTER, _rows([i], day), {app: i})


def _files(settings):
    return len(open_table(settings, BRONZE_DEADLETTER).file_uris())


def test_closed_partitions_are_compacted_and_open_ones_left_alone(lake_settings):
    old, today = datetime(2026, 11, 20).date(), NOW.date()
    app = app_id("g", "t", 0)
    _fill(lake_settings, old, 0, 10, app)
    _fill(lake_settings, today, 10, 10, app)
    before = sorted(read_table(lake_settings, BRONZE_DEADLETTER).column("source_offset").to_pylist())
    assert small_file_partitions(lake_settings, BRONZE_DEADLETTER, today, min_files=8) == {"2026-11-20": 10}
    done = compact_closed_partitions(lake_settings, BRONZE_DEADLETTER, min_files=8, now=NOW)
    assert done.partitions == ["2026-11-20"] and done.files_removed == 10 and done.files_added == 1
    assert _files(lake_settings) == 11  # one compacted file + today's ten
    assert sorted(read_table(lake_settings, BRONZE_DEADLETTER).column("source_offset").to_pylist()) == before
    assert committed_offset(open_table(lake_settings, BRONZE_DEADLETTER), app) == 19  # exactly-once state kept
    again = compact_closed_partitions(lake_settings, BRONZE_DEADLETTER, min_files=8, now=NOW)
    assert again.partitions == []  # idempotent: nothing small is left


def test_compaction_beside_a_running_sink_loses_and_doubles_nothing(lake_settings):
    old = datetime(2026, 11, 20).date()
    app = app_id("g", "t", 0)
    _fill(lake_settings, old, 0, 20, app)
    errors = []

    def sink():
        try:
            _fill(lake_settings, old, 20, 30, app)  # late events into the partition being compacted
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=sink)
    t.start()
    compact_closed_partitions(lake_settings, BRONZE_DEADLETTER, min_files=8, now=NOW)
    t.join()
    assert not errors
    offsets = read_table(lake_settings, BRONZE_DEADLETTER).column("source_offset").to_pylist()
    assert sorted(offsets) == list(range(50))
