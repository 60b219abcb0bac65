"""Pinned start offsets for a fresh consumer group, against the real broker."""
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition

from infra.kafka import broker
from streams.offsets import SOURCE_TOPICS, pin_start_offsets

pytestmark = pytest.mark.integration


def test_a_fresh_group_gets_explicit_start_offsets_once(kafka):
    tag = uuid.uuid4().hex[:6]
    s = kafka.model_copy(update={"topic_prefix": f"o{tag}.", "worker_id": f"g{tag}"})
    broker.ensure_topics(s)
    pinned = pin_start_offsets(s)
    assert len(pinned) == len(SOURCE_TOPICS) * s.topic_partitions and set(pinned.values()) == {0}
    c = KafkaConsumer(bootstrap_servers=s.bootstrap, group_id=s.worker_id, enable_auto_commit=False)
    try:
        assert c.committed(TopicPartition(s.topic("agent.raw"), 0)) == 0
    finally:
        c.close()
    assert pin_start_offsets(s) == {}  # already committed: nothing to do, nothing moved
