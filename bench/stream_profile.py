"""Profile: where a worker draining a backlog spends its CPU, per process and thread, and inside the event loop.

N events of one workload are produced to fresh topics on a broker of the script's own; then `trajlake worker`
starts, and once the first rows are in bronze/events, the drain is watched for --seconds:
  - every process's CPU time from /proc, at the window's start and end: the worker (its event loop and threads),
    its scrub processes, its sink process, the broker's JVM, this script (which polls the Delta log), and the
    machine's idle share. Exact, and it sees the JVM, which py-spy cannot.
  - with py-spy (--py-spy PATH or on PATH; not a project dependency), samples of the worker and its children:
    each Python thread's on-CPU share and the frames most present in the busiest thread (the event loop). py-spy
    slows the drain and its shares overstate; the /proc table is taken in a run without it (--no-py-spy skips it).
Prints the drain rate of each pass.

Usage: .venv/bin/python bench/stream_profile.py [--kind structural] [--events 60000] [--seconds 20] [--top 40]
Writes the raw py-spy samples to bench/out/stream_profile.raw.
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


def cpu_times() -> dict[int, tuple[float, int, str]]:
    """pid → (user + system CPU seconds, parent pid, command line) of every process now running."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(pid)] = ((int(fields[11]) + int(fields[12])) / hz, int(fields[1]), cmd)
    return out


def machine_idle() -> tuple[int, int]:
    """(all jiffies, idle + iowait jiffies) of the machine so far, from /proc/stat."""
    cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(cpu), cpu[3] + cpu[4]


def role(pid: int, ppid: int, cmd: str, worker: int) -> str:
    if pid == worker:
        return "worker (event loop and its threads)"
    if ppid == worker and "multiprocessing.spawn" in cmd:
        return "sink process"
    if ppid == worker and "trajlake.cli worker" in cmd:  # forked from the worker: its command line
        return "scrub process"
    if "kafka" in cmd and "java" in cmd:
        return "Kafka broker (JVM)"
    if pid == os.getpid():
        return "this benchmark (polls the Delta log)"
    return cmd[:50] or "?"


def process_shares(before: dict, after: dict, idle: tuple, idle_after: tuple, seconds: float, worker: int) -> None:
    """Each process's CPU over the window as a share of one core, busiest first, then the machine's idle share over
    the same window (`idle` and `idle_after`: the machine's counters at its start and end)."""
    rows = []
    for pid, (t, ppid, cmd) in after.items():
        used = t - before[pid][0] if pid in before else t
        if used > 0.01 * seconds:
            rows.append((used / seconds, role(pid, ppid, cmd, worker)))
    total, idle_now = idle_after
    cores = os.cpu_count() or 1
    print(f"\nCPU per process over {seconds:.1f} s (/proc; share of one core, {cores} cores):")
    for share, name in sorted(rows, reverse=True):
        print(f"  {100 * share:5.1f}%  {name}")
    print(f"  {100 * cores * (idle_now - idle[1]) / max(1, total - idle[0]):5.1f}%  idle (of {100 * cores}%)")


def drain(a: argparse.Namespace, spy_path: str | None, raw: Path) -> None:
    """One pass: a fresh lake and topics, the backlog produced, the worker started and watched while it drains."""
    import stream_throughput as st

    from infra.kafka import broker

    work, base = st.private_broker("stream_profile")
    try:
        s = st.run_settings(base, work)
        st.send(s, st.workload(a.kind, a.events, 7))
        w = st.start_worker(s, work / "worker.log")
        try:
            vis = st.Visibility(s)
            while vis.poll() < 1:  # start-up (Faust, the models, the group join) is not profiled
                time.sleep(0.1)
            t0, first = time.time(), len(vis.seen)
            before, idle = cpu_times(), machine_idle()
            spy = None if spy_path is None else subprocess.Popen(
                [spy_path, "record", "-p", str(w.pid), "--subprocesses", "--threads", "-r", str(a.rate),
                 "-d", str(a.seconds), "-f", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            window = None
            while vis.poll() < a.events:
                if window is None and time.time() - t0 >= a.seconds:
                    window = (cpu_times(), machine_idle(), time.time() - t0)
                if time.time() - t0 > 900:
                    raise RuntimeError(f"only {len(vis.seen)} of {a.events} events visible after 900 s")
                time.sleep(0.1)
            drained = time.time() - t0
            if window is None:  # drained within the window: the window ends with the drain
                window = (cpu_times(), machine_idle(), drained)
            print(f"{a.kind}{' under py-spy' if spy else ''}: {len(vis.seen) - first:,} events drained in "
                  f"{drained:.1f} s ({(len(vis.seen) - first) / drained:,.0f}/s)")
            if spy is None:
                after, idle_after, seconds = window
                process_shares(before, after, idle, idle_after, seconds, w.pid)
            else:
                spy.wait()
        finally:
            st.stop_worker([w])
    finally:
        broker.stop(base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="structural", choices=["structural", "mix", "mix20"])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--py-spy", dest="py_spy", default=shutil.which("py-spy"))
    ap.add_argument("--no-py-spy", dest="no_py_spy", action="store_true", help="the /proc table only")
    a = ap.parse_args()
    if a.no_py_spy:
        a.py_spy = None
    elif not a.py_spy or not Path(a.py_spy).exists():
        sys.exit("py-spy not found: `pip install py-spy` (in any environment) and pass --py-spy PATH, "
                 "or --no-py-spy for the per-process table alone")
    raw = OUT / "stream_profile.raw"
    drain(a, None, raw)
    if a.py_spy:
        drain(a, a.py_spy, raw)
        shares(raw, a.rate, a.seconds, a.top)


if __name__ == "__main__":
    main()
