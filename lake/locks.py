"""Locks between the processes that share a lake on one machine: a publish lock per table, and the erase lock."""
from __future__ import annotations

import fcntl
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

Progress = Callable[[str], None]


def _root(lake: Path) -> Path:
    root = lake / ".locks"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def _flock(path: Path, mode: int, waiting: str, progress: Progress) -> Iterator[None]:
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(waiting)
            fcntl.flock(fh, mode)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def table_locks(lake: Path, table_ids: Iterable[str], progress: Progress = lambda _: None) -> Iterator[None]:
    """Hold the publish lock of each table (taken in name order, so two jobs never wait on each other in a cycle)."""
    root = _root(lake)
    with ExitStack() as stack:
        for tid in sorted(set(table_ids)):
            stack.enter_context(_flock(root / f"{tid.replace('/', '-')}.lock", fcntl.LOCK_EX,
                                       f"waiting for another run publishing {tid}", progress))
        yield


@contextmanager
def reading_for_gold(lake: Path, progress: Progress = lambda _: None) -> Iterator[None]:
    """Held by a jobs run or an export from its first read to its last write (many at once).

    A run that read silver before an erase reached it would otherwise write the erased user's gold rows back
    after the erase had passed gold, and an export could publish rows from files erase had vacuumed."""
    with _flock(_root(lake) / "erase.lock", fcntl.LOCK_SH, "waiting for a running erase to finish", progress):
        yield


@contextmanager
def erasing(lake: Path, progress: Progress = lambda _: None) -> Iterator[None]:
    """Held by erase for its whole run: it waits for the jobs runs and exports in flight, and new ones wait for it.

    The streaming sinks take no part: they append new events (erase retries its commits around theirs)."""
    with _flock(_root(lake) / "erase.lock", fcntl.LOCK_EX,
                "waiting for the jobs runs and exports in flight to finish", progress):
        yield
