"""The Delta sink's dedup set: keys older than the dedup window are forgotten, so the set stays bounded."""
from datetime import datetime, timedelta, timezone

import pytest

from streams.sink import SINK_TARGETS, DeltaSinkWriter

pytestmark = pytest.mark.component


def test_the_dedup_set_stays_within_twice_the_window(base_settings, tmp_path):
    s = base_settings.model_copy(update={"lake_root": tmp_path / "lake", "dedup_window_seconds": 60})
    writer = DeltaSinkWriter(s, SINK_TARGETS["events.clean"], "g")
    start = datetime(2026, 12, 3, tzinfo=timezone.utc)
    largest = 0
    for second in range(0, 3600, 10):  # an hour of commits of 700 new keys each, 10 s apart
        now = start + timedelta(seconds=second)
        writer.recent.update({(second, i): now for i in range(700)})
        writer._expire(now)
        largest = max(largest, len(writer.recent))
    in_window = 7 * 700  # the commits of the last 60 s
    assert largest <= 2 * in_window + 700, largest


def test_a_batch_is_committed_in_runs_of_at_most_sink_max_bytes():
    from streams.sink import Record, by_bytes

    records = [Record("t", 0, i, b"x" * n) for i, n in enumerate([400, 300, 300, 2_000, 10, 990, 1])]
    runs = by_bytes(records, 1_000)
    assert [[r.offset for r in run] for run in runs] == [[0, 1, 2], [3], [4, 5], [6]]  # in order; a big one alone
    assert all(sum(len(r.value) for r in run) <= 1_000 for run in runs if len(run) > 1)
    assert by_bytes([], 1_000) == [] and len(by_bytes(records, 10**9)) == 1


def _step_row():
    import time

    from streams.join import apply_event, new_session
    from tests.streams.test_join import TO, typical

    state, out = new_session(), []
    for e in typical().events:
        out += apply_event(state, e, time.time(), TO)
    return next(e.row for e in out if e.kind == "step")


def test_a_row_another_writer_committed_is_not_written_again(base_settings, tmp_path):
    """A handover: worker A's sink wrote a step, A died before its join cleared the outbox in the changelog, and
    worker B's join sent the row again, to B's sink, which now owns the partition. B's dedup set was seeded at
    its start, before A's commit: the step was written twice. It now takes in the keys of files others commit."""
    import orjson

    from lake.readers import read_table
    from schemas.tables import SILVER_STEPS
    from streams.sink import Record

    s = base_settings.model_copy(update={"lake_root": tmp_path / "lake"})
    topic, row = s.topic("steps"), orjson.dumps(_step_row())
    b = DeltaSinkWriter(s, SINK_TARGETS["steps"], "g")  # B's sink, started first
    a = DeltaSinkWriter(s, SINK_TARGETS["steps"], "g")
    assert a.commit([Record(topic, 2, 5, row)]) == (1, 0)
    assert b.commit([Record(topic, 2, 9, row)]) == (0, 1)
    assert read_table(s, SILVER_STEPS, columns=["step_id", "revision"]).num_rows == 1
    # and a writer's own commits cost it no read of its files: it knows their keys
    assert b.commit([Record(topic, 3, 1, orjson.dumps({**_step_row(), "step_id": "s1/a2"}))]) == (1, 0)
    assert b.version == b.table.version()
