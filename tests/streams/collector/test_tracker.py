"""tracker.js in real headless Chromium (Debian's, driven by Playwright): clicks on the demo page become events in bronze/events."""
import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.kafka.broker import free_port
from lake.readers import read_table
from schemas.tables import BRONZE_EVENTS
from streams.collector.app import STATIC
from tests.conftest import WorkerProcess, wait_until
from tests.streams.collector.conftest import KEY, CollectorProcess, collector_settings

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
BUTTONS = ["accept", "reject", "edit", "undo", "retry", "escalate", "delegate", "optout", "abandon", "complete",
           "reopen", "up"]


@pytest.fixture
def web_app():
    """Another origin serving the demo page, as a product's web app would (the tracker then calls cross-origin)."""
    port = free_port()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(STATIC))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def settled(page) -> bool:
    return page.evaluate("window.tracker && window.tracker.queue.length === 0 && !window.tracker.inflight")


def test_clicks_in_a_real_browser_land_in_bronze(kafka, tmp_path, web_app):
    from playwright.sync_api import sync_playwright

    s = collector_settings(kafka, tmp_path, collector_cors_origins=(web_app,))
    c = CollectorProcess(s, tmp_path / "collector.log").start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM))
            try:
                ctx = browser.new_context()
                page = ctx.new_page()
                page.goto(f"{web_app}/demo.html?collector={c.url}&key={KEY}&action=a-17&flush=200")
                for b in BUTTONS:
                    page.click(f"#{b}")
                wait_until(lambda: settled(page), 30, 0.2, message="the tracker to send its batches")
                session, task = page.evaluate("[tracker.sessionId, tracker.taskId]")
                log = page.inner_text("#log")
                assert "200 " in log and '"rejected":0' in log, log
                page.reload()  # same tab: the session and task ids survive
                page.wait_for_function("window.tracker !== undefined")
                assert page.evaluate("[tracker.sessionId, tracker.taskId]") == [session, task]
                wait_until(lambda: settled(page), 30, 0.2, message="the shown event after reload")
                # a numeric user id is sent as the contract's string, and an edit larger than the browsers' 64 KiB
                # keepalive limit goes in a batch of its own, without keepalive (it failed at every retry before)
                page.evaluate("tracker.setContext({userId: 4217}); tracker.edited('a-17', 'x'.repeat(70000));"
                              "tracker.accepted('a-17'); tracker.flush()")
                wait_until(lambda: settled(page), 30, 0.2, message="the long edit")
                assert page.evaluate("tracker.dropped") == 0

                # events still queued when the page goes away leave with sendBeacon
                beacon = ctx.new_page()
                beacon.goto(f"{web_app}/demo.html?collector={c.url}&key={KEY}&action=a-18&flush=600000"
                            f"&session=s-beacon&task=t-beacon")
                beacon.click("#complete")
                assert beacon.evaluate("tracker.queue.length") == 2
                beacon.goto("about:blank")

                # the demo page served by the collector itself (same origin)
                same = ctx.new_page()
                same.goto(f"{c.url}/demo?key={KEY}&action=a-19&session=s-same&task=t-same")
                same.click("#accept")
                wait_until(lambda: settled(same), 30, 0.2, message="same-origin send")
            finally:
                browser.close()
        w = WorkerProcess(s, tmp_path / "worker.log", "--no-ner").start()
        try:
            w.wait_for(lambda: read_table(s, BRONZE_EVENTS, columns=["event_id"]).num_rows >= 20, 120,
                       message="20 browser events in bronze")
        finally:
            w.stop()
    finally:
        c.stop()
    rows = read_table(s, BRONZE_EVENTS, columns=["event_type", "session_id", "task_id", "action_id", "client_app",
                                                 "body"]).to_pylist()
    main = [r for r in rows if r["session_id"] == session]
    assert sorted(r["event_type"] for r in main) == sorted(
        ["action_shown"] * 2 + ["action_accepted"] * 2 + ["action_edited"] * 2 + ["action_rejected", "action_undone",
                                "action_retried", "escalated", "delegated", "opted_out", "task_abandoned",
                                "task_completed", "task_reopened", "feedback"])
    assert {r["task_id"] for r in main} == {task} and {r["client_app"] for r in rows} == {"helpdesk-web"}
    assert {r["action_id"] for r in main if r["event_type"].startswith("action_")} == {"a-17"}
    edited = sorted((r["body"] for r in main if r["event_type"] == "action_edited"), key=len)
    assert "store credit" in edited[0]  # the final value the user submitted
    assert "x" * 70000 in edited[1]  # the long one, sent alone
    assert sorted((r["event_type"], r["action_id"]) for r in rows if r["session_id"] == "s-beacon") == [
        ("action_shown", "a-18"), ("task_completed", None)]
    assert sorted(r["event_type"] for r in rows if r["session_id"] == "s-same") == ["action_accepted", "action_shown"]
