"""Batch recomputation of silver steps and episodes from bronze/events, and the stream/batch parity check."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timezone
from typing import Any

import orjson

from lake.readers import read_table
from schemas.settings import Settings
from schemas.tables import BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS
from streams.join import CONTENT_EXCLUDE, batch_join
from streams.sink import silver_row

ENVELOPE = ("event_id", "schema", "event_type", "session_id", "task_id", "user_id", "action_id", "intent_id",
            "agent_version", "prompt_variant", "task_type")


def bronze_events(settings: Settings) -> list[dict[str, Any]]:
    """bronze/events rows back as contract events (as the join saw them on tl.events.clean)."""
    rows = read_table(settings, BRONZE_EVENTS).to_pylist()
    return [{**{k: r[k] for k in ENVELOPE}, "ts": r["ts"].astimezone(timezone.utc).isoformat(),
             "body": orjson.loads(r["body"])} for r in rows]


def latest_revisions(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r[key] not in out or r["revision"] > out[r[key]]["revision"]:
            out[r[key]] = r
    return out


@dataclass
class Parity:
    """Differences between what the stream wrote and a batch recomputation from bronze."""

    steps_only_stream: list[str]
    steps_only_batch: list[str]
    steps_differing: list[str]
    episodes_only_stream: list[str]
    episodes_only_batch: list[str]
    episodes_differing: list[str]
    steps: int
    episodes: int

    @property
    def ok(self) -> bool:
        return not any((self.steps_only_stream, self.steps_only_batch, self.steps_differing,
                        self.episodes_only_stream, self.episodes_only_batch, self.episodes_differing))


def check_parity(settings: Settings) -> Parity:
    """Compare the latest revision of every silver row with the same row recomputed in batch from bronze."""
    steps, episodes = batch_join(bronze_events(settings))
    as_silver = lambda spec, rows: {k: _content(v) for k, v in rows.items()}  # noqa: E731
    b_steps = {r["step_id"]: _content(_typed(SILVER_STEPS, r)) for r in steps}
    b_eps = {r["episode_id"]: _content(_typed(SILVER_EPISODES, r)) for r in episodes}
    s_steps = as_silver(SILVER_STEPS, latest_revisions(read_table(settings, SILVER_STEPS).to_pylist(), "step_id"))
    s_eps = as_silver(SILVER_EPISODES, latest_revisions(read_table(settings, SILVER_EPISODES).to_pylist(), "episode_id"))
    return Parity(
        sorted(set(s_steps) - set(b_steps)), sorted(set(b_steps) - set(s_steps)),
        sorted(k for k in set(s_steps) & set(b_steps) if s_steps[k] != b_steps[k]),
        sorted(set(s_eps) - set(b_eps)), sorted(set(b_eps) - set(s_eps)),
        sorted(k for k in set(s_eps) & set(b_eps) if s_eps[k] != b_eps[k]),
        len(b_steps), len(b_eps))


def _typed(spec, row: dict[str, Any]) -> dict[str, Any]:
    """A join row as the sink would store it (times as datetimes, date as date)."""
    return silver_row(spec)(orjson.dumps({**row, "closed_at": 0.0, "revision": 0, "closed_reason": ""}))


def _content(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in CONTENT_EXCLUDE}
