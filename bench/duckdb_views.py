"""Benchmark: analyst and export queries through `lake.duckdb_views.connect` (DuckDB's own parquet reader over the
Delta log's live files) against the same queries through pyarrow datasets of the same files (the views before
native reads, `lake.readers.table_dataset`), interleaved in the same run, with the results compared.

Lake: the 1M-episode export lake (bench/export_speed.py builds it; built here if missing): 20M events, 3.6M
steps, 1M episodes and their scores.

Usage: .venv/bin/python bench/duckdb_views.py [--runs 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

QUERIES = {
    # a notebook's first look: outcomes per agent version
    "episodes by outcome": "SELECT agent_version, outcome, count(*) FROM silver_episodes GROUP BY ALL ORDER BY ALL",
    # the export's user-text scan: a few event types' bodies out of all events
    "user-message texts": "SELECT count(*), sum(length(json_extract_string(body, '$.text'))) FROM bronze_events "
                          "WHERE event_type = 'user_message'",
    # the export's fragment scan: the conversation events' bodies
    "conversation bodies": "SELECT count(*), sum(length(body)) FROM bronze_events "
                           "WHERE event_type IN ('llm_call', 'action_proposed', 'user_message', 'task_ended')",
    # a join an analyst writes: edit rate of steps per scored composite decile
    "steps x scores": """SELECT floor(e.composite * 10) AS decile, avg(s.edited::INT), count(*)
                         FROM silver_steps s JOIN gold_episode_scores e USING (session_id, task_id)
                         GROUP BY ALL ORDER BY ALL""",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    subprocess.run([sys.executable, str(REPO / "bench" / "export_speed.py"), "--prepare-only"], cwd=REPO, check=True)
    import duckdb

    import export_speed as es
    from interleaved import report, time_interleaved
    from lake.duckdb_views import connect, native_view_sql, view_name
    from lake.readers import table_dataset
    from schemas.tables import TABLES

    s, _ = es.prepare(1_000_000)
    native = connect(s)
    dataset = duckdb.connect()
    for table_id in TABLES:
        dataset.register(view_name(table_id), table_dataset(s, table_id))
    read_natively = [t for t in TABLES if native_view_sql(native, s, TABLES[t], None) is not None]
    print(f"lake {s.lake}; read natively: {', '.join(read_natively)}")
    ratios = []
    for name, sql in QUERIES.items():
        print(f"\n{name}")
        times, results = time_interleaved({"native": lambda: native.sql(sql).fetchall(),
                                           "dataset": lambda: dataset.sql(sql).fetchall()}, a.runs)
        if results["native"] != results["dataset"]:
            print(f"  RESULTS DIFFER: {results['native'][:3]} against {results['dataset'][:3]}")
            return 1
        med = report(times)
        ratios.append(med["native"] / med["dataset"])
    print("\nratios (native / dataset):", " ".join(f"{r:.2f}" for r in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
