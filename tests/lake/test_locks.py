"""The lake's locks: erase waits for the jobs runs and exports in flight, and they wait for it."""
from __future__ import annotations

import threading
import time
from datetime import date

import pytest

from jobs.export import ExportRequest, run as export_run
from lake.erase import Target, erase_user
from lake.locks import erasing, outside_erase
from privacy.erase import subject_for

pytestmark = pytest.mark.unit


def _in_thread(action, started: threading.Event | None = None) -> tuple[threading.Thread, list]:
    done: list = []

    def go():
        try:
            done.append(action())
        except Exception as exc:  # noqa: BLE001 — the test looks at what the action ended with
            done.append(exc)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, done


def test_readers_share_and_erase_waits_for_them(tmp_path):
    lake, events, said = tmp_path / "lake", [], []
    with outside_erase(lake), outside_erase(lake):  # a jobs run and an export at once: no wait
        def erase():
            with erasing(lake, said.append):
                events.append("erase")

        t, _ = _in_thread(erase)
        time.sleep(0.4)
        assert events == [] and said == ["waiting for the jobs runs, exports and backfills in flight to finish"]
        events.append("readers done")
    t.join(10)
    assert events == ["readers done", "erase"]


def test_a_run_started_during_an_erase_waits_for_it(tmp_path):
    lake, events, said = tmp_path / "lake", [], []
    with erasing(lake):
        def job():
            with outside_erase(lake, said.append):
                events.append("job")

        t, _ = _in_thread(job)
        time.sleep(0.4)
        assert events == [] and said == ["waiting for a running erase to finish"]
        events.append("erase done")
    t.join(10)
    assert events == ["erase done", "job"]


def test_erase_user_waits_for_a_jobs_run_in_flight(base_settings, tmp_path):
    s = base_settings.model_copy(update={"lake_root": tmp_path / "lake"})
    subject = subject_for(b"k" * 32, raw_id="mia_li_3668")
    said: list[str] = []
    with outside_erase(s.lake):
        t, result = _in_thread(lambda: erase_user(s, Target(subject.pseudonym, subject.patterns()), said.append))
        time.sleep(0.4)
        assert result == [] and said[:1] == ["waiting for the jobs runs, exports and backfills in flight to finish"]
    t.join(30)
    assert len(result) == 1 and not isinstance(result[0], Exception) and result[0].rows_deleted == 0


def test_an_export_waits_for_a_running_erase(base_settings, tmp_path):
    s = base_settings.model_copy(update={"lake_root": tmp_path / "lake"})
    said: list[str] = []
    with erasing(s.lake):
        t, result = _in_thread(lambda: export_run(
            s, ExportRequest("x", ("sft",), date(2026, 1, 1), date(2026, 1, 2), "reward-v2"), said.append))
        time.sleep(0.4)
        assert result == [] and said[:1] == ["waiting for a running erase to finish"]
    t.join(60)
    assert len(result) == 1  # it went on once the erase was done (to whatever the empty lake gives)


def test_a_waiting_erase_goes_before_runs_that_start_after_it(tmp_path):
    """flock grants a shared lock beside a waiting exclusive one: without the intent lock, runs that overlap could
    keep an erase waiting for ever."""
    lake, events = tmp_path / "lake", []
    with outside_erase(lake):
        def erase():
            with erasing(lake):
                events.append("erase")

        def job():
            with outside_erase(lake):
                events.append("later run")

        te, _ = _in_thread(erase)
        time.sleep(0.3)  # the erase waits for the run in flight
        tj, _ = _in_thread(job)
        time.sleep(0.3)
        assert events == []  # the later run waits behind the erase, not beside the first run
        events.append("first run done")
    te.join(10)
    tj.join(10)
    assert events == ["first run done", "erase", "later run"]


def test_a_lock_file_another_account_made_read_only_still_locks(tmp_path):
    lake = tmp_path / "lake"
    with outside_erase(lake):
        pass
    for f in (lake / ".locks").iterdir():
        f.chmod(0o444)
    with outside_erase(lake), outside_erase(lake):
        pass
    with erasing(lake):
        pass
