"""The sink process's batching: due by count or age, revoked partitions dropped, offsets per partition."""
import pytest

from streams.sink import Record
from streams.sink_process import Batches, exit_status, last_offsets

pytestmark = pytest.mark.unit


def records(topic: str, partition: int, offsets: range) -> list[Record]:
    return [Record(topic, partition, o, b"v") for o in offsets]


def test_a_topic_is_due_at_max_records_or_once_its_oldest_record_has_waited_max_seconds():
    b = Batches(max_records=3, max_seconds=1.0)
    assert not b.due("a", 0.0)  # nothing held
    b.add(records("a", 0, range(2)), now=10.0)
    b.add(records("b", 0, range(1)), now=10.5)
    assert not b.due("a", 10.9) and b.due("a", 11.0)  # age counts from the first record held
    assert not b.due("b", 11.0) and b.due("b", 11.5)
    b.add(records("a", 1, range(1)), now=10.2)
    assert b.due("a", 10.2)  # three records


def test_take_gives_at_most_max_records_oldest_first_and_the_rest_keep_their_oldest_records_clock():
    b = Batches(max_records=3, max_seconds=1.0)
    b.add(records("a", 0, range(5)), now=0.0)
    assert [r.offset for r in b.take("a")] == [0, 1, 2]
    assert b.held("a") == 2 and not b.due("a", 0.5) and b.due("a", 1.0)  # a backlog's rest is due at once
    assert [r.offset for r in b.take("a")] == [3, 4] and b.held("a") == 0
    b.add(records("a", 0, range(5, 6)), now=7.0)
    assert not b.due("a", 7.5) and b.due("a", 8.0)


def test_revoked_partitions_records_are_dropped_and_the_others_kept_in_order():
    b = Batches(max_records=100, max_seconds=1.0)
    b.add(records("a", 0, range(3)) + records("a", 1, range(2)) + records("a", 0, range(3, 5)), now=0.0)
    b.add(records("b", 1, range(2)), now=0.0)
    assert b.drop({("a", 0), ("b", 2)}) == 5
    assert [(r.partition, r.offset) for r in b.take("a")] == [(1, 0), (1, 1)]
    assert b.held("b") == 2


def test_the_last_offset_per_partition():
    batch = records("a", 0, range(4)) + records("a", 2, range(10, 12)) + records("a", 0, range(2))
    assert last_offsets(batch) == {0: 3, 2: 11}
    assert last_offsets([]) == {}


def test_an_exit_by_signal_is_reported_as_the_shell_does():
    assert exit_status(137) == 137 and exit_status(70) == 70 and exit_status(0) == 0
    assert exit_status(-9) == 137 and exit_status(-15) == 143
