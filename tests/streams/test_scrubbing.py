"""The scrub pool with real processes: each process owns a share of the sessions and keeps their dictionaries, so
a batch goes out before the one ahead of it is back and still starts from its dictionaries; a batch comes back whole
and in order; an event that hangs or kills its process is the only one lost to a dead letter, the rest of its batch
(and the batches behind it) are scrubbed, and the pool works afterwards."""
import asyncio
import os
import time
from contextlib import contextmanager

import pytest

from streams.scrubbing import ScrubPool, ScrubPoolFailed, owner


def _init() -> None:
    pass


def _init_fails() -> None:
    raise OSError("the NER model is missing")


def _init_slow() -> None:
    time.sleep(30)


def _init_every_second_dies_late(claims):
    """The pool's processes take numbers in turn: an even one starts at once, an odd one dies a second into its
    start (after the other has answered)."""
    n = 0
    while True:
        try:
            os.close(os.open(os.path.join(claims, str(n)), os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            n += 1
    if n % 2:
        time.sleep(1)
        raise OSError("no memory for a second model")


def fake_scrub(events, sessions):
    """Stands in for privacy.worker.scrub: upper-cases the text, counts events per session, and misbehaves on cue."""
    out = []
    for e in events:
        if e["text"] == "hang":
            time.sleep(120)
        if e["text"] == "die":
            os._exit(3)
        if e["text"] == "nap":  # keeps this process busy, so the pool's other process takes the next call
            time.sleep(1)
        sessions[e["session_id"]] = sessions.get(e["session_id"], 0) + 1
        out.append({"event": {**e, "text": e["text"].upper()}, "pid": os.getpid()})
    return out, sessions


def _events(*texts, sessions=2):
    return [{"event_id": f"e{i}", "session_id": f"s{i % sessions}", "text": t} for i, t in enumerate(texts)]


def _run(pool, events, sessions):
    return asyncio.run(pool.scrub(events, sessions))


@contextmanager
def _pool(processes=1, timeout_s=30, init=_init, initargs=(), held_per_process=1000):
    pool = ScrubPool(fake_scrub, init, initargs, processes, timeout_s=timeout_s, held_per_process=held_per_process)
    try:
        yield pool
    finally:
        pool.shutdown()


def _outcomes(results):
    """Each result's scrubbed text, or the kind of its error."""
    return [r["event"]["text"] if isinstance(r, dict) else r.split(":")[0] for r in results]


@pytest.mark.component
def test_a_batch_that_behaves_is_one_call():
    with _pool() as pool:
        results, sessions = _run(pool, _events("a", "b", "c"), {})
        assert [r["event"]["text"] for r in results] == ["A", "B", "C"]
        assert sessions == {"s0": 2, "s1": 1} and pool.restarts == 0


@pytest.mark.component
def test_only_the_event_that_hangs_or_kills_the_process_is_lost():
    with _pool(timeout_s=3) as pool:
        started = time.monotonic()
        results, sessions = _run(pool, _events("a", "hang", "b", "die", "c"), {"s0": 10})
        assert time.monotonic() - started < 60  # the deadline, not the 120 s sleep
        assert _outcomes(results) == ["A", "ScrubTimeout", "B", "ScrubProcessDied", "C"]
        assert "TRAJLAKE_SCRUB_TIMEOUT_SECONDS" in results[1]
        # the dictionaries carry on from the caller's, through the events that were scrubbed (s1's two failed)
        assert sessions == {"s0": 13}
        assert pool.restarts == 3  # after the batch, after the hang, after the death
        assert [r["event"] for r in _run(pool, _events("d"), {})[0]] == [{"event_id": "e0", "session_id": "s0",
                                                                          "text": "D"}]


@pytest.mark.component
def test_a_process_that_dies_on_a_whole_batch_is_retried_event_by_event():
    with _pool() as pool:
        results, _ = _run(pool, _events("die", "x"), {})
        assert results[0].startswith("ScrubProcessDied") and results[1]["event"]["text"] == "X"


@pytest.mark.component
@pytest.mark.parametrize("init", [_init_fails, _init_slow])
def test_a_pool_that_cannot_start_fails_the_worker_instead_of_dead_lettering_every_event(init):
    """A fault of the set-up (a missing model, a start slower than the deadline) is no event's fault: after the
    restart, the empty warm-up call fails too, and the pool raises for the worker to fail fast."""
    with _pool(timeout_s=3, init=init) as pool:
        with pytest.raises(ScrubPoolFailed, match="did not start"):
            _run(pool, _events("a", "b"), {})


@pytest.mark.component
def test_a_scrubber_that_fails_on_every_event_fails_the_worker():
    """Five events in a row that each kill the process on their own: not the events' fault, and each failure
    costs a deadline, so the pool raises rather than dead-letter a whole batch one deadline at a time."""
    with _pool() as pool:
        with pytest.raises(ScrubPoolFailed, match="5 events in a row"):
            _run(pool, _events("die", "die", "die", "die", "die", "die", "x"), {})


@pytest.mark.unit
def test_a_session_has_one_owner_and_the_sessions_spread_over_the_processes():
    ids = [f"sess-{i:06d}" for i in range(4000)]  # ids that differ in a digit or two, as generators make them
    owners = [owner(sid, 2) for sid in ids]
    assert owners == [owner(sid, 2) for sid in ids] and set(owners) == {0, 1}
    assert 1800 < owners.count(0) < 2200
    assert {owner(sid, 3) for sid in ids} == {0, 1, 2} and {owner(sid, 1) for sid in ids} == {0}


@pytest.mark.component
def test_two_processes_scrub_a_batchs_sessions_at_once_and_return_it_whole_in_order():
    with _pool(2) as pool:
        # s0, s2 and s3 are one process's, s1 the other's; each part starts with a nap
        assert [owner(f"s{i}", 2) for i in range(4)] == [1, 0, 1, 1]
        events = _events("nap", "nap", *"cdefgh", sessions=4)
        results, sessions = _run(pool, events, {"s0": 10, "other": 5})
        assert [r["event"] for r in results] == [{**e, "text": e["text"].upper()} for e in events]
        assert len({r["pid"] for r in results}) == 2  # both processes took part
        assert sessions == {"s0": 12, "s1": 2, "s2": 2, "s3": 2, "other": 5}  # the caller's untouched one kept
        assert pool.restarts == 0


@pytest.mark.component
def test_with_two_processes_an_event_that_kills_its_process_is_still_the_only_one_lost():
    with _pool(2) as pool:
        results, sessions = _run(pool, _events("a", "b", "die", "c", "d", "e", sessions=3), {})
        assert _outcomes(results) == ["A", "B", "ScrubProcessDied", "C", "D", "E"]
        assert sessions == {"s0": 2, "s1": 2, "s2": 1}  # s2's "die" left no count
        assert _run(pool, _events("f", "g"), {})[0][1]["event"]["text"] == "G"


@pytest.mark.component
def test_a_second_process_that_cannot_start_fails_the_pool_though_the_first_answers(tmp_path):
    """Starting means every process answers: the first to load would take every instant call while the second is
    still loading, and a second that then died would break a batch of events not at fault."""
    with _pool(2, timeout_s=10, init=_init_every_second_dies_late, initargs=(str(tmp_path),)) as pool:
        with pytest.raises(ScrubPoolFailed, match="did not start"):
            asyncio.run(pool._restart_and_warm())


def _supplied(sessions, asked):
    """A caller's supply of dictionaries that notes which sessions the pool asked for."""
    def supply(ids):
        asked.append(sorted(ids))
        return {sid: sessions[sid] for sid in ids if sid in sessions}
    return supply


@pytest.mark.component
def test_a_batch_goes_out_before_the_one_ahead_is_back_and_starts_from_its_dictionaries():
    async def scenario(pool):
        asked = []
        first = await pool.submit(_events("nap", "a", "b", sessions=3), _supplied({"s0": 10}, asked))
        second = await pool.submit(_events("c", "d", "e", "f", sessions=4), _supplied({"s0": 99, "s3": 7}, asked))
        assert not any(call.done() for call in first.calls)  # the second went out with the first still napping
        one, two = await pool.collect(first), await pool.collect(second)
        return asked, one, two

    with _pool(2) as pool:
        asked, (results1, back1), (results2, back2) = asyncio.run(scenario(pool))
        assert [r["event"]["text"] for r in results1 + results2] == ["NAP", "A", "B", "C", "D", "E", "F"]
        assert back1 == {"s0": 11, "s1": 1, "s2": 1}
        # s0 to s2 are held where the first batch left them (the second caller's s0 copy is not asked for); s3 is new
        assert back2 == {"s0": 12, "s1": 2, "s2": 2, "s3": 8}
        assert sorted(sum(asked, [])) == ["s0", "s1", "s2", "s3"]
        assert pool.restarts == 0


@pytest.mark.component
def test_a_failed_batch_sends_the_ones_behind_it_again_from_its_retried_dictionaries():
    async def scenario(pool):
        first = await pool.submit(_events("a", "die", "b"), _supplied({"s0": 10}, []))
        second = await pool.submit(_events("c", "d"), _supplied({}, []))  # lost with the process, sent again
        return await pool.collect(first), await pool.collect(second)

    with _pool(2) as pool:
        (results1, back1), (results2, back2) = asyncio.run(scenario(pool))
        assert _outcomes(results1) == ["A", "ScrubProcessDied", "B"] and _outcomes(results2) == ["C", "D"]
        assert back1 == {"s0": 12} and back2 == {"s0": 13, "s1": 1}  # s1's "die" left no count
        assert pool.restarts == 2  # after the batch, after the death


@pytest.mark.component
def test_forgotten_dictionaries_are_supplied_again_by_the_caller():
    async def scenario(pool, sessions):
        p = await pool.submit(_events("a", "b", sessions=2), _supplied(sessions, []))
        return (await pool.collect(p))[1]

    with _pool(2, held_per_process=1) as pool:
        assert asyncio.run(scenario(pool, {})) == {"s0": 1, "s1": 1}
        assert asyncio.run(scenario(pool, {"s0": 50})) == {"s0": 2, "s1": 2}  # held: the caller's copy unused
        pool.forget(["s0"])
        assert asyncio.run(scenario(pool, {"s0": 50, "s1": 70})) == {"s0": 51, "s1": 3}
        pool.forget_all()  # a rebalance: every process drops what it holds
        assert asyncio.run(scenario(pool, {"s0": 50, "s1": 70})) == {"s0": 51, "s1": 71}
        # more sessions than a process may hold: the least recent is dropped, and supplied again next time
        s4_s1_owner = owner("s4", 2)
        assert s4_s1_owner == owner("s1", 2)
        p_events = [{"event_id": "x", "session_id": "s4", "text": "x"}]

        async def s4_then_s1():
            p = await pool.submit(p_events, _supplied({}, []))
            await pool.collect(p)
            p = await pool.submit(_events("a", "b", sessions=2), _supplied({"s0": 0, "s1": 0}, []))
            return (await pool.collect(p))[1]

        assert asyncio.run(s4_then_s1()) == {"s0": 52, "s1": 1}


@pytest.mark.component
def test_after_forget_all_a_batch_waits_for_the_ones_in_flight():
    async def scenario(pool):
        first = await pool.submit(_events("nap", sessions=1), _supplied({}, []))
        pool.forget_all()
        second = asyncio.ensure_future(pool.submit(_events("a", sessions=1), _supplied({"s0": 40}, [])))
        await asyncio.sleep(0.3)
        assert not second.done()  # its copy would miss what the first batch is learning
        one = await pool.collect(first)
        two = await pool.collect(await second)
        return one[1], two[1]

    with _pool(1) as pool:
        assert asyncio.run(scenario(pool)) == ({"s0": 1}, {"s0": 41})


@pytest.mark.component
def test_a_session_in_flight_is_neither_forgotten_nor_evicted():
    """Its next batch must start from what the batch in flight learns, not from the caller's older copy (the sweep
    of a worker restarted after a long stop finds every saved copy old, while the backlog's batches are in
    flight)."""
    async def scenario(pool):
        first = await pool.submit(_events("nap", sessions=1), _supplied({}, []))  # s0, in flight for a second
        kept = pool.forget(["s0"])
        second = await pool.submit([{"event_id": "x", "session_id": "s1", "text": "x"}], _supplied({}, []))
        third = await pool.submit(_events("a", sessions=1), _supplied({"s0": 50}, []))  # would evict s0 (LRU)
        backs = [(await pool.collect(p))[1] for p in (first, second, third)]
        assert not pool.in_flight("s0")
        return kept, backs

    with _pool(1, held_per_process=1) as pool:
        kept, backs = asyncio.run(scenario(pool))
        assert kept == ["s0"]
        assert backs == [{"s0": 1}, {"s1": 1}, {"s0": 2}]  # not 51: the caller's copy was not sent
