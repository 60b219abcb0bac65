"""The local broker: idempotent start/stop, topics from settings, clear errors when something is in the way."""
import socket

import pytest

from infra.kafka import broker
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_start_is_idempotent_and_topics_exist(kafka):
    assert "already running" in broker.start(kafka)
    assert broker.ensure_topics(kafka) == []
    from kafka import KafkaConsumer

    c = KafkaConsumer(bootstrap_servers=kafka.bootstrap)
    try:
        for topic in kafka.topics:
            assert len(c.partitions_for_topic(topic)) == kafka.topic_partitions
    finally:
        c.close()


def test_the_workers_output_topics_take_records_larger_than_the_raw_ones(kafka):
    """A dead letter of a raw record near the intake limit is larger than it (base64): output topics allow 16 MiB,
    raw topics keep the default; topics made before the change get the limit at the next ensure_topics."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    from schemas.settings import OUTPUT_MESSAGE_MAX_BYTES, WORKER_OUTPUT_TOPICS

    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        def limits() -> dict[str, str | None]:
            """Each topic's own max.message.bytes (kafka-python describes the topic-level settings; None: the
            broker's default, ~1 MiB)."""
            got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in kafka.topics])
            return {name: configs.get("max.message.bytes", {}).get("value")
                    for name, configs in got["topic"].items()}

        outputs = {kafka.topic(t) for t in WORKER_OUTPUT_TOPICS}
        before = limits()
        assert {t: before[t] for t in outputs} == {t: str(OUTPUT_MESSAGE_MAX_BYTES) for t in outputs}
        assert {before[t] for t in set(kafka.topics) - outputs} == {None}
        # an older topic: the broker's default limit set on it, then ensure_topics again
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, kafka.topic("deadletter"),
                                            configs={"max.message.bytes": "1048588"})])
        # the controller acknowledges a change before the broker applies it: wait for the broker to serve it
        broker._wait_for_topic_config(admin, [kafka.topic("deadletter")], {"max.message.bytes": "1048588"})
        assert limits()[kafka.topic("deadletter")] == "1048588"
        broker.ensure_topics(kafka)
        assert limits() == before  # at once: ensure_topics returns only when the broker serves the new limit
    finally:
        admin.close()


def test_a_taken_port_is_named_with_the_fix(base_settings, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        other = base_settings.model_copy(update={"state_dir": tmp_path, "kafka_port": taken,
                                                 "kafka_controller_port": free_port()})
        with pytest.raises(broker.BrokerError, match=f"port {taken}.*TRAJLAKE_KAFKA_PORT"):
            broker.start(other)


def test_stop_when_not_running_is_a_no_op(base_settings, tmp_path):
    assert broker.stop(base_settings.model_copy(update={"state_dir": tmp_path})) == "broker not running"


@pytest.mark.unit
def test_missing_java_is_named_with_the_fix(monkeypatch):
    monkeypatch.setattr(broker.shutil, "which", lambda name: None)
    with pytest.raises(broker.BrokerError, match="java not found.*openjdk"):
        broker.check_java()


@pytest.mark.unit
def test_cluster_ids_never_start_with_a_dash(monkeypatch):
    """The storage tool reads a leading '-' as an option; one start in 64 failed that way."""
    import uuid

    dash_first = uuid.UUID(bytes=b"\xfb" + bytes(15))  # base64 of 0xfb… starts with '-'
    draws = iter([dash_first, uuid.UUID(int=7)])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    assert broker._cluster_id() == "AAAAAAAAAAAAAAAAAAAABw"
