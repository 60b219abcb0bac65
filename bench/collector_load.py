"""Benchmark: events/s through the collector (HTTP accept → visible in bronze/events) next to producing the same events directly.

Per run, on fresh topics, consumer group and lake, on a broker of the benchmark's own, the same N synthetic events
(seeded; `structural` by default, so the worker's NER is not what is measured):
  collector  `trajlake collect` as a child process; C concurrent HTTP clients POST batches of B events to /v1/events
             (each answered only after the broker acked, acks=all); accept/s = N / (last answer − first request);
             end to end/s = N / (last event visible in bronze/events − first request), with `trajlake worker` running
  baseline   the same events sent with streams/producer.py (kafka-python, idempotent, acks=all) to the raw topics;
             send/s = N / (flush done − first send); end to end/s likewise, same worker
Both paths end in the same worker, so end-to-end is bounded by the worker; the accept/s vs send/s ratio is what the
HTTP door costs by itself.

Usage: .venv/bin/python bench/collector_load.py [--events 10000] [--batch 100] [--clients 8] [--runs 3]
Writes bench/out/collector_load.json and prints the table for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from stream_throughput import (REPO, Visibility, private_broker, run_settings, start_worker, stop_worker, wait_visible,  # noqa: E402
                               workload)

import orjson  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from infra.kafka import broker  # noqa: E402
from schemas.settings import Settings, settings_env  # noqa: E402
from streams.producer import build_producer, produce  # noqa: E402
from streams.sources.synthetic import synthetic_events  # noqa: E402

OUT = REPO / "bench" / "out"
KEY = "wk_bench_0123456789abcdef"


def start_collector(s: Settings, log: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "trajlake.cli", "collect"], cwd=REPO, env=settings_env(s, os.environ),
                         stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{s.collector_port}/ready", timeout=2) as r:
                if r.status == 200:
                    return p
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise RuntimeError(f"the collector did not become ready: {log.read_text()[-2000:]}")


async def post_all(url: str, events: list[dict], batch: int, clients: int) -> tuple[float, float]:
    """POST the events in batches from `clients` concurrent connections; (first request, last answer) times."""
    import aiohttp

    batches = [events[i:i + batch] for i in range(0, len(events), batch)]
    todo: asyncio.Queue = asyncio.Queue()
    for b in batches:
        todo.put_nowait(b)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    async def client(session: aiohttp.ClientSession) -> None:
        while not todo.empty():
            b = todo.get_nowait()
            async with session.post(url, data=orjson.dumps(b), headers=headers) as r:
                answer = await r.json()
                if r.status != 200 or answer["accepted"] != len(b):
                    raise RuntimeError(f"collector answered {r.status}: {str(answer)[:300]}")

    async with aiohttp.ClientSession() as session:
        t0 = time.time()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return t0, time.time()


def warm(s: Settings, vis: Visibility, seed: int) -> None:
    """A small batch through the worker first (group join, imports, NER load) so the run measures steady state."""
    events = list(synthetic_events(300, seed=seed + 1000))
    produce(s, events)
    wait_visible(vis, len(events), 240)


def one_run(base: Settings, work: Path, kind: str, n: int, batch: int, clients: int, seed: int) -> dict:
    items = workload(kind, n, seed)
    result: dict = {"kind": kind, "events": n, "batch": batch, "clients": clients}
    app = (items[0].event.get("client") or {}).get("app", "bench")  # the key must name the events' app
    # the collector path
    s = run_settings(base, work).model_copy(update={
        "collector_port": broker.free_port((base.kafka_port, base.kafka_controller_port)),
        "collector_write_keys": {app: SecretStr(KEY)}, "collector_rate_per_second": 1e9,
        "collector_rate_burst": 10**9})
    c = start_collector(s, work / f"collector-{s.worker_id}.log")
    vis = Visibility(s)
    w = start_worker(s, work / f"worker-{s.worker_id}.log")
    try:
        warm(s, vis, seed)
        before = len(vis.seen)
        t0, t_acc = asyncio.run(post_all(f"http://127.0.0.1:{s.collector_port}/v1/events",
                                         [e.event for e in items], batch, clients))
        wait_visible(vis, before + n, 900)
        last = max(vis.seen[e.event["event_id"]] for e in items)
        result.update(collector_accept_per_s=round(n / (t_acc - t0), 1), collector_e2e_per_s=round(n / (last - t0), 1))
    finally:
        stop_worker(w)
        c.terminate()
        c.wait(30)
    # the baseline: the same events straight to Kafka with the project's producer
    s2 = run_settings(base, work)
    vis2 = Visibility(s2)
    w = start_worker(s2, work / f"worker-{s2.worker_id}.log")
    try:
        warm(s2, vis2, seed)
        before = len(vis2.seen)
        producer = build_producer(s2)  # connected before the clock starts, like the collector's
        producer.partitions_for(s2.topic("frontend.raw"))
        producer.partitions_for(s2.topic("agent.raw"))
        t0 = time.time()
        produce(s2, items, producer=producer)
        t_sent = time.time()
        producer.close()
        wait_visible(vis2, before + n, 900)
        last = max(vis2.seen[e.event["event_id"]] for e in items)
        result.update(producer_send_per_s=round(n / (t_sent - t0), 1), producer_e2e_per_s=round(n / (last - t0), 1))
    finally:
        stop_worker(w)
    result["accept_ratio"] = round(result["collector_accept_per_s"] / result["producer_send_per_s"], 3)
    result["e2e_ratio"] = round(result["collector_e2e_per_s"] / result["producer_e2e_per_s"], 3)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kind", default="structural", choices=["structural", "mix"])
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    work, base = private_broker("collector")
    results = []
    try:
        for r in range(a.runs):
            res = one_run(base, work, a.kind, a.events, a.batch, a.clients, a.seed + r)
            print(json.dumps(res), flush=True)
            results.append(res)
    finally:
        broker.stop(base)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    (OUT / "collector_load.json").write_text(json.dumps({"machine": machine, "args": vars(a), "runs": results},
                                                        indent=2))
    keys = ("collector_accept_per_s", "producer_send_per_s", "accept_ratio", "collector_e2e_per_s",
            "producer_e2e_per_s", "e2e_ratio")
    print("\n| run | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1))
    for i, r in enumerate(results, 1):
        print(f"| {i} | " + " | ".join(f"{r[k]:,}" for k in keys) + " |")
    print("| **median** | " + " | ".join(f"**{statistics.median(r[k] for r in results):,}**" for k in keys) + " |")


if __name__ == "__main__":
    main()
