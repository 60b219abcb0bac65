"""Kafka producers for every source: idempotent, acks=all, keyed by session_id, optionally paced in event time."""
from __future__ import annotations

import time
from datetime import datetime
from typing import Callable, Iterable

import orjson
from kafka import KafkaProducer

from schemas.settings import Settings
from streams.sources.tau_bench import Emitted


def build_producer(settings: Settings, **overrides) -> KafkaProducer:
    conf = dict(bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True, linger_ms=20,
                batch_size=256 * 1024, max_request_size=4 * 1024 * 1024, retries=2**31 - 1,
                client_id=f"{settings.worker_id}-producer")
    conf.update(overrides)
    return KafkaProducer(**conf)


class SendFailed(RuntimeError):
    """Some events did not reach the broker (each send's own result says so; `flush` does not)."""

    def __init__(self, failed: int, sent: int, first: BaseException):
        super().__init__(f"{failed} of {sent} events were not accepted by the broker (first error: {first!r}); "
                         "the others were. Check the broker (`trajlake status`) and send again: the worker drops "
                         "events whose ids it already has")
        self.failed, self.sent, self.first = failed, sent, first


class SendResults:
    """Counts the sends that failed and keeps the first error, so a stream of millions of sends is checked
    without holding a future per event."""

    def __init__(self) -> None:
        self.failed = 0
        self.first: BaseException | None = None

    def failure(self, exc: BaseException) -> None:
        self.failed += 1
        self.first = self.first or exc


def produce(settings: Settings, emitted: Iterable[Emitted], speed: float = 0.0,
            on_progress: Callable[[int], None] | None = None, producer: KafkaProducer | None = None,
            rate: float = 0.0) -> int:
    """Send events to their raw topics and flush.

    speed > 0 replays in event time, `speed` times faster; rate > 0 caps sending at `rate` events per second
    of wall time. Events are consumed from `emitted` one at a time, so a lazy source stays lazy.

    Raises SendFailed, after the flush, if the broker did not accept some event: kafka-python's flush waits
    for the sends but does not raise their errors, so an unchecked send could lose an event without a word.
    """
    own = producer is None
    producer = producer or build_producer(settings)
    sent = 0
    first_event: datetime | None = None
    started = time.monotonic()
    results = SendResults()
    try:
        for item in emitted:
            if speed > 0:
                ts = datetime.fromisoformat(item.event["ts"])
                first_event = first_event or ts
                wait = (ts - first_event).total_seconds() / speed - (time.monotonic() - started)
                if wait > 0:
                    time.sleep(wait)
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0.005:
                    time.sleep(ahead)
            producer.send(settings.topic(item.topic), key=item.event["session_id"].encode(),
                          value=orjson.dumps(item.event)).add_errback(results.failure)
            sent += 1
            if on_progress and sent % 1000 == 0:
                on_progress(sent)
        producer.flush()
    finally:
        if own:
            producer.close()
    if results.failed:
        raise SendFailed(results.failed, sent, results.first)
    if on_progress:
        on_progress(sent)
    return sent
