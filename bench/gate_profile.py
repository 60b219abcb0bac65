"""Profile: one table's pre-publish work on a jobs benchmark lake, piece by piece, and its quality gate under
cProfile.

Reads the table as the last jobs run published it (bench/out/jobs/<size>, built by bench/jobs_speed.py), then
times: the sort and cast for writing (`rows_to_publish`), the structural checks (`check_before_publish`), the
derived check columns, the conversion for Great Expectations, and the gate twice, the second under cProfile (top
functions by cumulative and by own time). Uses only functions that exist since 605dbcb, so the same command runs
at an older checkout for a baseline.

Usage: .venv/bin/python bench/gate_profile.py [--size 10000000] [--table gold/step_signals] [--top 30]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10_000_000)
    ap.add_argument("--table", default="gold/step_signals")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    from jobs.tables import check_before_publish, rows_to_publish
    from jobs_speed import built_lake
    from lake.readers import read_table
    from quality.runner import frame_for_expectations, gate, with_derived
    from quality.suites import suite_for
    from schemas.reward import load_reward_spec
    from schemas.tables import TABLES

    s, spec, table = built_lake(a.size), load_reward_spec(), TABLES[a.table]
    data = read_table(s, table)
    print(f"{a.table}: {data.num_rows:,} rows")

    def timed(name, f):
        began = time.perf_counter()
        out = f()
        print(f"{name}: {time.perf_counter() - began:.2f} s", flush=True)
        return out

    rows = timed("rows_to_publish", lambda: rows_to_publish(data, table))
    timed("check_before_publish", lambda: check_before_publish(rows, table, "true"))
    suite = suite_for(table.id, spec)
    frame = timed("with_derived", lambda: with_derived(suite, rows))
    timed("frame_for_expectations", lambda: frame_for_expectations(suite, frame))
    timed("gate", lambda: gate(s, suite, rows))
    prof = cProfile.Profile()
    prof.enable()
    timed("gate under cProfile", lambda: gate(s, suite, rows))
    prof.disable()
    for order in ("cumulative", "tottime"):
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats(order).print_stats(a.top)
        print(text.getvalue())


if __name__ == "__main__":
    main()
