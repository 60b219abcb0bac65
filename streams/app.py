"""The Faust app: ingest (parse ▸ validate ▸ pseudonymize ▸ scrub → clean | dead letter) and the bronze Delta sinks."""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import faust

from privacy import worker as scrub_worker
from privacy.scrub import SessionDictionaries
from schemas.contract import ContractError, Reason
from schemas.settings import Settings
from streams.ingest import DeadLetter, SourceRecord, check_record, clean_record, dead_letter, now_iso
from streams.sink import BRONZE_TARGETS, DeltaSinkWriter, Record

log = logging.getLogger("trajlake.worker")

INGEST_BATCH, INGEST_WITHIN = 500, 0.25


def build_app(settings: Settings, *, use_ner: bool = True, scrub_processes: int = 1) -> faust.App:
    """The worker's Faust app. Agents only iterate, call the pure core, and send."""
    datadir = (settings.state_dir / "faust").resolve()
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.worker_id,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=8192,
        broker_session_timeout=settings.consumer_session_timeout_seconds,
        broker_heartbeat_interval=max(1.0, settings.consumer_session_timeout_seconds / 10),
    )
    raw = app.topic(settings.topic("frontend.raw"), settings.topic("agent.raw"),
                    key_serializer="raw", value_serializer="raw")
    clean = app.topic(settings.topic("events.clean"), key_serializer="raw", value_serializer="raw")
    dead = app.topic(settings.topic("deadletter"), key_serializer="raw", value_serializer="raw")
    families = {settings.topic("frontend.raw"): "frontend", settings.topic("agent.raw"): "agent"}
    contexts = SessionDictionaries()
    pool: dict[str, ProcessPoolExecutor] = {}

    def scrub_pool() -> ProcessPoolExecutor:
        if "p" not in pool:
            pool["p"] = ProcessPoolExecutor(
                max_workers=scrub_processes, initializer=scrub_worker.init,
                initargs=(settings.pseudonym_key.get_secret_value().encode(), use_ner, []))
        return pool["p"]

    @app.agent(raw, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(INGEST_BATCH, within=INGEST_WITHIN):
            records = [_source(e) for e in events]
            checked = [check_record(r, families) for r in records]
            valid = [(r, c) for r, c in zip(records, checked) if not isinstance(c, DeadLetter)]
            results: list[Any] = []
            if valid:
                sessions = contexts.take(c["session_id"] for _, c in valid)
                results, sessions = await loop.run_in_executor(
                    scrub_pool(), scrub_worker.scrub, [c for _, c in valid], sessions)
                contexts.put(sessions)
            scrubbed = iter(results)
            ingested_at = now_iso()
            for rec, c in zip(records, checked):
                if isinstance(c, DeadLetter):
                    await dead.send(key=rec.key, value=c.to_json())
                    continue
                s = next(scrubbed)
                if isinstance(s, str):
                    dl = dead_letter(rec, ContractError(Reason.scrub_failed, s), "scrub", c["event_id"])
                    await dead.send(key=rec.key, value=dl.to_json())
                else:
                    await clean.send(key=rec.key, value=clean_record(s, rec, ingested_at))
            await app.producer.flush()

    def sink_agent(topic_name: str) -> None:
        target = BRONZE_TARGETS[topic_name]
        topic = clean if topic_name == "events.clean" else dead

        @app.agent(topic, name=f"sink_{target.spec.layer}_{target.spec.name}")
        async def sink(stream: faust.StreamT) -> None:
            loop = asyncio.get_running_loop()
            writer = await loop.run_in_executor(None, DeltaSinkWriter, settings, target, settings.worker_id)
            async for events in stream.take_events(settings.sink_max_records, within=settings.sink_max_seconds):
                batch = [Record(e.message.topic, e.message.partition, e.message.offset, e.value) for e in events]
                written, skipped = await loop.run_in_executor(None, writer.commit, batch)
                log.info("sink %s: %d rows written, %d skipped", target.spec.id, written, skipped)

    for name in BRONZE_TARGETS:
        sink_agent(name)

    @app.on_before_shutdown.connect  # type: ignore[misc]
    async def _stop_pool(*_: Any, **__: Any) -> None:
        if "p" in pool:
            pool["p"].shutdown(wait=False, cancel_futures=True)

    return app


def _source(event: faust.EventT) -> SourceRecord:
    m = event.message
    value = event.value if isinstance(event.value, (bytes, bytearray)) else (m.value or b"")
    return SourceRecord(m.topic, m.partition, m.offset, m.key, bytes(value))


def run_worker(settings: Settings, loglevel: str = "warn", use_ner: bool = True) -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT."""
    from faust.worker import Worker

    app = build_app(settings, use_ner=use_ner)
    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
