"""Vacuum: the files that overwrites replaced go once past the retention; the table, its log and its offsets stay."""
import os

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lake.compaction import compact_closed_partitions
from lake.readers import read_table
from lake.tables import ensure_table, open_table, table_path
from lake.vacuum import vacuum_table
from lake.writer import app_id, append_exactly_once, committed_offset
from schemas.tables import BRONZE_DEADLETTER, GOLD_REVIEW_QUEUE
from tests.lake.test_compaction import NOW, _rows

pytestmark = pytest.mark.component


def _queue(n: int, version: str = "reward-v2") -> pa.Table:
    from datetime import date

    return pa.Table.from_pylist([
        {"episode_id": f"e{i}", "week": date(2026, 11, 2), "agent_version": "a", "prompt_variant": "p",
         "task_type": "t", "band": "[0.0, 0.5)", "outcome": "completed", "composite": 0.4, "rank": i + 1,
         "stratum_size": n, "weight": 1.0, "reward_version": version} for i in range(n)],
        schema=GOLD_REVIEW_QUEUE.schema)


def _parquet(settings, spec) -> set[str]:
    root = table_path(settings, spec)
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
            if f.endswith(".parquet") and "_delta_log" not in d}


def test_replaced_files_go_past_the_retention_and_the_latest_rows_stay(lake_settings):
    table = ensure_table(lake_settings, GOLD_REVIEW_QUEUE)
    for n in (3, 4, 5):  # a job rerun three times over its window
        write_deltalake(table, _queue(n), mode="overwrite", predicate="reward_version = 'reward-v2'")
    live = {os.path.relpath(u.removeprefix("file://"), table_path(lake_settings, GOLD_REVIEW_QUEUE))
            for u in open_table(lake_settings, GOLD_REVIEW_QUEUE).file_uris()}
    before = _parquet(lake_settings, GOLD_REVIEW_QUEUE)
    assert len(before - live) == 2

    kept = vacuum_table(lake_settings, GOLD_REVIEW_QUEUE, retention_hours=168)  # written just now: all kept
    assert (kept.files, _parquet(lake_settings, GOLD_REVIEW_QUEUE)) == (0, before)
    dry = vacuum_table(lake_settings, GOLD_REVIEW_QUEUE, retention_hours=0, dry_run=True)
    assert dry.files == 2 and dry.bytes > 0 and _parquet(lake_settings, GOLD_REVIEW_QUEUE) == before

    done = vacuum_table(lake_settings, GOLD_REVIEW_QUEUE, retention_hours=0)
    assert (done.files, done.bytes) == (2, dry.bytes)
    assert _parquet(lake_settings, GOLD_REVIEW_QUEUE) == live
    assert read_table(lake_settings, GOLD_REVIEW_QUEUE).num_rows == 5
    # delta-rs lists the same replaced files again; they are counted only while they exist
    assert vacuum_table(lake_settings, GOLD_REVIEW_QUEUE, retention_hours=0).files == 0


def test_a_compacted_sink_table_loses_its_small_files_and_keeps_its_offsets(lake_settings):
    from datetime import date

    table = ensure_table(lake_settings, BRONZE_DEADLETTER)
    app = app_id("g", "t", 0)
    for i in range(3):
        append_exactly_once(table, BRONZE_DEADLETTER, _rows([i], date(2026, 11, 20)), {app: i})
    compacted = compact_closed_partitions(lake_settings, BRONZE_DEADLETTER, min_files=2, now=NOW)
    assert (compacted.files_removed, compacted.files_added) == (3, 1)
    assert vacuum_table(lake_settings, BRONZE_DEADLETTER, retention_hours=0).files == 3  # the compacted small files
    assert len(_parquet(lake_settings, BRONZE_DEADLETTER)) == 1
    assert committed_offset(open_table(lake_settings, BRONZE_DEADLETTER), app) == 2
    assert read_table(lake_settings, BRONZE_DEADLETTER).num_rows == 3


def test_a_table_never_written_has_nothing_to_vacuum(lake_settings):
    assert vacuum_table(lake_settings, GOLD_REVIEW_QUEUE, retention_hours=0).files == 0


def test_the_scheduled_vacuum_entry_vacuums_every_table(lake_settings):
    from jobs.schedule import Entry
    from jobs.scheduler import Runner

    table = ensure_table(lake_settings, GOLD_REVIEW_QUEUE)
    for n in (3, 4):
        write_deltalake(table, _queue(n), mode="overwrite", predicate="reward_version = 'reward-v2'")
    detail = Runner(lake_settings)(Entry("v", "vacuum", "@weekly", "none", {"retention_hours": 0}), None,
                                            lambda _: None)
    assert detail.startswith("1 files (") and "deleted from " in detail and "replaced over 0 h ago" in detail
    assert read_table(lake_settings, GOLD_REVIEW_QUEUE).num_rows == 4


def test_files_a_checkpoint_forgot_are_vacuumed_too(lake_settings):
    """A checkpoint forgets removals older than delta.deletedFileRetentionDuration, the retention itself: the
    sinks checkpoint every 100 commits, so by the weekly vacuum the files old enough to go were the ones the
    default (lite) mode could no longer see, and they stayed on disk for good."""
    import time

    table = ensure_table(lake_settings, GOLD_REVIEW_QUEUE)
    write_deltalake(table, _queue(3), mode="overwrite", predicate="reward_version = 'reward-v2'")
    write_deltalake(table, _queue(4), mode="overwrite", predicate="reward_version = 'reward-v2'")
    table.alter.set_table_properties({"delta.deletedFileRetentionDuration": "interval 1 seconds"})
    time.sleep(2)
    table.create_checkpoint()
    fresh = open_table(lake_settings, GOLD_REVIEW_QUEUE)
    assert fresh.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=True) == []  # lite: none
    live = {os.path.relpath(u.removeprefix("file://"), table_path(lake_settings, GOLD_REVIEW_QUEUE))
            for u in fresh.file_uris()}
    assert len(_parquet(lake_settings, GOLD_REVIEW_QUEUE) - live) == 1
    assert vacuum_table(lake_settings, GOLD_REVIEW_QUEUE, retention_hours=0).files == 1
    assert _parquet(lake_settings, GOLD_REVIEW_QUEUE) == live and read_table(lake_settings, GOLD_REVIEW_QUEUE).num_rows == 4
