"""Split assignment, near-duplicate detection (shingles, MinHash, LSH) and clustering, without Spark or Kafka."""
from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from jobs.splits import (BANDS, NUM_PERM, ROWS, clusters, group_hash, keep_one_per_cluster, minhash_signatures,
                         near_duplicate_edges, prompt_digest_sql, prompt_words_sql, shingle_hashes, similar_pairs,
                         split_of, splits_params, splits_sql)

pytestmark = pytest.mark.unit


def _docs(*texts: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("docs", pa.table({"id": [f"e{i:03d}" for i in range(len(texts))], "text": list(texts)}))
    return con


def _layout(*docs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    words = np.array([w for d in docs for w in d], np.uint64)
    return words, np.concatenate(([0], np.cumsum([len(d) for d in docs]))).astype(np.int64)


def test_shingles_are_word_trigrams_and_short_documents_are_one_shingle():
    words, offsets = _layout([1, 2, 3, 4, 5], [6, 7], [8], [9, 10, 11])
    sh, so = shingle_hashes(words, offsets)
    assert np.diff(so).tolist() == [3, 1, 1, 1]
    # a document's shingles do not depend on its neighbours
    for i, doc in enumerate(([1, 2, 3, 4, 5], [6, 7], [8], [9, 10, 11])):
        alone, _ = shingle_hashes(*_layout(doc))
        assert sh[so[i]:so[i + 1]].tolist() == alone.tolist()
    # word order matters inside a shingle
    assert shingle_hashes(*_layout([1, 2, 3]))[0][0] != shingle_hashes(*_layout([3, 2, 1]))[0][0]


def test_minhash_estimates_jaccard_similarity():
    rng = np.random.default_rng(3)
    errors = []
    for target in (0.1, 0.3, 0.5, 0.7, 0.9):
        for _ in range(40):
            common = rng.integers(0, 2**63, int(200 * target), dtype=np.uint64)
            a = np.concatenate((common, rng.integers(0, 2**63, 100 - len(common) // 2, dtype=np.uint64)))
            b = np.concatenate((common, rng.integers(0, 2**63, 100 - len(common) // 2, dtype=np.uint64)))
            true = len(common) / (len(a) + len(b) - len(common))
            sig = minhash_signatures(np.concatenate((a, b)), np.array([0, len(a), len(a) + len(b)]))
            errors.append((sig[0] == sig[1]).mean() - true)
    # unbiased, with the spread 32 permutations allow (sd ≤ 0.09 per pair)
    assert abs(np.mean(errors)) < 0.02
    assert np.std(errors) < 0.1


def test_similar_pairs_links_each_member_to_its_buckets_first_row():
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
    other = rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
    sig = np.stack([base, other, base, base, other])
    assert similar_pairs(sig, 0.8).tolist() == [[2, 0], [3, 0], [4, 1]]
    assert similar_pairs(sig[:1], 0.8).tolist() == []


def test_equal_signatures_are_linked_even_when_every_bucket_starts_with_another_row():
    """Two identical prompts whose buckets, in every band, start with a lower row unlike them: the star compared
    each with that row only, and never with the other (seen among 150,000 "cancel my booking N" prompts)."""
    rng = np.random.default_rng(7)
    same = rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
    rows = []
    for band in range(BANDS):  # row `band` shares band `band` with `same`, and nothing else
        v = rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
        v[band * ROWS:(band + 1) * ROWS] = same[band * ROWS:(band + 1) * ROWS]
        rows.append(v)
    sig = np.stack([*rows, same, same])
    assert similar_pairs(sig, 0.8).tolist() == [[BANDS + 1, BANDS]]


def test_near_duplicate_edges_find_edited_prompts_but_not_different_ones():
    prompt = ("I need to change my flight from New York to Seattle on the fifth of May because my meeting moved "
              "and I would like a window seat and one checked bag if the fare allows it please")
    con = _docs(prompt,
                prompt.upper().replace(" ", "  ") + "!!",                 # case, spacing and punctuation only
                prompt.replace("window", "aisle"),                          # one word of 34 changed
                "Please cancel the reservation I made last week for my mother, she cannot travel anymore",
                "",                                                         # no words: never a duplicate
                "???")
    edges = near_duplicate_edges(con, "docs", 0.8)
    assert set(edges) >= {("e001", "e000")}
    assert all(b == "e000" for _, b in edges) and {a for a, _ in edges} <= {"e001", "e002"}
    assert near_duplicate_edges(_docs("a b c", "x y z"), "docs", 0.8) == []
    assert near_duplicate_edges(_docs(), "docs", 0.8) == []


def test_near_duplicates_are_found_in_any_script():
    """Prompts without one ASCII word (Cyrillic, Greek, Chinese) are split into the same words as the prompt
    digest reads: a prompt repeated in two splits is clustered here, not left to fail the leakage check."""
    ru = "Мне нужно перенести мой рейс из Москвы в Казань на пятое мая, пожалуйста"
    zh = "我想把五月五日的航班改到下午，谢谢"
    el = "Θέλω να ακυρώσω την κράτησή μου για την Αθήνα"
    con = _docs(ru, ru.upper() + "!", zh, zh + "。", el, el.lower(), "Ещё один совсем другой вопрос о багаже")
    assert set(near_duplicate_edges(con, "docs", 0.8)) == {("e001", "e000"), ("e003", "e002"), ("e005", "e004")}
    digest = duckdb.sql(f"SELECT {prompt_digest_sql('t')} FROM (VALUES ('{ru}'), ('{ru.upper()}!')) v(t)").fetchall()
    assert digest[0] == digest[1] != ("",)


def test_near_duplicates_across_reader_batches_are_found():
    texts = [f"unique prompt number {i} about booking {i * 7} seats on flight {i * 13}" for i in range(70_000)]
    texts[69_999] = texts[3]
    con = duckdb.connect()
    con.register("docs", pa.table({"id": [f"e{i:06d}" for i in range(len(texts))], "text": texts}))
    edges = near_duplicate_edges(con, "docs", 0.8, workers=1)
    assert ("e069999", "e000003") in edges
    # batches signed and bands bucketed on threads give the same edges in the same order
    assert near_duplicate_edges(con, "docs", 0.8, workers=3) == edges
    con.execute(f"CREATE TABLE pre AS SELECT id, {prompt_words_sql('text')} AS w FROM docs")
    assert near_duplicate_edges(con, "pre", 0.8, words="w", workers=2) == edges


def test_clusters_keep_one_member_by_rank():
    cluster_of = clusters([("b", "a"), ("c", "b"), ("e", "d")])
    assert cluster_of == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "d"}
    # callers rank by split precedence, then reward (negated), then id
    rank = {"a": (3, 0, "a"), "b": (0, 0, "b"), "c": (0, -1, "c"), "d": (1, 0, "d"), "e": (1, 0, "e")}
    assert keep_one_per_cluster(cluster_of, rank) == {"a", "b", "e"}


def test_split_of_is_stable_follows_the_ratios_and_honours_the_frozen_holdout():
    ratios = {"train": 0.8, "validation": 0.1, "test": 0.1}
    groups = [f"{i:064x}" for i in range(20_000)]
    splits = [split_of(g, ratios, 0.05, frozenset()) for g in groups]
    assert splits == [split_of(g, ratios, 0.05, frozenset()) for g in groups]
    share = {s: splits.count(s) / len(splits) for s in set(splits)}
    assert share["holdout"] == pytest.approx(0.05, abs=0.01)
    assert share["train"] == pytest.approx(0.95 * 0.8, abs=0.02)
    assert split_of(groups[0], ratios, 0.0, frozenset({groups[0]})) == "holdout"
    # a larger holdout share only moves groups into the holdout, never between train and test
    wider = [split_of(g, ratios, 0.2, frozenset()) for g in groups]
    assert all(w == s or w == "holdout" for s, w in zip(splits, wider))


def test_splits_in_sql_agree_with_the_python_definition():
    ratios = {"train": 0.7, "validation": 0.2, "test": 0.1}
    keys = [f"user-{i}" for i in range(5_000)] + [None, "é ü", "user-1"]
    frozen = {group_hash("user", "user-7", "salt"), group_hash("user", "user-8", "salt")}
    con = duckdb.connect()
    con.register("eps", pa.table({"episode_id": [f"e{i}" for i in range(len(keys))], "user_id": keys}))
    con.register("frozen", pa.table({"group_hash": sorted(frozen)}))
    got = con.execute(splits_sql("eps", "user_id", "SELECT group_hash FROM frozen") + " ORDER BY episode_id",
                      splits_params("user", "salt", ratios, 0.1)).fetchall()
    want = sorted((f"e{i}", group_hash("user", k, "salt"), split_of(group_hash("user", k, "salt"), ratios, 0.1,
                                                                      frozenset(frozen)))
                  for i, k in enumerate(keys))
    assert got == want
    assert {s for _, _, s in got} == {"train", "validation", "test", "holdout"}


def test_prompt_digest_ignores_case_spacing_and_punctuation_only():
    con = duckdb.connect()

    def digest(text: str) -> str:
        return con.execute(f"SELECT {prompt_digest_sql('?')}", [text]).fetchall()[0][0]

    assert digest("Change my flight, please!") == digest("change  my FLIGHT please") != ""
    assert digest("Change my flight") != digest("Cancel my flight")
    assert digest("STRAßE ÜBER 42") == digest("straße über 42")
    assert digest("need_help") == digest("need help")      # underscores separate words, as punctuation does
    assert digest("") == digest("?!") == ""


@pytest.mark.parametrize("seed", range(4))
def test_leakage_finds_every_key_in_two_splits_with_all_its_splits(seed):
    """The one-pass leakage check against the obvious one (a set of splits per key), on rows with many
    planted crossings: the same groups, prompts (blank ones ignored) and thawed holdout groups."""
    import random

    from jobs.splits import leakage

    rng = random.Random(seed)
    splits = ["train", "val", "test", "holdout"]
    rows = [(rng.choice(splits), f"g{rng.randrange(300)}", rng.choice(["", f"p{rng.randrange(2000)}"]))
            for _ in range(5000)]
    frozen = {f"g{i}" for i in range(0, 300, 7)}
    by_group: dict[str, set[str]] = {}
    by_prompt: dict[str, set[str]] = {}
    for split, g, p in rows:
        by_group.setdefault(g, set()).add(split)
        if p:
            by_prompt.setdefault(p, set()).add(split)
    got = leakage(iter(rows), frozen)
    assert got.groups == {g: s for g, s in by_group.items() if len(s) > 1} != {}
    assert got.prompts == {p: s for p, s in by_prompt.items() if len(s) > 1} != {}
    assert got.thawed == {g for s, g, _ in rows if g in frozen and s != "holdout"} != set()
    one_split = [(s, g, p) for s, g, p in rows if s == "train"]
    assert leakage(iter(one_split), set()).ok
