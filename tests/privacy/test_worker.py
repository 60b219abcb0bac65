"""The scrub process's batch: every event's user key comes from one key-store transaction per batch, the same keys
as one at a time; when the batch lookup fails, only the events whose own key fails are lost (as error texts)."""
from __future__ import annotations

import pytest

from privacy.keystore import KeyStore
from privacy.scrub import EventScrubber
from privacy.tokens import reveal
from privacy.worker import scrub_batch
from streams.sources.synthetic import synthetic_events

pytestmark = pytest.mark.component

KEY = b"k" * 32


def _events(n: int = 400) -> list[dict]:
    return [e.event for e in synthetic_events(n, seed=3)]


class Counting(KeyStore):
    def __init__(self, *a, fail_batch: bool = False, fail_user: str | None = None, **kw):
        super().__init__(*a, **kw)
        self.batches, self.singles, self.fail_batch, self.fail_user = 0, 0, fail_batch, fail_user

    def keys(self, pseudonyms):
        self.batches += 1
        if self.fail_batch:
            raise OSError("database is locked")
        return super().keys(pseudonyms)

    def key(self, pseudonym):
        self.singles += 1
        if pseudonym == self.fail_user:
            raise OSError("disk I/O error")
        return super().key(pseudonym)


def test_one_key_lookup_per_batch_and_the_same_keys(tmp_path):
    events = _events()
    store = Counting(tmp_path / "keys.sqlite3")
    out, _ = scrub_batch(EventScrubber(KEY, use_ner=False), store, events, {})
    assert store.batches == 1 and store.singles == 0
    assert all(isinstance(o, dict) for o in out) and len(out) == len(events)
    users = {o["event"]["user_id"] for o in out}
    assert len(users) > 10
    check = KeyStore(tmp_path / "keys.sqlite3")
    for o, raw in zip(out, events):
        pseudonym = o["event"]["user_id"]
        assert reveal(check.key(pseudonym), pseudonym, o["user_ref"]) == raw["user_id"]


def test_a_failed_batch_lookup_falls_back_to_one_user_at_a_time(tmp_path):
    events = _events()
    plain, _ = scrub_batch(EventScrubber(KEY, use_ner=False), KeyStore(tmp_path / "a.sqlite3"), events, {})
    doomed = plain[0]["event"]["user_id"]
    store = Counting(tmp_path / "b.sqlite3", fail_batch=True, fail_user=doomed)
    out, _ = scrub_batch(EventScrubber(KEY, use_ner=False), store, events, {})
    lost = [o for o in out if isinstance(o, str)]
    assert lost and all("disk I/O error" in o for o in lost)
    assert len(lost) == sum(p["event"]["user_id"] == doomed for p in plain)
    assert [o["event"] for o in out if isinstance(o, dict)] == [p["event"] for p in plain
                                                                 if p["event"]["user_id"] != doomed]


def test_an_event_scrubbed_without_a_user_is_the_only_one_lost(tmp_path):
    events = _events(50)
    doomed = events[7]["event_id"]

    class Dropping(EventScrubber):
        def scrub_event(self, e, ctx):
            out = super().scrub_event(e, ctx)
            if e["event_id"] == doomed:
                del out["user_id"]
            return out

    out, _ = scrub_batch(Dropping(KEY, use_ner=False), KeyStore(tmp_path / "keys.sqlite3"), events, {})
    assert isinstance(out[7], str) and "user_id" in out[7]
    assert all(isinstance(o, dict) for i, o in enumerate(out) if i != 7)


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_the_scrub_process_multiplies_on_one_blas_thread(tmp_path):
    """NER's matrices go through numpy's OpenBLAS (privacy/scrub.py::_gemm_by_numpy), which starts a thread per
    core unless told otherwise; in the scrub process it must keep to one, so the event loop keeps its core."""
    from concurrent.futures import ProcessPoolExecutor

    from privacy.worker import init
    from schemas.settings import Settings

    with ProcessPoolExecutor(1, initializer=init, initargs=(Settings(state_dir=tmp_path), False)) as pool:
        threads = pool.submit(_blas_threads).result(timeout=120)
    assert threads and set(threads) == {1}
