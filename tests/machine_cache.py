"""Tool installs the tests need but trajlake does not (Airflow, PyTorch), built once per machine under
~/.cache/trajlake/ and shared by every clone: one directory per requirements hash, built under a file lock."""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trajlake"


@contextmanager
def machine_cache(name: str, requirements: Path, build: Callable[[Path], None]) -> Iterator[Path]:
    """`<cache>/<name>-<hash>`, where the hash covers the requirements file and this Python's version; `build(dir)`
    fills it when no complete build exists. Concurrent runs build once (exclusive lock) and a build in use is
    never removed (shared lock held while the caller uses it); builds of other hashes are removed."""
    digest = hashlib.sha256(requirements.read_bytes() + f"cp{sys.version_info[0]}{sys.version_info[1]}".encode())
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"{name}-{digest.hexdigest()[:16]}"
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            build(target)
            (target / ".complete").touch()
        for old in CACHE.glob(f"{name}-*"):
            if old.is_dir() and old != target:
                shutil.rmtree(old, ignore_errors=True)
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield target
