"""Benchmark lakes: built once, reused while the code that builds them is unchanged, rebuilt when it changes."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# what decides a synthetic benchmark lake's content: the generator, the join that makes silver of it, the batch
# path that writes it, and (for bronze) the scrubber
SYNTHETIC_RECIPE = ("streams/sources/synthetic.py", "streams/join.py", "streams/recompute.py", "privacy/scrub.py",
                    "privacy/policy.py")
# the export benchmark's base lake has gold tables too: the heuristics job and the reward spec it scores with
SCORED_RECIPE = SYNTHETIC_RECIPE + ("jobs/heuristics.py", "jobs/tables.py", "schemas/reward/__init__.py",
                                    "schemas/reward/reward-v2.toml")


def recipe(paths: tuple[str, ...] = SYNTHETIC_RECIPE) -> str:
    """A fingerprint of the source files a lake is built from."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode() + b"\0" + (REPO / p).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cached(marker: Path, fingerprint: str) -> dict | None:
    """The marker's record of a lake built from this recipe, or None (absent, or built by other code: rebuild)."""
    if not marker.exists():
        return None
    info = json.loads(marker.read_text())
    return info if info.get("recipe") == fingerprint else None


def vacuum_gold(settings) -> None:
    """Delete the files of a benchmark lake's gold tables that later versions removed.

    Each jobs run replaces its window (~0.4 GB of gold files at 10M events) and nothing else vacuums a benchmark
    lake: 56 GB of replaced files had built up under bench/out/jobs/10000000 by 2026-12-07, and the disk was 91%
    full. Retention 0: the lake is the benchmark's own, and no reader holds an old version once its runs are over.
    """
    from lake.vacuum import vacuum_table
    from schemas.tables import TABLES

    for spec in TABLES.values():
        if spec.id.startswith("gold/"):
            vacuum_table(settings, spec, retention_hours=0)
