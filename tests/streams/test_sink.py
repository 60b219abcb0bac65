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
