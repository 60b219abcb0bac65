"""Benchmark: heuristics + scorecards (Spark) over synthetic silver tables, next to DuckDB computing the same
aggregates over the same Delta tables in the same run.

Per size (1M and 10M synthetic events by default):
  data      the seeded synthetic generator → the batch join (the stream's join, parity-tested) → silver/steps and
            silver/episodes on disk; built once per size and reused (bench/out/jobs/<n>/lake)
  spark     `jobs.heuristics.run` then `jobs.scorecards.run` over the whole window, on one warm SparkSession
            (local[*]); wall time of both jobs including their Delta commits and pre-publish checks
  duckdb    the same step signals, episode scores (the gated composite), step credit and the day and week
            scorecard aggregates with their intervals, as one DuckDB SQL query over the same Delta tables
            (delta-rs file list → Arrow dataset); wall time to a materialised result. The two results are
            checked to agree (composite mean and metric values per segment) before any figure is reported.
Runs alternate spark/duckdb, --runs times each; medians are reported.

Usage: .venv/bin/python bench/jobs_speed.py [--sizes 1000000 10000000] [--runs 3] [--prepare-only]
Writes bench/out/jobs_speed.json and prints the table for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from bench.lakes import cached, recipe, vacuum_gold  # noqa: E402
from schemas.reward import RewardSpec, load_reward_spec  # noqa: E402
from schemas.settings import Settings  # noqa: E402

OUT = REPO / "bench" / "out"
SEED = 5
SESSIONS_PER_MINUTE = 60.0


def settings_for(n: int) -> Settings:
    root = OUT / "jobs" / str(n)
    return Settings(state_dir=root / "state", lake_root=root / "lake", spark_ui=False)


def built_lake(n: int) -> Settings:
    """`settings_for(n)` when its lake is built; otherwise exit naming the command that builds it."""
    s = settings_for(n)
    if not (s.lake / "silver").exists():
        sys.exit(f"no lake of {n:,} events: run `.venv/bin/python bench/jobs_speed.py --sizes {n} --runs 1` first")
    return s


def prepare(n: int) -> dict:
    """Silver tables from n synthetic events (once; a marker file records the counts)."""
    from streams.recompute import write_silver
    from streams.sources.synthetic import synthetic_events

    s = settings_for(n)
    marker = s.lake.parent / "silver.json"
    fingerprint = recipe()
    if (info := cached(marker, fingerprint)) is not None:
        return info
    import shutil

    shutil.rmtree(s.lake, ignore_errors=True)
    began = time.perf_counter()
    steps, episodes = write_silver(s, (e.event for e in synthetic_events(n, seed=SEED,
                                                                         sessions_per_minute=SESSIONS_PER_MINUTE)))
    info = {"events": n, "steps": steps, "episodes": episodes, "build_s": round(time.perf_counter() - began, 1),
            "recipe": fingerprint}
    marker.write_text(json.dumps(info))
    return info


def window(s: Settings) -> tuple[date, date]:
    import pyarrow.compute as pc

    from lake.readers import read_table
    from schemas.tables import SILVER_EPISODES

    d = read_table(s, SILVER_EPISODES, columns=["date"]).column("date")
    return pc.min(d).as_py(), pc.max(d).as_py() + timedelta(days=1)


# ---- the DuckDB version of the same aggregates ----------------------------------------------------------------
def _case(column: str, mapping: dict[str, float]) -> str:
    return "CASE " + " ".join(f"WHEN {column} = '{k}' THEN {float(v)}" for k, v in mapping.items()) + " END"


def duckdb_sql(spec: RewardSpec, shared_users: tuple[str, ...] = ()) -> str:
    from jobs.scorecards import METRICS, t_coefficients

    o, c, fr, tr, co, st = spec.outcome, spec.correction, spec.friction, spec.trust, spec.composite, spec.step
    t1, t2, z, g = t_coefficients(spec.guardrails.ci_level)
    # a pseudonym many people share sees its own tasks' opt-outs only, as in jobs.heuristics.opted_out_after_poor
    who = (f"CASE WHEN user_id IN ({', '.join(repr(u) for u in shared_users)}) THEN episode_id ELSE user_id END"
           if shared_users else "user_id")
    t = (f"(CASE WHEN c = 2 THEN {t1} WHEN c = 3 THEN {t2} ELSE {z} + {g[0]} / (c - 1) + {g[1]} / pow(c - 1, 2) "
         f"+ {g[2]} / pow(c - 1, 3) + {g[3]} / pow(c - 1, 4) END)")   # Student's t with c - 1 df, as Spark's
    var_mean = "(CASE WHEN c > 1 THEN greatest(0.0, (cs2 - 2 * (s / n) * csn + (s / n) * (s / n) * cn2) / (n * n) * c / (c - 1.0)) END)"
    n_eff = f"(CASE WHEN {var_mean} > 0 THEN least(n, (s / n) * (1 - s / n) / {var_mean}) ELSE c END)"
    inlist = lambda xs: ", ".join(f"'{x}'" for x in xs)  # noqa: E731
    steps_after = "count(*) OVER (PARTITION BY episode_id) - row_number() OVER (PARTITION BY episode_id ORDER BY step_index)"
    weight = {"uniform": "1.0", "last": f"CASE WHEN ({steps_after}) = 0 THEN 1.0 ELSE 0.0 END",
              "discounted": f"pow({st.gamma}, ({steps_after}))"}[st.credit]
    step_obs = ", ".join(f"{{'metric': '{m.name}', 'x': {m.column if m.column != '_undo_after_accept' else 'CASE WHEN accepted THEN undone END'}::DOUBLE}}"
                         for m in METRICS if m.source == "step")
    ep_cols = {"_abandoned": "outcome = 'abandoned'", "_timeout": "outcome = 'timeout'",
               "_reopened_when_done": "CASE WHEN outcome IN ('completed', 'reopened') THEN reopened END"}
    ep_obs = ", ".join(f"{{'metric': '{m.name}', 'x': ({ep_cols.get(m.column, m.column)})::DOUBLE}}"
                       for m in METRICS if m.source == "episode")
    kinds = ", ".join(f"('{m.name}', '{m.kind}')" for m in METRICS)
    return f"""
WITH steps AS (
  SELECT * FROM silver_steps QUALIFY row_number() OVER (PARTITION BY step_id ORDER BY revision DESC, closed_at DESC) = 1
), episodes AS (
  SELECT * FROM silver_episodes QUALIFY row_number() OVER (PARTITION BY episode_id ORDER BY revision DESC, closed_at DESC) = 1
), sig0 AS (
  SELECT *, session_id || '/' || task_id AS episode_id, coalesce(intent_id, action_id) AS intent,
         coalesce(task_type, 'unknown') AS segment_task,
         coalesce(edited AND edit_distance >= {c.overwrite_threshold}, false) AS overwritten,
         coalesce(CASE WHEN outcome = 'edited' THEN edit_distance ELSE {_case('outcome', c.penalty)} END, 0.0) AS penalty,
         reaction_ms / 1000.0 AS reaction_s, next_action_ms / 1000.0 AS next_action_s
  FROM steps
), sig AS (
  SELECT *, max(((accepted AND NOT undone) OR edited)::INT) OVER (PARTITION BY episode_id, intent ORDER BY step_index
             ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) = 0 AS dead_end
  FROM sig0
), sig2 AS (
  SELECT *, greatest(0.0, least(1.0, 1.0 - penalty - {st.dead_end_penalty} * dead_end::DOUBLE)) AS own_reward FROM sig
), per_ep AS (
  SELECT episode_id, avg(retried::DOUBLE) AS retry_rate, avg(dead_end::DOUBLE) AS dead_end_rate,
         avg(next_action_s) AS next_action_s, avg(penalty) AS penalty
  FROM sig2 GROUP BY episode_id
), marks AS (  -- a user's poor outcomes and opt-outs, newest first: the first opt-out at or after each outcome
  SELECT episode_id, {who} AS who, epoch_us(coalesce(outcome_at, started_at)) AS t, 0 AS kind,
         epoch_us(ended_at) + {round(tr.opt_out_within_hours * 3_600_000_000)} AS until
  FROM episodes WHERE outcome IN ({inlist(o.poor_outcomes)})
  UNION ALL
  SELECT NULL, {who}, epoch_us(opted_out_at), 1, NULL FROM episodes WHERE opted_out_at IS NOT NULL
), after_poor AS (
  SELECT episode_id, coalesce(first_out <= until, false) AS after
  FROM (SELECT *, min(CASE WHEN kind = 1 THEN t END) OVER (PARTITION BY who ORDER BY t DESC, kind DESC
                                                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS first_out
        FROM marks) WHERE kind = 0
), ep0 AS (
  SELECT e.*, coalesce(e.task_type, 'unknown') AS segment_task, p.retry_rate, p.dead_end_rate, p.penalty,
         p.next_action_s AS t_next, e.duration_ms / 1000.0 AS duration_s, e.outcome = 'completed' AS completed,
         CASE WHEN e.outcome = 'completed' THEN e.duration_ms / 1000.0 END AS completion_time_s,
         CASE WHEN e.outcome = 'completed' AND e.sla_seconds IS NOT NULL
              THEN e.duration_ms / 1000.0 <= e.sla_seconds * {o.sla_grace} END AS within_sla,
         CASE WHEN e.outcome IN ({inlist(o.poor_outcomes)})
              THEN CASE WHEN (e.outcome_at IS NULL AND e.outcome <> 'timeout') OR (e.opted_out AND e.opted_out_at IS NULL)
                        THEN e.opted_out ELSE coalesce(a.after, false) END
         END AS opted_out_after_poor,
         e.repeat_of_task_id IS NOT NULL AS repeat_task,
         CASE WHEN e.repeat_of_task_id IS NOT NULL THEN e.delegated END AS delegated_when_repeat,
         CASE WHEN e.outcome <> 'completed' OR e.sla_seconds IS NULL
                   OR e.duration_ms / 1000.0 / (e.sla_seconds * {o.sla_grace}) <= 1 THEN 1.0
              ELSE greatest({o.sla_floor}, 1.0 - {1 - o.sla_floor} * (e.duration_ms / 1000.0 / (e.sla_seconds * {o.sla_grace}) - 1.0))
         END AS sla_factor,
         e.outcome IN ({inlist(o.correct_outcomes)}) AND (e.external_reward IS NULL
              OR e.external_reward >= {o.external_reward_threshold}) AS gate_passed
  FROM episodes e LEFT JOIN per_ep p USING (episode_id) LEFT JOIN after_poor a USING (episode_id)
), ep1 AS (
  SELECT *, 1.0 - coalesce(penalty, 0.0) AS correction_score,
         greatest(0.0, least(1.0, 1.0 - ({fr.weights['retry']} * coalesce(retry_rate, 0.0)
           + {fr.weights['dead_end']} * coalesce(dead_end_rate, 0.0)
           + {fr.weights['time']} * coalesce(t_next, 0.0) / (coalesce(t_next, 0.0) + {fr.next_action_ref_s})))) AS friction_score,
         {_case('outcome', o.values)} * sla_factor AS outcome_score,
         greatest(0.0, least(1.0, {tr.base} + {tr.delegated_bonus} * delegated::DOUBLE - {tr.escalated_penalty} * escalated::DOUBLE
           - {tr.opted_out_penalty} * opted_out::DOUBLE)) AS trust_score
  FROM ep0
), scores AS (
  SELECT *, ({co.weights['outcome']} * outcome_score + {co.weights['correction']} * correction_score
           + {co.weights['friction']} * friction_score + {co.weights['trust']} * trust_score)
           * CASE WHEN gate_passed THEN 1.0 ELSE {co.ungated_scale} END AS composite
  FROM ep1
), credited AS (
  SELECT s.*, sc.composite, {weight} AS w FROM sig2 s JOIN scores sc USING (episode_id)
), rewarded AS (
  SELECT *, composite * w / sum(w) OVER (PARTITION BY episode_id) AS credit_share FROM credited
), rewarded2 AS (
  SELECT *, {st.own_weight} * own_reward + {1 - st.own_weight} * credit_share AS step_reward FROM rewarded
), step_obs AS (
  SELECT agent_version, prompt_variant, segment_task AS task_type, date, episode_id, o.metric, o.x
  FROM (SELECT *, unnest([{step_obs}]) AS o FROM rewarded2)
), ep_obs AS (
  SELECT agent_version, prompt_variant, segment_task AS task_type, date, o.metric, o.x
  FROM (SELECT *, unnest([{ep_obs}]) AS o FROM scores)
), per_episode AS (  -- a step metric's clusters: its observations per episode (an episode metric is its own)
  SELECT agent_version, prompt_variant, task_type, date, metric, episode_id,
         count(x) AS n, sum(x) AS s, sum(x * x) AS ss
  FROM step_obs WHERE x IS NOT NULL GROUP BY ALL
), daily AS (
  SELECT agent_version, prompt_variant, task_type, date, metric, sum(n) AS n, sum(s) AS s, sum(ss) AS ss,
         count(*) AS c, sum(s * s) AS cs2, sum(s * n) AS csn, sum(n * n) AS cn2
  FROM per_episode GROUP BY ALL
  UNION ALL
  SELECT agent_version, prompt_variant, task_type, date, metric, count(x), sum(x), sum(x * x),
         count(x), sum(x * x), sum(x), count(x)
  FROM ep_obs WHERE x IS NOT NULL GROUP BY ALL
), periods AS (
  SELECT 'day' AS grain, date AS period_start, agent_version, prompt_variant, task_type, metric,
         n, s, ss, c, cs2, csn, cn2 FROM daily
  UNION ALL
  SELECT 'week', date_trunc('week', date)::DATE, agent_version, prompt_variant, task_type, metric,
         sum(n), sum(s), sum(ss), sum(c), sum(cs2), sum(csn), sum(cn2) FROM daily GROUP BY ALL
), kinds(metric, kind) AS (VALUES {kinds})
SELECT grain, period_start, agent_version, prompt_variant, task_type, metric, n, s / n AS value,
       CASE WHEN kind = 'rate' THEN ((s / n) + {t} * {t} / (2 * {n_eff})) / (1 + {t} * {t} / {n_eff})
                 - {t} * sqrt((s / n) * (1 - s / n) / {n_eff} + {t} * {t} / (4.0 * {n_eff} * {n_eff}))
                   / (1 + {t} * {t} / {n_eff})
            ELSE s / n - {t} * sqrt({var_mean}) END AS ci_low
FROM periods JOIN kinds USING (metric)
"""


def run_duckdb(s: Settings, spec: RewardSpec):
    import duckdb

    from lake.readers import table_dataset
    from schemas.tables import SILVER_EPISODES, SILVER_STEPS

    con = duckdb.connect()
    con.register("silver_steps", table_dataset(s, SILVER_STEPS))
    con.register("silver_episodes", table_dataset(s, SILVER_EPISODES))
    from jobs.heuristics import shared_users

    return con.sql(duckdb_sql(spec, shared_users(s))).to_arrow_table()


def run_spark(spark, s: Settings, start: date, end: date, spec: RewardSpec) -> None:
    from jobs import heuristics, scorecards

    heuristics.run(spark, s, start, end, spec=spec)
    scorecards.run(spark, s, start, end, spec=spec)


def agree(s: Settings, duck) -> int:
    """Metric values of DuckDB's result equal the published scorecards; returns the number of rows compared."""
    from lake.readers import read_table
    from schemas.tables import GOLD_SCORECARDS

    spark_rows = {(r["grain"], r["period_start"], r["agent_version"], r["prompt_variant"], r["task_type"], r["metric"]):
                  r for r in read_table(s, GOLD_SCORECARDS).to_pylist()}
    duck_rows = duck.to_pylist()
    assert len(duck_rows) == len(spark_rows), (len(duck_rows), len(spark_rows))
    for d in duck_rows:
        r = spark_rows[(d["grain"], d["period_start"], d["agent_version"], d["prompt_variant"], d["task_type"],
                        d["metric"])]
        assert r["n"] == d["n"] and abs(r["value"] - d["value"]) < 1e-9, (d, r)
        assert r["ci_low"] is None or d["ci_low"] is None or abs(r["ci_low"] - d["ci_low"]) < 1e-9, (d, r)
    return len(duck_rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prepare-only", action="store_true")
    args = ap.parse_args()
    data = {n: prepare(n) for n in args.sizes}
    print(json.dumps(data))
    if args.prepare_only:
        return
    from jobs.spark import build_spark

    spec = load_reward_spec()
    spark = build_spark(settings_for(args.sizes[0]), app_name="bench-jobs")
    results = {}
    for n in args.sizes:
        s = settings_for(n)
        start, end = window(s)
        times = {"spark": [], "duckdb": []}
        duck = None
        for _ in range(args.runs):
            t = time.perf_counter()
            run_spark(spark, s, start, end, spec)
            times["spark"].append(time.perf_counter() - t)
            t = time.perf_counter()
            duck = run_duckdb(s, spec)
            times["duckdb"].append(time.perf_counter() - t)
        compared = agree(s, duck)
        vacuum_gold(s)  # outside the timings: the replaced gold files of these runs
        med = {k: statistics.median(v) for k, v in times.items()}
        results[n] = {**data[n], "window": [str(start), str(end)], "runs": times, "median": med,
                      "ratio": med["spark"] / med["duckdb"], "spark_s_per_million": med["spark"] / (n / 1e6),
                      "rows_compared": compared}
        print(json.dumps({n: results[n]}))
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    (OUT / "jobs_speed.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1, default=str))
    print("\n| events | steps | episodes | Spark heuristics+scorecards (median s) | DuckDB same aggregates (median s) "
          "| ratio | Spark s per 1M events |\n|---|---|---|---|---|---|---|")
    for n, r in results.items():
        print(f"| {n:,} | {r['steps']:,} | {r['episodes']:,} | {r['median']['spark']:.1f} | {r['median']['duckdb']:.1f} "
              f"| {r['ratio']:.2f}× | {r['spark_s_per_million']:.1f} |")
    print(f"machine {machine}")


if __name__ == "__main__":
    main()
