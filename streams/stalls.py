"""The stall watch: a stream partition with records waiting that the consumer stopped handing to the streams is
sought back to its committed offset, with a warning.

Why: under load, the group handover test (tests/streams/test_worker_group.py) shows about once in ten runs a
partition that Faust resumed at its committed offset after a rebalance, with records waiting, of which nothing is
handed to the streams while every other partition flows. Faust's own bookkeeping has it active, not paused, not
held back by a full buffer: the records do not come out of aiokafka's fetcher. The cause is not found
(docs/design.md, "Six faust-streaming traps", 5); a seek restarts the partition's fetch. Seeking to the
committed offset is at least once: the events read again are dropped by ingest's dedup and the join's idempotent
fold, as after any restart.

A partition counts as stalled only while the worker's stream buffers are empty: a worker busy with a backlog,
or blocked downstream, holds events in them, and is left alone.

The watch also finds partitions whose commit waits on a hole at the head: the message at the committed offset
never acked while later ones are (`streams.faust_consumer.head_unacked`; the worker acks each partition's
events in order, so such a hole is a message lost on the way to the streams, not one still being processed).
Such a partition is sought back to that offset too (by the drain loop, between fetched batches). If, after that
seek, the first offset handed out is a later one while the worker is idle, that offset holds no record (a
transaction marker, a compacted offset) and the caller marks it as a gap, so the commit can pass it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Mapping

# ticks in a row a partition must look stalled before it is sought back
STALL_TICKS = 2
STALL_CHECK_SECONDS = 5.0


@dataclass
class StallWatch:
    """Per partition: the last offset handed to the streams as of the previous tick, and for how many ticks in
    a row it has not moved while records waited and the worker was idle."""

    ticks: int = STALL_TICKS
    seen: dict[Hashable, int | None] = field(default_factory=dict)
    stalled_for: dict[Hashable, int] = field(default_factory=dict)
    # partition → (the committed offset whose message is missing, ticks in a row it has been)
    held: dict[Hashable, tuple[int, int]] = field(default_factory=dict)
    # partition → the offset it was last sought back to for a hole at the head
    resought: dict[Hashable, int] = field(default_factory=dict)

    def reset(self) -> None:
        """A rebalance: every partition starts again from its committed offset."""
        self.seen.clear()
        self.stalled_for.clear()
        self.held.clear()
        self.resought.clear()

    def holes(self, heads: Mapping[Hashable, int], first_after_seek: Mapping[Hashable, int | None], busy: bool
              ) -> tuple[list[Hashable], list[Hashable]]:
        """(partitions to seek back to their committed offset, partitions whose committed offset is no record).

        `heads`: the partitions whose commit waits on an unacked record at the committed offset, and that offset;
        `first_after_seek`: the first offset handed to the streams after the partition's last seek-back (None
        while nothing has been); `busy`: events wait in the stream buffers. A hole counts once it has stayed at
        the same offset for `ticks` ticks in a row. It is no record only if, after a seek back to it, the first
        offset handed out was a later one, and only while the worker is idle (a busy one may still be working
        through it)."""
        seek, gaps = [], []
        for tp in list(self.held):
            if tp not in heads:
                del self.held[tp]
        for tp, offset in heads.items():
            before, n = self.held.get(tp, (offset, 0))
            n = n + 1 if before == offset else 1
            if n < self.ticks:
                self.held[tp] = (offset, n)
                continue
            self.held.pop(tp, None)
            if self.resought.get(tp) == offset:
                first = first_after_seek.get(tp)
                if first is None or busy:
                    continue  # the seek-back has not been read from yet, or the worker is still on it
                if first > offset:
                    gaps.append(tp)  # sought back to it, and the fetch started past it: no record there
                    del self.resought[tp]
                    continue
            seek.append(tp)
            self.resought[tp] = offset
        return seek, gaps

    def tick(self, dispatched: Mapping[Hashable, int], committed: Mapping[Hashable, int | None],
             ends: Mapping[Hashable, int], busy: bool) -> list[Hashable]:
        """The partitions (the keys of `ends`: the assigned stream partitions' end offsets) stalled for `ticks`
        ticks in a row.

        `dispatched`: the last offset handed to the streams since the partition was last sought;
        `committed`: the group's committed offset (the next to read); `busy`: events wait in the stream buffers."""
        if busy:
            self.stalled_for.clear()
        stalled = []
        for tp, end in ends.items():
            last = dispatched.get(tp)
            next_offset = last + 1 if last is not None else (committed.get(tp) or 0)
            still = tp in self.seen and self.seen[tp] == last
            if not busy and still and end > next_offset:
                self.stalled_for[tp] = self.stalled_for.get(tp, 0) + 1
                if self.stalled_for[tp] >= self.ticks:
                    stalled.append(tp)
                    del self.stalled_for[tp]
            else:
                self.stalled_for.pop(tp, None)
        self.seen = {tp: dispatched.get(tp) for tp in ends}
        return stalled
