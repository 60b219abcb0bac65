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


# ---- a window the job computed no rows for -------------------------------------------------------------------------
WINDOW = "date >= '2026-11-02' AND date < '2026-11-03' AND reward_version = 'reward-v2'"


def a_row(spec: TableSpec, **values) -> dict:
    """A row of `spec`: `values`, a placeholder in every other NOT NULL column, null in the rest."""
    from datetime import date, datetime, timezone

    def placeholder(t: pa.DataType):
        if pa.types.is_string(t):
            return "x"
        if pa.types.is_boolean(t):
            return False
        if pa.types.is_date(t):
            return date(2026, 11, 2)
        if pa.types.is_timestamp(t):
            return datetime(2026, 11, 2, 12, tzinfo=timezone.utc)
        return 0
    return {f.name: values[f.name] if f.name in values else None if f.nullable else placeholder(f.type)
            for f in spec.schema}


def plant(settings, spec: TableSpec, *rows: dict) -> int:
    """Publish `rows` the way a job's write does; the table's new version."""
    from jobs.tables import rows_to_publish, write_checked

    return write_checked(settings, spec, "true", rows_to_publish(pa.Table.from_pylist(list(rows), spec.schema), spec))


@pytest.mark.unit
def test_a_window_holding_rows_is_not_emptied():
    """The silent wipe this guards against: zero rows pass every check and suite, and the overwrite deleted the
    window's published scores. The refusal names the table, the window, the rows at stake and both fixes."""
    from jobs.tables import WindowRows, refuse_emptying
    from quality.errors import EmptyPublishRefused

    with pytest.raises(EmptyPublishRefused) as refused:
        refuse_emptying(WindowRows("gold/episode_scores", WINDOW, 0, 1207), allow_empty=False,
                        inputs=("silver/steps", "silver/episodes"))
    said = str(refused.value)
    assert said.startswith(f"gold/episode_scores: the run computed no rows for its window ({WINDOW}), which holds "
                           "1,207 published rows; publishing would delete them all, so nothing was published.")
    assert "silver/steps, silver/episodes hold rows for those days" in said and "--start/--end" in said
    assert "--allow-empty (TRAJLAKE_JOB_ALLOW_EMPTY=true)" in said and "\n" not in said
    assert (refused.value.table, refused.value.where, refused.value.held) == ("gold/episode_scores", WINDOW, 1207)
    assert isinstance(refused.value, PublishRefused)  # what the CLI and the scheduler already report as one line


@pytest.mark.unit
@pytest.mark.parametrize("window, allow_empty", [
    (("gold/episode_scores", 0, 1207), True),   # the override: emptied on purpose
    (("gold/guardrails", 0, 18), False),        # flags: none is an answer (its partners refuse a missing input)
    (("gold/episode_scores", 0, 0), False),     # nothing there to lose
    (("gold/episode_scores", 5, None), False),  # rows replace rows
])
def test_what_may_leave_a_window_empty(window, allow_empty):
    from jobs.tables import WindowRows, refuse_emptying

    table, rows, held = window
    refuse_emptying(WindowRows(table, WINDOW, rows, held), allow_empty)


@pytest.mark.unit
def test_a_run_with_no_rows_and_nothing_published_has_nothing_to_publish():
    from jobs.tables import WindowRows, nothing_to_publish

    empty = [WindowRows("gold/scorecards", WINDOW, 0, 0), WindowRows("gold/guardrails", WINDOW, 0, 0)]
    assert nothing_to_publish(empty)
    assert not nothing_to_publish([empty[0], WindowRows("gold/guardrails", WINDOW, 0, 3)])  # its flags go
    assert not nothing_to_publish([empty[0], WindowRows("gold/guardrails", WINDOW, 2, None)])


@pytest.mark.component
def test_the_rows_a_window_holds_are_counted_from_the_delta_table(base_settings, tmp_path):
    from datetime import date

    from jobs.tables import rows_in_window
    from schemas.tables import GOLD_EPISODE_SCORES as T

    s = base_settings.model_copy(update={"lake_root": tmp_path / "lake"})
    assert rows_in_window(s, T, WINDOW) == 0  # no table yet
    plant(s, T, a_row(T, episode_id="e1", date=date(2026, 11, 2), reward_version="reward-v2"),
          a_row(T, episode_id="e2", date=date(2026, 11, 2), reward_version="reward-v2"),
          a_row(T, episode_id="e3", date=date(2026, 11, 3), reward_version="reward-v2"),
          a_row(T, episode_id="e1", date=date(2026, 11, 2), reward_version="reward-v1"))
    assert rows_in_window(s, T, WINDOW) == 2
    assert rows_in_window(s, T, "date >= '2026-11-04'") == 0


@pytest.mark.component
def test_an_empty_publish_is_refused_overridden_or_a_no_op(spark, lake_settings):
    """Through Spark and delta-rs: a window that holds rows keeps them, with the table's version unchanged; the
    override empties it; a window with nothing in and nothing published writes nothing, not even the table."""
    from datetime import date

    from jobs.tables import declared_schema, publish_together, rows_in_window
    from lake.tables import open_table
    from quality.errors import EmptyPublishRefused
    from quality.runner import data_docs_index
    from schemas.reward import load_reward_spec
    from schemas.tables import GOLD_EPISODE_SCORES, GOLD_GUARDRAILS, GOLD_STEP_SIGNALS

    spec = load_reward_spec("reward-v2")
    s = lake_settings.model_copy(update={"state_dir": lake_settings.lake.parent / "state"})

    def empty(t):
        return spark.createDataFrame([], declared_schema(t))

    # nothing computed, nothing published: no commit, no table, no gate (no Data Docs built)
    out = publish_together(spark, s, [(GOLD_STEP_SIGNALS, empty(GOLD_STEP_SIGNALS), WINDOW),
                                      (GOLD_EPISODE_SCORES, empty(GOLD_EPISODE_SCORES), WINDOW)], spec)
    assert [(p.table, p.rows, p.version, p.written) for p in out] == [
        ("gold/step_signals", 0, None, False), ("gold/episode_scores", 0, None, False)]
    assert all(p.note.startswith("nothing to publish: no rows computed for its window") for p in out)
    assert open_table(s, GOLD_STEP_SIGNALS) is None and open_table(s, GOLD_EPISODE_SCORES) is None
    assert not data_docs_index(s).exists()

    v = plant(s, GOLD_EPISODE_SCORES, a_row(GOLD_EPISODE_SCORES, episode_id="e1", date=date(2026, 11, 2),
                                            reward_version="reward-v2"))
    with pytest.raises(EmptyPublishRefused, match=r"gold/episode_scores: .* holds 1 published rows") as refused:
        publish_together(spark, s, [(GOLD_STEP_SIGNALS, empty(GOLD_STEP_SIGNALS), WINDOW),
                                    (GOLD_EPISODE_SCORES, empty(GOLD_EPISODE_SCORES), WINDOW)], spec,
                         inputs=("silver/steps", "silver/episodes"))
    assert "silver/steps, silver/episodes" in str(refused.value)
    assert open_table(s, GOLD_EPISODE_SCORES).version() == v and rows_in_window(s, GOLD_EPISODE_SCORES, WINDOW) == 1
    assert open_table(s, GOLD_STEP_SIGNALS) is None  # its partner was not written either

    # guardrails alone may lose their flags
    plant(s, GOLD_GUARDRAILS, a_row(GOLD_GUARDRAILS, reward_version="reward-v2", period_start=date(2026, 11, 2)))
    where = "period_start = '2026-11-02' AND reward_version = 'reward-v2'"
    cleared, = publish_together(spark, s, [(GOLD_GUARDRAILS, empty(GOLD_GUARDRAILS), where)], spec)
    assert (cleared.rows, cleared.written, cleared.note) == (0, True, None)
    assert rows_in_window(s, GOLD_GUARDRAILS, where) == 0

    allowed = s.model_copy(update={"job_allow_empty": True})
    out = publish_together(spark, allowed, [(GOLD_STEP_SIGNALS, empty(GOLD_STEP_SIGNALS), WINDOW),
                                            (GOLD_EPISODE_SCORES, empty(GOLD_EPISODE_SCORES), WINDOW)], spec)
    assert [(p.rows, p.written) for p in out] == [(0, True), (0, True)]
    assert out[0].note is None and out[1].note == "its window's 1 published rows deleted (--allow-empty)"
    assert out[1].version == v + 1 and rows_in_window(s, GOLD_EPISODE_SCORES, WINDOW) == 0
