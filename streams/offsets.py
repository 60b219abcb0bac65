"""Explicit starting offsets for the worker's consumer group, committed before Faust starts."""
from __future__ import annotations

import logging
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from schemas.settings import Settings

log = logging.getLogger("trajlake.worker")

# the topics the worker's Faust group reads (the sinks read theirs in a group of their own: streams/sink_process.py)
SOURCE_TOPICS = ("frontend.raw", "agent.raw", "events.clean")


def pin_start_offsets(settings: Settings, group: str | None = None) -> dict[TopicPartition, int]:
    """Commit the earliest offset for every source partition the group has no committed offset for.

    Why: faust-streaming resumes stream partitions before it seeks them to their committed offsets
    (tables/recovery.py), and for a partition with no committed offset that seek is a no-op in aiokafka.
    Messages fetched in that window can then be skipped for good: a worker that crashed before its first
    offset commit lost events on restart in our crash tests. With an explicit committed offset the seek
    really rewinds, so anything fetched early is read again (the sinks and the join drop the repeats).

    Only works while the group has no live member (a commit from outside the group is then refused, and a
    live member has committed offsets of its own anyway), so refusals are logged and ignored.
    Returns the offsets it committed.
    """
    group = group or settings.worker_id
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=group, enable_auto_commit=False,
                             client_id=f"{group}-offsets")
    try:
        tps = [TopicPartition(settings.topic(name), p) for name in SOURCE_TOPICS
               for p in sorted(_partitions(consumer, settings.topic(name)))]
        if not tps:
            return {}
        consumer.assign(tps)
        missing = [tp for tp in tps if consumer.committed(tp) is None]
        if not missing:
            return {}
        start = consumer.beginning_offsets(missing)
        offsets = {tp: OffsetAndMetadata(start[tp], "", -1) for tp in missing}
        try:
            consumer.commit(offsets)
        except KafkaError as e:
            log.info("not pinning start offsets for group %s (%s): a live member owns them", group, e)
            return {}
        return {tp: o.offset for tp, o in offsets.items()}
    finally:
        consumer.close(autocommit=False)


def _partitions(consumer: KafkaConsumer, topic: str, wait_s: float = 15.0) -> set[int]:
    """The topic's partitions, waiting for a just-created topic to show up in the broker's metadata (KRaft
    publishes it a moment after CreateTopics returns; an unknown topic would silently go unpinned)."""
    deadline = time.monotonic() + wait_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts or time.monotonic() >= deadline:
            return set(parts or ())
        time.sleep(0.2)
