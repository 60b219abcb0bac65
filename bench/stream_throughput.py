"""Benchmark: the stream worker's sustained events/s and produce→visible-in-Delta latency, next to a bare consumer.

Three workloads from the seeded synthetic generator:
  mix         the product mix: action outputs, edits, user messages and reopen reasons carry free text (~32% of
              events: every agent action is a free-text output)
  mix20       the issue's mix, ~20% of events with free text: the same interleaved sessions, of which a fixed
              half (by a hash of the session id) keep their free-text events and the other half lose them, as
              sessions of clicks on structured actions would
  structural  the same sessions without the free-text event types (nothing for Presidio to read)

Per run, each on fresh topics, consumer group and lake on a broker of the benchmark's own:
  throughput  N events produced while the warm worker (Presidio NER on) runs and drains them into bronze/events:
              events/s = N / (last row visible − first event sent). The benchmark's own producer shares the
              two cores with the worker (and the broker) while it sends.
  drain       N more events produced while the worker is frozen (SIGSTOP of its processes), then released:
              drain/s = N / (last row visible − release). The worker alone on the machine draining a backlog,
              as the two baselines below drain theirs: the figure to hold against them.
  latency     events produced at a steady rate (70% of the run's throughput, or --rate) while the worker runs; per event,
              visible − produced, where "visible" is the first poll (every 100 ms) of the Delta log that lists a
              file holding the event; p50 and p99
  baselines   in the same run, over the same raw topics:
              a bare aiokafka consume loop (no group, no parsing): the ceiling any Kafka consumer in Python meets;
              a Faust app that drains them with the worker's batching and Faust set-up and does nothing
              (bench/faust_drain.py): the ceiling of any worker built like this one on this machine

Usage: .venv/bin/python bench/stream_throughput.py [--events 20000] [--rate R] [--runs 3] [--workers 1,2]
(--workers: worker processes in one consumer group, sharing the partitions; each count once per round)
Writes bench/out/stream_throughput.json and prints the table for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

import orjson  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from infra.kafka import broker  # noqa: E402
from lake.tables import open_table  # noqa: E402
from schemas.settings import Settings, settings_env  # noqa: E402
from schemas.tables import BRONZE_EVENTS  # noqa: E402
from streams.producer import build_producer  # noqa: E402
from streams.sources.synthetic import synthetic_events  # noqa: E402

OUT = REPO / "bench" / "out"
TEXT_TYPES = {"action_proposed", "action_edited", "user_message", "task_reopened"}


# the share of mix20's sessions that keep their free text: 0.325·f / (f + 0.675·(1 − f)) = 0.20 at f ≈ 0.52,
# with 0.325 the mix's own share of free-text events
MIX20_TEXT_SESSIONS = 52


def workload(kind: str, n: int, seed: int) -> list:
    if kind not in ("mix", "mix20", "structural"):
        raise SystemExit(f"unknown workload {kind!r}: use mix, mix20 or structural")
    source = synthetic_events({"mix": n, "mix20": n * 3 // 2, "structural": n * 2}[kind], seed=seed)

    def kept(e) -> bool:
        if kind == "mix" or e.event["event_type"] not in TEXT_TYPES:
            return True
        return kind == "mix20" and zlib.crc32(e.event["session_id"].encode()) % 100 < MIX20_TEXT_SESSIONS

    events = [e for e in source if kept(e)]
    return events[:n]


class Visibility:
    """Polls bronze/events' Delta log; reads only files it has not seen; records when each event_id appeared."""

    def __init__(self, settings: Settings):
        self.settings, self.seen_files, self.seen = settings, set(), {}

    def poll(self) -> int:
        dt = open_table(self.settings, BRONZE_EVENTS)
        if dt is None:
            return 0
        now = time.time()
        for uri in dt.file_uris():
            if uri not in self.seen_files:
                self.seen_files.add(uri)
                for eid in pq.read_table(uri.removeprefix("file://"), columns=["event_id"]).column(0).to_pylist():
                    self.seen.setdefault(eid, now)
        return len(self.seen)


def private_broker(name: str) -> tuple[Path, Settings]:
    """A fresh work directory bench/out/<name> and a broker of its own started on free ports; returns the
    directory and the broker's settings (the caller stops it with `broker.stop`)."""
    work = OUT / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = broker.free_port()
    base = Settings(state_dir=work / "state", kafka_port=port, kafka_controller_port=broker.free_port((port,)),
                    topic_partitions=4, sink_max_seconds=1.0)
    broker.start(base)
    return work, base


def run_settings(base: Settings, work: Path) -> Settings:
    tag = uuid.uuid4().hex[:6]
    s = base.model_copy(update={"topic_prefix": f"b{tag}.", "worker_id": f"bench{tag}", "lake_root": work / tag / "lake",
                                "state_dir": base.state_dir})
    broker.ensure_topics(s)
    return s


def start_worker(s: Settings, log: Path, i: int = 0) -> subprocess.Popen:
    own_state = s.model_copy(update={"state_dir": s.state_dir / "worker" / f"{s.worker_id}-{i}"})
    return subprocess.Popen([sys.executable, "-m", "trajlake.cli", "worker"], cwd=REPO,
                            env=settings_env(own_state, os.environ), stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def stop_worker(workers: list[subprocess.Popen]) -> None:
    for p in workers:
        p.send_signal(signal.SIGTERM)
    for p in workers:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def send(s: Settings, events: list, rate: float = 0.0) -> dict[str, float]:
    """Produce events (paced at `rate`/s when > 0); returns event_id → send time."""
    p = build_producer(s)
    sent: dict[str, float] = {}
    t0 = time.time()
    for i, e in enumerate(events):
        if rate > 0:
            ahead = t0 + i / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
        sent[e.event["event_id"]] = time.time()
        p.send(s.topic(e.topic), key=e.event["session_id"].encode(), value=orjson.dumps(e.event))
    p.flush()
    p.close()
    return sent


def wait_visible(vis: Visibility, n: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while vis.poll() < n:
        if time.time() > deadline:
            raise RuntimeError(f"only {len(vis.seen)} of {n} events visible after {timeout:.0f}s")
        time.sleep(0.1)


def warm_worker(s: Settings, log: Path, seed: int, workers: int = 1) -> tuple[list[subprocess.Popen], Visibility]:
    """Start the workers (one consumer group) and wait until a small warm-up batch is in Delta and every worker
    reads some partitions (JIT, spaCy load, group join and rebalance done)."""
    from trajlake.cli import group_members

    vis = Visibility(s)
    ws = [start_worker(s, log.with_suffix(f".{i}.log") if workers > 1 else log, i) for i in range(workers)]
    warm = list(synthetic_events(300, seed=seed + 1000))
    send(s, warm)
    wait_visible(vis, len(warm), 240)
    deadline = time.time() + 120
    while True:
        g = group_members(s)
        if g["state"] == "Stable" and len(g["members"]) == workers and all(m["partitions"] for m in g["members"]):
            return ws, vis
        if time.time() > deadline:
            raise RuntimeError(f"the {workers} workers did not share the partitions within 120 s: {g}")
        time.sleep(0.5)


async def bare_consume(s: Settings, n: int) -> float:
    """Events/s of a bare aiokafka loop draining the raw topics from the beginning (no group, no parsing)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20)
    await c.start()
    try:
        tps = [TopicPartition(s.topic(t), p) for t in ("frontend.raw", "agent.raw") for p in range(s.topic_partitions)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        got, t0 = 0, time.perf_counter()
        while got < n:
            batch = await c.getmany(timeout_ms=1000, max_records=5000)
            got += sum(len(records) for records in batch.values())
        return got / (time.perf_counter() - t0)
    finally:
        await c.stop()


def faust_drain(s: Settings, n: int, log: Path) -> float:
    """Events/s of a Faust app that drains the same raw topics with the worker's batching and does nothing else."""
    out = log.with_suffix(".json")
    own = s.model_copy(update={"worker_id": f"{s.worker_id}d"})
    with open(log, "ab") as f:
        subprocess.run([sys.executable, str(REPO / "bench" / "faust_drain.py"), str(n), str(out)], cwd=REPO,
                       env=settings_env(own, os.environ), stdout=f, stderr=subprocess.STDOUT, timeout=600, check=True)
    got = json.loads(out.read_text())
    return got["events"] / got["seconds"]


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descending from it (the worker's scrub and sink processes), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def drain_backlog(s: Settings, workers: list[subprocess.Popen], vis: Visibility, events: list) -> float:
    """Freeze the workers' processes, produce `events`, release them: events/s from the release to the last one
    visible. The freeze must stay well inside the consumer session timeout (sending 15,000 events takes seconds)."""
    pids = [p for w in workers for p in process_tree(w.pid)]
    before = len(vis.seen)
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        sent = send(s, events)
    finally:
        released = time.time()
        for p in pids:
            os.kill(p, signal.SIGCONT)
    wait_visible(vis, before + len(events), 900)
    return len(events) / max(max(vis.seen[eid] for eid in sent) - released, 1e-6)


def one_run(base: Settings, work: Path, kind: str, n: int, rate: float, seed: int, workers: int = 1) -> dict:
    events = workload(kind, n, seed)
    text = sum(e.event["event_type"] in TEXT_TYPES for e in events) / len(events)
    # throughput: a backlog of N, drained
    s = run_settings(base, work)
    w, vis = warm_worker(s, work / f"worker-{s.worker_id}.log", seed, workers)
    try:
        before = len(vis.seen)
        sent = send(s, events)
        wait_visible(vis, before + n, 900)
        times = sorted(vis.seen[eid] for eid in sent)
        eps = n / max(times[-1] - min(sent.values()), 1e-6)
        dps = drain_backlog(s, w, vis, workload(kind, n, seed + 2000))
    finally:
        stop_worker(w)
    bare = asyncio.run(bare_consume(s, 2 * n + 300))
    drained = faust_drain(s, 2 * n + 300, work / f"drain-{s.worker_id}.log")
    # latency: a steady 70% of the throughput just measured, polled while it is being sent
    rate = rate or round(0.7 * eps)
    s2 = run_settings(base, work)
    w, vis = warm_worker(s2, work / f"worker-{s2.worker_id}.log", seed, workers)
    try:
        k = min(n, int(rate * 20))  # 20 s of traffic
        steady = workload(kind, k, seed + 1)
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                vis.poll()
                time.sleep(0.1)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        sent2 = send(s2, steady, rate=rate)
        deadline = time.time() + 300
        while any(eid not in vis.seen for eid in sent2) and time.time() < deadline:
            time.sleep(0.2)
        done.set()
        poller.join()
        lat = sorted(vis.seen[eid] - t for eid, t in sent2.items() if eid in vis.seen)
        lost = sum(eid not in vis.seen for eid in sent2)
    finally:
        stop_worker(w)
    q = statistics.quantiles(lat, n=100)
    return {"kind": kind, "workers": workers, "events": n, "text_share": round(text, 3), "events_per_s": round(eps, 1),
            "bare_consume_per_s": round(bare, 1), "ratio_to_bare": round(eps / bare, 4),
            "faust_drain_per_s": round(drained, 1), "ratio_to_faust": round(eps / drained, 4),
            "drain_per_s": round(dps, 1), "drain_ratio_to_faust": round(dps / drained, 4), "rate": round(rate),
            "latency_events": len(sent2), "not_visible": lost, "p50_s": round(q[49], 3), "p99_s": round(q[98], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="events/s for the latency runs (default: 70%% of the throughput measured in the same run)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kinds", default="mix,structural")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", default="1",
                    help="worker processes in the group, e.g. 1,2: each count once per round, alternating")
    a = ap.parse_args()
    counts = [int(w) for w in a.workers.split(",")]
    work, base = private_broker("stream")
    results: list[dict] = []
    try:
        for kind in a.kinds.split(","):
            for r in range(a.runs):
                for workers in counts:
                    res = one_run(base, work, kind, a.events, a.rate, a.seed + r, workers)
                    print(json.dumps(res), flush=True)
                    results.append(res)
    finally:
        broker.stop(base)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                            if ln.startswith("model name")), "?")}
    (OUT / "stream_throughput.json").write_text(json.dumps({"machine": machine, "args": vars(a), "runs": results},
                                                           indent=2))
    print(f"\nmachine: {machine}\n")
    print("| workload | workers | events/s (median) | drain/s (median) | bare aiokafka consume/s | Faust drain/s "
          "| drain/s to Faust drain | p50 s | p99 s | at rate/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, workers in ((k, w) for k in a.kinds.split(",") for w in counts):
        rs = [r for r in results if r["kind"] == kind and r["workers"] == workers]
        med = {k: statistics.median(r[k] for r in rs) for k in ("events_per_s", "drain_per_s", "bare_consume_per_s",
                                                                  "faust_drain_per_s", "drain_ratio_to_faust",
                                                                  "p50_s", "p99_s")}
        print(f"| {kind} (text share {rs[0]['text_share']:.0%}) | {workers} | {med['events_per_s']:,.0f} | "
              f"{med['drain_per_s']:,.0f} | {med['bare_consume_per_s']:,.0f} | {med['faust_drain_per_s']:,.0f} | "
              f"{med['drain_ratio_to_faust']:.3f} | {med['p50_s']:.2f} | "
              f"{med['p99_s']:.2f} | {statistics.median(r['rate'] for r in rs):,.0f} |")


if __name__ == "__main__":
    main()
