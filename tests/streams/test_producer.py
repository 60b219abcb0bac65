"""The producer loop: keyed by session, flushed, pacing by --rate, lazy sources kept lazy, failed sends raised."""
import time

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.future import Future

from schemas.settings import Settings
from streams.producer import SendFailed, produce
from streams.sources.synthetic import synthetic_events

pytestmark = pytest.mark.unit


class RecordingProducer:
    def __init__(self):
        self.sent, self.flushed = [], False

    def send(self, topic, key, value):
        self.sent.append((time.monotonic(), topic, key))
        return Future()

    def flush(self):
        self.flushed = True


class FailingProducer(RecordingProducer):
    """Every third send fails when the producer flushes (as kafka-python resolves its futures: in its I/O
    thread, after `send` returned)."""

    def __init__(self):
        super().__init__()
        self.futures = []

    def send(self, topic, key, value):
        super().send(topic, key, value)
        self.futures.append(f := Future())
        return f

    def flush(self):
        for i, f in enumerate(self.futures):
            f.failure(KafkaTimeoutError(f"send {i}")) if i % 3 == 2 else f.success(None)
        self.flushed = True


def test_sends_the_broker_did_not_accept_are_raised_after_the_flush():
    p = FailingProducer()
    with pytest.raises(SendFailed) as failed:
        produce(Settings(), synthetic_events(30, seed=1), producer=p)
    assert p.flushed and len(p.sent) == 30  # every event was sent and waited for before the error
    assert (failed.value.failed, failed.value.sent) == (10, 30)
    assert "send 2" in str(failed.value.first) and "10 of 30 events" in str(failed.value)


def test_rate_paces_sends_and_keys_are_sessions():
    p = RecordingProducer()
    events = list(synthetic_events(50, seed=1))
    assert produce(Settings(), events, producer=p, rate=250.0) == 50 and p.flushed
    assert p.sent[-1][0] - p.sent[0][0] >= 49 / 250 * 0.95  # no faster than the rate asked for
    assert [k for _, _, k in p.sent] == [e.event["session_id"].encode() for e in events]
    assert [t for _, t, _ in p.sent] == [Settings().topic(e.topic) for e in events]


def test_a_lazy_source_is_pulled_one_event_at_a_time():
    pulled = []

    def source():
        for e in synthetic_events(5, seed=2):
            pulled.append(e)
            yield e

    p = RecordingProducer()
    produce(Settings(), source(), producer=p)
    assert len(pulled) == len(p.sent) == 5


def test_speed_replays_event_time_faster_and_never_ahead_of_it():
    from datetime import datetime, timedelta, timezone

    from streams.sources.tau_bench import Emitted

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    events = [Emitted("frontend.raw", {"session_id": "s", "ts": (t0 + timedelta(seconds=s)).isoformat()})
              for s in (0, 1, 1, 3, 4)]
    p = RecordingProducer()
    assert produce(Settings(), events, producer=p, speed=20.0) == 5
    sent = [at - p.sent[0][0] for at, _, _ in p.sent]
    assert all(at >= s / 20 * 0.95 for at, s in zip(sent, (0, 1, 1, 3, 4)))  # each at its event time ÷ 20
    assert sent[-1] < 2.0  # not in event time itself (4 s)
