"""The export's pure parts: the writer's exact-duplicate removal and file hashes, and the SQL predicates that keep
ineligible episodes out of the grouping."""
from __future__ import annotations

import hashlib
from array import array
from itertools import accumulate

import duckdb
import pytest

from jobs.conversations import conversation
from jobs.export import _Part, _Writer
from jobs.splits import SPLITS
from jobs.export_rows import Episode, eligible_sql, sft_rows
from schemas.reward import load_reward_spec

pytestmark = pytest.mark.unit
SPEC = load_reward_spec("reward-v2").exports


def part(rows: list[tuple[int, bytes, bytes, int]]) -> _Part:
    """(position, digest, line, episode) rows → a part, as a formatting process hands it over."""
    lines = [r[2] for r in rows]
    return _Part(b"".join(lines), array("Q", accumulate(map(len, lines))), b"".join(r[1] for r in rows),
                 array("I", [r[0] for r in rows]), array("I", [r[3] for r in rows]))


def d(x: str) -> bytes:
    return hashlib.blake2b(x.encode(), digest_size=16).digest()


def test_a_batch_without_duplicates_is_written_whole(tmp_path):
    w = _Writer(tmp_path)
    got = w.write("sft", {"train": part([(0, d("a"), b'{"a":1}\n', 0), (2, d("c"), b'{"c":1}\n', 2)]),
                          "test": part([(1, d("b"), b'{"b":1}\n', 1)])})
    files = w.close()
    assert got == {0, 1, 2}
    assert (tmp_path / "sft/train.jsonl").read_bytes() == b'{"a":1}\n{"c":1}\n'
    assert files["sft/train.jsonl"] == {"sha256": hashlib.sha256(b'{"a":1}\n{"c":1}\n').hexdigest(), "bytes": 16,
                                        "rows": 2}
    assert files["sft/test.jsonl"]["rows"] == 1 and w.exact_duplicates == {}


def test_duplicates_keep_the_first_row_in_episode_order_across_splits_and_batches(tmp_path):
    w = _Writer(tmp_path)
    # in one batch: the same content in test (position 1) and train (position 0): train's row is first and stays
    first = w.write("kto", {"test": part([(1, d("x"), b'{"x":"test"}\n', 1)]),
                            "train": part([(0, d("x"), b'{"x":"train"}\n', 0), (2, d("y"), b'{"y":1}\n', 2)])})
    # a later batch repeats y (dropped) and adds z
    second = w.write("kto", {"train": part([(0, d("y"), b'{"y":2}\n', 0), (1, d("z"), b'{"z":1}\n', 1)])})
    files = w.close()
    assert first == {0, 2} and second == {1}
    assert (tmp_path / "kto/train.jsonl").read_bytes() == b'{"x":"train"}\n{"y":1}\n{"z":1}\n'
    assert not (tmp_path / "kto/test.jsonl").exists()
    assert w.exact_duplicates == {"kto": 2} and w.rows == {"kto": {"train": 3}}
    assert files["kto/train.jsonl"]["sha256"] == hashlib.sha256(
        (tmp_path / "kto/train.jsonl").read_bytes()).hexdigest()


def test_only_a_format_that_restricts_episodes_narrows_the_grouping():
    assert eligible_sql(("sft",), SPEC) is not None
    assert eligible_sql(("sft", "kto"), SPEC) is None and eligible_sql(("steps",), SPEC) is None


@pytest.mark.parametrize("composite", [0.0, 0.5, SPEC.sft_min_composite - 1e-12, SPEC.sft_min_composite,
                                       SPEC.sft_min_composite + 1e-12, 0.9, 1.0])
@pytest.mark.parametrize("gate", [True, False])
def test_the_sft_predicate_admits_every_episode_sft_rows_accepts(composite, gate):
    """Evaluated by DuckDB on the same double, the predicate holds wherever `sft_rows` yields a row."""
    conv = conversation([("user_message", None, {"text": "book a flight"}),
                         ("action_proposed", "a1", {"output": "done", "kind": "message"})])
    ep = Episode("e", "u", "t", "x", "v1", "p", "completed", composite, gate, "train", ())
    yields = any(True for _ in sft_rows(ep, conv, SPEC, "reward-v2"))
    admitted = duckdb.execute(f"SELECT {eligible_sql(('sft',), SPEC)} FROM (SELECT $g::BOOLEAN AS gate_passed, "
                              "$c::DOUBLE AS composite)", {"g": gate, "c": composite}).fetchall()[0][0]
    # the conversation is one `sft_rows` takes whenever the scores pass, so the two decide alike
    assert yields == admitted == (gate and composite >= SPEC.sft_min_composite)


def test_importing_the_export_loads_neither_great_expectations_nor_pyspark(tmp_path):
    """Formatting processes re-import the caller's main module; if importing jobs.export (and starting a formatting
    process) pulled in Great Expectations, its pyspark import would exit them and the pool would respawn them
    forever. A script importing the export at the top must stay clear of both."""
    import subprocess
    import sys

    from tests.conftest import REPO

    script = tmp_path / "uses_export.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\nimport jobs.export\n"
                      "jobs.export._start_formatting(jobs.export._FormatJob(('sft',), None, 'reward-v2', None))\n"
                      "print(sorted({m.split('.')[0] for m in sys.modules} & {'great_expectations', 'pyspark'}))\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_every_split_of_each_format_gets_its_file_even_when_no_row_went_to_it(tmp_path):
    """A split of no rows had no file, and the training readers failed on it (found in review)."""
    w = _Writer(tmp_path)
    w.write("sft", {"train": part([(0, d("a"), b'{"a":1}\n', 0)])})
    files = w.close(("sft", "dpo"))
    assert sorted(files) == sorted(f"{fmt}/{split}.jsonl" for fmt in ("sft", "dpo") for split in SPLITS)
    assert files["dpo/holdout.jsonl"] == {"sha256": hashlib.sha256(b"").hexdigest(), "bytes": 0, "rows": 0}
    assert files["sft/train.jsonl"]["rows"] == 1 and (tmp_path / "sft/test.jsonl").read_bytes() == b""
    assert w.rows == {"sft": {"train": 1, "validation": 0, "test": 0, "holdout": 0},
                      "dpo": {"train": 0, "validation": 0, "test": 0, "holdout": 0}}


def test_the_latest_revision_of_a_key_written_twice_at_one_revision_is_the_later_closed():
    """A task the join had forgotten, started again by a late event, repeats its keys at revision 0 (docs/design.md):
    the semi-join on max(revision) matched both rows and the export got the episode twice."""
    from jobs.export import _latest_sql

    con = duckdb.connect()
    con.execute("""CREATE TABLE t AS SELECT * FROM (VALUES
        ('a', 0, TIMESTAMPTZ '2024-01-01 00:00:00+00', 'old'), ('a', 1, TIMESTAMPTZ '2024-01-02 00:00:00+00', 'new'),
        ('b', 0, TIMESTAMPTZ '2024-01-01 00:00:00+00', 'first'), ('b', 0, TIMESTAMPTZ '2024-01-03 00:00:00+00', 'again'),
        ('c', 0, TIMESTAMPTZ '2024-01-01 00:00:00+00', 'only')) v(k, revision, closed_at, val)""")
    assert con.sql(_latest_sql("t", "k", "k, val", "true") + " ORDER BY k").fetchall() == [
        ("a", "new"), ("b", "again"), ("c", "only")]
