"""The stall watch's decision: which stream partitions to seek back, and which to leave alone."""
import pytest

from streams.stalls import StallWatch

pytestmark = pytest.mark.unit


def test_a_partition_with_records_waiting_that_stops_moving_is_stalled_after_the_ticks():
    w = StallWatch(ticks=2)
    committed = {"a": 10, "b": 25}
    ends = {"a": 20, "b": 48}
    # a moves (offsets handed out), b was handed nothing since it was sought and has records waiting
    assert w.tick({"a": 12}, committed, ends, busy=False) == []  # first sight: nothing to compare with
    assert w.tick({"a": 15}, committed, ends, busy=False) == []  # b still: one tick
    assert w.tick({"a": 19}, committed, ends, busy=False) == ["b"]  # two ticks in a row
    assert w.tick({"a": 19}, committed, ends, busy=False) == []  # counted again from zero after it is reported


def test_caught_up_moving_and_busy_partitions_are_left_alone():
    w = StallWatch(ticks=2)
    committed = {"a": 10, "b": 25}
    for _ in range(5):  # caught up: the last offset handed out is the end's predecessor, or nothing waits
        assert w.tick({"a": 19}, committed, {"a": 20, "b": 25}, busy=False) == []
    w.reset()
    for _ in range(5):  # records wait but the stream buffers hold events: the worker is busy, not stuck
        assert w.tick({}, committed, {"a": 20, "b": 48}, busy=True) == []
    w.reset()
    seen = {"b": 30}
    for k in range(5):  # b moves every tick
        seen = {"b": 30 + k}
        assert w.tick(seen, committed, {"b": 48}, busy=False) == []


def test_a_busy_tick_restarts_the_count():
    w = StallWatch(ticks=2)
    committed, ends = {"b": 25}, {"b": 48}
    w.tick({}, committed, ends, busy=False)
    assert w.tick({}, committed, ends, busy=False) == []  # one
    assert w.tick({}, committed, ends, busy=True) == []  # busy: back to zero
    assert w.tick({}, committed, ends, busy=False) == []  # one
    assert w.tick({}, committed, ends, busy=False) == ["b"]


def test_a_hole_at_the_head_is_sought_back_once_it_has_lasted_the_ticks():
    w = StallWatch(ticks=2)
    assert w.holes({"a": 25}, {}, busy=False) == ([], [])  # one tick: could be a moment's state
    assert w.holes({"a": 25}, {}, busy=True) == (["a"], [])  # two in a row at the same offset, busy or not
    assert w.holes({}, {"a": 25}, busy=False) == ([], [])  # read again and acked: no hole any more
    assert w.holes({"b": 3}, {}, busy=False) == ([], [])
    assert w.holes({"b": 4}, {}, busy=False) == ([], [])  # the head moved: counted from one again
    assert w.holes({"b": 4}, {}, busy=False) == (["b"], [])


def test_a_head_offset_is_no_record_only_if_the_fetch_started_past_it_after_a_seek_back():
    w = StallWatch(ticks=1)
    assert w.holes({"a": 25}, {}, busy=False) == (["a"], [])  # sought back to 25
    assert w.holes({"a": 25}, {"a": None}, busy=False) == ([], [])  # nothing handed out since: wait
    assert w.holes({"a": 25}, {"a": 25}, busy=False) == (["a"], [])  # 25 came, and is still not acked: again
    assert w.holes({"a": 25}, {"a": 26}, busy=True) == ([], [])  # started past it, but the worker is busy: wait
    assert w.holes({"a": 25}, {"a": 26}, busy=False) == ([], ["a"])  # started past it, idle: a gap, not a loss
    w.reset()
    assert w.holes({"a": 25}, {"a": 26}, busy=False) == (["a"], [])  # after a rebalance, nothing is assumed
