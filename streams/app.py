"""The Faust app: ingest (parse ▸ validate ▸ scrub → clean | dead letter), join (→ steps, episodes); the worker
that runs it beside the Delta sinks' process (streams/sink_process.py)."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import weakref
from functools import partial, wraps
from typing import Any, Awaitable, Callable, Mapping, NoReturn

import faust
import orjson

from privacy import worker as scrub_worker
from privacy.scrub import SessionDictionaries, SessionDictionary
from schemas.contract import ContractError, Reason
from schemas.settings import OUTPUT_MESSAGE_MAX_BYTES, Settings
from streams.dedup import BronzeEventIds, Claims, Duplicate, SeenEvents, drop_seen, event_date
from streams.faust_consumer import (QuietMonitor, head_unacked, install_commit_guard, install_eager_dispatch,
                                    install_fair_fetch, request_seek_back)
from streams.stalls import STALL_CHECK_SECONDS, STALL_TICKS, StallWatch
from streams.ingest import DeadLetter, SourceRecord, check_record, clean_event, clean_record, dead_letter, now_iso
from streams.join import (DueIndex, Folded, Timeouts, delivered, evaluate, expired, fold_event, new_session, next_due, outbox,
                          refusal_detail, stage, tick)
from streams.scrubbing import ScrubPool
from streams.sink import SINK_TARGETS

log = logging.getLogger("trajlake.worker")

INGEST_BATCH, INGEST_WITHIN = 500, 0.25
# the most records one poll of the worker's consumer hands out (Faust's default: every record buffered)
POLL_RECORDS = 1000
# ingest batches waiting in the scrub processes behind the one being collected (streams/scrubbing.py::ScrubPool)
SCRUB_AHEAD = 2
# The timer re-reads the whole join table after a rebalance and, as a backstop for its index, this often.
FULL_SCAN_SECONDS = 600.0
# ... this long at a time, letting the event loop serve the join in between
SCAN_SLICE_SECONDS = 0.02
# Producer batches: up to this many bytes per partition, waiting up to this long for more records. Each batch's
# flush waits out the linger: 5 ms against the ~1 s sink interval.
PRODUCER_BATCH_BYTES, PRODUCER_LINGER_SECONDS = 512 * 1024, 0.005
# The worker's exit status when an agent, a stage or the timer fails (EX_SOFTWARE): see _fail_fast.
WORKER_FAILED = 70
# how long a thread holds the interpreter lock before another may take it (Python's default is 5 ms): run_worker
GIL_SWITCH_SECONDS = 0.001
# how often the worker looks whether its sink process is still running
SINKS_CHECK_SECONDS = 0.5


def build_app(settings: Settings, *, use_ner: bool = True) -> faust.App:
    """The worker's Faust app. Agents only iterate, call the pure core, and send."""
    datadir = (settings.state_dir / "faust").resolve()
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.worker_id,
        broker=f"kafka://{settings.bootstrap}",
        store="rocksdb://",
        datadir=str(datadir),
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=True,  # for the join table's changelog; DESIGN's topics come from `trajlake up`
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=8192,
        broker_session_timeout=settings.consumer_session_timeout_seconds,
        broker_heartbeat_interval=max(1.0, settings.consumer_session_timeout_seconds / 10),
        # a revoke waits for the events in flight to be acked, which can take a scrub batch's timeout and its
        # retry: past Faust's default of 60 s (the scrub timeout is 120 s) the worker was removed from the group
        # while still delivering, and the partition's next owner scrubbed and saved the same sessions beside it
        broker_rebalance_timeout=max(60.0, 2 * settings.scrub_timeout_seconds + 30),
        # a dead letter of a ~1 MiB raw record is ~1.4 MB: sends of that size must not fail (schemas/settings.py)
        producer_max_request_size=OUTPUT_MESSAGE_MAX_BYTES,
        consumer_max_fetch_size=OUTPUT_MESSAGE_MAX_BYTES,
        # records per poll: with no cap one poll held a raw backlog of 16 MiB fetches, and the join's records
        # waited behind all of it (with `install_fair_fetch`, polls take partitions in turn)
        broker_max_poll_records=POLL_RECORDS,
        # every valid event is one send: with Faust's 16 KiB batches and no linger, a batch of 500 clean records
        # went out as dozens of produce requests (socket writes were ~9% of the event loop's time)
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        producer_linger=PRODUCER_LINGER_SECONDS,
        monitor=QuietMonitor(),  # the per-event statistics serve Faust's web views, which are off
    )
    lose_once = None
    if settings.lose_record_once:  # fault injection (schemas/settings.py)
        name, partition, offset = settings.lose_record_once.split(":")
        lose_once = (settings.topic(name), int(partition), int(offset))
    # ~half the cost of Faust's consumer loop per message (streams/faust_consumer.py)
    if install_eager_dispatch(app, lose_once=lose_once):
        # no commit past an unacked record at the head (faust-streaming #606); the stall watch, which comes with
        # the eager drain loop, seeks such a hole back
        install_commit_guard(app.consumer)
    # a backlog on the raw topics must not starve the join of the clean topic's records (streams/faust_consumer.py)
    install_fair_fetch()
    raw = app.topic(settings.topic("frontend.raw"), settings.topic("agent.raw"),
                    key_serializer="raw", value_serializer="raw")
    clean = app.topic(settings.topic("events.clean"), key_serializer="raw", value_serializer="raw")
    dead = app.topic(settings.topic("deadletter"), key_serializer="raw", value_serializer="raw")
    steps = app.topic(settings.topic("steps"), key_serializer="raw", value_serializer="raw")
    episodes = app.topic(settings.topic("episodes"), key_serializer="raw", value_serializer="raw")
    # per-session join state (RocksDB, changelog-backed). Keys are raw session_id bytes (key_type=bytes) and
    # use_partitioner=True, so a
    # session's state lives in the same partition number as its events (the producer's murmur2 of the same key).
    join_state = app.Table("join-state", default=None, key_type=bytes,
                           partitions=settings.topic_partitions, use_partitioner=True,
                           extra_topic_configs={"max.message.bytes": str(OUTPUT_MESSAGE_MAX_BYTES)})
    # per-session scrub dictionaries (the PII values a session's structured fields revealed, with their
    # placeholders), changelog-backed and partitioned like the session's events, so a restart or a rebalance
    # keeps them: in memory only, a restarted worker let a name through that the session had already revealed
    # (docs/privacy.md). The changelog holds PII like the raw topics do, and deletes it like them: an entry is
    # re-saved at least once per retention while its session is active, dropped by the sweep after twice that
    # idle, and Kafka deletes what is older than that.
    dictionary_lifetime = 2 * settings.join_retention_seconds
    dictionaries = app.Table("scrub-dictionaries", default=None, key_type=bytes,
                             partitions=settings.topic_partitions, use_partitioner=True,
                             extra_topic_configs={"max.message.bytes": str(OUTPUT_MESSAGE_MAX_BYTES),
                                                  "cleanup.policy": "compact,delete",
                                                  "retention.ms": str(int((dictionary_lifetime + 3600) * 1000)),
                                                  # Kafka deletes and compacts closed segments only: roll hourly,
                                                  # and compact a swept session's older records within the hour
                                                  "segment.ms": "3600000", "max.compaction.lag.ms": "3600000"})
    # one per table: the join (and the timer, under the same lock) waits for the states' records, ingest for
    # the dictionaries'; taking another stage's records would leave that stage to ack without them
    state_sends = ChangelogSends(app.conf.producer_request_timeout, join_state)
    dictionary_sends = ChangelogSends(app.conf.producer_request_timeout, dictionaries)
    known: list[bool] = [False]
    partitions = KeyPartitions()

    def aiokafka_producer() -> Any:
        return app.producer._ensure_producer()  # under Faust's Producer: its metadata, `partitions_for`

    async def changelogs_known() -> None:
        """Have the producer fetch the tables' changelog topics' metadata before their first write.

        Faust sends a table's changelog record with `send_soon`, which picks the partition (`use_partitioner`)
        from the producer's metadata without waiting for it: a table written before the producer had sent
        anything to its changelog topic raised a TypeError (no partitions known), and the stage failed."""
        if not known[0]:
            for table in (join_state, dictionaries):  # `partitions_for` waits for the metadata
                await aiokafka_producer().partitions_for(table.changelog_topic.get_topic_name())
            known[0] = True

    timeouts = Timeouts(step_s=settings.step_timeout_seconds, episode_s=settings.episode_timeout_seconds,
                        grace_s=settings.episode_grace_seconds, retention_s=settings.join_retention_seconds)
    families = {settings.topic("frontend.raw"): "frontend", settings.topic("agent.raw"): "agent"}
    contexts = SessionDictionaries()
    scrubbers = ScrubPool(scrub_worker.scrub, scrub_worker.init, (settings, use_ner), settings.scrub_processes,
                          settings.scrub_timeout_seconds)

    clean_topic = settings.topic("events.clean")
    raw_topics = {settings.topic("frontend.raw"), settings.topic("agent.raw")}
    seen = SeenEvents(settings.dedup_max_keys)
    bronze_ids = BronzeEventIds(settings)
    claims = Claims()  # the events passed on in batches not yet delivered
    read_at = [float("-inf")]

    async def load_seen(dates: set) -> None:
        """Hold every id bronze/events has for `dates`: read the dates not held yet, and the files written since
        the last read once `dedup_refresh_seconds` have passed (in a thread: the event loop keeps serving)."""
        now = time.monotonic()
        if dates <= seen.dates.keys() and now - read_at[0] < settings.dedup_refresh_seconds:
            return
        listing = await asyncio.to_thread(bronze_ids.listing)
        # the dates of batches in flight stay too: their keys are added when they are delivered
        seen.absorb(await asyncio.to_thread(bronze_ids.read, seen.unread(listing, dates)),
                    dates | claims.dates())
        read_at[0] = now

    @app.agent(raw, name="ingest")
    @_exits_on_failure("the ingest agent")
    async def ingest(stream: faust.StreamT) -> None:
        """Parse and validate here, scrub in the pool, deliver in order; the three overlap.

        Awaiting the scrub process inside the batch loop left the event loop idle while the process worked and
        the process idle while the loop parsed and sent. Now this loop parses batch k+1 and sends it to the scrub
        processes while they still work on batch k and earlier (each process keeps the dictionaries of the
        sessions it owns, so batch k+1 need not wait for batch k's), `scrubbing` collects the batches in order and
        saves their dictionaries, and `delivering` sends them. An event is acked only once its clean record or
        dead letter is flushed to the broker: at least once, as before.
        """
        producer = app.producer
        # batches sent to the scrub processes and not collected yet, besides the one being collected: the
        # processes take each batch behind the last without waiting for it to come back
        to_scrub: asyncio.Queue = asyncio.Queue(maxsize=SCRUB_AHEAD)
        # two: scrubbing, the serial stage, goes on to the next batch while delivery still waits for a flush
        to_deliver: asyncio.Queue = asyncio.Queue(maxsize=2)

        async def scrubbing() -> None:
            while True:
                events, records, checked, keys, homes, pending = await to_scrub.get()
                results, back = await scrubbers.collect(pending)
                if back:
                    # the caller's copies (`contexts`) are the ones saved: they carry when each was saved last
                    before: dict[str, int] = {}
                    for sid, d in back.items():
                        held = contexts.get(sid)
                        if held is not None:
                            before[sid] = held.changes
                            d.saved_at = max(d.saved_at, held.saved_at)
                    contexts.put(back)
                    # before the batch's acks: `delivering` flushes the producer, changelog records included
                    save_dictionaries(back, before, homes)
                await to_deliver.put((events, records, checked, keys, results))

        async def delivering() -> None:
            while True:
                events, records, checked, keys, results = await to_deliver.get()
                scrubbed = iter(results)
                ingested_at = now_iso()
                # the topic's partitions as the producer knows them (it fetched them for the first send)
                clean_partitions = aiokafka_producer()._metadata.partitions_for_topic(clean_topic)
                batches = PartitionBatches(aiokafka_producer(), clean_topic) if clean_partitions else None
                sent: list[Awaitable[Any]] = []
                passed: list[tuple[bytes, Any]] = []
                duplicates = 0
                for rec, c, key in zip(records, checked, keys):
                    if isinstance(c, DeadLetter):
                        sent.append(await dead.send(key=rec.key, value=c.to_json()))
                        continue
                    s = next(scrubbed)
                    goes = claims.settle(c, key, not isinstance(s, str))
                    if isinstance(c, Duplicate) and goes is None:
                        duplicates += 1
                    elif isinstance(s, str):
                        dl = dead_letter(rec, ContractError(Reason.scrub_failed, s), "scrub", c["event_id"])
                        sent.append(await dead.send(key=rec.key, value=dl.to_json()))
                    else:
                        c, key = goes
                        passed.append((key, event_date(c)))
                        # the hottest send in the worker (every valid event): in a batch per partition, not
                        # through Faust's Topic.send (~10x the cost per record) or a future per record
                        session = s["event"]["session_id"].encode()
                        value = clean_record(s["event"], rec, ingested_at, s["policy_version"], s["user_ref"])
                        if batches is None:  # the topic's partitions not known yet: the producer finds them
                            sent.append(await producer.send(clean_topic, session, value, None, None, None))
                        else:
                            await batches.add(partitions.of(session, clean_partitions), session, value)
                if batches is not None:
                    sent += await batches.send()
                saved = dictionary_sends.take()  # this batch's dictionaries among them (saved in `scrubbing`)
                await producer.flush()
                # flush() returns when the sends are done, failed ones included: each send's own result says
                # whether the broker has the record, and an event is acked only if it does
                await asyncio.gather(*sent)
                await dictionary_sends.confirmed(saved)
                for key, d in passed:
                    seen.add(key, d)
                claims.release(keys)
                if duplicates:
                    log.info("ingest: %d duplicate events dropped (their ids are in bronze/events or were passed on "
                             "already)", duplicates)
                for e in events:
                    await stream.ack(e)

        await changelogs_known()
        stages = [asyncio.ensure_future(scrubbing()), asyncio.ensure_future(delivering())]
        for task in stages:  # said at once: with no new batch, the agent would only notice at the next one
            task.add_done_callback(_on_stage_failure)
        try:
            async for events in stream.noack_take(INGEST_BATCH, within=INGEST_WITHIN):
                records = [_source(e) for e in events]
                checked = [check_record(r, families) for r in records]
                dates = [None if isinstance(c, DeadLetter) else event_date(c) for c in checked]
                await load_seen({d for d in dates if d is not None})
                checked, keys = drop_seen(checked, dates, seen, claims)
                # duplicates too, in their places: if the first copy's dictionary was lost with a crash before its
                # save was confirmed, the copy teaches it again (and numbers placeholders as the first did)
                valid = [c.event if isinstance(c, Duplicate) else c for c in checked if not isinstance(c, DeadLetter)]
                homes = dictionary_homes(records, checked)
                pending = await scrubbers.submit(valid, partial(supply_dictionaries, homes))
                await _put_unless_failed(to_scrub, (events, records, checked, keys, homes, pending), stages)
        finally:
            for task in stages:
                task.cancel()

    def dictionary_homes(records: list[SourceRecord], checked: list[Any]) -> dict[str, int]:
        """Session id → the partition its saved dictionary lives in, for the sessions whose records are keyed by
        their session id (the contract for producers; the table's partition is the key's, like the topic's). A
        session keyed otherwise keeps its dictionary in memory only."""
        events = ((rec, c.event if isinstance(c, Duplicate) else c) for rec, c in zip(records, checked)
                  if not isinstance(c, DeadLetter))
        return {c["session_id"]: rec.partition for rec, c in events if rec.key == c["session_id"].encode()}

    def supply_dictionaries(homes: dict[str, int], ids: list[str]) -> dict[str, SessionDictionary]:
        """The dictionaries a scrub process does not hold: the worker's copies, else the saved ones, else new ones;
        held from now on, so the collected copy can tell what the batch changed."""
        got = contexts.take(ids, partial(load_dictionary, homes))
        contexts.put(got)
        return got

    def load_dictionary(homes: dict[str, int], sid: str) -> SessionDictionary | None:
        partition = homes.get(sid)
        saved = None if partition is None else _table_get(dictionaries, sid.encode(), partition)
        if saved is None:
            return None
        return SessionDictionary.from_state(saved["d"])

    def save_dictionaries(sessions: dict[str, SessionDictionary], before: dict[str, int],
                          homes: dict[str, int]) -> None:
        wall = time.time()
        for sid, d in sessions.items():
            partition = homes.get(sid)
            if partition is None:
                continue
            # changed, or unchanged for a retention: re-saved so the sweep and Kafka keep an active session's
            if d.changes != before.get(sid) or wall - d.saved_at > settings.join_retention_seconds:
                d.saved_at = wall
                _table_set(dictionaries, sid.encode(), {"d": d.to_state(), "p": partition}, partition)

    async def sweep_dictionaries(active: set[int]) -> None:
        """Delete the saved dictionaries of sessions idle for `dictionary_lifetime`, once ingest has read its raw
        partitions to their end (`raw_caught_up`).

        Idle is the wall clock since a dictionary's last save, which says nothing of a backlog: after a stop of
        a few hours every saved copy is old, and a session whose next events were still waiting in the raw
        topics lost its dictionary, so a name it had revealed passed in free text when they came."""
        tps = [tp for tp in app.consumer.assignment() if tp.topic in raw_topics]
        if not tps:
            return
        ends = await app.consumer.highwaters(*tps)
        if not raw_caught_up(ends, {tp: app.consumer._read_offset.get(tp) for tp in tps}, SWEEP_MAX_BEHIND):
            log.info("scrub dictionaries: sweep deferred, ingest is still reading a backlog")
            return
        horizon = time.time() - dictionary_lifetime

        def sweep(key: bytes, saved: dict) -> None:
            # a session in a batch still in the scrub processes is not idle (a worker restarted after a long stop
            # finds every saved copy old): deleting its copies would start its next batch afresh
            if saved["d"]["saved_at"] < horizon and not scrubbers.forget([key.decode()]):
                _table_set(dictionaries, key, None, saved["p"], delete=True)
                contexts.pop(key.decode(), None)  # or the session's next event would save it again

        await visit_table(dictionaries, active, sweep)

    # The join agent and the timeout timer both read-modify-write session state and await in between;
    # one lock keeps their updates from overwriting each other.
    state_lock = asyncio.Lock()
    saves = [0]
    index = DueIndex(timeouts, FULL_SCAN_SECONDS)

    def note_due(sessions: dict[bytes, tuple[int, dict]]) -> None:
        for key, (partition, state) in sessions.items():
            index.note(key, partition, state)

    async def save_and_deliver(sessions: dict[bytes, tuple[int, dict]]) -> None:
        """Persist each session's state with its outbox, publish the outbox, wait for the acks, then clear it.

        Faust is at-least-once and its RocksDB store writes locally at once, so without the outbox a crash
        between "state says emitted" and "the broker has the row" loses the row: the redelivered input is a
        duplicate to the state and emits nothing. With it, the rows are re-sent after a restart and the silver
        sinks drop the repeats by (key, revision).
        """
        futures = []
        for key, (partition, state) in sessions.items():
            state["p"] = partition
            _table_set(join_state, key, state, partition)
            for e in outbox(state):
                futures.append(await (steps if e.kind == "step" else episodes).send(key=key, value=orjson.dumps(e.row)))
        saved = state_sends.take()
        if not futures:
            if saved:  # the states, before the batch is acked: a lost one would lose its events at a rebalance
                await app.producer.flush()
                await state_sends.confirmed(saved)
            return
        saves[0] += 1
        if settings.crash_after_join_saves and saves[0] >= settings.crash_after_join_saves:
            os._exit(137)  # fault injection: the state (with its outbox) is saved locally, nothing delivered yet
        await app.producer.flush()
        await asyncio.gather(*futures)
        await state_sends.confirmed(saved)
        for key, (partition, state) in sessions.items():
            if state.get("outbox"):
                delivered(state)
                _table_set(join_state, key, state, partition)

    async def send_dead_letters(letters: list[DeadLetter]) -> None:
        futures = [await dead.send(key=dl.original_key, value=dl.to_json()) for dl in letters]
        await app.producer.flush()
        await asyncio.gather(*futures)

    @app.agent(clean, name="join")
    @_exits_on_failure("the join agent")
    async def join(stream: faust.StreamT) -> None:
        max_bytes = settings.join_state_max_bytes
        refusals = {Folded.state_full: Reason.session_state_full, Folded.forgotten: Reason.task_forgotten}
        await changelogs_known()
        async for events in stream.take_events(INGEST_BATCH, within=INGEST_WITHIN):
            async with state_lock:
                touched: dict[bytes, tuple[int, dict]] = {}
                folded: set[bytes] = set()
                refused: list[DeadLetter] = []
                wall = time.time()
                for e in events:
                    event = clean_event(e.value)
                    key = event["session_id"].encode()
                    partition = e.message.partition
                    state = touched[key][1] if key in touched else (
                        _table_get(join_state, key, partition) or new_session())
                    touched[key] = (partition, state)
                    result = fold_event(state, event, wall, max_bytes, timeouts)
                    if result is Folded.folded:
                        folded.add(key)
                    elif result in refusals:
                        refused.append(dead_letter(
                            _source(e), ContractError(refusals[result],
                                                      refusal_detail(result, state, event, max_bytes)),
                            "join", event["event_id"]))
                # a session whose events were all duplicates or refused is as it was: not saved again (a full
                # one would rewrite megabytes to the changelog per batch)
                changed = {key: touched[key] for key in folded}
                for _, state in changed.values():
                    stage(state, evaluate(state, wall, timeouts))
                await save_and_deliver(changed)
                note_due(changed)
                if refused:
                    # before the batch is acked: a crash first means a redelivery, refused again (the state
                    # never took it) and dead-lettered again; the dead-letter sink keeps one row per source offset
                    await send_dead_letters(refused)
                    log.warning("join: %d events refused (dead-lettered): their sessions' state is full or their "
                                "tasks were forgotten", len(refused))

    def active_partitions() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == clean_topic}

    def settling() -> bool:
        # while Faust rebalances or restores tables, the table may hold partly restored sessions, and partitions
        # may be on their way to another worker: closing a session now could emit a "timeout" row that the
        # complete one can no longer replace
        return bool(app.rebalancing or app.in_recovery)

    async def visit_table(table: Any, active: set[int], visit: Callable[[bytes, dict], None]) -> bool:
        """`visit(key, value)` for every entry of the active partitions (not a standby partition's), yielding to
        the event loop every few milliseconds: deserialising a whole table in one go held the loop, and the
        join, for as long as it took. False if a rebalance began meanwhile (the walk stops there)."""
        keys = list(table.keys())  # at once: the store's partition map may change while the walk yields
        since = time.monotonic()
        for key in keys:
            if time.monotonic() - since > SCAN_SLICE_SECONDS:
                await asyncio.sleep(0)
                since = time.monotonic()
                if settling():
                    return False
            value = table.get(key)
            if value is not None and value.get("p") in active:
                visit(key, value)
        return True

    async def scan_join_table(active: set[int]) -> bool:
        """Index every session of the active partitions (`DueIndex`)."""
        index.start_scan(active, time.time())
        if await visit_table(join_state, active, lambda key, state: index.scanned(key, state["p"], state)):
            return True
        index.abandon_scan()
        return False

    @_exits_on_failure("the join timer")
    async def close_timed_out() -> None:
        """Close timed-out steps and episodes, forget past retention, and re-send outboxes left by a crash."""
        if settling():
            return
        active = active_partitions()
        await changelogs_known()
        if index.needs_scan(active, time.time()):
            if not await scan_join_table(active):
                return
            await sweep_dictionaries(active)
        async with state_lock:
            # the lock may have been held across a whole rebalance: partitions indexed before it may be gone
            if settling() or active_partitions() != index.active:
                return
            wall = time.time()
            changed: dict[bytes, tuple[int, dict]] = {}
            for key, partition in index.due_now(wall, active):
                state = _table_get(join_state, key, partition)
                if state is None:
                    index.forget(key)
                    continue
                if next_due(state, timeouts) <= wall:
                    stage(state, tick(state, wall, timeouts))
                    if expired(state, wall, timeouts):
                        _table_set(join_state, key, None, partition, delete=True)
                        index.forget(key)
                        continue
                    if state.get("outbox") or state.get("dirty"):
                        changed[key] = (partition, state)
                index.note(key, partition, state)
            await save_and_deliver(changed)
            note_due(changed)

    app.timer(interval=settings.join_tick_seconds)(close_timed_out)
    app.join_timer_tick = close_timed_out  # one tick, for tests

    if settings.compact_interval_seconds > 0:
        @app.timer(interval=settings.compact_interval_seconds)
        async def compact_closed() -> None:
            """Small files of closed date partitions → few large ones, off the event loop."""
            from lake.compaction import compact_closed_partitions

            loop = asyncio.get_running_loop()
            for target in SINK_TARGETS.values():
                try:
                    done = await loop.run_in_executor(None, partial(
                        compact_closed_partitions, settings, target.spec, min_files=settings.compact_min_files))
                except Exception as exc:  # a concurrent compaction by another worker: the next pass retries
                    log.warning("compacting %s failed, will retry: %s", target.spec.id, exc)
                    continue
                if done.partitions:
                    log.info("compacted %s: %d partitions, %d files → %d", target.spec.id, len(done.partitions),
                             done.files_removed, done.files_added)

    _seek_before_streaming(app)

    @app.on_before_shutdown.connect  # type: ignore[misc]
    async def _stop_pool(*_: Any, **__: Any) -> None:
        scrubbers.shutdown()

    @app.on_partitions_revoked.connect  # type: ignore[misc]
    async def _forget_dictionaries_held(*_: Any, **__: Any) -> None:
        # a session's partition may come back after another worker had it and saved newer dictionaries: the
        # in-memory copies would win over the table and miss what that worker learnt. The table is the truth;
        # after a rebalance every session is loaded from it again.
        contexts.clear()
        scrubbers.forget_all()

    return app


# records a raw partition may still have unread for ingest to count as caught up (two batches' worth)
SWEEP_MAX_BEHIND = 2 * INGEST_BATCH


def raw_caught_up(ends: Mapping[Any, int | None], read: Mapping[Any, int | None], max_behind: int) -> bool:
    """Whether every partition's last read offset is within `max_behind` records of its end (`ends`: the next
    offset to be written; `read`: the last offset read, None when none has been)."""
    for tp, end in ends.items():
        if end is None:
            return False
        last = read.get(tp)
        if end - (0 if last is None else last + 1) > max_behind:
            return False
    return bool(ends)


def _fail_fast(what: str, exc: BaseException) -> NoReturn:
    """Log the failure and end the process at once: no offset is committed past an event whose output is not
    known to be in Kafka or Delta.

    Faust would restart a crashed agent in the same process, and its `take_events` acks a batch even when
    processing it raised; the restarted agent then acks newer events, and Faust's commit can step over an
    un-acked offset (it lets a gap of one through, and any gap while nothing is committed yet). Exiting without
    unwinding (os._exit: no `finally` runs, so nothing more is acked) hands recovery to the restart that every
    crash already relies on: from the committed offsets, the Delta app transactions and the join's outboxes.
    """
    log.critical("%s failed; the worker exits (status %d) and resumes from its last commits when restarted",
                 what, WORKER_FAILED, exc_info=exc)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    _exit(WORKER_FAILED)


_exit = os._exit  # tests replace it


def _exits_on_failure(what: str) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    """An agent's or timer's body, ending the worker on any error (`_fail_fast`); cancellation passes."""
    def wrap(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @wraps(fn)
        async def guarded(*args: Any, **kwargs: Any) -> None:
            try:
                await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 — every error: see _fail_fast
                _fail_fast(what, exc)
        return guarded
    return wrap


def _on_stage_failure(task: asyncio.Future) -> None:
    """An ingest stage's done callback: a failed stage ends the worker at once, not at the agent's next batch
    (with no new batch, the agent would never notice)."""
    if not task.cancelled() and task.exception() is not None:
        _fail_fast("an ingest stage", task.exception())


async def _put_unless_failed(queue: asyncio.Queue, item: Any, stages: list[asyncio.Future]) -> None:
    """Put `item` on a bounded queue, raising at once if a stage that drains it has failed (instead of waiting
    forever for room)."""
    put = asyncio.ensure_future(queue.put(item))
    done, _ = await asyncio.wait([put, *stages], return_when=asyncio.FIRST_COMPLETED)
    for task in stages:
        if task in done:
            put.cancel()
            task.result()  # raises the stage's error
            raise RuntimeError("an ingest stage stopped")
    await put


def _seek_before_streaming(app: faust.App) -> None:
    """Resume stream partitions only after Faust has sought them to their committed offsets and cleared its
    stream buffers.

    faust-streaming (0.15.3, tables/recovery.py) resumes the stream partitions and *then* awaits the seek to
    committed offsets, with flow already running. Records fetched in between reach the streams' queues, which
    are cleared when flow resumes; the seek should bring them back, but (a) aiokafka's seek_to_committed skips
    offset 0, and (b) the consumer's drain loop, having already passed later offsets from the stale fetch,
    drops the re-fetched ones as "already read". Either way a restarted worker silently lost events (our crash
    tests caught it), and Faust then never commits past the hole. Holding the stream partitions paused until
    the seek is done, and seeking offset 0 explicitly, closes both paths.

    And the resume waits for the clearing too. Faust's `flow_control.resume()`, called right after that seek,
    empties every stream buffer, whatever it holds. Resumed at the end of the seek (as this did at first),
    a partition's first records could be fetched and handed out in the moment before that call, and be
    cleared with the buffers: offsets the drain loop had passed, so never read again. A one-offset hole Faust's
    commit then stepped over; a longer tail was lost until the next rebalance. The group handover test caught
    it under load (docs/design.md, "Six faust-streaming traps", 1).
    """
    consumer = app.consumer
    resume, seek_to_committed, perform_seek = (consumer.resume_partitions, consumer.seek_to_committed,
                                               consumer.perform_seek)
    flow_control = app.flow_control
    resume_flow_control = flow_control.resume
    held: set = set()
    sought = [False]  # a seek to committed offsets has run since the partitions held were asked to resume
    dispatched: dict = getattr(consumer, "trajlake_dispatched", {})  # kept by the eager drain loop, if installed
    watch = StallWatch()

    def resume_partitions(tps: Any) -> None:
        tps = set(tps)
        streams = {tp for tp in tps if not tp.topic.endswith("-changelog")}
        if streams:
            held.update(streams)
            sought[0] = False
        if tps - streams:
            resume(tps - streams)

    async def seek_to_committed_really() -> Any:
        committed = await seek_to_committed()
        for tp, offset in committed.items():
            if offset == 0:
                # in the consumer's own thread: aiokafka's seek wakes its fetcher through that thread's loop
                await consumer._thread.call_thread(consumer._thread.seek, tp, 0)
            dispatched.pop(tp, None)  # read again from here: what was handed out before is the stall watch's past
        consumer.trajlake_resumed_at = dict(committed)  # before a partition's first commit (head_unacked)
        getattr(consumer, "trajlake_seek_back", {}).clear()  # asked for before the rebalance: moot now
        watch.reset()
        # where each stream partition resumes is what a lost or repeated event would be traced back to
        log.info("streams resume at %s", " ".join(f"{tp.topic}[{tp.partition}]@{o}" for tp, o in
                                                  sorted(committed.items()) if not tp.topic.endswith("-changelog")))
        return committed

    async def perform_seek_noting_it() -> None:
        await perform_seek()
        sought[0] = True

    def resume_flow_control_then_streams() -> None:
        resume_flow_control()  # empties the stream buffers
        if held and sought[0]:
            tps = set(held) & consumer.assignment()
            held.clear()
            resume(tps)

    consumer.resume_partitions = resume_partitions
    consumer.seek_to_committed = seek_to_committed_really
    consumer.perform_seek = perform_seek_noting_it
    flow_control.resume = resume_flow_control_then_streams

    if not hasattr(consumer, "trajlake_dispatched"):
        return  # upstream's drain loop keeps no per-partition record of what it handed out: no stall watch

    @app.timer(interval=STALL_CHECK_SECONDS)
    async def seek_stalled_partitions() -> None:
        """streams/stalls.py: a partition with records waiting that the consumer stopped handing out, or whose
        commit waits on a record that never reached the streams, is sought back to its committed offset."""
        if app.rebalancing or not consumer.flow_active:
            watch.reset()
            return
        streams = [tp for tp in consumer.assignment() if not tp.topic.endswith("-changelog")]
        if not streams:
            return
        try:
            ends = await consumer.highwaters(*streams)
        except Exception as exc:  # noqa: BLE001 — a broker hiccup: the next tick asks again
            log.info("stall watch: end offsets not read (%r)", exc)
            return
        if app.rebalancing or not consumer.flow_active:
            watch.reset()
            return
        busy = any(agent.channel.queue.qsize() for agent in app.agents.values())
        committed = consumer._committed_offset
        for tp in watch.tick(dispatched, committed, ends, busy):
            start = committed.get(tp)
            start = start if start is not None else dispatched.get(tp, -1) + 1
            log.warning("stream partition %s[%d] has records up to offset %d, but none was handed to the streams "
                        "for %.0f s while the worker was idle (active %s, paused %s, buffered %s, last handed out "
                        "%s): sought back to its committed offset %d", tp.topic, tp.partition, ends[tp] - 1,
                        STALL_TICKS * STALL_CHECK_SECONDS, tp in consumer._get_active_partitions(),
                        tp in consumer._paused_partitions, tp in consumer._buffered_partitions,
                        dispatched.get(tp), start)
            try:
                resume([tp])
                await consumer._thread.call_thread(consumer._thread.seek, tp, start)
            except Exception as exc:  # noqa: BLE001 — e.g. a rebalance took it meanwhile (and seeks it)
                log.info("stall watch: %s[%d] not sought (%r)", tp.topic, tp.partition, exc)
                watch.reset()
                return
            consumer._read_offset[tp] = start
            dispatched.pop(tp, None)

        if getattr(consumer, "_commit_fut", None) is not None:
            return  # a commit under way has trimmed the acked offsets but not yet moved the committed one
        heads = {tp: offset for tp in streams if (offset := head_unacked(consumer, tp)) is not None}
        seek, gaps = watch.holes(heads, consumer.trajlake_first_after_seek, busy)
        for tp in gaps:
            log.warning("stream partition %s[%d]: offset %d holds no record (sought back to it, the fetch started "
                        "past it); marked as a gap so the commit can pass it", tp.topic, tp.partition, heads[tp])
            consumer._gap[tp].addi(heads[tp], heads[tp] + 1)
        for tp in seek:
            log.warning("stream partition %s[%d]: the record at offset %d never reached the streams while later "
                        "ones were processed (Faust would have committed over it: faust-streaming #606); seeking "
                        "back to it", tp.topic, tp.partition, heads[tp])
            request_seek_back(consumer, tp, heads[tp])


class KeyPartitions:
    """The partition the producer's default partitioner gives a key (murmur2, as Kafka's Java and Python clients
    hash), remembered per key.

    Every clean record is keyed by its session id, and aiokafka computes the hash in pure Python for each send
    (~5% of the event loop on structural events); a session sends many events. The partition is passed to the
    send, so it must be exactly the partitioner's: the join's table changelog (`use_partitioner`) puts a session's
    state where the partitioner puts its key. Remembered with the partition count it was computed for, so a topic
    given more partitions is hashed again; at most `max_keys` keys, then forgotten at once.
    """

    def __init__(self, max_keys: int = 100_000):
        self.max_keys = max_keys
        self.known: dict[bytes, tuple[int, int]] = {}

    def of(self, key: bytes, partitions: Any) -> int:
        n = len(partitions)
        hit = self.known.get(key)
        if hit is not None and hit[0] == n:
            return hit[1]
        from aiokafka.partitioner import murmur2

        partition = sorted(partitions)[(murmur2(key) & 0x7FFFFFFF) % n]
        if len(self.known) >= self.max_keys:
            self.known.clear()
        self.known[key] = (n, partition)
        return partition


class PartitionBatches:
    """Records for one topic gathered into an aiokafka batch per partition, each batch sent with one future.

    A send per record costs the event loop a future, a done-callback and an accumulator append per record; the
    clean topic gets one record per valid event. Records keep their order within a partition, as with sends one
    by one. A full batch is sent and another started (aiokafka's batch takes its first record whatever its size).
    """

    def __init__(self, producer: Any, topic: str):
        self.producer, self.topic = producer, topic
        self.open: dict[int, Any] = {}
        self.sent: list[asyncio.Future] = []

    async def add(self, partition: int, key: bytes, value: bytes) -> None:
        batch = self.open.get(partition)
        if batch is not None:
            if batch.append(key=key, value=value, timestamp=None) is not None:
                return
            self.sent.append(await self.producer.send_batch(batch, self.topic, partition=partition))  # full
        batch = self.open[partition] = self.producer.create_batch()
        batch.append(key=key, value=value, timestamp=None)  # an empty batch takes a record of any size

    async def send(self) -> list[asyncio.Future]:
        """Send the batches still open; every batch's future (done when the broker has it, or failed)."""
        for partition, batch in self.open.items():  # each holds a record at least: `add` opens it with one
            self.sent.append(await self.producer.send_batch(batch, self.topic, partition=partition))
        sent, self.open, self.sent = self.sent, {}, []
        return sent


class ChangelogSends:
    """The changelog records of the worker's tables, sent and not yet confirmed by the broker.

    Faust sends a table's changelog record when the table is written, and only logs a failed send. The stage that
    writes a table (one instance per table) takes the records sent so far before its flush and waits for them
    after it, before it acks its batch: a join state or a scrub dictionary the broker refused (a record over the
    topic's size limit, a lost broker) fails the stage, and the worker exits, rather than acking events whose
    state a rebalance or a restart would not find.
    """

    def __init__(self, timeout_s: float, *tables: Any):
        self.timeout_s = timeout_s
        self.pending: list[asyncio.Future] = []
        for table in tables:
            send = table.send_changelog

            def recorded(*args: Any, _send: Callable = send, **kwargs: Any) -> asyncio.Future:
                fut = _send(*args, **kwargs)
                self.pending.append(fut)
                return fut

            table.send_changelog = recorded  # Table.__setitem__ and __delitem__ send through it

    def take(self) -> list[asyncio.Future]:
        taken, self.pending = self.pending, []
        return taken

    async def confirmed(self, sends: list[asyncio.Future]) -> None:
        """Wait for `sends` (after a flush); raises if the broker refused any. A send that Faust's producer
        buffer never got out (its publish raised) would never resolve: bounded by the producer's own timeout."""
        if sends:
            await asyncio.wait_for(asyncio.gather(*sends), self.timeout_s)


class _At:
    """Stands in for "the current event" when the join table is touched: faust-streaming's RocksDB store picks
    the partition database from the current event, and batched processing and timers have none of their own."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, partition: int):
        self.message = _AtMessage(partition)


class _AtMessage:
    __slots__ = ("partition",)

    def __init__(self, partition: int):
        self.partition = partition


def _table_get(table: Any, key: bytes, partition: int) -> Any:
    from faust.streams import _current_event

    at = _At(partition)
    token = _current_event.set(weakref.ref(at))
    try:
        return table.get(key)
    finally:
        _current_event.reset(token)


def _table_set(table: Any, key: bytes, value: Any, partition: int, delete: bool = False) -> None:
    from faust.streams import _current_event

    at = _At(partition)
    token = _current_event.set(weakref.ref(at))
    try:
        if delete:
            del table[key]
        else:
            table[key] = value
    finally:
        _current_event.reset(token)


def _source(event: faust.EventT) -> SourceRecord:
    m = event.message
    value = event.value if isinstance(event.value, (bytes, bytearray)) else (m.value or b"")
    return SourceRecord(m.topic, m.partition, m.offset, m.key, bytes(value))


def run_worker(settings: Settings, loglevel: str = "warn", use_ner: bool = True) -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT: the Faust app, and the sink process beside it."""
    from faust.worker import Worker

    from streams.offsets import pin_start_offsets
    from streams.sink_process import exit_status, start_sinks, stop_sinks

    pin_start_offsets(settings)
    # The scrub pool's results reach the event loop through threads (the executor's, the queue feeder) that must
    # win the interpreter lock from the busy loop; at the default 5 ms each hand-off waited out the interval
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    app = build_app(settings, use_ner=use_ner)
    level = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
             "debug": logging.DEBUG}[loglevel]
    sinks = start_sinks(settings, level)
    stopping = [False]

    @app.timer(interval=SINKS_CHECK_SECONDS)
    async def _exit_with_the_sinks() -> None:
        """The worker ends as soon as its sink process does, with its status: a worker whose sinks are gone would
        go on filling topics that nothing writes to Delta, and the restart resumes both."""
        if sinks.exitcode is not None and not stopping[0]:
            # a sink process that stopped cleanly on its own (someone sent it SIGTERM) is still a failure here: a
            # supervisor restarts a worker only on a non-zero status
            status = exit_status(sinks.exitcode) or WORKER_FAILED
            log.critical("the sink process exited (status %d); the worker exits with it and resumes from its last "
                         "commits when restarted", status)
            for handler in logging.getLogger().handlers + log.handlers:
                handler.flush()
            _exit(status)

    @app.on_before_shutdown.connect  # type: ignore[misc]
    async def _stop_sinks(*_: Any, **__: Any) -> None:
        stopping[0] = True
        await asyncio.get_running_loop().run_in_executor(None, stop_sinks, sinks)

    @app.task
    async def _set_library_log_levels() -> None:
        # mode's worker leaves faust's and aiokafka's loggers enabled for DEBUG; with a send per event,
        # building the unused debug records cost ~8% of the worker's CPU
        for name in ("faust", "aiokafka", "mode", "kafka"):
            logging.getLogger(name).setLevel(level)
    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
