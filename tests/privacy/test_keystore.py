"""Per-user keys: created once per pseudonym, shared by processes, and shredded without leaving their bytes behind."""
import multiprocessing

import pytest

from privacy.keystore import KEY_BYTES, KeyStore

pytestmark = pytest.mark.component


def test_a_user_gets_one_key_that_stays(tmp_path):
    store = KeyStore(tmp_path / "keys.sqlite3")
    k = store.key("u_a")
    assert len(k) == KEY_BYTES and store.key("u_a") == k != store.key("u_b")
    assert KeyStore(tmp_path / "keys.sqlite3").key("u_a") == k  # another process sees the same key
    assert len(store) == 2


def _key_in_child(path, pseudonym, out):
    out.put(KeyStore(path).key(pseudonym))


def test_racing_processes_agree_on_one_key(tmp_path):
    path = tmp_path / "keys.sqlite3"
    q = multiprocessing.get_context("spawn").Queue()
    procs = [multiprocessing.get_context("spawn").Process(target=_key_in_child, args=(path, "u_race", q))
             for _ in range(3)]
    for p in procs:
        p.start()
    keys = {q.get(timeout=60) for _ in procs}
    for p in procs:
        p.join()
    assert keys == {KeyStore(path).find("u_race")}


def test_shredding_removes_the_key_bytes_from_the_file(tmp_path):
    path = tmp_path / "keys.sqlite3"
    store = KeyStore(path)
    doomed, kept = store.key("u_doomed"), store.key("u_kept")
    assert doomed in path.read_bytes()
    assert store.shred("u_doomed") and not store.shred("u_doomed")
    assert store.find("u_doomed") is None and store.find("u_kept") == kept
    data = path.read_bytes()
    assert doomed not in data and kept in data
    assert not any(p.name.endswith(("-wal", "-journal")) and p.stat().st_size for p in tmp_path.iterdir())
    # a new key for a returning user is a new key: what was sealed with the old one stays unreadable
    assert store.key("u_doomed") != doomed


def test_find_never_creates(tmp_path):
    store = KeyStore(tmp_path / "none" / "keys.sqlite3")
    assert store.find("u_x") is None and not store.shred("u_x") and len(store) == 0


def test_the_cache_expires_so_an_erased_key_leaves_a_worker(tmp_path):
    path = tmp_path / "keys.sqlite3"
    worker, eraser = KeyStore(path, cache_seconds=0), KeyStore(path)
    old = worker.key("u_a")
    eraser.shred("u_a")
    assert worker.key("u_a") != old
