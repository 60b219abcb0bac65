"""Faust's per-message overheads taken out: dispatch started inline instead of as four tasks, a monitor that
keeps no per-event statistics.

faust-streaming's `Consumer._drain_messages` hands every fetched message to the conductor with
`await self.wait_first(callback(message), self.suspend_flow.wait())`. `wait_first` wraps the callback and three
events (suspend flow, stopped, crashed) in four tasks and an `asyncio.wait`, then cancels the three that lost,
for every message. Profiling a Faust app that only drains the raw topics (bench/faust_drain.py, py-spy) put
about half of its event loop's time there. Nearly always the callback never suspends: the conductor decodes
the message and puts it on each stream's queue without waiting.

`_drain_messages` below is faust-streaming 0.15.3's loop with one change to dispatch: the callback is started inline, in a
copy of the context as a task would have, and runs to its first suspension. If it finishes there (the common
case) no task is made. If it suspends (a full stream buffer, flow control during a rebalance, a busy
producer), the rest of it becomes a task that resumes it exactly as asyncio's Task would, and the loop waits
on it through `wait_first` with the suspend-flow event as before — so rebalances interrupt it as they always
did. Python 3.12's eager task factory does the same; this worker runs on 3.11. (The loop also records what it
hands out and makes the stall watch's seek-backs, for streams/stalls.py.)

Faust's Monitor sensor also runs on every message, stream event, table access and send, keeping statistics
for Faust's web views, which the worker does not serve (`web_enabled=False`; `trajlake status` reads lag from
the broker). `QuietMonitor` keeps the per-commit and per-rebalance ones and drops the per-event ones.

`install_fair_fetch` makes aiokafka serve the partitions it has records for in turn: its fetcher hands out a
partition's buffered records from the front of an ordered dict and keeps a partly served partition at the front,
so with a record cap per poll one big partition (a raw topic's backlog, fetched 16 MiB at a time) was served
until empty while the clean topic's records waited behind it, and the join agent sat idle for the whole drain
(bench/RESULTS.md, "A drain of a backlog starves the join").

`install_commit_guard` mends an off-by-one in Faust's commit that let a single unacked message at a partition's
committed offset be committed over (faust-streaming #606); `head_unacked` says which.

The dispatch patch is installed only on the faust-streaming version whose loop it reproduces
(`tests/streams/test_faust_consumer.py` pins the upstream source's hash, so an upgrade fails a test instead of
silently running a stale copy).
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any, AsyncIterator, Coroutine, Optional, cast

import faust
from faust.sensors.monitor import Monitor
from faust.transport.consumer import CONSUMER_FETCHING
from mode import Service

log = logging.getLogger("trajlake.worker")

PATCHED_FAUST_VERSION = "0.15.3"
# the aiokafka whose fetcher keeps its buffered records in `Fetcher._records`, an OrderedDict by partition
PATCHED_AIOKAFKA_VERSION = "0.14.0"


def start_eagerly(coro: Coroutine[Any, Any, Any]) -> Optional[asyncio.Task]:
    """Run `coro` inline up to its first suspension. None if it finished (its result is dropped, an error
    raises here), else a task running the rest of it."""
    ctx = contextvars.copy_context()
    try:
        yielded = ctx.run(coro.send, None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_resume(coro, yielded), context=ctx)


async def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Drive a coroutine that has suspended on `yielded`, the way asyncio's Task does: wait until the future it
    yielded is done, then send None (the coroutine's own `await` takes the future's result or exception); a
    bare yield is one pass of the event loop. Cancelling this task cancels that future and throws
    CancelledError into the coroutine, as Task.cancel would."""
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                yielded._asyncio_future_blocking = False
                await asyncio.wait((yielded,))
        except asyncio.CancelledError as exc:
            if yielded is not None:
                yielded.cancel()
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return stop.value


async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover — the Fetcher's task runs it
    # faust-streaming 0.15.3, transport/consumer.py, Consumer._drain_messages. Changed: the eager dispatch (marked
    # below); the record of what was handed out (the stall watch); the stall watch's seek-backs, made between
    # fetched batches; the fault injection `lose`
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = cast(Service, self)._stopped.is_set
    fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

    dispatched = self.trajlake_dispatched
    lose = self.trajlake_lose_once  # fault injection: (topic, partition, offset) passed once, never handed out
    seek_back = self.trajlake_seek_back  # partition → offset: seek-backs asked for by the stall watch
    first_after_seek = self.trajlake_first_after_seek  # partition → the first offset handed out after one
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            if seek_back:
                # between fetched batches, so no record fetched before the seek is handed out after it
                # (`request_seek_back`)
                for tp, offset in list(seek_back.items()):
                    del seek_back[tp]
                    try:
                        await self._thread.call_thread(self._thread.seek, tp, offset)
                    except Exception as exc:  # noqa: BLE001 — e.g. a rebalance took it meanwhile (and seeks it)
                        self.log.info("%s[%d] not sought back (%r)", tp.topic, tp.partition, exc)
                        continue
                    set_read_offset(tp, offset)
                    dispatched.pop(tp, None)
                    first_after_seek[tp] = None
            set_flag(flag_consumer_fetching)
            ait = cast(AsyncIterator, getmany(timeout=1.0))

            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if lose is not None and offset == lose[2] and tp.partition == lose[1] and tp.topic == lose[0]:
                        lose = self.trajlake_lose_once = None
                        set_read_offset(tp, offset)
                        dispatched[tp] = offset
                        continue
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset:
                            acks_enabled = acks_enabled_for(message.topic)
                            if acks_enabled:
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:
                            if self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                        # the change: upstream awaits wait_first(callback(message), suspend_flow.wait()) for
                        # every message; here only a callback that suspends goes through it
                        rest = start_eagerly(callback(message))
                        if rest is not None:
                            await self.wait_first(rest, self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                        dispatched[tp] = offset  # for the stall watch (streams/stalls.py)
                        if first_after_seek and first_after_seek.get(tp, -1) is None:
                            first_after_seek[tp] = offset
                    else:
                        self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)


def install_eager_dispatch(app: faust.App, lose_once: tuple[str, int, int] | None = None) -> bool:
    """Give `app`'s consumer the eager-dispatch drain loop; False (and upstream's loop) on another faust-streaming
    version than the one it reproduces. `lose_once` is fault injection for tests: the record at (topic,
    partition, offset) is passed once as if handed out, and lost."""
    if faust.__version__ != PATCHED_FAUST_VERSION:
        log.warning("faust-streaming %s is not %s: keeping its own consumer loop (slower dispatch)",
                    faust.__version__, PATCHED_FAUST_VERSION)
        return False
    consumer = app.consumer
    consumer.trajlake_dispatched = {}  # partition → the last offset handed to the streams
    consumer.trajlake_lose_once = lose_once
    consumer.trajlake_seek_back = {}
    consumer.trajlake_first_after_seek = {}
    consumer._drain_messages = _drain_messages.__get__(consumer)
    return True


def served_to_the_back(records: Any, served: Any) -> None:
    """Move the partitions a poll took records from behind those it did not, keeping each group's order."""
    for tp in served:
        if tp in records:
            records.move_to_end(tp)


def install_fair_fetch() -> bool:
    """aiokafka's `Fetcher.fetched_records` serves partitions in turn: after each poll the partitions it took
    records from go to the back of the fetcher's buffer (`served_to_the_back`). False (and aiokafka's own order)
    on another aiokafka version than the one whose fetcher this reorders. Process-wide, once."""
    import aiokafka
    from aiokafka.consumer.fetcher import Fetcher

    if aiokafka.__version__ != PATCHED_AIOKAFKA_VERSION:
        log.warning("aiokafka %s is not %s: keeping its fetcher's order (a backlog on one topic can starve "
                    "another's agent)", aiokafka.__version__, PATCHED_AIOKAFKA_VERSION)
        return False
    if getattr(Fetcher.fetched_records, "trajlake_fair", False):
        return True
    upstream = Fetcher.fetched_records

    async def fetched_records(self: Any, partitions: Any, timeout: float = 0, max_records: Any = None) -> dict:
        drained = await upstream(self, partitions, timeout, max_records)
        served_to_the_back(self._records, drained)
        return drained

    fetched_records.trajlake_fair = True  # type: ignore[attr-defined]
    fetched_records.__wrapped__ = upstream  # type: ignore[attr-defined]
    Fetcher.fetched_records = fetched_records  # type: ignore[method-assign]
    return True


def head_unacked(consumer: Any, tp: Any) -> Optional[int]:
    """The committed offset of `tp` if the record there is not acked while later ones are, else None.

    Faust's `_committed_offset` is the next offset to read (what it committed). Its `_new_offset` withholds a
    commit only when `min(acked) - committed > 1`, so a single record missing at exactly that offset is
    committed over: lost, though never processed (faust-streaming issue #606, open for 0.15.3; docs/design.md,
    "Six faust-streaming traps", 6). Before a partition's first commit Faust holds None (it keeps a committed 0
    as None); the offset the worker resumed the partition at stands in (`trajlake_resumed_at`). An offset in
    Faust's gap tree (absent from the topic, as the drain loop found) is not missing; acked offsets below the
    committed one (a gap's leftovers in Faust's bookkeeping) do not count."""
    committed = consumer._committed_offset.get(tp)
    if committed is None:
        committed = getattr(consumer, "trajlake_resumed_at", {}).get(tp)
    acked = consumer._acked.get(tp)
    if committed is None or not acked or committed in consumer._acked_index.get(tp, ()):
        return None
    if not any(offset > committed for offset in acked):
        return None
    gap = consumer._gap.get(tp)
    if gap is not None and gap.overlaps(committed):
        return None
    return committed


def request_seek_back(consumer: Any, tp: Any, offset: int) -> None:
    """Have the drain loop seek `tp` back to `offset` before it fetches again, and note the first offset it then
    hands out (`consumer.trajlake_first_after_seek[tp]`, None until then). Seeking from elsewhere would let
    records already fetched, still being handed out, run the partition's read offset past the seek."""
    consumer.trajlake_seek_back[tp] = offset


def install_commit_guard(consumer: Any) -> None:
    """Never commit a partition past an unacked record at its committed offset (`head_unacked`): the commit
    waits, and the worker's stall watch has the partition sought back (`request_seek_back`), so the record is
    read again."""
    new_offset = consumer._new_offset

    def _new_offset_not_past_the_head(tp: Any) -> Optional[int]:
        if head_unacked(consumer, tp) is not None:
            return None
        return new_offset(tp)

    consumer._new_offset = _new_offset_not_past_the_head


class QuietMonitor(Monitor):
    """Faust's Monitor without its per-message, per-event, per-table-access and per-send bookkeeping."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> Optional[dict]:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Optional[dict] = None) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_table_get(self, table: Any, key: Any) -> None:
        pass

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        pass

    def on_table_del(self, table: Any, key: Any) -> None:
        pass

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        pass
