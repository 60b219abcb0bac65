"""The scrub pool with real processes: a batch split by session across processes comes back whole and in order;
an event that hangs or kills its process is the only one lost to a dead letter, the rest of its batch is scrubbed,
and the pool works afterwards."""
import asyncio
import os
import time
from contextlib import contextmanager

import pytest

from streams.scrubbing import ScrubPool, ScrubPoolFailed, split_by_session


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
def _pool(processes=1, timeout_s=30, init=_init, initargs=()):
    pool = ScrubPool(fake_scrub, init, initargs, processes, timeout_s=timeout_s)
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
def test_a_batch_splits_by_session_keeping_each_sessions_events_together_and_in_order():
    events = _events(*"abcdefghij", sessions=4)  # s0: 0 4 8, s1: 1 5 9, s2: 2 6, s3: 3 7
    groups = split_by_session(events, [1] * 10, 2)
    assert sorted(i for g in groups for i in g) == list(range(10))
    for g in groups:
        assert g == sorted(g)
        assert len({events[i]["session_id"] for i in g}) == 2  # whole sessions: 3+3 and 2+2 can only pair up so
    assert sorted(len(g) for g in groups) == [5, 5]


@pytest.mark.unit
def test_the_split_balances_the_weights_not_the_counts():
    events = _events(*"abcdef", sessions=3)  # s0: 0 3, s1: 1 4, s2: 2 5
    groups = split_by_session(events, [100, 1, 1, 100, 1, 1], 2)
    assert [0, 3] in groups and [1, 2, 4, 5] in groups


@pytest.mark.unit
def test_one_process_or_one_session_is_one_group_and_nothing_is_no_group():
    assert split_by_session(_events("a", "b", "c"), [1, 1, 1], 1) == [[0, 1, 2]]
    assert split_by_session(_events("a", "b", sessions=1), [1, 1], 4) == [[0, 1]]
    assert split_by_session(_events("a", "b", "c"), [1, 1, 1], 8) == [[0, 2], [1]]
    assert split_by_session([], [], 2) == []


@pytest.mark.component
def test_two_processes_scrub_a_batchs_sessions_at_once_and_return_it_whole_in_order():
    with _pool(2) as pool:
        # s0 and s2 go to one part, s1 and s3 to the other; each part starts with a nap
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
