"""Eager dispatch behaves like a task for every way a coroutine can suspend, finish, fail or be cancelled; the
patch is pinned to the upstream loop it copies; the quiet monitor keeps no per-event state."""
import asyncio
import contextvars
import hashlib
import inspect

import faust
import pytest
from faust.transport import consumer as upstream

from streams.faust_consumer import PATCHED_FAUST_VERSION, QuietMonitor, install_eager_dispatch, start_eagerly

pytestmark = pytest.mark.unit

# sha256 of faust-streaming 0.15.3's Consumer._drain_messages source, the loop streams/faust_consumer.py copies.
# A new faust-streaming must fail here: re-read its loop, carry the change over, then update both pins.
UPSTREAM_DRAIN_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


def test_pinned_to_the_upstream_loop_it_copies():
    assert faust.__version__ == PATCHED_FAUST_VERSION
    source = inspect.getsource(upstream.Consumer._drain_messages)
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM_DRAIN_SHA256
    # the one line the copy replaces is still there
    assert "await self.wait_first(\n                                callback(message), self.suspend_flow.wait()" in source


def test_a_coroutine_that_never_suspends_runs_inline_and_makes_no_task():
    async def main():
        done = []

        async def work():
            done.append(1)

        rest = start_eagerly(work())
        assert rest is None and done == [1]  # already ran, before any await here
    asyncio.run(main())


def test_an_error_before_the_first_suspension_raises_at_once():
    async def main():
        async def bad():
            raise ValueError("undecodable")

        with pytest.raises(ValueError, match="undecodable"):
            start_eagerly(bad())
    asyncio.run(main())


def test_a_suspended_coroutine_resumes_with_the_result_of_what_it_awaited():
    async def main():
        fut = asyncio.get_running_loop().create_future()
        seen = []

        async def work():
            seen.append("before")
            seen.append(await fut)
            await asyncio.sleep(0)  # a bare yield after it
            await asyncio.sleep(0.01)
            return "finished"

        rest = start_eagerly(work())
        assert rest is not None and seen == ["before"]
        await asyncio.sleep(0.01)
        assert not rest.done()
        fut.set_result("value")
        assert await rest == "finished"
        assert seen == ["before", "value"]
    asyncio.run(main())


def test_the_exception_of_an_awaited_future_is_raised_inside_the_coroutine():
    async def main():
        fut = asyncio.get_running_loop().create_future()

        async def work():
            try:
                await fut
            except KeyError as exc:
                return f"caught {exc.args[0]}"

        rest = start_eagerly(work())
        fut.set_exception(KeyError("k"))
        assert await rest == "caught k"
    asyncio.run(main())


def test_cancelling_the_rest_cancels_the_awaited_future_and_unwinds_the_coroutine():
    async def main():
        fut = asyncio.get_running_loop().create_future()
        unwound = []

        async def work():
            try:
                await fut
            finally:
                unwound.append(True)

        rest = start_eagerly(work())
        await asyncio.sleep(0)
        rest.cancel()
        with pytest.raises(asyncio.CancelledError):
            await rest
        assert unwound == [True] and fut.cancelled()
    asyncio.run(main())


def test_wait_first_abandons_a_blocked_callback_when_flow_is_suspended():
    """The consumer loop's slow path: a callback stuck on a full buffer gives way to the suspend-flow event, as
    upstream's does during a rebalance."""
    async def main():
        from mode import Service

        class Loop(Service):
            pass

        svc = Loop()
        suspend = asyncio.Event()
        blocked = asyncio.Queue(maxsize=1)
        blocked.put_nowait("full")
        unwound = []

        async def callback():
            try:
                await blocked.put("message")
            finally:
                unwound.append(True)

        rest = start_eagerly(callback())
        asyncio.get_running_loop().call_later(0.01, suspend.set)
        result = await svc.wait_first(rest, suspend.wait())
        assert result.results == [True]  # the suspend event won
        await asyncio.sleep(0)
        assert rest.cancelled()
        assert unwound == [True] and blocked.qsize() == 1
    asyncio.run(main())


def test_context_changes_of_the_coroutine_stay_in_its_own_context():
    var = contextvars.ContextVar("var", default="outer")

    async def main():
        fut = asyncio.get_running_loop().create_future()

        async def work():
            var.set("inner")
            await fut
            return var.get()

        rest = start_eagerly(work())
        assert var.get() == "outer"
        fut.set_result(None)
        assert await rest == "inner"
        assert var.get() == "outer"
    asyncio.run(main())


def test_installed_on_an_app_consumer():
    app = faust.App("t-eager", broker="kafka://localhost:1", web_enabled=False, monitor=QuietMonitor())
    assert install_eager_dispatch(app)
    assert app.consumer._drain_messages.__func__.__module__ == "streams.faust_consumer"
    assert isinstance(app.monitor, QuietMonitor)


def test_the_quiet_monitor_keeps_no_per_event_state():
    m = QuietMonitor()
    assert m.on_stream_event_in(None, 1, None, None) is None
    m.on_message_in(None, 1, None)
    m.on_table_set(None, b"k", b"v")
    m.on_send_completed(None, None, None)
    assert m.messages_received_total == 0 and m.events_total == 0 and not m.tables


# sha256 of faust-streaming 0.15.3's Consumer._new_offset source, whose head-gap check install_commit_guard mends
UPSTREAM_NEW_OFFSET_SHA256 = "1d2c7ea89a7ad4f1a216c1d51936e569162cd66bd56f889e13fd29c910b58eb0"


class _Offsets:
    """The consumer state `_new_offset` reads, with upstream's own `_new_offset` bound to it."""

    def __init__(self, committed, acked, gaps=()):
        from collections import defaultdict
        from functools import partial

        from intervaltree import IntervalTree

        self._committed_offset = defaultdict(lambda: None, {"tp": committed})
        self._acked = defaultdict(list, {"tp": list(acked)})
        self._acked_index = defaultdict(set, {"tp": set(acked)})
        self._gap = defaultdict(IntervalTree)
        for begin, end in gaps:
            self._gap["tp"].addi(begin, end)
        self._new_offset = partial(upstream.Consumer._new_offset, self)


def test_the_commit_guard_is_pinned_to_the_upstream_check_it_mends():
    source = inspect.getsource(upstream.Consumer._new_offset)
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM_NEW_OFFSET_SHA256
    assert "if min(acked) - committed_offset > 1:" in source
    # the flaw itself: committed 25 (the next offset to read), 25 never acked, 26 and 27 acked → commits 28
    assert _Offsets(25, [26, 27])._new_offset("tp") == 28


def test_no_commit_past_an_unacked_message_at_the_committed_offset():
    from streams.faust_consumer import head_unacked, install_commit_guard

    hole = _Offsets(25, [26, 27])
    install_commit_guard(hole)
    assert head_unacked(hole, "tp") == 25
    assert hole._new_offset("tp") is None
    hole._acked["tp"].append(25)  # read again and acked
    hole._acked_index["tp"].add(25)
    assert head_unacked(hole, "tp") is None
    assert hole._new_offset("tp") == 28

    stale = _Offsets(15, [14])  # an offset below the committed one, left over from a gap: no hole
    install_commit_guard(stale)
    assert head_unacked(stale, "tp") is None

    fresh = _Offsets(None, [1, 2])  # before the first commit (Faust keeps a committed 0 as None)
    fresh.trajlake_resumed_at = {"tp": 0}  # resumed at 0, and 0 never acked
    install_commit_guard(fresh)
    assert head_unacked(fresh, "tp") == 0 and fresh._new_offset("tp") is None

    for offsets, expected in ((_Offsets(25, [25, 26]), 27),  # no hole
                              (_Offsets(25, [26, 27], gaps=[(25, 26)]), 28),  # 25 is a known gap in the topic
                              (_Offsets(None, [3, 4]), 5),  # nothing committed, no resume offset: upstream's
                              (_Offsets(25, []), None)):  # nothing acked
        install_commit_guard(offsets)
        assert head_unacked(offsets, "tp") is None
        assert offsets._new_offset("tp") == expected


def test_the_fair_fetch_is_pinned_to_the_fetcher_whose_buffer_it_reorders():
    """aiokafka's fetcher serves the partitions in its `_records` in order and keeps a partly served one in front;
    the reordering relies on exactly that, so an upgrade must fail here, not run on with a changed fetcher."""
    import aiokafka
    from aiokafka.consumer.fetcher import Fetcher

    from streams.faust_consumer import PATCHED_AIOKAFKA_VERSION, install_fair_fetch

    assert aiokafka.__version__ == PATCHED_AIOKAFKA_VERSION
    assert install_fair_fetch() and install_fair_fetch()  # once, however often the app is built
    assert Fetcher.fetched_records.trajlake_fair
    source = inspect.getsource(Fetcher.fetched_records.__wrapped__)
    assert "for tp in list(self._records.keys()):" in source and "del self._records[tp]" in source
    assert "self._records = collections.OrderedDict()" in inspect.getsource(Fetcher.__init__)


def test_partitions_a_poll_served_go_behind_those_it_did_not():
    from collections import OrderedDict

    from streams.faust_consumer import served_to_the_back

    records = OrderedDict((tp, None) for tp in ("raw-0", "raw-1", "clean-0", "clean-1"))
    served_to_the_back(records, {"raw-0": [1, 2]})  # raw-0 still has records: it waits its turn
    assert list(records) == ["raw-1", "clean-0", "clean-1", "raw-0"]
    served_to_the_back(records, {"raw-1": [3], "clean-0": [4], "gone": [5]})  # a drained partition is not there
    assert list(records) == ["clean-1", "raw-0", "raw-1", "clean-0"]
