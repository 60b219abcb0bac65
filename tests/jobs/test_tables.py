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


# ---- days of a window the job computed no rows for, while it computed rows for others -------------------------------
WEEK = "date >= '2026-11-02' AND date < '2026-11-09' AND reward_version = 'reward-v2'"


@pytest.mark.unit
def test_days_of_a_window_the_run_computed_no_rows_for_are_not_emptied():
    """Partly missing input: silver gone for two days of a week, the run computed rows for the other five, and the
    overwrite deleted the two days' published scores. The refusal names the table, each day with the rows it
    would lose, the input to check and the fixes."""
    from datetime import date

    from jobs.tables import WindowRows, refuse_emptying
    from quality.errors import EmptyDaysRefused, EmptyPublishRefused

    lost = (((date(2026, 11, 3),), 207), ((date(2026, 11, 5),), 1198))
    with pytest.raises(EmptyDaysRefused) as refused:
        refuse_emptying(WindowRows("gold/episode_scores", WEEK, 1450, 2855, lost, ("date",)), allow_empty=False,
                        inputs=("silver/steps", "silver/episodes"))
    said = str(refused.value)
    assert said.startswith(f"gold/episode_scores: the run computed rows for its window ({WEEK}) but none for 2 date "
                           "partitions of it that hold published rows: 2026-11-03 (207 rows), 2026-11-05 (1,198 rows)"
                           "; publishing would delete those 1,405 rows, so nothing was published.")
    assert "silver/steps, silver/episodes hold rows for those days" in said
    assert "rerun over only the days that have input (--start/--end)" in said
    assert "--allow-empty (TRAJLAKE_JOB_ALLOW_EMPTY=true)" in said and "\n" not in said
    assert (refused.value.table, refused.value.days, refused.value.held) == ("gold/episode_scores", lost, 1405)
    # a sibling of the whole-window refusal: reported as one line wherever a refused publish is
    assert isinstance(refused.value, PublishRefused) and not isinstance(refused.value, EmptyPublishRefused)


@pytest.mark.unit
@pytest.mark.parametrize("table, lost, allow_empty", [
    ("gold/episode_scores", ((("2026-11-03",), 207),), True),    # the override: emptied on purpose
    ("gold/guardrails", ((("day", "2026-11-03"), 18),), False),  # flags: a day without any is an answer
    ("gold/episode_scores", (), False),                          # every day that holds rows got rows
])
def test_what_may_leave_days_of_a_window_empty(table, lost, allow_empty):
    from jobs.tables import WindowRows, refuse_emptying

    refuse_emptying(WindowRows(table, WEEK, 1450, 1657, lost, ("date",)), allow_empty)


@pytest.mark.unit
def test_the_days_lost_are_the_partitions_holding_rows_that_no_computed_row_falls_in():
    from datetime import date

    from jobs.tables import days_lost
    from schemas.tables import GOLD_EPISODE_SCORES, GOLD_SCORECARDS

    d = [date(2026, 11, day) for day in range(2, 9)]
    held = {("reward-v2", d[0]): 300, ("reward-v2", d[1]): 207, ("reward-v2", d[2]): 0, ("reward-v2", d[3]): 198}
    computed = {("reward-v2", d[0]), ("reward-v2", d[4])}  # a new day (d[4]) loses nothing
    assert days_lost(held, computed, GOLD_EPISODE_SCORES.partition_by) == (((d[1],), 207), ((d[3],), 198))
    assert days_lost(held, set(held), GOLD_EPISODE_SCORES.partition_by) == ()
    # scorecards: a day's cards lost while its week's cards were computed from the other days
    cards = {("reward-v2", "day", d[0]): 720, ("reward-v2", "day", d[1]): 700, ("reward-v2", "week", d[0]): 900}
    assert days_lost(cards, {("reward-v2", "day", d[0]), ("reward-v2", "week", d[0])},
                     GOLD_SCORECARDS.partition_by) == ((("day", d[1]), 700),)


@pytest.mark.unit
def test_the_days_lost_are_listed_compactly():
    from datetime import date, timedelta

    from quality.errors import days_listed

    d = [date(2026, 11, 1) + timedelta(days=i) for i in range(60)]
    assert days_listed(tuple(((d[i],), 100) for i in (2, 3, 4, 6))) == (
        "2026-11-03…2026-11-05 (3 days, 300 rows), 2026-11-07 (100 rows)")
    assert days_listed(((("day", d[2]), 720), (("day", d[3]), 700), (("week", d[1]), 900), (("week", d[8]), 880))) \
        == "day 2026-11-03…2026-11-04 (2 days, 1,420 rows), week 2026-11-02 (900 rows), week 2026-11-09 (880 rows)"
    every_other = days_listed(tuple(((d[i],), 10) for i in range(0, 60, 2)))  # a backfill with a hole every day
    assert every_other.startswith("2026-11-01 (10 rows), 2026-11-03 (10 rows)")
    assert every_other.endswith("2026-11-15 (10 rows), and 22 more")


@pytest.mark.unit
def test_each_gold_tables_day_is_its_partition_but_the_reward_version():
    """The choice docs/quality.md explains; pinned so a new partitioning of a gold table is looked at."""
    from jobs.tables import MAY_BE_EMPTY, day_columns
    from schemas.tables import (GOLD_EPISODE_SCORES, GOLD_GUARDRAILS, GOLD_REVIEW_QUEUE, GOLD_SCORECARDS,
                                GOLD_STEP_SIGNALS)

    assert {t.id: day_columns(t) for t in (GOLD_STEP_SIGNALS, GOLD_EPISODE_SCORES, GOLD_SCORECARDS,
                                           GOLD_REVIEW_QUEUE)} == {
        "gold/step_signals": ("date",), "gold/episode_scores": ("date",),
        "gold/scorecards": ("grain", "period_start"), "gold/review_queue": ("week",)}
    assert GOLD_GUARDRAILS.id in MAY_BE_EMPTY


@pytest.mark.unit
def test_the_days_computed_are_read_off_the_collected_rows():
    from datetime import date

    from jobs.tables import partitions_in
    from schemas.tables import GOLD_EPISODE_SCORES as T, GOLD_REVIEW_QUEUE as Q

    d2, d3 = date(2026, 11, 2), date(2026, 11, 3)
    data = pa.Table.from_pylist([a_row(T, episode_id=e, date=day, reward_version="reward-v2")
                                 for e, day in (("e1", d2), ("e2", d2), ("e3", d3))], T.schema)
    assert partitions_in(data, T) == {("reward-v2", d2), ("reward-v2", d3)}
    assert partitions_in(data.slice(0, 0), T) == set()
    sample = pa.Table.from_pylist([a_row(Q, episode_id="e1", week=d2, reward_version="reward-v2")], Q.schema)
    assert partitions_in(sample, Q) == {("reward-v2", d2)}


@pytest.mark.component
def test_the_rows_each_day_holds_are_read_from_the_delta_log(base_settings, tmp_path, monkeypatch):
    """A window over partition columns (every job's) is counted from the log's file list and row counts, without
    opening a data file; any other predicate from the rows, with the same answer."""
    from datetime import date

    import jobs.tables
    from jobs.tables import rows_by_partition
    from schemas.tables import GOLD_EPISODE_SCORES as T

    s = base_settings.model_copy(update={"lake_root": tmp_path / "lake"})
    d2, d3 = date(2026, 11, 2), date(2026, 11, 3)
    assert rows_by_partition(s, T, WEEK) == {}  # no table yet
    plant(s, T, a_row(T, episode_id="e1", date=d2, reward_version="reward-v2"),
          a_row(T, episode_id="e2", date=d2, reward_version="reward-v2"),
          a_row(T, episode_id="e3", date=d3, reward_version="reward-v2"),
          a_row(T, episode_id="e1", date=d2, reward_version="reward-v1"))
    # a second commit replacing one day: only the files the log still lists count
    jobs.tables.write_checked(s, T, "date = '2026-11-03' AND reward_version = 'reward-v2'", rows_to_publish(
        pa.Table.from_pylist([a_row(T, episode_id=e, date=d3, reward_version="reward-v2") for e in ("e3", "e4")],
                             T.schema), T))

    def no_data_files(*_):
        raise AssertionError("read a data file")

    with monkeypatch.context() as m:
        m.setattr(jobs.tables, "files_dataset", no_data_files)
        assert rows_by_partition(s, T, WEEK) == {("reward-v2", d2): 2, ("reward-v2", d3): 2}
        assert rows_by_partition(s, T, "date >= '2026-11-04'") == {}
        assert rows_by_partition(s, T, "true") == {("reward-v1", d2): 1, ("reward-v2", d2): 2, ("reward-v2", d3): 2}
    assert rows_by_partition(s, T, "episode_id = 'e1'") == {("reward-v1", d2): 1, ("reward-v2", d2): 1}
    assert jobs.tables.rows_in_window(s, T, WEEK) == 4


@pytest.mark.integration
def test_a_rerun_missing_one_days_silver_keeps_that_days_scores(spark, lake_settings):
    """The real heuristics job: two days published, then one day's silver deleted. The rerun over both days computes
    rows for the other day only: refused, nothing written, both days' scores kept; with the override the day
    without input is emptied and the other replaced."""
    from datetime import date, datetime, timedelta, timezone

    from jobs import heuristics
    from jobs.tables import rows_by_partition
    from lake.tables import open_table
    from quality.errors import EmptyDaysRefused
    from schemas.reward import load_reward_spec
    from schemas.tables import GOLD_EPISODE_SCORES, GOLD_STEP_SIGNALS, SILVER_EPISODES, SILVER_STEPS
    from tests.jobs.test_heuristics import episode, step

    spec = load_reward_spec("reward-v2")
    s = lake_settings.model_copy(update={"state_dir": lake_settings.lake.parent / "state"})
    d2, d3, end = date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)
    steps, episodes = [], []
    for task, day in (("t1", d2), ("t2", d2), ("t3", d3)):
        t0 = datetime(day.year, day.month, day.day, 9, tzinfo=timezone.utc)
        steps += [step(task, i, "accepted", proposed_at=t0 + timedelta(minutes=i), closed_at=t0, date=day)
                  for i in range(2)]
        episodes.append(episode(task, "completed", started_at=t0, ended_at=t0 + timedelta(seconds=60), n_steps=2,
                                accepted=2, closed_at=t0, date=day))
    plant(s, SILVER_STEPS, *steps)
    plant(s, SILVER_EPISODES, *episodes)
    window = f"date >= '{d2}' AND date < '{end}' AND reward_version = '{spec.version}'"
    heuristics.run(spark, s, d2, end, spec=spec)
    gold = (GOLD_STEP_SIGNALS, GOLD_EPISODE_SCORES)

    def published():
        return {t.id: (open_table(s, t).version(), rows_by_partition(s, t, window)) for t in gold}

    before = published()
    assert before["gold/episode_scores"][1] == {("reward-v2", d2): 2, ("reward-v2", d3): 1}
    assert before["gold/step_signals"][1] == {("reward-v2", d2): 4, ("reward-v2", d3): 2}

    for t in (SILVER_STEPS, SILVER_EPISODES):
        open_table(s, t).delete(f"date = '{d3}'")
    with pytest.raises(EmptyDaysRefused) as refused:
        heuristics.run(spark, s, d2, end, spec=spec)
    assert str(refused.value).startswith(
        f"gold/step_signals: the run computed rows for its window ({window}) but none for 1 date partition of it "
        "that holds published rows: 2026-11-03 (2 rows); publishing would delete those 2 rows")
    assert "silver/steps, silver/episodes hold rows for those days" in str(refused.value)
    assert published() == before  # neither table written

    out = heuristics.run(spark, s.model_copy(update={"job_allow_empty": True}), d2, end, spec=spec)
    assert [(p.table, p.rows, p.version) for p in out] == [
        ("gold/step_signals", 4, before["gold/step_signals"][0] + 1),
        ("gold/episode_scores", 2, before["gold/episode_scores"][0] + 1)]
    assert out[1].note == ("the 1 published rows of 1 date partition with no rows computed deleted: "
                           "2026-11-03 (1 rows) (--allow-empty)")
    assert rows_by_partition(s, GOLD_EPISODE_SCORES, window) == {("reward-v2", d2): 2}
    assert rows_by_partition(s, GOLD_STEP_SIGNALS, window) == {("reward-v2", d2): 4}
