"""Per-user keys for crypto-shredding: one random 32-byte key per pseudonym in a small SQLite file outside the lake."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable

KEY_BYTES = 32
# bound parameters per SELECT … IN (…): under SQLite's default limit (32,766 since 3.32, 999 before)
_SQL_PARAMS = 900


class KeyStore:
    """Creates a user's key on first sight and shreds it on erase.

    The file is the only place a key lives on disk. SQLite is set up so a shredded key leaves no bytes behind in
    it: `secure_delete` zeroes freed content, the rollback journal is truncated rather than kept (no WAL, whose
    frames would hold old pages), and `shred` rewrites the file with VACUUM. Several processes may use one store
    (the worker's scrub pool, `trajlake erase`): creation is INSERT OR IGNORE, so racing creators agree on one key.
    """

    def __init__(self, path: Path, cache_seconds: float = 300.0):
        self.path = Path(path)
        self.cache_seconds = cache_seconds
        # pseudonym → (key, when it was read): the worker asks for the same users again and again
        self._cache: dict[str, tuple[bytes, float]] = {}
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists()
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA secure_delete = ON")
            db.execute("PRAGMA journal_mode = TRUNCATE")
            db.execute("CREATE TABLE IF NOT EXISTS user_keys (pseudonym TEXT PRIMARY KEY, key BLOB NOT NULL, "
                       "created_at REAL NOT NULL)")
            if fresh:
                os.chmod(self.path, 0o600)  # keys: readable by the service account only
            self._db = db
        return self._db

    def key(self, pseudonym: str) -> bytes:
        """The user's key, created now if the user has none."""
        now = time.monotonic()
        hit = self._cache.get(pseudonym)
        if hit is not None and now - hit[1] < self.cache_seconds:
            return hit[0]
        db = self._conn()
        db.execute("INSERT OR IGNORE INTO user_keys VALUES (?, ?, ?)", (pseudonym, os.urandom(KEY_BYTES), time.time()))
        (key,) = db.execute("SELECT key FROM user_keys WHERE pseudonym = ?", (pseudonym,)).fetchone()
        self._cache[pseudonym] = (key, now)
        return key

    def keys(self, pseudonyms: Iterable[str]) -> dict[str, bytes]:
        """`key` for many users at once: the missing ones are created in one transaction.

        The store is in autocommit mode with a rollback journal, so `key` of a new user is a transaction of its own
        and waits for its sync to disk; a batch of events from new users paid that per user (most of the scrub
        process's time on a stream of new sessions). Same keys, one sync per batch.
        """
        now = time.monotonic()
        out: dict[str, bytes] = {}
        missing: list[str] = []
        for p in dict.fromkeys(pseudonyms):
            hit = self._cache.get(p)
            if hit is not None and now - hit[1] < self.cache_seconds:
                out[p] = hit[0]
            else:
                missing.append(p)
        if not missing:
            return out
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR IGNORE INTO user_keys VALUES (?, ?, ?)",
                           [(p, os.urandom(KEY_BYTES), time.time()) for p in missing])
            for i in range(0, len(missing), _SQL_PARAMS):
                chunk = missing[i:i + _SQL_PARAMS]
                rows = db.execute(f"SELECT pseudonym, key FROM user_keys WHERE pseudonym IN "
                                  f"({','.join('?' * len(chunk))})", chunk).fetchall()
                for p, key in rows:
                    out[p] = key
                    self._cache[p] = (key, now)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return out

    def find(self, pseudonym: str) -> bytes | None:
        """The user's key if it exists; never creates one (support lookups, erase checks)."""
        if not self.path.exists():
            return None
        row = self._conn().execute("SELECT key FROM user_keys WHERE pseudonym = ?", (pseudonym,)).fetchone()
        return None if row is None else row[0]

    def shred(self, pseudonym: str) -> bool:
        """Delete the user's key and rewrite the file so its bytes are gone; True if there was one."""
        self._cache.pop(pseudonym, None)
        if not self.path.exists():
            return False
        db = self._conn()
        deleted = db.execute("DELETE FROM user_keys WHERE pseudonym = ?", (pseudonym,)).rowcount
        db.execute("VACUUM")
        return deleted > 0

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        return self._conn().execute("SELECT count(*) FROM user_keys").fetchone()[0]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
