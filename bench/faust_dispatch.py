"""Benchmark: Faust draining the raw topics with faust-streaming's own consumer loop and monitor ("upstream")
against the worker's set-up (streams/faust_consumer.py: eager dispatch, the quiet monitor), interleaved.

One broker of the benchmark's own, one set of raw topics holding N structural synthetic events (4 partitions),
then per round one `bench/faust_drain.py` child of each kind, each in a fresh consumer group, alternating which
goes first. Events/s counted from the first batch in hand (group join excluded). Prints a table of runs and
medians and the ratio eager / upstream.

Usage: .venv/bin/python bench/faust_dispatch.py [--events 60000] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import stream_throughput as st  # noqa: E402

from infra.kafka import broker  # noqa: E402
from schemas.settings import Settings, settings_env  # noqa: E402


def drain(s: Settings, n: int, tag: str, upstream: bool, work: Path) -> float:
    own = s.model_copy(update={"worker_id": f"{s.worker_id}{tag}"})
    out, log = work / f"{tag}.json", work / f"{tag}.log"
    cmd = [sys.executable, str(REPO / "bench" / "faust_drain.py"), str(n), str(out)] + (["--upstream"] if upstream else [])
    with open(log, "ab") as f:
        subprocess.run(cmd, cwd=REPO, env=settings_env(own, os.environ), stdout=f, stderr=subprocess.STDOUT,
                       timeout=900, check=True)
    got = json.loads(out.read_text())
    return got["events"] / got["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    work = OUT / "faust_dispatch"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = broker.free_port()
    base = Settings(state_dir=work / "state", kafka_port=port, kafka_controller_port=broker.free_port((port,)),
                    topic_partitions=4)
    broker.start(base)
    runs: dict[str, list[float]] = {"upstream": [], "eager": []}
    try:
        s = st.run_settings(base, work)
        st.send(s, st.workload("structural", a.events, 7))
        n = a.events - 600  # the drain stops at its first batch past n: it must not wait for events never sent
        for r in range(a.runs):
            order = ["upstream", "eager"] if r % 2 == 0 else ["eager", "upstream"]
            for kind in order:
                rate = drain(s, n, f"{kind}{r}", kind == "upstream", work)
                runs[kind].append(rate)
                print(f"round {r + 1}: {kind} {rate:,.0f} events/s", flush=True)
    finally:
        broker.stop(base)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print("\n| Faust set-up | runs (events/s) | median |\n|---|---|---|")
    for k, v in runs.items():
        print(f"| {k} | {' / '.join(f'{x:,.0f}' for x in v)} | **{med[k]:,.0f}** |")
    print(f"\nratio eager / upstream (medians): **{med['eager'] / med['upstream']:.2f}**")
    (OUT / "faust_dispatch.json").write_text(json.dumps({"args": vars(a), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
