"""Benchmark: the producer's CPU per clean record, sent one by one (a future each) against in a batch per partition.

What the ingest agent's delivery does per ingest batch, on a bare aiokafka producer with the worker's settings
(idempotent, acks=all, 512 KiB batches, 5 ms linger) against a broker of the script's own: 500 records (the
synthetic structural events as JSON, keyed by session) spread over the topic's four partitions, then a flush
and a wait for every future. `send`: `await producer.send(...)` per record (the baseline: what the worker did).
`batch`: `create_batch`/`append` per partition and `send_batch` (`streams/app.py::PartitionBatches`).
CPU is this process's user+system time per record (the event loop's cost; the broker is another process).

Usage: .venv/bin/python bench/send_cost.py [--records 20000] [--runs 3]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")


async def measure(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes], runs: int) -> dict:
    from aiokafka import AIOKafkaProducer

    from streams.app import PartitionBatches

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5,
                         max_batch_size=512 * 1024)
    await p.start()
    try:
        await p.send_and_wait(topic, b"warm-up", partition=0)
        per: dict[str, list[float]] = {"send": [], "batch": []}
        for _ in range(runs):
            for mode in ("send", "batch"):  # alternating, so a drifting machine affects both alike
                cpu = time.process_time()
                for start in range(0, len(values), 500):
                    futures = []
                    batches = PartitionBatches(p, topic)
                    for i in range(start, min(start + 500, len(values))):
                        if mode == "send":
                            futures.append(await p.send(topic, values[i], keys[i], partition=i % 4))
                        else:
                            await batches.add(i % 4, keys[i], values[i])
                    futures += await batches.send()
                    await p.flush()
                    await asyncio.gather(*futures)
                per[mode].append((time.process_time() - cpu) / len(values) * 1e6)
        return per
    finally:
        await p.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    import stream_throughput as st

    from infra.kafka import broker

    work, base = st.private_broker("send_cost")
    try:
        s = st.run_settings(base, work)
        events = [e.event for e in st.workload("structural", a.records, 7)]
        values = [orjson.dumps(e) for e in events]
        keys = [e["session_id"].encode() for e in events]
        per = asyncio.run(measure(s.bootstrap, s.topic("events.clean"), values, keys, a.runs))
    finally:
        broker.stop(base)
    send, batch = statistics.median(per["send"]), statistics.median(per["batch"])
    print(f"{a.records:,} records, {a.runs} runs each, alternating; CPU µs per record")
    print(f"  send per record (baseline): {' / '.join(f'{v:.1f}' for v in per['send'])}  median {send:.1f}")
    print(f"  batch per partition:        {' / '.join(f'{v:.1f}' for v in per['batch'])}  median {batch:.1f}")
    print(f"  ratio {batch / send:.2f}")


if __name__ == "__main__":
    main()
