"""Benchmark: CPU instructions the export's formatting spends per episode, counted by valgrind (callgrind), this
checkout against another commit in the same run. Instruction counts do not move with the shared machine's speed,
which swings by 2x between hours here, so small changes to the formatting code can be measured at all.

  chunks    the first --chunks chunks (2,048 episodes each) of the 100k-episode benchmark lake of
            bench/export_speed.py, with their sorted fragments, saved once as the export saves them for its
            formatting processes (Arrow IPC files under bench/out/format_cost/chunks).
  measure   `_format_batch` over those chunks (all six formats, no PII ground truth), inline, under
            `valgrind --tool=callgrind`, once with zero passes and once with one: the difference is the formatting
            alone (imports and loading cancel out).
  against   the same with the code of another commit (`git worktree`, under bench/out/format_cost/), the ratio's
            baseline.

Usage: .venv/bin/python bench/format_cost.py [--against REV] [--chunks 2]
Prints instructions per episode for each side and their ratio; writes bench/out/format_cost.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from interleaved import worktree  # noqa: E402

OUT = REPO / "bench" / "out" / "format_cost"
CHUNKS = OUT / "chunks"
FORMATS = ("sft", "dpo", "openai_dpo", "kto", "rft", "steps")


def save_chunks(n: int) -> int:
    """Save the first n chunks of the 100k lake's export (once); returns the number of episodes in them."""
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    import bench.export_speed as lake
    from bench.lakes import cached
    from jobs import export as E

    s, built = lake.prepare(100_000)
    marker = CHUNKS / f"chunks-{n}.json"
    if (info := cached(marker, built["recipe"])) is not None:  # chunks of the lake as it is now
        return info["episodes"]
    start, end = lake.window(s)
    spec = E._spec("reward-v2")
    con = E._open_lake(s, E.pinned_sources(s, None))
    params = {"since": start, "until": end}
    con.execute(E._episodes_sql(spec.version), params).fetchall()
    # the export's own `kept` columns; splits and digests do not change how an episode is formatted
    con.execute("""CREATE TEMP TABLE kept AS
                   SELECT row_number() OVER (ORDER BY episode_id) - 1 AS rank, *, 'train' AS split,
                          '' AS group_hash, '' AS prompt_digest
                   FROM ep WHERE composite IS NOT NULL""").fetchall()
    kept = con.sql("SELECT * EXCLUDE (rank) FROM kept ORDER BY rank").to_arrow_table()
    fragments = con.sql(E._fragments_sql(s.job_margin_days, spec.version), params=params).to_arrow_reader(1 << 16)
    shutil.rmtree(CHUNKS, ignore_errors=True)
    CHUNKS.mkdir(parents=True)
    episodes = 0
    for k, chunk in enumerate(E.episode_chunks(kept, fragments, 2048)):
        if k == n:
            break
        chunk.save(CHUNKS / f"{chunk.first:09d}")
        episodes += chunk.episodes.num_rows
    marker.write_text(json.dumps({"chunks": n, "episodes": episodes, "recipe": built["recipe"]}))
    return episodes


def format_chunks(repo: str, passes: int) -> None:
    """(In the measured process.) Format the saved chunks `passes` times with the code in `repo`."""
    sys.path.insert(0, repo)
    import pyarrow as pa

    from jobs import export as E
    from schemas.reward import load_reward_spec

    spec = load_reward_spec("reward-v2")
    E._start_formatting(E._FormatJob(FORMATS, spec.exports, spec.version, None, None))
    chunks = []
    for stem in sorted(p.with_suffix("") for p in CHUNKS.glob("*.episodes")):
        tables = [pa.ipc.open_file(pa.memory_map(f"{stem}.{n}")).read_all() for n in ("episodes", "fragments")]
        chunks.append(E._Chunk(int(stem.name), *tables))
    for _ in range(passes):
        for chunk in chunks:
            E._format_batch(chunk)


def instructions(repo: Path, passes: int) -> int:
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                           __file__, "--_format", str(repo), "--_passes", str(passes)],
                          capture_output=True, text=True, cwd=repo)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"valgrind run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return int(found.group(1))


def per_episode(repo: Path, episodes: int) -> float:
    return (instructions(repo, 1) - instructions(repo, 0)) / episodes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", help="a commit to measure in the same run (the ratio's baseline)")
    ap.add_argument("--chunks", type=int, default=2, help="chunks of 2,048 episodes to format")
    ap.add_argument("--_format", help=argparse.SUPPRESS)
    ap.add_argument("--_passes", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._format:
        format_chunks(args._format, args._passes)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: install it (apt-get install valgrind)")
    episodes = save_chunks(args.chunks)
    result = {"episodes": episodes, "this": {"commit": _head(REPO), "per_episode": per_episode(REPO, episodes)}}
    print(f"this checkout ({result['this']['commit']}): {result['this']['per_episode']:,.0f} instructions/episode",
          flush=True)
    if args.against:
        _, other = worktree(args.against, OUT)
        result["against"] = {"commit": _head(other), "per_episode": per_episode(other, episodes)}
        result["ratio"] = round(result["this"]["per_episode"] / result["against"]["per_episode"], 4)
        print(f"{args.against} ({result['against']['commit']}): {result['against']['per_episode']:,.0f} "
              f"instructions/episode; ratio {result['ratio']}")
    (OUT.parent / "format_cost.json").write_text(json.dumps(result, indent=2))


def _head(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip()


if __name__ == "__main__":
    main()
