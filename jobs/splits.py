"""Leak-free splits: keyed-hash split assignment by group, the frozen holdout, near-duplicate clusters, leakage checks."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import duckdb
import numpy as np

SPLITS = ("train", "validation", "test", "holdout")
# when near duplicates fall into several splits, the one kept is in the split that must stay clean first
PRECEDENCE = {"holdout": 0, "test": 1, "validation": 2, "train": 3}
# MinHash: NUM_PERM permutations in BANDS bands of ROWS; a pair is a candidate when one band agrees, which
# happens with probability 1 - (1 - s^ROWS)^BANDS: about 0.97 at s = 0.8 and 0.04 at s = 0.3
NUM_PERM, BANDS, ROWS = 32, 8, 4
# recorded in each manifest: which near duplicates an export removes depends on these hashes, so an export made
# under another method may not reproduce byte for byte
NEAR_DUPLICATE_METHOD = "minhash-word3-numpy-v3"   # v3: Unicode words, as the prompt digest splits them


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


def splits_sql(episodes: str, key: str, frozen: str) -> str:
    """`group_hash` and `split_of` for every row of `episodes` (episode_id and the group key column `key`),
    vectorised in DuckDB: (episode_id, group_hash, split). `frozen` is a query of the frozen holdout's group
    hashes; the other inputs are the parameters `splits_params` gives. The Python functions stay the definition:
    tests hold the two to the same answers."""
    unit = "('0x' || substr(sha256('{purpose}:' || group_hash), 1, 13))::UBIGINT / 4503599627370496.0"  # 16^13
    return f"""
    WITH g AS (SELECT episode_id, sha256($group_prefix || coalesce(CAST({key} AS VARCHAR), 'None')) AS group_hash
               FROM {episodes}),
    u AS (SELECT *, {unit.format(purpose="holdout")} AS u_holdout, {unit.format(purpose="split")} AS u_split FROM g)
    SELECT episode_id, group_hash, CASE
        WHEN group_hash IN ({frozen}) OR u_holdout < $holdout_share THEN 'holdout'
        WHEN u_split < $edge_train THEN 'train'
        WHEN u_split < $edge_validation THEN 'validation'
        ELSE 'test' END AS split
    FROM u"""


def splits_params(group_by: str, salt: str, ratios: Mapping[str, float], holdout_share: float) -> dict[str, object]:
    """The parameters of `splits_sql`: the key prefix of `group_hash` and the cumulative edges of `split_of`."""
    edge_train = 0.0 + ratios["train"]
    return {"group_prefix": f"{salt}\x1f{group_by}\x1f", "holdout_share": holdout_share,
            "edge_train": edge_train, "edge_validation": edge_train + ratios["validation"]}


# ---- near duplicates ----------------------------------------------------------------------------------------
def _constants(name: str, n: int) -> np.ndarray:
    # odd 64-bit multipliers from sha256, so the permutations never depend on a random generator's version
    return np.array([int.from_bytes(hashlib.sha256(f"{name}:{k}".encode()).digest()[:8], "little") | 1
                     for k in range(n)], np.uint64)


_PERM_A, _PERM_B = _constants("minhash-a", NUM_PERM), _constants("minhash-b", NUM_PERM)
_GRAM = _constants("shingle", 3)
_BAND = _constants("band", ROWS)
_ROW = _constants("row", NUM_PERM)  # a whole signature's hash: equal signatures found by sorting
# the words of a document (lower-cased runs of Unicode letters and numbers — the same words the prompt digest
# reads, or repeated prompts without ASCII words would pass here unseen and fail the leakage check), each as
# DuckDB's 64-bit hash of the word
_WORD_HASHES_SQL = """
    SELECT id, h FROM (SELECT id, list_transform({words}, lambda w: hash(w)) AS h FROM {docs})
    WHERE len(h) > 0
    ORDER BY id"""


def shingle_hashes(words: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word 3-gram hashes of documents given as word hashes (`words`, document i at offsets[i]:offsets[i + 1],
    none empty): a document of fewer than three words is one shingle of all its words. Returns the shingle hashes
    and their offsets, in the same layout."""
    lens = np.diff(offsets)
    pos = np.arange(len(words), dtype=np.int64)
    left = np.repeat(offsets[1:].astype(np.int64), lens) - pos          # words from here to the document's end
    with np.errstate(over="ignore"):
        g = words * _GRAM[0]
        g[:-1] += np.where(left[:-1] >= 2, words[1:] * _GRAM[1], np.uint64(0))
        g[:-2] += np.where(left[:-2] >= 3, words[2:] * _GRAM[2], np.uint64(0))
    short = np.zeros(len(words), bool)
    short[offsets[:-1][lens < 3]] = True
    counts = np.maximum(lens - 2, 1)
    return g[(left >= 3) | short], np.concatenate(([0], np.cumsum(counts)))


def minhash_signatures(shingles: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """NUM_PERM MinHash values per document: the minimum of each of NUM_PERM seeded multiply-add permutations
    (mod 2^64) of its shingle hashes. Shape (documents, NUM_PERM)."""
    sig = np.empty((len(offsets) - 1, NUM_PERM), np.uint64)
    v = np.empty_like(shingles)
    with np.errstate(over="ignore"):
        for k in range(NUM_PERM):
            np.multiply(shingles, _PERM_A[k], out=v)
            v += _PERM_B[k]
            sig[:, k] = np.minimum.reduceat(v, offsets[:-1])
    return sig


def _band_candidates(sig: np.ndarray, b: int) -> np.ndarray:
    # the pairs (member, centre) of band b's buckets, each encoded as member * n + centre
    n = len(sig)
    with np.errstate(over="ignore"):
        key = (sig[:, b * ROWS:(b + 1) * ROWS] * _BAND).sum(1, dtype=np.uint64)
    order = np.argsort(key, kind="stable")
    k = key[order]
    first = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    centre = order[np.repeat(first, np.diff(np.concatenate((first, [n]))))]
    member = order != centre
    return order[member].astype(np.int64) * n + centre[member]


def similar_pairs(sig: np.ndarray, threshold: float, workers: int = 1) -> np.ndarray:
    """Pairs (i, j), i > j, of rows of `sig` whose share of equal MinHash values reaches `threshold`, sorted.

    Rows with the same signature first: each is linked to the first of them, always. Then LSH over one row per
    signature: rows sharing a band are candidates; each is compared with the first row of its bucket (a star,
    not all pairs, so a bucket of a million near-identical prompts costs a million comparisons, not 10^12). The
    star can miss a pair whose buckets all start with a row unlike both: among 150,000 prompts "cancel my
    booking N", two identical prompts were never compared, and the export then failed on their equal digests
    in two splits instead of keeping them together. Grouping equal signatures first makes that impossible for
    equal prompts; two prompts that are near but not equal can still be missed that way (docs/exports.md).
    The bands are bucketed on `workers` threads (numpy's sorts and arithmetic release the GIL)."""
    n = len(sig)
    if n < 2:
        return np.empty((0, 2), np.int64)
    first = _first_of_equal_rows(sig)
    dup = np.flatnonzero(first != np.arange(n))
    reps = np.flatnonzero(first == np.arange(n))
    rsig = sig[reps]
    m = len(reps)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="lsh") as pool:
        found = list(pool.map(lambda b: _band_candidates(rsig, b), range(BANDS)))
    cand = np.unique(np.concatenate(found))
    a, b = cand // m, cand % m
    keep = (rsig[a] == rsig[b]).sum(1) >= threshold * NUM_PERM
    i = np.concatenate((reps[a[keep]], dup))
    j = np.concatenate((reps[b[keep]], first[dup]))
    code = np.unique(np.maximum(i, j).astype(np.int64) * n + np.minimum(i, j))
    return np.stack([code // n, code % n], axis=1)


def _first_of_equal_rows(sig: np.ndarray) -> np.ndarray:
    """For each row, the lowest index of a row with the same signature (itself when none is before it)."""
    n = len(sig)
    with np.errstate(over="ignore"):
        h = (sig * _ROW).sum(1, dtype=np.uint64)
    order = np.argsort(h, kind="stable")  # equal hashes keep index order: a group's head is its lowest index
    hs = h[order]
    starts = np.concatenate(([True], hs[1:] != hs[:-1]))
    head = order[np.flatnonzero(starts)][np.cumsum(starts) - 1]
    head = np.where((sig[order] == sig[head]).all(1), head, order)  # a hash collision is no equality
    first = np.empty(n, np.int64)
    first[order] = head
    return first


def near_duplicate_edges(con: duckdb.DuckDBPyConnection, docs: str, threshold: float,
                         words: str | None = None, workers: int | None = None) -> list[tuple[str, str]]:
    """Pairs (id, other) of `docs(id, text)` whose estimated Jaccard similarity of word 3-grams is at least
    `threshold`; clusters are the connected components of these edges. `words`: a column of `docs` that already
    holds `prompt_words_sql("text")` (else the words are extracted here).

    DuckDB splits and hashes the words (vectorised, both cores); numpy makes the shingles, the MinHash signatures
    and the LSH buckets (`similar_pairs`), a batch of documents at a time for the signatures, on `workers` threads
    (default: one per core). Threads do not change the result: batches keep their order."""
    workers = workers or os.cpu_count() or 1
    ids, pending = [], []
    query = _WORD_HASHES_SQL.format(docs=docs, words=words or prompt_words_sql("text"))
    with ThreadPoolExecutor(workers, thread_name_prefix="minhash") as pool:
        for batch in con.sql(query).to_arrow_reader(1 << 16):
            if batch.num_rows == 0:
                continue
            h = batch.column(1)
            offsets = h.offsets.to_numpy().astype(np.int64)
            hashes = h.values.to_numpy()[offsets[0]:offsets[-1]]   # a batch's list array may be a slice
            offsets -= offsets[0]
            ids.extend(batch.column(0).to_pylist())
            pending.append(pool.submit(lambda w, o: minhash_signatures(*shingle_hashes(w, o)), hashes, offsets))
        sigs = [f.result() for f in pending]
    if not ids:
        return []
    pairs = similar_pairs(np.concatenate(sigs), threshold, workers)
    return [(ids[i], ids[j]) for i, j in pairs.tolist()]


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
    # One pass that remembers each key's first split and builds a set only for a key seen in a second split:
    # a set per key (~1M prompt digests at 1M episodes) made this ~3 s, most of the export's checks stage.
    first_of_group: dict[str, str] = {}
    first_of_prompt: dict[str, str] = {}
    out = Leakage()
    for split, ghash, prompt in rows:
        first = first_of_group.setdefault(ghash, split)
        if first != split:
            out.groups.setdefault(ghash, {first}).add(split)
        if prompt:
            first = first_of_prompt.setdefault(prompt, split)
            if first != split:
                out.prompts.setdefault(prompt, {first}).add(split)
        if ghash in frozen and split != "holdout":
            out.thawed.add(ghash)
    return out


def prompt_words_sql(text: str) -> str:
    """SQL for a prompt's normalised words: the lower-cased runs of Unicode letters and numbers of `text`, a list."""
    return f"regexp_extract_all(lower({text}), '[\\pL\\pN]+')"


def prompt_digest_sql(text: str, *, words: str | None = None) -> str:
    """SQL for the digest of a prompt's normalised words (`prompt_words_sql`, joined by one space): equal for
    prompts that differ only in case, spacing or punctuation; '' for a prompt without words. What the leakage check
    compares across splits. `words`: an expression already holding `prompt_words_sql(text)`, to extract them once."""
    return f"coalesce(md5(nullif(array_to_string({words or prompt_words_sql(text)}, ' '), '')), '')"
