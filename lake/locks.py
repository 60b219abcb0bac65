"""Locks between the processes that share a lake on one machine: a publish lock per table, and the erase lock."""
from __future__ import annotations

import fcntl
import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

Progress = Callable[[str], None]


def _root(lake: Path) -> Path:
    root = lake / ".locks"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _open(path: Path) -> int:
    """The lock file, for writing where that is allowed (NFS emulates flock with fcntl locks, and an exclusive one
    needs a file open for writing), else read-only: flock takes either on a local disk, so a lock file another
    account created (the scheduler's, erase's) still locks."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


@contextmanager
def _flock(path: Path, mode: int, waiting: str, progress: Progress) -> Iterator[None]:
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(waiting)
            fcntl.flock(fd, mode)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


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
def outside_erase(lake: Path, progress: Progress = lambda _: None) -> Iterator[None]:
    """Held by a jobs run, an export (or its rebuild) and a backfill from their first read to their last write,
    many at once.

    A run that read the lake before an erase reached it would otherwise write the erased user's rows back after
    the erase had passed them (gold from silver, an export from files erase had vacuumed, silver from bronze).
    The intent lock is held only while the shared lock is taken: an erase that holds it waits for the runs in
    flight while new ones wait behind it (flock grants a shared lock beside a waiting exclusive one, so without
    it overlapping runs could keep an erase waiting for ever). Not re-entrant: a holder that took it again
    while an erase waits would wait on that erase, which waits on the holder."""
    root = _root(lake)
    waiting = "waiting for a running erase to finish"
    with ExitStack() as held:
        with _flock(root / "erase.intent", fcntl.LOCK_SH, waiting, progress):
            # no erase holds erase.lock now (it takes it only while it holds the intent); kept past the intent
            held.enter_context(_flock(root / "erase.lock", fcntl.LOCK_SH, waiting, progress))
        yield


@contextmanager
def erasing(lake: Path, progress: Progress = lambda _: None) -> Iterator[None]:
    """Held by erase (and by `trajlake migrate`) for its whole run: it waits for the jobs runs, exports and
    backfills in flight, and those that start meanwhile wait for it.

    The streaming sinks take no part: they append new events (erase retries its commits around theirs)."""
    root = _root(lake)
    waiting = "waiting for the jobs runs, exports and backfills in flight to finish"
    with _flock(root / "erase.intent", fcntl.LOCK_EX, waiting, progress), \
            _flock(root / "erase.lock", fcntl.LOCK_EX, waiting, progress):
        yield
