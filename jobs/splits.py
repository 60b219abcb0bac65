"""Leak-free splits: keyed-hash split assignment by group, the frozen holdout, near-duplicate clusters, leakage checks."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import duckdb

_WORD = re.compile(r"[^\W_]+")
SPLITS = ("train", "validation", "test", "holdout")
# when near duplicates fall into several splits, the one kept is in the split that must stay clean first
PRECEDENCE = {"holdout": 0, "test": 1, "validation": 2, "train": 3}
# MinHash: NUM_PERM permutations in BANDS bands of ROWS; a pair is a candidate when one band agrees, which
# happens with probability 1 - (1 - s^ROWS)^BANDS: about 0.97 at s = 0.8 and 0.04 at s = 0.3
NUM_PERM, BANDS, ROWS = 32, 8, 4


def group_hash(group_by: str, key: str, salt: str) -> str:
    """The salted sha256 of a group key: what splits are decided by and what the holdout registry stores."""
    return hashlib.sha256(f"{salt}\x1f{group_by}\x1f{key}".encode()).hexdigest()


def _unit(ghash: str, purpose: str) -> float:
    # separate draws for the holdout and for train/validation/test, so changing the holdout share moves groups
    # into or out of the holdout only, and never between train and test
    return int(hashlib.sha256(f"{purpose}:{ghash}".encode()).hexdigest()[:13], 16) / 16 ** 13


def split_of(ghash: str, ratios: Mapping[str, float], holdout_share: float, frozen: frozenset[str] | set[str]) -> str:
    """train | validation | test | holdout for a group: the same every time for the same settings; a group in the
    frozen registry is in the holdout whatever the settings say now."""
    if ghash in frozen or _unit(ghash, "holdout") < holdout_share:
        return "holdout"
    u, edge = _unit(ghash, "split"), 0.0
    for name in ("train", "validation", "test"):
        edge += ratios[name]
        if u < edge:
            return name
    return "test"


# ---- near duplicates ----------------------------------------------------------------------------------------
def _signatures_sql(docs: str) -> str:
    """MinHash signatures of `docs(id, text)`: word 3-grams of the lower-cased, punctuation-free text (the whole
    text when it has fewer than three words), NUM_PERM seeded hashes each, computed vectorised in DuckDB."""
    return f"""
    WITH words AS (
        SELECT id, list_filter(string_split(regexp_replace(lower(text), '[^[:alnum:]]+', ' ', 'g'), ' '),
                               lambda w: w <> '') AS w
        FROM {docs}),
    shingles AS (
        SELECT id, CASE WHEN len(w) >= 3
                        THEN list_transform(range(1, len(w) - 1), lambda i: hash(w[i], w[i + 1], w[i + 2]))
                        ELSE [hash(array_to_string(w, ' '))] END AS h
        FROM words WHERE len(w) > 0)
    SELECT id, list_transform(range({NUM_PERM}), lambda k: list_min(list_transform(h, lambda x: hash(x, k)))) AS sig
    FROM shingles"""


def near_duplicate_edges(con: duckdb.DuckDBPyConnection, docs: str, threshold: float) -> list[tuple[str, str]]:
    """Pairs (id, other) of `docs(id, text)` whose estimated Jaccard similarity is at least `threshold`.

    LSH: documents sharing a band are candidates; each is compared with the smallest id of its bucket (a star,
    not all pairs, so a bucket of a million identical prompts costs a million comparisons, not 10^12), and the
    pair is kept when the share of equal MinHash values reaches the threshold. Clusters are the connected
    components of these edges.
    """
    con.execute(f"CREATE OR REPLACE TEMP TABLE _sig AS {_signatures_sql(docs)}").fetchall()
    bands = " UNION ALL ".join(
        f"SELECT id, {b} AS band, hash(sig[{b * ROWS + 1}:{(b + 1) * ROWS}]) AS bucket FROM _sig"
        for b in range(BANDS))
    rows = con.execute(f"""
        WITH b AS ({bands}),
        centre AS (SELECT band, bucket, min(id) AS cid FROM b GROUP BY ALL HAVING count(*) > 1),
        cand AS (SELECT DISTINCT b.id, c.cid FROM b JOIN centre c USING (band, bucket) WHERE b.id <> c.cid)
        SELECT cand.id, cand.cid FROM cand
        JOIN _sig s1 ON s1.id = cand.id JOIN _sig s2 ON s2.id = cand.cid
        WHERE len(list_filter(range(1, {NUM_PERM} + 1), lambda i: s1.sig[i] = s2.sig[i])) >= {threshold} * {NUM_PERM}
        ORDER BY ALL""").fetchall()
    con.execute("DROP TABLE _sig").fetchall()
    return rows


def clusters(edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Union-find over edges: each id that has a near duplicate → the smallest id of its cluster."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
            parent.setdefault(min(ra, rb), min(ra, rb))
    return {x: find(x) for x in parent}


def keep_one_per_cluster(cluster_of: Mapping[str, str], rank: Mapping[str, tuple]) -> set[str]:
    """The ids to drop so that each near-duplicate cluster keeps exactly one member: the one with the smallest
    `rank` (callers rank by split precedence, then reward, then id), so a cluster never spans two splits."""
    best: dict[str, str] = {}
    for x, c in cluster_of.items():
        if c not in best or rank[x] < rank[best[c]]:
            best[c] = x
    return {x for x, c in cluster_of.items() if best[c] != x}


# ---- the leakage check -------------------------------------------------------------------------------------
@dataclass
class Leakage:
    """What crosses split boundaries in an export; `ok` when nothing does."""

    groups: dict[str, set[str]] = field(default_factory=dict)     # group hash → splits it appears in
    prompts: dict[str, set[str]] = field(default_factory=dict)    # prompt digest → splits
    thawed: set[str] = field(default_factory=set)                 # frozen holdout groups found outside it

    @property
    def ok(self) -> bool:
        return not (self.groups or self.prompts or self.thawed)

    def summary(self) -> str:
        parts = []
        if self.groups:
            parts.append(f"{len(self.groups)} group(s) in more than one split")
        if self.prompts:
            parts.append(f"{len(self.prompts)} identical prompt(s) in more than one split")
        if self.thawed:
            parts.append(f"{len(self.thawed)} frozen holdout group(s) outside the holdout")
        return "; ".join(parts) or "no leakage"


def leakage(rows: Iterable[tuple[str, str, str]], frozen: set[str] | frozenset[str]) -> Leakage:
    """Check `(split, group_hash, prompt_digest)` of every exported row: no group and no identical prompt in two
    splits, and every frozen holdout group still in the holdout."""
    by_group: dict[str, set[str]] = {}
    by_prompt: dict[str, set[str]] = {}
    out = Leakage()
    for split, ghash, prompt in rows:
        by_group.setdefault(ghash, set()).add(split)
        if prompt:
            by_prompt.setdefault(prompt, set()).add(split)
        if ghash in frozen and split != "holdout":
            out.thawed.add(ghash)
    out.groups = {g: s for g, s in by_group.items() if len(s) > 1}
    out.prompts = {p: s for p, s in by_prompt.items() if len(s) > 1}
    return out


def prompt_digest(text: str) -> str:
    """Digest of a prompt's normalised words: equal for prompts that differ only in case, spacing or punctuation."""
    words = _WORD.findall(text.lower())
    return hashlib.blake2b(" ".join(words).encode(), digest_size=16).hexdigest() if words else ""
