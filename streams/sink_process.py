"""The sink process: the four Delta sinks read their topics with a plain Kafka consumer, beside the Faust worker.

Why a process of its own (docs/design.md, "The sinks run beside Faust"): as Faust agents, the sinks made every
clean event cross Faust's consumer twice (once for the join, once for bronze/events) and every step and episode
once more, and their Delta writes ran in threads that competed for the worker's GIL with the event loop, which
was already the bottleneck. Here they read with aiokafka in batches, and build rows and write Delta on the
other core.

Exactly once is the Delta writer's, as before (streams/sink.py): each commit records the last offset per source
partition as an app transaction under the worker's id, and records at or below it are skipped. The consumer
starts each partition it is given right after the offset its table's Delta log records, so Kafka's committed
offsets of the sink group (committed after each Delta commit) only serve `trajlake status`'s lag.

Lifecycle: `trajlake worker` starts this process (`start_sinks`) and ends it on shutdown; the worker exits, with
the sink process's status, as soon as it dies, and the sink process exits as soon as the worker dies (a SIGKILL
included: the kernel's parent-death signal), so there is never a sink without its worker or the reverse.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

from schemas.settings import OUTPUT_MESSAGE_MAX_BYTES, Settings
from streams.sink import SINK_TARGETS, DeltaSinkWriter, Record, by_bytes

log = logging.getLogger("trajlake.sinks")

POLL_MS = 50
# a topic holding this many batches' worth of records not yet written has its partitions paused until it is
# written down: a slow Delta write must not grow the process without bound
HELD_BATCHES = 4
# the status the sink process exits with when a write fails (as the worker's stages: EX_SOFTWARE)
SINKS_FAILED = 70
PR_SET_PDEATHSIG = 1
METADATA_MAX_AGE_MS = 5000


@dataclass
class Batches:
    """Polled records per topic, held until the topic's batch is due: `max_records` of them, or the oldest
    has waited `max_seconds` (the sink's micro-batch bounds, as the Faust agents' `take_events` had them)."""

    max_records: int
    max_seconds: float
    pending: dict[str, list[Record]] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)

    def add(self, records: Iterable[Record], now: float) -> None:
        for r in records:
            held = self.pending.setdefault(r.topic, [])
            if not held:
                self.since[r.topic] = now
            held.append(r)

    def due(self, topic: str, now: float) -> bool:
        held = self.pending.get(topic)
        return bool(held) and (len(held) >= self.max_records or now - self.since[topic] >= self.max_seconds)

    def take(self, topic: str) -> list[Record]:
        """The topic's batch: up to `max_records` records, oldest first; the rest wait for the next."""
        held = self.pending.get(topic, [])
        batch, rest = held[:self.max_records], held[self.max_records:]
        self.pending[topic] = rest
        return batch

    def held(self, topic: str) -> int:
        return len(self.pending.get(topic, ()))

    def drop(self, partitions: set[tuple[str, int]]) -> int:
        """Forget the held records of `partitions` (revoked: their new owner reads them again from Delta's
        offset); returns how many."""
        dropped = 0
        for topic, held in self.pending.items():
            kept = [r for r in held if (r.topic, r.partition) not in partitions]
            dropped += len(held) - len(kept)
            self.pending[topic] = kept
        return dropped


def last_offsets(records: list[Record]) -> dict[int, int]:
    """Partition → the last offset among `records` (all of one topic)."""
    last: dict[int, int] = {}
    for r in records:
        if r.offset > last.get(r.partition, -1):
            last[r.partition] = r.offset
    return last


def write_batch(writer: DeltaSinkWriter, records: list[Record], max_bytes: int) -> dict[int, int]:
    """One topic's batch into its table, a Delta commit per `max_bytes` of values; returns the last offset per
    partition it covers (for the Kafka commit that follows)."""
    for part in by_bytes(records, max_bytes):
        written, skipped = writer.commit(part)
        log.info("sink %s: %d rows written, %d skipped", writer.target.spec.id, written, skipped)
    return last_offsets(records)


def start_sinks(settings: Settings, loglevel: int) -> multiprocessing.process.BaseProcess:
    """Start the sink process (a fresh interpreter: nothing of the worker's threads or Faust state is copied)."""
    proc = multiprocessing.get_context("spawn").Process(target=run_sinks, args=(settings, os.getpid(), loglevel),
                                                        name="trajlake-sinks", daemon=False)
    proc.start()
    return proc


def stop_sinks(proc: multiprocessing.process.BaseProcess, timeout_s: float = 30.0) -> None:
    """Ask the sink process to stop after the write under way (SIGTERM), and wait; killed if it does not stop in
    time (nothing is lost: what it had not written to Delta is read again from Delta's offsets).

    A signal rather than a multiprocessing Event: the Event's semaphores outlive a worker that ends with
    `os._exit` (every fail-fast path), and the resource tracker then warned about them in every such log."""
    proc.terminate()
    proc.join(timeout_s)
    if proc.exitcode is None:
        log.warning("the sink process did not stop within %.0f s; killed", timeout_s)
        proc.kill()
        proc.join()


def exit_status(exitcode: int) -> int:
    """A process's exit code as a shell reports it: a death by signal N is 128 + N."""
    return 128 - exitcode if exitcode < 0 else exitcode


def _die_with(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), and exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the poll loop's parent check below still ends it
        pass
    if os.getppid() != parent_pid:
        os._exit(SINKS_FAILED)


def run_sinks(settings: Settings, parent_pid: int, loglevel: int) -> None:
    """The sink process's body: consume, batch, write to Delta, commit offsets; until SIGTERM."""
    _die_with(parent_pid)
    stop = threading.Event()
    # Ctrl-C reaches the whole process group: the worker stops this process itself, after its own shutdown began
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.basicConfig(level=loglevel, stream=sys.stderr,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] [sinks] %(message)s")
    for name in ("aiokafka", "deltalake"):  # their INFO is per request
        logging.getLogger(name).setLevel(max(loglevel, logging.WARNING))
    try:
        asyncio.run(_consume(settings, parent_pid, stop))
    except Exception:  # noqa: BLE001 — any failure: the worker exits with this status (see the module doc)
        log.critical("a sink failed; the sink process and the worker exit and resume from Delta's offsets "
                     "when restarted", exc_info=True)
        logging.shutdown()
        os._exit(SINKS_FAILED)


async def _consume(settings: Settings, parent_pid: int, stop: threading.Event) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.abc import ConsumerRebalanceListener
    from aiokafka.errors import CommitFailedError, KafkaError

    from lake.writer import app_id, committed_offset

    loop = asyncio.get_running_loop()
    writers = {settings.topic(name): DeltaSinkWriter(settings, target, settings.worker_id)
               for name, target in SINK_TARGETS.items()}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, group_id=settings.sink_group, client_id=settings.sink_group,
        enable_auto_commit=False, auto_offset_reset="earliest",
        # the topics take records up to this size (a dead letter of a ~1 MiB raw record is ~1.4 MB)
        max_partition_fetch_bytes=OUTPUT_MESSAGE_MAX_BYTES, fetch_max_bytes=4 * OUTPUT_MESSAGE_MAX_BYTES,
        session_timeout_ms=int(settings.consumer_session_timeout_seconds * 1000),
        heartbeat_interval_ms=int(max(1.0, settings.consumer_session_timeout_seconds / 10) * 1000),
        # a topic created after the process started is read within seconds, not at the 5-minute refresh
        metadata_max_age_ms=METADATA_MAX_AGE_MS)
    batches = Batches(settings.sink_max_records, settings.sink_max_seconds)
    pool = ThreadPoolExecutor(len(writers), thread_name_prefix="trajlake-sink")
    writing: dict[str, asyncio.Future] = {}
    paused: set[str] = set()
    failed: list[BaseException] = []  # aiokafka logs and swallows a rebalance listener's error: raised below

    async def commit_kafka(topic: str, last: dict[int, int]) -> None:
        try:
            await consumer.commit({TopicPartition(topic, p): o + 1 for p, o in last.items()})
        except (CommitFailedError, KafkaError) as e:  # a rebalance meanwhile: Delta's offsets are the truth
            log.info("sink offsets of %s not committed to Kafka (%s); the next commit covers them", topic, e)

    async def settle(block: bool) -> None:
        """Commit the Kafka offsets of the finished writes (all of them when `block`); a failed write raises."""
        for topic, fut in list(writing.items()):
            if block or fut.done():
                del writing[topic]
                await commit_kafka(topic, await fut)

    class StartFromDelta(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: Any) -> None:
            try:
                await settle(block=True)  # no write of a partition may still run once another process can own it
            except Exception as exc:  # noqa: BLE001
                failed.append(exc)
            dropped = batches.drop({(tp.topic, tp.partition) for tp in revoked})
            if dropped:
                log.info("%d records of revoked partitions dropped; their new owner reads them again", dropped)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            paused.clear()  # a new assignment starts unpaused
            starts = {}
            for tp in assigned:
                table = writers[tp.topic].table
                await loop.run_in_executor(pool, table.update_incremental)
                done = committed_offset(table, app_id(settings.worker_id, tp.topic, tp.partition))
                if done >= 0:
                    consumer.seek(tp, done + 1)
                starts[f"{tp.topic}[{tp.partition}]"] = done + 1 if done >= 0 else "group's offset"
            # where each partition starts is what a lost or doubled row would be traced back to
            log.info("sinks read %s", " ".join(f"{k}@{v}" for k, v in sorted(starts.items())) or "nothing")

    consumer.subscribe(topics=list(writers), listener=StartFromDelta())
    await consumer.start()
    log.info("sink process started (group %s)", settings.sink_group)
    try:
        while not stop.is_set():
            if os.getppid() != parent_pid:  # the worker is gone (where no parent-death signal exists)
                log.warning("the worker is gone; the sink process exits")
                return
            polled = await consumer.getmany(timeout_ms=POLL_MS, max_records=settings.sink_max_records)
            if failed:
                raise failed[0]
            now = time.monotonic()
            for tp, messages in polled.items():
                batches.add((Record(m.topic, m.partition, m.offset, m.value or b"") for m in messages), now)
            await settle(block=False)
            for topic, writer in writers.items():
                if topic not in writing and batches.due(topic, now):
                    writing[topic] = loop.run_in_executor(pool, write_batch, writer, batches.take(topic),
                                                          settings.sink_max_bytes)
                full = batches.held(topic) >= HELD_BATCHES * settings.sink_max_records
                if full != (topic in paused):
                    parts = [tp for tp in consumer.assignment() if tp.topic == topic]
                    (consumer.pause if full else consumer.resume)(*parts)
                    (paused.add if full else paused.discard)(topic)
        await settle(block=True)  # what is being written finishes; what is only held is read again next time
    finally:
        await consumer.stop()
        pool.shutdown(wait=True)
        log.info("sink process stopped")
