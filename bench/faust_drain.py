"""Benchmark helper: a Faust app that only drains the raw topics (the worker's batching, no work), as a ceiling.

The stream benchmark runs it as a child process, with the settings in TRAJLAKE_ variables like the worker:
it consumes N events from frontend.raw and agent.raw in the worker's batches (500 events or 0.25 s; Faust acks
each event when its batch is done), then writes `{"events": …, "seconds": …}`, counted from the first batch, to
the path given and exits. What it measures: Faust's own per-event cost (fetch, conductor dispatch, Event
objects, acks, offset commits) on this machine, the floor under any Faust-based worker's figures.

By default the app has the worker's Faust set-up (streams/faust_consumer.py: eager dispatch, the quiet monitor);
`--upstream` drains with faust-streaming's own consumer loop and monitor (bench/faust_dispatch.py compares them).

Usage (by bench/stream_throughput.py): python bench/faust_drain.py N OUT.json [--upstream]
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import faust  # noqa: E402

from schemas.settings import Settings  # noqa: E402
from streams.faust_consumer import QuietMonitor, install_eager_dispatch  # noqa: E402


def main() -> None:
    n, out = int(sys.argv[1]), Path(sys.argv[2])
    upstream = "--upstream" in sys.argv[3:]
    s = Settings()
    datadir = s.state_dir / "faust-drain" / s.worker_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(f"{s.worker_id}-drain", broker=f"kafka://{s.bootstrap}", datadir=str(datadir),
                    web_enabled=False, topic_disable_leader=True, consumer_auto_offset_reset="earliest",
                    broker_commit_every=1000, broker_commit_interval=1.0, stream_buffer_maxsize=8192,
                    monitor=None if upstream else QuietMonitor())
    if not upstream:
        install_eager_dispatch(app)
    raw = app.topic(s.topic("frontend.raw"), s.topic("agent.raw"), key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "first": 0, "t0": 0.0}

    @app.agent(raw, name="drain")
    async def drain(stream: faust.StreamT) -> None:
        async for events in stream.take_events(500, within=0.25):
            if not seen["n"]:  # the clock starts when the first batch is in hand: group join and fetch excluded
                seen["t0"], seen["first"] = time.perf_counter(), len(events)
            seen["n"] += len(events)
            if seen["n"] >= n:
                out.write_text(json.dumps({"events": seen["n"] - seen["first"],
                                           "seconds": time.perf_counter() - seen["t0"]}))
                os._exit(0)  # the number is written; a clean Faust shutdown takes seconds and measures nothing

    from faust.worker import Worker

    Worker(app, loglevel="warn", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
