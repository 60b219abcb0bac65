"""The worker app's own helpers (the agents themselves run against the real broker in test_worker*.py)."""
import asyncio
import logging

import pytest

import streams.app as worker_app
from streams.app import WORKER_FAILED, _exits_on_failure, _on_stage_failure, _put_unless_failed

pytestmark = pytest.mark.unit


class Exited(BaseException):
    """Stands in for os._exit: ends the scenario the way the process would end."""


@pytest.fixture
def exits(monkeypatch):
    codes: list[int] = []

    def fake_exit(code: int):
        codes.append(code)
        raise Exited(code)

    monkeypatch.setattr(worker_app, "_exit", fake_exit)
    return codes


def test_a_failed_ingest_stage_ends_the_worker_at_once_and_the_agent_raises_too(caplog, exits):
    async def scenario():
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        await queue.put("batch 1")  # full: the stage that drains it has died

        async def dies():
            raise ValueError("the scrub pool died")

        stage = asyncio.ensure_future(dies())
        stage.add_done_callback(_on_stage_failure)
        with pytest.raises(ValueError, match="scrub pool died"):
            await asyncio.wait_for(_put_unless_failed(queue, "batch 2", [stage]), timeout=5)

    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _, ctx: None)  # the callback's Exited surfaces here, as os._exit would not
    with caplog.at_level(logging.ERROR, logger="trajlake.worker"):
        loop.run_until_complete(scenario())
    loop.close()
    assert exits == [WORKER_FAILED]
    assert "an ingest stage failed; the worker exits (status 70)" in caplog.text and "scrub pool died" in caplog.text


def test_an_agent_that_raises_ends_the_worker_before_anything_more_is_acked(caplog, monkeypatch):
    acked: list[int] = []
    acked_at_exit: list[list[int]] = []

    def fake_exit(code: int):
        acked_at_exit.append(list(acked))  # os._exit ends here: no finally, no ack, runs after this
        raise Exited(code)

    monkeypatch.setattr(worker_app, "_exit", fake_exit)

    async def batches():
        try:
            yield [1, 2]
        finally:  # what Faust's take_events does when its consumer is closed: ack the batch
            acked.extend([1, 2])

    @_exits_on_failure("the test sink")
    async def agent(stream):
        async for batch in stream:
            raise OSError(f"Delta commit of {batch} failed")

    with caplog.at_level(logging.ERROR, logger="trajlake.worker"), pytest.raises(Exited):
        asyncio.run(agent(batches()))
    assert acked_at_exit == [[]]
    assert "the test sink failed" in caplog.text and "Delta commit of [1, 2] failed" in caplog.text


def test_cancellation_and_a_normal_return_do_not_end_the_worker(exits):
    @_exits_on_failure("a timer")
    async def ticks(block: bool):
        if block:
            await asyncio.sleep(10)

    async def scenario():
        task = asyncio.ensure_future(ticks(True))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await ticks(False)

    asyncio.run(scenario())
    assert exits == []


def test_a_batch_goes_on_the_queue_while_the_stages_run():
    async def scenario():
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        stage = asyncio.ensure_future(asyncio.sleep(10))
        await asyncio.wait_for(_put_unless_failed(queue, "batch", [stage]), timeout=5)
        stage.cancel()
        return queue.get_nowait()

    assert asyncio.run(scenario()) == "batch"


@pytest.mark.parametrize("settling", ["rebalancing", "in_recovery"])
def test_the_timer_touches_nothing_while_faust_rebalances_or_restores(tmp_path, settling, exits):
    """A partly restored session closed as "timeout" would emit a row the complete session could no longer
    replace (same key and revision): while Faust rebalances or restores tables, a tick must not even look at
    the partitions or the table."""
    from schemas.settings import Settings

    s = Settings(kafka_bootstrap="localhost:1", lake_root=tmp_path / "lake", state_dir=tmp_path / "state")
    app = worker_app.build_app(s, use_ner=False)
    looked: list[str] = []

    class Assignor:
        def assigned_actives(self):
            looked.append("partitions")
            raise LookupError("the tick went past the guard")

    app.assignor = Assignor()
    setattr(app, settling, True)
    asyncio.run(app.join_timer_tick())
    assert looked == [] and exits == []
    setattr(app, settling, False)
    with pytest.raises(LookupError):  # the same call without the guard reaches the partitions
        asyncio.run(app.join_timer_tick.__wrapped__())
    assert looked == ["partitions"]


def test_each_table_waits_for_its_own_changelog_records_and_a_refused_one_raises():
    from streams.app import ChangelogSends

    class Table:
        """A Faust table's changelog send: a future the producer resolves later."""

        def __init__(self):
            self.sent: list[asyncio.Future] = []

        def send_changelog(self, partition, key, value):
            fut = asyncio.get_running_loop().create_future()
            self.sent.append(fut)
            return fut

    async def scenario():
        states, dictionaries = Table(), Table()
        state_sends, dictionary_sends = ChangelogSends(5, states), ChangelogSends(5, dictionaries)
        states.send_changelog(0, b"s", {})  # through the wrapper, as Table.__setitem__ calls it
        dictionaries.send_changelog(0, b"s", {})
        dictionaries.send_changelog(1, b"t", {})
        taken = dictionary_sends.take()
        assert taken == dictionaries.sent and state_sends.pending == states.sent  # the join's stay the join's
        assert dictionary_sends.take() == []
        for fut in taken:
            fut.set_result(None)
        await dictionary_sends.confirmed(taken)
        states.sent[0].set_exception(RuntimeError("MessageSizeTooLargeError"))
        with pytest.raises(RuntimeError, match="TooLarge"):
            await state_sends.confirmed(state_sends.take())

    asyncio.run(scenario())


def test_key_partitions_are_the_producers_default_partitioners():
    """A clean record's partition is passed to the send: it must be the one aiokafka's partitioner would pick, or a
    session's events and its join state (placed by the partitioner) would part."""
    import random

    from aiokafka.partitioner import DefaultPartitioner

    from streams.app import KeyPartitions

    rng = random.Random(5)
    keys = [f"s-{rng.getrandbits(64):x}".encode() for _ in range(2000)] + [b"", b"\xff" * 40]
    kp = KeyPartitions(max_keys=500)
    for n in (1, 3, 4, 12):
        parts = set(range(n))
        for key in keys + keys[:100]:  # the repeats come from memory
            assert kp.of(key, parts) == DefaultPartitioner()(key, sorted(parts), sorted(parts))
    assert len(kp.known) <= 500
    kp.known[b"k"] = (3, 2)  # remembered for three partitions: the topic now has four
    assert kp.of(b"k", set(range(4))) == DefaultPartitioner()(b"k", [0, 1, 2, 3], [])


def test_partition_batches_keep_each_partitions_order_and_split_full_batches():
    """The clean records go out in a batch per partition: every record once, in its partition's order, a full
    batch sent and another started, and a record larger than a batch on its own."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.record.default_records import DefaultRecordBatch

    from streams.app import PartitionBatches

    class Recording:
        """aiokafka's own batches, and a send that keeps what each batch holds instead of sending it."""

        def __init__(self, producer):
            self.producer, self.batches = producer, []

        def create_batch(self):
            return self.producer.create_batch()

        async def send_batch(self, batch, topic, *, partition):
            records = DefaultRecordBatch(bytes(batch._builder.build()))
            self.batches.append((topic, partition, [(r.key, r.value) for r in records]))
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

    async def scenario():
        # never started: building batches needs no broker
        producer = AIOKafkaProducer(bootstrap_servers="localhost:1", max_batch_size=2_000)
        rec = Recording(producer)
        batches = PartitionBatches(rec, "tl.events.clean")
        sent = [(i % 3, f"s{i % 5}".encode(), f"v{i:03d}".encode() * (1_000 if i == 40 else 20)) for i in range(90)]
        for partition, key, value in sent:
            await batches.add(partition, key, value)
        futures = await batches.send()
        assert await batches.send() == []  # nothing left open
        return rec.batches, futures, sent

    got, futures, sent = asyncio.run(scenario())
    assert len(futures) == len(got)
    assert {topic for topic, _, _ in got} == {"tl.events.clean"}
    for partition in range(3):
        mine = [b for _, p, b in got if p == partition]
        assert len(mine) > 1  # ~30 records of ~80 bytes each do not fit one 2,000-byte batch
        assert [r for b in mine for r in b] == [(k, v) for p, k, v in sent if p == partition]
    big = next(b for _, _, b in got if any(len(v) > 2_000 for _, v in b))
    assert len(big) == 1  # alone in its batch


def test_dictionaries_are_swept_only_once_ingest_has_read_its_backlog():
    """Idle is the time since a dictionary's last save: after a stop of a few hours every saved copy is old, and
    a session whose next events still waited in the raw topics lost its dictionary (a name it had revealed then
    passed in free text). The sweep waits until every raw partition is read to within two batches of its end."""
    from streams.app import SWEEP_MAX_BEHIND, raw_caught_up

    assert raw_caught_up({"p0": 10_000, "p1": 5}, {"p0": 9_999, "p1": 4}, SWEEP_MAX_BEHIND)
    assert raw_caught_up({"p0": 0}, {"p0": None}, SWEEP_MAX_BEHIND)  # an empty partition
    assert not raw_caught_up({"p0": 50_000, "p1": 5}, {"p0": 1_000, "p1": 4}, SWEEP_MAX_BEHIND)  # a backlog
    assert not raw_caught_up({"p0": 50_000}, {"p0": None}, SWEEP_MAX_BEHIND)  # restarted, nothing read yet
    assert not raw_caught_up({"p0": None}, {}, SWEEP_MAX_BEHIND) and not raw_caught_up({}, {}, SWEEP_MAX_BEHIND)
    assert SWEEP_MAX_BEHIND == 2 * worker_app.INGEST_BATCH
