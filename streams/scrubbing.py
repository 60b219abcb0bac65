"""The scrub processes: each owns a share of the sessions and keeps their dictionaries between batches, so batches
go out before the ones ahead of them are back; a part that hangs or kills its process has its batch retried one
event at a time, and only the event at fault becomes a dead letter."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections import Counter, OrderedDict, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable

log = logging.getLogger("trajlake.worker")

# what a process runs: (events, session dictionaries) → (per event a result or an error text, the dictionaries)
ScrubFn = Callable[[list[dict[str, Any]], dict[str, Any]], tuple[list[Any], dict[str, Any]]]
# the caller's copies of the dictionaries of these sessions (its cache, or its saved ones, or new ones)
Supply = Callable[[list[str]], dict[str, Any]]

# this many events in a row that hang or kill the process on their own: the scrubber is at fault (ScrubPoolFailed)
FAILURES_IN_A_ROW = 5
# the dictionaries a process holds, at most, beyond the sessions of the batches in flight
HELD_PER_PROCESS = 20_000

_held: OrderedDict[str, Any] = OrderedDict()  # in a scrub process: the dictionaries of the sessions it owns


def scrub_held(fn: ScrubFn, events: list[dict[str, Any]], sent: dict[str, Any], forget: list[str],
               reset: bool) -> tuple[list[Any], dict[str, Any]]:
    """In a scrub process: `fn` over `events` with the dictionaries this process holds, after dropping `forget`
    (everything, with `reset`) and taking the caller's `sent` copies; returns the results and the batch's
    sessions' dictionaries, which it keeps for the next batch."""
    if reset:
        _held.clear()
    for sid in forget:
        _held.pop(sid, None)
    _held.update(sent)
    ids = list(dict.fromkeys(e["session_id"] for e in events))
    results, back = fn(events, {sid: _held[sid] for sid in ids if sid in _held})
    mine = {sid: back[sid] for sid in ids if sid in back}
    _held.update(mine)
    return results, mine


def owner(session_id: str, processes: int) -> int:
    """The process that owns a session: the same for every batch, so its events are scrubbed there in order."""
    if processes == 1:
        return 0
    # a hash that mixes: crc32 is linear, and ids that differ in a digit or two can all share its low bits
    return int.from_bytes(hashlib.blake2b(session_id.encode(), digest_size=4).digest(), "little") % processes


def _retrieved(call: asyncio.Future) -> None:
    if not call.cancelled():
        call.exception()


class ScrubPoolFailed(RuntimeError):
    """The scrub pool cannot be started: a fault of the set-up, not of any event."""


class Pending:
    """A batch sent to the pool and not collected yet: its events split by owning process, one call per part."""

    def __init__(self, events: list[dict[str, Any]], supply: Supply):
        self.events, self.supply = events, supply
        self.parts: list[tuple[int, list[int]]] = []  # (process, positions in `events`)
        self.calls: list[asyncio.Future] = []


class ScrubPool:
    """Scrubbing off the event loop, in processes that can be killed, with batches in flight one after another.

    Presidio and spaCy run in processes of their own so that the worker's event loop keeps heartbeating and
    committing. Each process owns a fixed share of the sessions (`owner`: a hash of the id) and keeps their
    dictionaries (`HELD_PER_PROCESS`, least recently used dropped first), so a batch's part goes to each process
    without waiting for the batch before it: the process takes its parts in order, and a session's dictionary is
    always the one its last part left. The caller's copy of a dictionary goes along only when the process does not
    hold it (the first time, after a restart or `forget_all`). `submit` sends a batch; `collect` waits for the
    oldest one sent. Before, the pool was stateless and a batch went out only when the one before it was back: a
    pool call spent most of its time in hand-offs (bench/RESULTS.md, "Stream worker").

    Without a deadline, one input that makes a process hang (a pathological regex case, a huge text) stalls
    ingest for good, and one that kills it (out of memory, a crash in native code) fails the ingest stage, so the
    worker exits and, restarted, meets the same batch again. Here a batch that passes `timeout_s` once it is the
    oldest, or whose process dies, costs a restart of every process and a retry of its events one at a time: each
    event that hangs or kills its process on its own comes back as an error text (the worker dead-letters it,
    reason `scrub_failed`), and the others are scrubbed as usual. The batches sent after it are sent again, in
    order, starting from the retried batch's dictionaries. Each process of a restarted pool must first answer
    within the deadline (which covers starting it and loading the models): a pool that cannot start, or starts
    too slowly, raises (`ScrubPoolFailed`) and the worker fails fast, rather than dead-lettering every event as a
    failure that is not theirs.
    """

    def __init__(self, fn: ScrubFn, initializer: Callable[..., None], initargs: tuple, processes: int,
                 timeout_s: float, held_per_process: int = HELD_PER_PROCESS):
        self.fn, self.initializer, self.initargs = fn, initializer, initargs
        self.processes, self.timeout_s, self.held_per_process = processes, timeout_s, held_per_process
        self._executors: list[ProcessPoolExecutor] | None = None
        self._held: list[OrderedDict[str, None]] = [OrderedDict() for _ in range(processes)]  # what each holds
        self._forget: list[list[str]] = [[] for _ in range(processes)]  # said with the process's next part
        self._reset = [False] * processes
        self._outstanding: deque[Pending] = deque()
        self._recovering = False
        self._draining = False  # after `forget_all`: no batch goes out until those in flight are collected
        self._settled: asyncio.Event | None = None
        self._flying: Counter[str] = Counter()  # session → the batches in flight with events of it
        self.restarts = 0

    # -- the processes

    def _pool(self) -> list[ProcessPoolExecutor]:
        if self._executors is None:
            # one executor per process: a single process takes its calls in order, which the owned sessions need
            self._executors = [ProcessPoolExecutor(max_workers=1, initializer=self.initializer,
                                                   initargs=self.initargs) for _ in range(self.processes)]
        return self._executors

    async def _restart_and_warm(self) -> None:
        self._restart()
        try:
            await self._every_process_answers()
        except (TimeoutError, BrokenProcessPool) as exc:
            self._restart()
            raise ScrubPoolFailed(f"the scrub pool did not start within {self.timeout_s:g} s or its process died "
                                  f"while starting ({type(exc).__name__}); check the scrubber's models and "
                                  "memory, or raise TRAJLAKE_SCRUB_TIMEOUT_SECONDS") from exc

    async def _every_process_answers(self) -> None:
        """Each of the pool's processes answers within the deadline: each has started and loaded the models."""
        loop = asyncio.get_running_loop()
        calls = [loop.run_in_executor(executor, os.getpid) for executor in self._pool()]
        done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), self.timeout_s)
        failed = next((r for r in done if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed

    def _restart(self) -> None:
        """Kill the processes (a hung one would never return) and start afresh at the next call; they hold nothing."""
        executors, self._executors = self._executors, None
        for held in self._held:
            held.clear()
        self._forget = [[] for _ in range(self.processes)]
        self._reset = [False] * self.processes
        if executors is None:
            return
        # the executor has no public way to stop a running task; its processes are the only handle
        processes = [p for executor in executors for p in (getattr(executor, "_processes", None) or {}).values()]
        for process in processes:
            process.kill()
        for process in processes:  # gone, with its memory, before the next pool starts
            process.join(5)
        for executor in executors:
            executor.shutdown(wait=False, cancel_futures=True)
        self.restarts += 1

    # -- sending and collecting

    def _send(self, p: Pending, prefer: dict[str, Any] | None = None) -> None:
        """Send `p`'s parts, each with the caller's copies of the dictionaries its process does not hold (`prefer`'s
        over `supply`'s: a retried batch's, not yet the caller's)."""
        loop = asyncio.get_running_loop()
        executors = self._pool()
        by_process: dict[int, list[int]] = {}
        owners: dict[str, int] = {}  # a batch has far fewer sessions than events: hash each once
        for i, e in enumerate(p.events):
            sid = e["session_id"]
            proc = owners.get(sid)
            if proc is None:
                proc = owners[sid] = owner(sid, self.processes)
            by_process.setdefault(proc, []).append(i)
        p.parts, p.calls = sorted(by_process.items()), []
        for proc, positions in p.parts:
            held = self._held[proc]
            ids = list(dict.fromkeys(p.events[i]["session_id"] for i in positions))
            missing = [sid for sid in ids if sid not in held]
            for sid in ids:
                held[sid] = None
                held.move_to_end(sid)
            sent: dict[str, Any] = {}
            if missing:
                sent = p.supply(missing)
                if prefer:
                    sent.update((sid, prefer[sid]) for sid in missing if sid in prefer)
            if len(held) > self.held_per_process:
                self._evict(proc, held, p)
            forget, self._forget[proc] = self._forget[proc], []
            reset, self._reset[proc] = self._reset[proc], False
            try:
                call = loop.run_in_executor(executors[proc], scrub_held, self.fn, [p.events[i] for i in positions],
                                            sent, forget, reset)
            except BrokenProcessPool as exc:  # a process died already, before this batch's part went out
                call = loop.create_future()
                call.set_exception(exc)
            # a later batch's calls fail with the processes a restart kills, and are sent again, never awaited
            call.add_done_callback(_retrieved)
            p.calls.append(call)

    def _evict(self, proc: int, held: OrderedDict[str, None], p: Pending) -> None:
        """Drop the least recently sent sessions beyond `held_per_process`, never one in flight (in a batch not
        collected yet, `p` included): its next batch would be sent the caller's copy, which lacks what the batch in
        flight is learning."""
        mine = {e["session_id"] for e in p.events}
        for sid in list(held):
            if len(held) <= self.held_per_process:
                break
            if sid not in self._flying and sid not in mine:
                del held[sid]
                self._forget[proc].append(sid)

    def in_flight(self, session_id: str) -> bool:
        """Whether a batch sent and not collected yet has events of this session."""
        return session_id in self._flying

    def _changed(self) -> None:
        if self._settled is not None:
            self._settled.set()
            self._settled = None

    async def submit(self, events: list[dict[str, Any]], supply: Supply) -> Pending:
        """Send a batch to the processes that own its sessions, behind the batches sent before it; `supply` gives
        the caller's copies of the dictionaries a process does not hold. Waits only while the pool recovers from a
        failed batch, or after `forget_all` until the batches in flight are collected."""
        while self._recovering or (self._draining and self._outstanding):
            if self._settled is None:
                self._settled = asyncio.Event()
            await self._settled.wait()
        self._draining = False
        p = Pending(events, supply)
        if events:
            self._send(p)
        self._outstanding.append(p)
        self._flying.update({e["session_id"] for e in events})
        return p

    async def collect(self, p: Pending) -> tuple[list[Any], dict[str, Any]]:
        """The oldest batch's results (per event, its result or an error text, in order) and its sessions'
        dictionaries, as the processes left them."""
        assert self._outstanding and self._outstanding[0] is p, "batches are collected in the order they were sent"
        try:
            if not p.events:
                return [], {}
            try:
                return await self._settle(p)
            except (TimeoutError, BrokenProcessPool) as exc:
                what = ("took longer than %g s" % self.timeout_s if isinstance(exc, TimeoutError)
                        else "killed its process")
                log.warning("scrubbing a batch of %d events %s; restarting the pool and retrying them one at a time",
                            len(p.events), what)
            self._recovering = True
            try:
                await self._restart_and_warm()
                results, back = await self._one_at_a_time(p)
                for later in list(self._outstanding)[1:]:  # lost with the processes: again, in order
                    if later.events:
                        self._send(later, prefer=back)
                return results, back
            finally:
                self._recovering = False
        finally:
            self._outstanding.popleft()
            ids = {e["session_id"] for e in p.events}
            self._flying.subtract(ids)
            for sid in ids:
                if self._flying[sid] <= 0:
                    del self._flying[sid]
            self._changed()

    async def _settle(self, p: Pending) -> tuple[list[Any], dict[str, Any]]:
        # every part settled before any failure is acted on: the restart that follows kills all the processes
        done = await asyncio.wait_for(asyncio.gather(*p.calls, return_exceptions=True), self.timeout_s)
        failed = [r for r in done if isinstance(r, BaseException)]
        if failed:
            raise next((f for f in failed if not isinstance(f, (TimeoutError, BrokenProcessPool))), failed[0])
        results: list[Any] = [None] * len(p.events)
        back: dict[str, Any] = {}
        for (_, positions), (part_results, part_sessions) in zip(p.parts, done):
            for i, r in zip(positions, part_results, strict=True):
                results[i] = r
            back.update(part_sessions)
        return results, back

    async def _one_at_a_time(self, p: Pending) -> tuple[list[Any], dict[str, Any]]:
        """`p`'s events one by one on a fresh pool, each from the dictionaries the ones before it left."""
        results: list[Any] = []
        back: dict[str, Any] = {}
        failed_in_a_row = 0
        for event in p.events:
            if failed_in_a_row >= FAILURES_IN_A_ROW:
                # every event, one after another: the scrubber, not the events (each failure costs a deadline)
                raise ScrubPoolFailed(f"scrubbing failed on {failed_in_a_row} events in a row, each on its own; "
                                      "this looks like a fault of the scrubber, not of the events")
            one = Pending([event], p.supply)
            self._send(one, prefer=back)
            try:
                [result], sessions = await self._settle(one)
                back.update(sessions)
            except TimeoutError:
                await self._restart_and_warm()
                result = (f"ScrubTimeout: scrubbing this event took longer than {self.timeout_s:g} s "
                          "(TRAJLAKE_SCRUB_TIMEOUT_SECONDS); the pool was restarted")
                log.warning("event %s: %s", event.get("event_id"), result)
            except BrokenProcessPool:
                await self._restart_and_warm()
                result = "ScrubProcessDied: the scrubbing process died on this event; the pool was restarted"
                log.warning("event %s: %s", event.get("event_id"), result)
            failed_in_a_row = failed_in_a_row + 1 if isinstance(result, str) and result.startswith("Scrub") else 0
            results.append(result)
        return results, back

    async def scrub(self, events: list[dict[str, Any]], sessions: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """One batch, sent and collected: `sessions` are the caller's copies; returns them updated."""
        p = await self.submit(events, lambda ids: {sid: sessions[sid] for sid in ids if sid in sessions})
        results, back = await self.collect(p)
        return results, {**sessions, **back}

    # -- what the caller tells the processes

    def forget(self, session_ids: Iterable[str]) -> list[str]:
        """The processes drop these sessions' dictionaries (with their next part); the caller's copy goes next time.
        A session in a batch in flight is kept (its next batch must start from what that one learns): returns those
        not forgotten."""
        kept = []
        for sid in session_ids:
            proc = owner(sid, self.processes)
            if sid in self._flying:
                kept.append(sid)
            elif sid in self._held[proc]:
                del self._held[proc][sid]
                self._forget[proc].append(sid)
        return kept

    def forget_all(self) -> None:
        """The processes drop every dictionary they hold, once the batches in flight are collected (a rebalance:
        the caller's saved copies win)."""
        for proc in range(self.processes):
            self._held[proc].clear()
            self._forget[proc] = []
            self._reset[proc] = True
        self._draining = True

    def shutdown(self) -> None:
        if self._executors is not None:
            for executor in self._executors:
                executor.shutdown(wait=False, cancel_futures=True)
            self._executors = None
