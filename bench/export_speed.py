"""Benchmark: `trajlake export` of 1M synthetic episodes (splits, near-duplicate removal, leakage check, PII scan,
manifest), next to a bare dump of the same rows measured in the same run, and the rerun identity.

  data      a base lake made the real way: the seeded synthetic generator → `bronze_through` (the worker's
            privacy policy, NER off) → bronze/events, the batch join → silver, Spark heuristics (reward-v2) →
            gold. It is then replicated to the target episode count in DuckDB: every replica gets fresh session,
            task, user and event ids, and every word of its free text gets a replica suffix, so replicas share no
            text and no group (near-duplicate detection and splitting face the same work as on distinct data).
            Built once, reused (bench/out/export/<episodes>/lake).
  export    `jobs.export.run` over the whole window with the chosen formats: wall time to a published version.
  baseline  DuckDB reads the episodes the export formats (all, or for SFT alone those above its threshold) with
            their ordered events and steps (grouped in SQL: `grouped_sql`) and writes them as JSON Lines, with no
            splits, dedup, formats, scan or manifest: the floor any export of these rows pays.
  identity  the data files of every run have the same sha256 (a rerun is byte-identical).
Runs alternate export/baseline, --runs times each; medians are reported.

Usage: .venv/bin/python bench/export_speed.py [--episodes 1000000] [--runs 3] [--formats sft,dpo,...]
Writes bench/out/export_speed-<formats>.json and prints the table for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from bench.lakes import SCORED_RECIPE, cached, recipe  # noqa: E402
from schemas.settings import Settings  # noqa: E402

OUT = REPO / "bench" / "out"
SEED = 9
BASE_EVENTS = 340_000  # ≈ 20k episodes
SESSIONS_PER_MINUTE = 20.0


def settings_at(root: Path) -> Settings:
    return Settings(state_dir=root / "state", lake_root=root / "lake", spark_ui=False)


def window(s: Settings) -> tuple[date, date]:
    import pyarrow.compute as pc

    from lake.readers import read_table
    from schemas.tables import SILVER_EPISODES

    d = read_table(s, SILVER_EPISODES, columns=["date"]).column("date")
    return pc.min(d).as_py(), pc.max(d).as_py() + timedelta(days=1)


def prepare_base() -> tuple[Settings, dict]:
    root = OUT / "export" / "base"
    s = settings_at(root)
    marker = root / "base.json"
    fingerprint = recipe(SCORED_RECIPE)
    if (cached_info := cached(marker, fingerprint)) is not None:
        return s, cached_info
    from jobs import heuristics
    from jobs.spark import build_spark
    from schemas.reward import load_reward_spec
    from streams.recompute import bronze_through, write_silver
    from streams.sources.synthetic import synthetic_events

    shutil.rmtree(root, ignore_errors=True)
    began = time.perf_counter()
    steps, episodes = write_silver(s, bronze_through(s, (e.event for e in synthetic_events(
        BASE_EVENTS, seed=SEED, sessions_per_minute=SESSIONS_PER_MINUTE))))
    start, end = window(s)
    spark = build_spark(s, app_name="bench-export-base")
    heuristics.run(spark, s, start, end, spec=load_reward_spec("reward-v2"))
    spark.stop()
    info = {"events": BASE_EVENTS, "steps": steps, "episodes": episodes, "build_s": round(time.perf_counter() - began, 1),
            "recipe": fingerprint}
    marker.write_text(json.dumps(info))
    return s, info


# columns whose values name a session, task, user or event: replaced per replica
def _ids(r: str) -> dict[str, str]:
    return {
        "session_id": f"session_id || '~{r}'",
        "task_id": f"task_id || '~{r}'",
        "user_id": f"'u_' || substr(md5(user_id || '~{r}'), 1, 24)",
        "event_id": f"md5(event_id || '~{r}')",
        "episode_id": f"split_part(episode_id, '/', 1) || '~{r}/' || split_part(episode_id, '/', 2) || '~{r}'",
        "step_id": f"split_part(step_id, '/', 1) || '~{r}/' || split_part(step_id, '/', 2)",
    }


def _words(expr: str, r: str) -> str:
    return f"regexp_replace({expr}, '([A-Za-z]+)', '\\1{r}', 'g')"


def _body(r: str) -> str:
    # only free text changes; structure and every other body field stay as the generator made them
    return f"""CASE event_type
        WHEN 'user_message' THEN json_object('text', {_words("json_extract_string(body, '$.text')", r)})::VARCHAR
        WHEN 'action_proposed' THEN json_object('output', {_words("json_extract_string(body, '$.output')", r)},
                                                'kind', json_extract_string(body, '$.kind'))::VARCHAR
        WHEN 'action_edited' THEN json_object('final_value', {_words("json_extract_string(body, '$.final_value')", r)})::VARCHAR
        ELSE body END"""


def prepare(episodes: int) -> tuple[Settings, dict]:
    """The base lake replicated to `episodes` episodes (once)."""
    import duckdb
    import pyarrow as pa
    from deltalake import write_deltalake

    from lake.duckdb_views import connect
    from lake.tables import ensure_table
    from schemas.tables import (BRONZE_EVENTS, GOLD_EPISODE_SCORES, GOLD_STEP_SIGNALS, SILVER_EPISODES,
                                SILVER_STEPS)

    base, info = prepare_base()
    replicas = max(1, round(episodes / info["episodes"]))
    root = OUT / "export" / str(episodes)
    s = settings_at(root)
    marker = root / "lake.json"
    # derived from the base lake: rebuilt whenever the base was
    if (cached_info := cached(marker, info["recipe"])) is not None:
        return s, cached_info
    shutil.rmtree(root, ignore_errors=True)
    began = time.perf_counter()
    con = connect(base, con=duckdb.connect(config={"threads": "2"}))
    con.execute("SET enable_progress_bar = false").fetchall()
    text_cols = {"output", "final_value"}
    for spec in (SILVER_EPISODES, SILVER_STEPS, GOLD_EPISODE_SCORES, GOLD_STEP_SIGNALS, BRONZE_EVENTS):
        view = spec.id.replace("/", "_")
        table = ensure_table(s, spec)
        for r in range(replicas):
            tag = f"r{r}"
            ids = _ids(tag)
            cols = []
            for f in spec.schema:
                if f.name in ids:
                    cols.append(f"{ids[f.name]} AS {f.name}")
                elif f.name == "body":
                    cols.append(f"{_body(tag)} AS body")
                elif f.name in text_cols and spec is SILVER_STEPS:
                    cols.append(f"{_words(f.name, tag)} AS {f.name}")
                else:
                    cols.append(f.name)
            reader = con.sql(f"SELECT {', '.join(cols)} FROM {view}").to_arrow_reader(200_000)
            write_deltalake(table, pa.RecordBatchReader.from_batches(spec.schema, (b.cast(spec.schema) for b in reader)),
                            mode="append", partition_by=list(spec.partition_by))
            print(f"  {spec.id}: replica {r + 1}/{replicas}", end="\r", flush=True)
        print()
    out = {"episodes": info["episodes"] * replicas, "replicas": replicas, "base": info,
           "build_s": round(time.perf_counter() - began, 1), "recipe": info["recipe"]}
    marker.write_text(json.dumps(out))
    return s, out


def run_export(s: Settings, formats: tuple[str, ...], start: date, end: date) -> tuple[float, dict, dict]:
    """Wall time, manifest, and seconds per stage (from the export's own progress messages)."""
    from jobs.export import ExportRequest, run

    marks: list[tuple[float, str]] = []

    def progress(msg: str) -> None:
        if not msg.startswith("wrote "):
            marks.append((time.perf_counter(), msg))
            print(f"  {marks[-1][0] - began:7.1f} s  {msg}", flush=True)

    began = time.perf_counter()
    result = run(s, ExportRequest("bench", formats, start, end, "reward-v2"), progress=progress)
    ended = time.perf_counter()
    stages = {m: round(t2 - t1, 1) for (t1, m), (t2, _) in zip(marks, marks[1:] + [(ended, "")])}
    return ended - began, result.manifest, stages


def grouped_sql(margin: int, reward_version: str) -> str:
    # one row per episode with its events and its steps as ordered lists: the plain DuckDB way, and the export's
    # own grouping query until it switched to sorting fragments (commit cf1a852)
    from jobs.conversations import CONVERSATION_EVENTS

    return f"""
    WITH ev AS (
        -- the bodies are JSON text already: spliced into the list as they are, never parsed here
        SELECT b.session_id, b.task_id,
               '[' || string_agg('{{"t":' || to_json(b.event_type) || ',"a":' || coalesce(to_json(b.action_id), 'null')
                                 || ',"b":' || b.body || '}}', ',' ORDER BY b.ts, b.event_id) || ']' AS events
        FROM kept k JOIN bronze_events b ON b.session_id = k.session_id AND b.task_id = k.task_id
        WHERE b.event_type IN ({", ".join(f"'{t}'" for t in CONVERSATION_EVENTS)})
          AND b.date >= $since - INTERVAL {margin} DAY AND b.date < $until + INTERVAL {margin} DAY
        GROUP BY ALL),
    st AS (
        SELECT session_id, task_id, step_id, action_id, intent_id, step_index, output, final_value, outcome,
               accepted, rejected, edited, undone, retried, edit_distance
        FROM silver_steps
        WHERE date >= $since - INTERVAL {margin} DAY AND date < $until + INTERVAL {margin} DAY
        QUALIFY row_number() OVER (PARTITION BY step_id ORDER BY revision DESC) = 1),
    sg AS (
        SELECT step_id, overwritten, own_reward, credit_share, step_reward FROM gold_step_signals
        WHERE reward_version = '{reward_version}'
          AND date >= $since - INTERVAL {margin} DAY AND date < $until + INTERVAL {margin} DAY),
    steps AS (
        SELECT st.session_id, st.task_id,
               list({{'step_id': st.step_id, 'action_id': st.action_id, 'intent_id': st.intent_id,
                     'step_index': st.step_index, 'output': st.output, 'final_value': st.final_value,
                     'outcome': st.outcome, 'accepted': st.accepted, 'rejected': st.rejected, 'edited': st.edited,
                     'undone': st.undone, 'retried': st.retried, 'edit_distance': st.edit_distance,
                     'overwritten': coalesce(sg.overwritten, false), 'own_reward': sg.own_reward,
                     'credit_share': sg.credit_share, 'step_reward': sg.step_reward}}
                    ORDER BY st.step_index, st.step_id)::JSON AS steps
        FROM kept k JOIN st ON st.session_id = k.session_id AND st.task_id = k.task_id
        LEFT JOIN sg USING (step_id)
        GROUP BY ALL)
    SELECT k.*, ev.events, steps.steps::VARCHAR AS steps
    FROM kept k LEFT JOIN ev USING (session_id, task_id) LEFT JOIN steps USING (session_id, task_id)
    ORDER BY k.episode_id"""



def run_baseline(s: Settings, formats: tuple[str, ...], start: date, end: date, out: Path) -> float:
    """The episodes the export formats (all of them, unless every format restricts them, as SFT does to those
    above its threshold) with their ordered events and steps, grouped and written as JSON Lines by DuckDB."""
    import duckdb

    from jobs.export import _episodes_sql, pinned_sources
    from jobs.export_rows import eligible_sql
    from lake.duckdb_views import connect
    from schemas.reward import load_reward_spec

    began = time.perf_counter()
    con = connect(s, {k: v for k, v in pinned_sources(s, None).items() if v is not None}, con=duckdb.connect())
    con.execute("SET enable_progress_bar = false").fetchall()
    params = {"since": start, "until": end}
    con.execute(_episodes_sql("reward-v2"), params).fetchall()
    eligible = eligible_sql(formats, load_reward_spec("reward-v2").exports)
    con.execute(f"CREATE TEMP TABLE kept AS SELECT * FROM ep WHERE {eligible or 'true'}").fetchall()
    out.parent.mkdir(parents=True, exist_ok=True)
    con.execute(f"COPY ({grouped_sql(s.job_margin_days, 'reward-v2')}) TO '{out}' (FORMAT json)", params).fetchall()
    return time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--formats", default="sft,dpo,openai_dpo,kto,rft,steps")
    ap.add_argument("--prepare-only", action="store_true")
    args = ap.parse_args()
    formats = tuple(args.formats.split(","))
    s, info = prepare(args.episodes)
    print(f"lake: {info}")
    if args.prepare_only:
        return
    start, end = window(s)
    shutil.rmtree(s.lake / "exports", ignore_errors=True)
    shutil.rmtree(s.lake / "exports_baseline", ignore_errors=True)
    exports, baselines, digests, manifest, stages = [], [], [], None, []
    for i in range(args.runs):
        wall, manifest, st = run_export(s, formats, start, end)
        exports.append(wall)
        stages.append(st)
        print(f"run {i + 1}: stages {st}", flush=True)
        digests.append({k: v["sha256"] for k, v in manifest["files"].items()})
        print(f"run {i + 1}: export {wall:.1f} s", flush=True)
        base = run_baseline(s, formats, start, end, OUT / "export" / "dump" / f"run{i}.jsonl")
        baselines.append(base)
        print(f"run {i + 1}: bare dump {base:.1f} s", flush=True)
        shutil.rmtree(s.lake / "exports" / "bench" / manifest["version"], ignore_errors=True)
        shutil.rmtree(OUT / "export" / "dump", ignore_errors=True)
    exp, base = statistics.median(exports), statistics.median(baselines)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "episodes": manifest["counts"]["episodes"], "rows": manifest["counts"]["rows"],
        "bytes": sum(v["bytes"] for v in manifest["files"].values()), "formats": formats,
        "export_s": exports, "baseline_s": baselines, "export_median_s": round(exp, 1),
        "baseline_median_s": round(base, 1), "ratio": round(exp / base, 2),
        "identical_reruns": all(d == digests[0] for d in digests), "lake": info, "stages_s": stages,
    }
    tag = "all" if len(formats) == 6 else "-".join(formats)
    (OUT / f"export_speed-{tag}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
