"""Exactly-once appends: each Delta commit carries the last Kafka offset per source partition as an app transaction."""
from __future__ import annotations

import random
import time
from typing import Mapping

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError

from schemas.tables import TableSpec


def app_id(group: str, topic: str, partition: int) -> str:
    """The Delta application-transaction id of one (consumer group, topic, partition)."""
    return f"{group}|{topic}|{partition}"


def committed_offset(table: DeltaTable, app: str) -> int:
    """The last Kafka offset committed into `table` for app id `app`, or -1 if none."""
    version = table.transaction_version(app)
    return -1 if version is None else int(version)


def append_exactly_once(table: DeltaTable, spec: TableSpec, batch: pa.Table,
                        offsets: Mapping[str, int], attempts: int = 8) -> int | None:
    """Append `batch` and record `offsets` (app id → last offset) in the same commit.

    delta-rs records app transactions but does not enforce them, so the caller must already have dropped
    records at or below each committed offset (see `committed_offset`); this re-checks as a guard and
    refuses a commit that would move an offset backwards. Returns the version this commit made (others may
    have committed since), or None when there was nothing to write.
    """
    for attempt in range(attempts):
        table.update_incremental()
        for app, last in offsets.items():
            done = committed_offset(table, app)
            if last <= done:
                raise ValueError(f"offset {last} for {app} is already committed (at {done}); drop it before writing")
        if batch.num_rows == 0 and not offsets:
            return None
        now_ms = int(time.time() * 1000)
        txns = [Transaction(app_id=app, version=int(last), last_updated=now_ms) for app, last in offsets.items()]
        try:
            write_deltalake(table, batch.cast(spec.schema), mode="append",
                            partition_by=list(spec.partition_by) or None,
                            commit_properties=CommitProperties(app_transactions=txns))
            written = table.version()  # write_deltalake moved `table` to its own commit
            break
        except CommitFailedError:
            # delta-rs checks an append against deletes committed since it read the table; `trajlake erase`
            # deleting another user's rows meanwhile is such a conflict. Re-read and append again: the offset
            # check above makes the retry exactly once.
            if attempt == attempts - 1:
                raise
            time.sleep(min(0.05 * 2 ** attempt, 2.0) * (0.5 + random.random()))
    table.update_incremental()
    return written
