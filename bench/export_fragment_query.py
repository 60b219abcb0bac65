"""Benchmark (one-off probe): how long the export's fragment query takes on the 1M export lake, with its ORDER BY
(as `jobs.export.build` runs it) and without (the baseline: the same scan, join and JSON fragments, unsorted).

`jobs.export.build` runs as usual up to the writing stage; the fragment reader it hands to `episode_chunks` is
drained and timed, then the build is stopped (nothing is formatted or published). Reports the time from the
"writing" progress line until the reader is handed over, and the time to drain it.

Usage: .venv/bin/python bench/export_fragment_query.py sorted|unsorted   (after bench/export_speed.py built the
lake at bench/out/export/1000000)
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jobs.export as export  # noqa: E402
from export_speed import OUT, settings_at, window  # noqa: E402
from jobs.export_rows import FORMATS  # noqa: E402


class _Drained(Exception):
    pass


def main(mode: str) -> None:
    if mode not in ("sorted", "unsorted"):
        raise SystemExit("usage: export_fragment_query.py sorted|unsorted")
    sql = export._fragments_sql
    if mode == "unsorted":
        export._fragments_sql = lambda margin, rv: sql(margin, rv).rsplit("ORDER BY", 1)[0]
    began = time.perf_counter()
    marks: dict[str, float] = {}

    def progress(message: str) -> None:
        marks.setdefault(message.split(" ")[0], time.perf_counter() - began)
        print(f"{time.perf_counter() - began:7.1f} s {message}", flush=True)

    def drain(kept, reader, size):
        handed = time.perf_counter() - began
        t0, rows, nbytes = time.perf_counter(), 0, 0
        for batch in reader:
            rows += batch.num_rows
            nbytes += batch.nbytes
        print(f"{mode}: reader handed over {handed - marks['writing']:.1f} s after the writing stage began, "
              f"drained in {time.perf_counter() - t0:.1f} s; {rows:,} rows, {nbytes / 1e9:.2f} GB", flush=True)
        raise _Drained

    export.episode_chunks = drain
    s = settings_at(OUT / "export" / "1000000")
    start, end = window(s)
    try:
        export.build(s, export.ExportRequest("fragments", tuple(FORMATS), start, end, "reward-v2"),
                     Path(tempfile.mkdtemp(prefix="tl-fragments-")), progress=progress)
    except _Drained:
        pass


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sorted")
