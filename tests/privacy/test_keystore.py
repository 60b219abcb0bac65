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


def test_keys_of_a_batch_are_the_keys_one_at_a_time(tmp_path):
    path = tmp_path / "keys.sqlite3"
    store = KeyStore(path)
    known = store.key("u_known")
    many = [f"u_{i}" for i in range(2_000)]  # more than one SELECT's worth of parameters
    got = store.keys(["u_known", *many, "u_known"])
    assert set(got) == {"u_known", *many} and got["u_known"] == known
    assert len(set(got.values())) == len(got) and all(len(k) == KEY_BYTES for k in got.values())
    other = KeyStore(path)  # nothing cached: read back from the file
    assert all(other.key(p) == k for p, k in got.items())
    assert other.keys(many[:5]) == {p: got[p] for p in many[:5]}
    assert len(store) == 2_001 and store.keys([]) == {}


def _keys_in_child(path, pseudonyms, out):
    out.put(KeyStore(path).keys(pseudonyms))


def test_racing_batches_agree_on_one_key_per_user(tmp_path):
    path = tmp_path / "keys.sqlite3"
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    users = [f"u_{i}" for i in range(300)]
    procs = [ctx.Process(target=_keys_in_child, args=(path, users[i * 50:] + users[:i * 50], q)) for i in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    assert results[0] == results[1] == results[2]
    assert results[0] == {u: KeyStore(path).find(u) for u in users}
