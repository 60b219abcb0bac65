"""The scrub process pool with a deadline: a batch is split by session across its processes; a part that hangs or
kills its process has its batch retried one event at a time, and only the event at fault becomes a dead letter."""
from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

log = logging.getLogger("trajlake.worker")

# what the pool runs: (events, session dictionaries) → (per event a result or an error text, the dictionaries)
ScrubFn = Callable[[list[dict[str, Any]], dict[str, Any]], tuple[list[Any], dict[str, Any]]]


# this many events in a row that hang or kill the process on their own: the scrubber is at fault (ScrubPoolFailed)
FAILURES_IN_A_ROW = 5


class ScrubPoolFailed(RuntimeError):
    """The scrub pool cannot be started: a fault of the set-up, not of any event."""


def split_by_session(events: list[dict[str, Any]], weights: list[int], parts: int) -> list[list[int]]:
    """The positions of `events` in at most `parts` groups of about equal weight, each session's events in one group
    and in their order (a session's dictionary learns from its events in order, in one process).

    Sessions go heaviest first to the lightest group so far; a weight is what scrubbing an event costs, roughly
    (its size in bytes: NER's time grows with the text). Groups left empty are dropped.
    """
    if not events:
        return []
    sessions: dict[str, list[int]] = {}
    if parts > 1:
        for i, e in enumerate(events):
            sessions.setdefault(e["session_id"], []).append(i)
    if len(sessions) <= 1:
        return [list(range(len(events)))]
    load = [0] * parts
    groups: list[list[int]] = [[] for _ in range(parts)]
    weighed = sorted(((sum(weights[i] for i in ps), ps) for ps in sessions.values()), key=lambda wp: -wp[0])
    for weight, positions in weighed:
        g = load.index(min(load))
        groups[g].extend(positions)
        load[g] += weight
    return [sorted(g) for g in groups if g]


class ScrubPool:
    """Scrubbing off the event loop, in processes that can be killed.

    Presidio and spaCy run in a process pool so that the worker's event loop keeps heartbeating and committing.
    With more than one process, a batch of several sessions is split by session (`split_by_session`) and its
    parts scrubbed at once: spaCy's NER is single-threaded, and with one process the event loop waited for it
    while part of the machine sat idle (bench/RESULTS.md, "Stream worker").
    Without a deadline, one input that makes them hang (a pathological regex case, a huge text) stalls ingest
    for good, and one that kills the process (out of memory, a crash in native code) fails the ingest stage, so
    the worker exits and, restarted, meets the same batch again. Here a batch that passes `timeout_s`, or whose
    process dies, costs a pool restart and a retry of its events one at a time: each event that hangs or kills
    the process on its own comes back as an error text (the worker dead-letters it, reason `scrub_failed`), and
    the others are scrubbed as usual. Each process of a restarted pool must first answer within the deadline
    (which covers starting it and loading the models): a pool that cannot start, or starts too slowly, raises
    (`ScrubPoolFailed`) and the worker fails fast, rather than dead-lettering every event as a failure that is
    not theirs.
    """

    def __init__(self, fn: ScrubFn, initializer: Callable[..., None], initargs: tuple, processes: int,
                 timeout_s: float):
        self.fn, self.initializer, self.initargs = fn, initializer, initargs
        self.processes, self.timeout_s = processes, timeout_s
        self._executor: ProcessPoolExecutor | None = None
        self.restarts = 0

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.processes, initializer=self.initializer,
                                                 initargs=self.initargs)
        return self._executor

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
        """Each of the pool's processes answers within the deadline: each has started and loaded the models.

        An empty call is not enough with two processes: the first to finish loading takes every instant call
        while the second is still loading, so a second process that could not start would go unnoticed until
        it broke a batch of events that are not at fault."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        answered: set[int] = set()
        while True:
            calls = [loop.run_in_executor(self._pool(), os.getpid) for _ in range(self.processes)]
            done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True),
                                          max(deadline - loop.time(), 0.001))
            failed = next((r for r in done if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            answered.update(done)
            if len(answered) >= self.processes:
                return
            await asyncio.sleep(0.05)

    def _restart(self) -> None:
        """Kill the pool's processes (a hung one would never return) and start afresh at the next call."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # the executor has no public way to stop a running task; its processes are the only handle
        processes = list((getattr(executor, "_processes", None) or {}).values())
        for process in processes:
            process.kill()
        for process in processes:  # gone, with its memory, before the next pool starts
            process.join(5)
        executor.shutdown(wait=False, cancel_futures=True)
        self.restarts += 1

    async def _call(self, events: list[dict[str, Any]], sessions: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._pool(), self.fn, events, sessions), self.timeout_s)

    async def _call_in_parts(self, events: list[dict[str, Any]], sessions: dict[str, Any],
                             weights: list[int] | None) -> tuple[list[Any], dict[str, Any]]:
        groups = split_by_session(events, weights or [1] * len(events), self.processes)
        if len(groups) <= 1:
            return await self._call(events, sessions)
        calls = []
        for group in groups:
            part = [events[i] for i in group]
            ids = {e["session_id"] for e in part}
            calls.append(self._call(part, {sid: d for sid, d in sessions.items() if sid in ids}))
        # every part settled before any failure is acted on: the restart that follows kills all the processes
        done = await asyncio.gather(*calls, return_exceptions=True)
        failed = [r for r in done if isinstance(r, BaseException)]
        if failed:
            raise next((f for f in failed if not isinstance(f, (TimeoutError, BrokenProcessPool))), failed[0])
        results: list[Any] = [None] * len(events)
        back = dict(sessions)
        for group, (part_results, part_sessions) in zip(groups, done):
            for i, r in zip(group, part_results, strict=True):
                results[i] = r
            back.update(part_sessions)
        return results, back

    async def scrub(self, events: list[dict[str, Any]], sessions: dict[str, Any],
                    weights: list[int] | None = None) -> tuple[list[Any], dict[str, Any]]:
        """`fn(events, sessions)` in the pool, split by session across its processes (`weights`: each event's
        rough cost, for the split); per event, its result or an error text, in order."""
        try:
            return await self._call_in_parts(events, sessions, weights)
        except (TimeoutError, BrokenProcessPool) as exc:
            what = "took longer than %g s" % self.timeout_s if isinstance(exc, TimeoutError) else "killed its process"
            log.warning("scrubbing a batch of %d events %s; restarting the pool and retrying them one at a time",
                        len(events), what)
            await self._restart_and_warm()
        # `sessions` is as it was: the pool worked on copies, which are lost with the batch
        results: list[Any] = []
        failed_in_a_row = 0
        for event in events:
            if failed_in_a_row >= FAILURES_IN_A_ROW:
                # every event, one after another: the scrubber, not the events (each failure costs a deadline)
                raise ScrubPoolFailed(f"scrubbing failed on {failed_in_a_row} events in a row, each on its own; "
                                      "this looks like a fault of the scrubber, not of the events")
            sid = event["session_id"]
            try:
                [result], back = await self._call([event], {sid: sessions[sid]} if sid in sessions else {})
                sessions.update(back)
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
        return results, sessions

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
