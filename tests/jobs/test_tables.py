"""The structural checks every gold publish passes first (declared NOT NULL columns, unique declared keys, rows inside
the window they replace) and the order the rows are written in."""
import pyarrow as pa
import pytest

from jobs.tables import check_before_publish, repeated_keys_and_rows_outside, rows_to_publish
from quality.errors import PublishRefused
from schemas.tables import TableSpec


SPEC = TableSpec("gold", "things", pa.schema([pa.field("id", pa.string(), nullable=False),
                                              pa.field("rev", pa.int32(), nullable=False),
                                              pa.field("score", pa.float64(), nullable=False),
                                              pa.field("note", pa.string())]),
                 (), ("id", "rev"), "a test table")


def rows(*tuples):
    return pa.Table.from_pylist([dict(zip(("id", "rev", "score", "note"), t)) for t in tuples], schema=SPEC.schema)


@pytest.mark.unit
def test_rows_with_unique_keys_and_no_nulls_pass():
    assert check_before_publish(rows(("a", 0, 0.5, None), ("a", 1, 0.5, "x"), ("b", 0, 1.0, None)), SPEC) == 3


@pytest.mark.unit
def test_a_null_in_a_not_null_column_refuses_the_publish():
    data = rows(("a", 0, 0.5, None), ("b", 0, 1.0, None)).set_column(2, "score", pa.array([0.5, None]))
    with pytest.raises(PublishRefused, match=r"gold/things: nulls in NOT NULL columns \{'score': 1\}; nothing"):
        check_before_publish(data, SPEC)


@pytest.mark.unit
def test_a_repeated_key_refuses_the_publish():
    with pytest.raises(PublishRefused, match=r"gold/things: 2 rows repeat a key \('id', 'rev'\); nothing"):
        check_before_publish(rows(("a", 0, 0.5, None), ("a", 0, 0.7, None), ("a", 0, 0.1, None), ("a", 1, 0.5, None)),
                             SPEC)


@pytest.mark.unit
def test_an_empty_publish_passes():
    assert check_before_publish(rows(), SPEC) == 0


@pytest.mark.unit
def test_a_row_outside_the_replaced_window_refuses_the_publish():
    data = rows(("a", 0, 0.5, None), ("b", 3, 1.0, None), ("c", 1, 0.2, None))
    assert check_before_publish(data, SPEC, "rev < 5") == 3
    with pytest.raises(PublishRefused, match=r"gold/things: 1 rows lie outside the window they would replace "
                                             r"\(rev < 3\).*nothing was published"):
        check_before_publish(data, SPEC, "rev < 3")


@pytest.mark.unit
def test_a_null_where_the_window_is_decided_counts_as_outside():
    data = rows(("a", 0, 0.5, None), ("b", 1, 1.0, "x"))
    assert repeated_keys_and_rows_outside(data, ("id",), "note = 'x'") == (0, 1)
    assert repeated_keys_and_rows_outside(data, ("id",), "true") == (0, 0)


@pytest.mark.unit
def test_a_null_key_repeats_like_any_other_key():
    data = rows(("a", 0, 0.5, None), ("b", 1, 1.0, None), ("c", 2, 1.0, None))
    assert repeated_keys_and_rows_outside(data, ("note",), "true") == (2, 0)
    assert repeated_keys_and_rows_outside(data, ("id", "note"), "true") == (0, 0)


PARTED = TableSpec("gold", "parted", pa.schema([pa.field("day", pa.string(), nullable=False),
                                                pa.field("id", pa.string(), nullable=False),
                                                pa.field("n", pa.int32())]),
                   ("day",), ("id", "day"), "a partitioned test table")


@pytest.mark.unit
def test_rows_are_written_sorted_by_their_keys_outside_the_partition_columns_in_declared_types():
    spark_like = pa.table({"day": pa.array(["2", "1", "2", "1"], pa.large_string()),
                           "id": pa.array(["b", "z", "a", "c"], pa.large_string()), "n": pa.array([1, 2, 3, 4])})
    out = rows_to_publish(spark_like, PARTED)
    assert out.schema == PARTED.schema
    assert out.to_pylist() == [{"day": "2", "id": "a", "n": 3}, {"day": "2", "id": "b", "n": 1},
                               {"day": "1", "id": "c", "n": 4}, {"day": "1", "id": "z", "n": 2}]


@pytest.mark.component
def test_the_same_rows_in_any_order_give_the_same_files(tmp_path):
    """Each partition's file holds its rows in key order, byte for byte the same whatever order they came in: the
    writer keeps the rows' order within a partition."""
    import hashlib
    import random

    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    rows = [{"day": f"2026-11-0{1 + i % 3}", "id": f"e{random.Random(i).randrange(10**9):09d}-{i}", "n": i}
            for i in range(3_000)]
    digests = []
    for seed in (1, 2):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        target = tmp_path / f"t{seed}"
        write_deltalake(str(target), rows_to_publish(pa.Table.from_pylist(shuffled, schema=PARTED.schema), PARTED),
                        partition_by=["day"])
        parts = sorted(p.parent.name for p in target.rglob("*.parquet"))
        assert parts == ["day=2026-11-01", "day=2026-11-02", "day=2026-11-03"]
        for p in sorted(target.rglob("*.parquet"), key=lambda p: p.parent.name):
            ids = pq.read_table(p).column("id").to_pylist()
            assert ids == sorted(ids)
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(target.rglob("*.parquet"), key=lambda p: p.parent.name)])
    assert digests[0] == digests[1]


@pytest.mark.component
def test_every_tenth_publish_leaves_a_checkpoint_for_spark(spark, lake_settings):
    """delta-rs would checkpoint every 100 commits; Spark replays every commit since the last one to plan a read."""
    from datetime import date

    from jobs.tables import publish
    from lake.tables import table_path
    from schemas.reward import load_reward_spec
    from schemas.tables import GOLD_REVIEW_QUEUE

    spec = load_reward_spec()
    row = dict(episode_id="e1", week=date(2026, 11, 2), agent_version="a", prompt_variant="p", task_type="t",
               band="high", outcome="completed", composite=0.9, rank=1, stratum_size=4, weight=4.0,
               reward_version=spec.version)
    df = spark.createDataFrame([row])
    versions = [publish(spark, lake_settings, GOLD_REVIEW_QUEUE, df, "episode_id = 'e1'", spec).version
                for _ in range(10)]
    log = table_path(lake_settings, GOLD_REVIEW_QUEUE) / "_delta_log"
    assert versions == list(range(1, 11))
    assert sorted(p.name for p in log.glob("*.checkpoint.parquet")) == ["00000000000000000010.checkpoint.parquet"]
    assert spark.read.format("delta").load(str(log.parent)).count() == 1


@pytest.mark.unit
def test_two_publishes_of_one_table_take_turns(base_settings, tmp_path):
    """The daily and the weekly scorecards over the same days, or a manual run beside the scheduled one: the
    second publish of a table waits for the first instead of committing beside it."""
    import threading
    import time

    from jobs.tables import publishing
    from schemas.tables import GOLD_EPISODE_SCORES, GOLD_SCORECARDS, GOLD_STEP_SIGNALS

    s = base_settings.model_copy(update={"lake_root": tmp_path / "lake"})
    inside, order = threading.Event(), []

    def first():
        with publishing(s, [GOLD_SCORECARDS, GOLD_STEP_SIGNALS]):
            inside.set()
            time.sleep(0.5)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(10)
    with publishing(s, [GOLD_EPISODE_SCORES]):  # another table: no wait
        order.append("other table")
    with publishing(s, [GOLD_STEP_SIGNALS, GOLD_SCORECARDS]):  # the same tables, in another order
        order.append("second")
    t.join()
    assert order == ["other table", "first done", "second"]
