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


def produce(settings: Settings, emitted: Iterable[Emitted], speed: float = 0.0,
            on_progress: Callable[[int], None] | None = None, producer: KafkaProducer | None = None,
            rate: float = 0.0) -> int:
    """Send events to their raw topics and flush.

    speed > 0 replays in event time, `speed` times faster; rate > 0 caps sending at `rate` events per second
    of wall time. Events are consumed from `emitted` one at a time, so a lazy source stays lazy.
    """
    own = producer is None
    producer = producer or build_producer(settings)
    sent = 0
    first_event: datetime | None = None
    started = time.monotonic()
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
                          value=orjson.dumps(item.event))
            sent += 1
            if on_progress and sent % 1000 == 0:
                on_progress(sent)
        producer.flush()
    finally:
        if own:
            producer.close()
    if on_progress:
        on_progress(sent)
    return sent
