"""The lake's locks: erase waits for the jobs runs and exports in flight, and they wait for it."""
from __future__ import annotations

import threading
import time
from datetime import date

import pytest

from jobs.export import ExportRequest, run as export_run
from lake.erase import Target, erase_user
from lake.locks import erasing, reading_for_gold
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
    with reading_for_gold(lake), reading_for_gold(lake):  # a jobs run and an export at once: no wait
        def erase():
            with erasing(lake, said.append):
                events.append("erase")

        t, _ = _in_thread(erase)
        time.sleep(0.4)
        assert events == [] and said == ["waiting for the jobs runs and exports in flight to finish"]
        events.append("readers done")
    t.join(10)
    assert events == ["readers done", "erase"]


def test_a_run_started_during_an_erase_waits_for_it(tmp_path):
    lake, events, said = tmp_path / "lake", [], []
    with erasing(lake):
        def job():
            with reading_for_gold(lake, said.append):
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
    with reading_for_gold(s.lake):
        t, result = _in_thread(lambda: erase_user(s, Target(subject.pseudonym, subject.patterns()), said.append))
        time.sleep(0.4)
        assert result == [] and said[:1] == ["waiting for the jobs runs and exports in flight to finish"]
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
