"""Profile: where a worker draining a backlog spends its CPU, per process and thread, and inside the event loop.

N events of one workload are produced to fresh topics on a broker of the script's own; then `trajlake worker`
starts, and once the first rows are in bronze/events, py-spy samples it and its children (the scrub and sink
processes) for --seconds while it drains the rest. Prints the drain rate (slowed by the sampling), each
process/thread's on-CPU share of one core, and the frames most present in the busiest thread (the event loop).

Needs py-spy (not a project dependency: `pip install py-spy` anywhere, then --py-spy PATH or have it on PATH).
Usage: .venv/bin/python bench/stream_profile.py [--kind structural] [--events 60000] [--seconds 20] [--top 40]
Writes the raw samples to bench/out/stream_profile.raw.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

OUT = REPO / "bench" / "out"


def shares(raw: Path, rate: int, seconds: float, top: int) -> None:
    """Per (process, thread): samples as a share of one core; then the busiest thread's most present frames."""
    per: collections.Counter = collections.Counter()
    frames: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        parts = stack.split(";")
        key = (parts[0][:70], parts[1][:70] if len(parts) > 1 else "")
        per[key] += int(n)
        seen = set()
        for f in parts[2:]:
            short = re.sub(r"\s*\((.*?)\)", lambda m: " (" + m.group(1).split("/")[-1].split(":")[0] + ")", f)
            if short not in seen:  # a recursive frame counts once per sample
                frames[key][short] += int(n)
                seen.add(short)
    possible = rate * seconds
    print("\non-CPU share of one core, per process and thread:")
    for key, n in per.most_common(12):
        print(f"  {100 * n / possible:5.1f}%  {key[0]} | {key[1]}")
    busiest = per.most_common(1)[0][0]
    print(f"\nframes in the busiest thread's samples ({busiest[1]}; those in every sample, its entry path, left out):")
    for f, n in [(f, n) for f, n in frames[busiest].most_common() if n < per[busiest]][:top]:
        print(f"  {100 * n / per[busiest]:5.1f}%  {f[:140]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="structural", choices=["structural", "mix", "mix20"])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--py-spy", dest="py_spy", default=shutil.which("py-spy"))
    a = ap.parse_args()
    if not a.py_spy or not Path(a.py_spy).exists():
        sys.exit("py-spy not found: `pip install py-spy` (in any environment) and pass --py-spy PATH")

    import stream_throughput as st

    from infra.kafka import broker

    work, base = st.private_broker("stream_profile")
    raw = OUT / "stream_profile.raw"
    try:
        s = st.run_settings(base, work)
        st.send(s, st.workload(a.kind, a.events, 7))
        w = st.start_worker(s, work / "worker.log")
        try:
            vis = st.Visibility(s)
            while vis.poll() < 1:  # start-up (Faust, the models, the group join) is not profiled
                time.sleep(0.1)
            t0, first = time.time(), len(vis.seen)
            spy = subprocess.Popen([a.py_spy, "record", "-p", str(w.pid), "--subprocesses", "--threads",
                                    "-r", str(a.rate), "-d", str(a.seconds), "-f", "raw", "-o", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            st.wait_visible(vis, a.events, 900)
            print(f"{a.kind}: {len(vis.seen) - first:,} events drained in {time.time() - t0:.1f} s under py-spy")
            spy.wait()
        finally:
            st.stop_worker([w])
    finally:
        broker.stop(base)
    shares(raw, a.rate, a.seconds, a.top)


if __name__ == "__main__":
    main()
