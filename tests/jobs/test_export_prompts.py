"""What the export takes as an episode's prompt text (near duplicates, the prompt leakage check), in DuckDB."""
from __future__ import annotations

from datetime import date, datetime

import duckdb
import orjson
import pyarrow as pa
import pytest

from jobs.export import _user_text_sql

pytestmark = pytest.mark.unit


def test_agent_reported_episodes_take_their_prompt_from_the_context_snapshots():
    """An episode with frontend user messages is read from them; one an agent reported alone (SDK, OTLP: no
    tracker) from the user turns of its LLM calls' snapshots, so it is deduplicated and leak-checked too."""
    con = duckdb.connect()
    con.register("ep", pa.table({"episode_id": ["tracked", "agent-only", "silent"], "session_id": ["s1", "s2", "s3"],
                                 "task_id": ["t", "t", "t"]}))
    day, t0 = date(2026, 11, 2), datetime(2026, 11, 2, 10)

    def ev(sid, n, kind, body):
        return {"session_id": sid, "task_id": "t", "event_type": kind, "body": orjson.dumps(body).decode(),
                "ts": t0.replace(minute=n), "event_id": f"{sid}-{n}", "date": day}

    snapshot = [{"role": "system", "content": "You are an airline agent"},
                {"role": "user", "content": "Change my flight to Friday"},
                {"role": "user", "content": [{"type": "image_url"}]}]
    con.register("bronze_events", pa.Table.from_pylist([
        ev("s1", 1, "user_message", {"text": "Cancel my booking"}),
        ev("s1", 2, "llm_call", {"context_snapshot": [{"role": "user", "content": "ignored: the tracker saw it"}]}),
        ev("s1", 3, "user_message", {"text": "Yes, the one on Monday"}),
        ev("s2", 1, "llm_call", {"context_snapshot": snapshot, "context_mode": "full"}),
        ev("s2", 2, "llm_call", {"context_snapshot": [{"role": "tool", "content": "{}"},
                                                      {"role": "user", "content": "Thanks, and a window seat"}]}),
        ev("s3", 1, "llm_call", {"output": {"content": "hello"}}),
    ]))
    con.execute(_user_text_sql(1), {"since": day, "until": date(2026, 11, 3)}).fetchall()
    got = dict(con.execute("SELECT id, text FROM ep_text").fetchall())
    assert got == {"tracked": "Cancel my booking\nYes, the one on Monday",
                   "agent-only": "Change my flight to Friday\nThanks, and a window seat"}
