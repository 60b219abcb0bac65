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
