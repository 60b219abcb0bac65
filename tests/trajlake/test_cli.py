"""The CLI: every command has --help; user mistakes give one line naming the problem and the fix, never a traceback."""
import subprocess
import sys

import pytest

from tests.conftest import REPO, free_port, settings_env

COMMANDS = [[], ["up"], ["down"], ["status"], ["worker"], ["query"], ["demo"], ["schedule"], ["replay"], ["replay", "tau-bench"],
            ["replay", "synthetic"], ["compact"], ["vacuum"], ["scrub"], ["erase"], ["export"],
            ["quality"], ["quality", "check"], ["collect"], ["reconcile"]]


def run(args, env=None):
    return subprocess.run([sys.executable, "-m", "trajlake.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


@pytest.mark.unit
@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "root")
def test_every_command_has_help(args):
    r = run([*args, "--help"])
    assert r.returncode == 0 and "Usage" in r.stdout


def assert_clean_error(r, *needles):
    """One line naming the problem and the fix (rich wraps long lines: compared with whitespace collapsed)."""
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    said = " ".join(r.stderr.split())
    for n in needles:
        assert n in said, said


@pytest.mark.unit
def test_bad_setting_names_the_variable(base_settings):
    env = settings_env(base_settings) | {"TRAJLAKE_KAFKA_PORT": "ninety"}
    assert_clean_error(run(["status"], env), "TRAJLAKE_KAFKA_PORT")


@pytest.mark.unit
def test_no_broker_says_how_to_start_one(base_settings, tmp_path):
    env = settings_env(base_settings.model_copy(update={"kafka_port": free_port(), "state_dir": tmp_path}))
    assert_clean_error(run(["replay", "tau-bench", "--limit", "1"], env), "trajlake up")


@pytest.mark.unit
def test_missing_input_file(base_settings):
    assert_clean_error(run(["replay", "tau-bench", "--file", "/nope.json"], settings_env(base_settings)),
                        "/nope.json", "--file")


@pytest.mark.unit
def test_query_errors_are_one_line(base_settings, tmp_path):
    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path}))
    # a mistyped lake root read as empty tables: the count printed 0 and the command exited 0
    assert_clean_error(run(["query", "SELECT count(*) FROM silver_episodes"], env), "no lake at", "TRAJLAKE_LAKE_ROOT")
    (tmp_path / "lake").mkdir()
    assert_clean_error(run(["query", "SELECT * FROM nope"], env), "DuckDB")
    assert_clean_error(run(["query", "SELECT 1", "--as-of", "bronze/events"], env), "TABLE=VERSION")
    assert_clean_error(run(["query", "SELECT 1", "--as-of", "gold/x=1"], env), "unknown table")


@pytest.mark.unit
def test_query_errors_while_fetching_and_a_directory_for_out_are_one_line(base_settings, tmp_path):
    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path}))
    (tmp_path / "lake").mkdir()  # `query` refuses a lake that does not exist
    # raised as the rows are fetched, after the query was planned
    assert_clean_error(run(["query", "SELECT cast('abc' AS INT)"], env), "DuckDB", "Conversion")
    out = tmp_path / "x.csv"
    assert_clean_error(run(["query", "SELECT cast('abc' AS INT)", "--format", "csv", "--out", str(out)], env), "DuckDB")
    assert not out.exists()  # no empty file that looks like a result
    assert_clean_error(run(["query", "SELECT 1", "--format", "json", "--out", str(tmp_path)], env), "is a directory")


@pytest.mark.unit
def test_text_with_brackets_prints_as_itself(base_settings, tmp_path):
    """Values and messages are not Rich markup: "[/]" crashed the table, "[b]…[/b]" and "[x]" vanished."""
    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path}))
    (tmp_path / "lake").mkdir()  # `query` refuses a lake that does not exist
    r = run(["query", "SELECT '[b]x[/b] [link](http://x) [x]' AS s, 'closing [/] here' AS t"], env)
    assert r.returncode == 0, r.stderr
    assert "[b]x[/b] [link](http://x) [x]" in r.stdout and "closing [/] here" in r.stdout
    assert_clean_error(run(["query", "SELECT 1", "--as-of", "[/]=1"], env), "[/]")


@pytest.mark.unit
def test_settings_that_are_not_json_or_not_settings_are_named(base_settings, tmp_path):
    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path}))
    (tmp_path / "lake").mkdir()  # `query` refuses a lake that does not exist
    assert_clean_error(run(["status"], env | {"TRAJLAKE_SPARK_CONF": "not json"}),
                       "TRAJLAKE_SPARK_CONF is not valid JSON", "spark.driver.memory")
    assert_clean_error(run(["status"], env | {"TRAJLAKE_KAFKA_BOOTSTRAP": "garbage"}),
                       "TRAJLAKE_KAFKA_BOOTSTRAP", "HOST:PORT")
    r = run(["query", "SELECT 1"], env | {"TRAJLAKE_PARTITIONS": "abc"})
    assert r.returncode == 0 and "TRAJLAKE_PARTITIONS is not a trajlake setting" in " ".join(r.stderr.split())
    assert "did you mean TRAJLAKE_TOPIC_PARTITIONS?" in " ".join(r.stderr.split())


@pytest.mark.unit
def test_an_external_broker_that_does_not_answer_is_not_told_to_start(base_settings, tmp_path):
    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path}))
    r = run(["replay", "synthetic", "--events", "5"], env | {"TRAJLAKE_KAFKA_BOOTSTRAP": "nohost.invalid:9092"})
    assert_clean_error(r, "nohost.invalid:9092", "check TRAJLAKE_KAFKA_BOOTSTRAP")


@pytest.mark.unit
def test_export_selects_by_the_pinned_reward_version(base_settings, tmp_path):
    """TRAJLAKE_REWARD_VERSION pins the export's spec as --reward-version does (a scheduled export relies on it);
    reward-v1 has no export policy, so both refuse it the same way."""
    (tmp_path / "lake").mkdir()
    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path, "lake_root": tmp_path / "lake"}))
    args = ["export", "w", "--since", "2026-11-02", "--until", "2026-11-09"]
    assert_clean_error(run([*args, "--reward-version", "reward-v1"], env), "reward-v1 has no [exports] policy")
    assert_clean_error(run(args, env | {"TRAJLAKE_REWARD_VERSION": "reward-v1"}), "reward-v1 has no [exports] policy")


@pytest.mark.unit
def test_a_lake_that_does_not_exist_is_named_not_checked(base_settings, tmp_path):
    """A mistyped TRAJLAKE_LAKE_ROOT made `quality check` pass every suite on 0 rows, and `export` create the
    mistyped lake's directories; a path the machine refuses was a traceback."""
    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path, "lake_root": tmp_path / "typo"}))
    assert_clean_error(run(["quality", "check"], env), "no lake at", "TRAJLAKE_LAKE_ROOT")
    assert_clean_error(run(["export", "w", "--since", "2026-11-02", "--until", "2026-11-09"], env), "no lake at")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "in.jsonl").write_text("{}\n")
    assert_clean_error(run(["scrub", "--in", str(tmp_path), "--out", str(tmp_path / "o.jsonl")], env), "is a directory")
    assert_clean_error(run(["scrub", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "no" / "o.jsonl")],
                           env), "does not exist; create it first")


@pytest.mark.unit
def test_typo_in_option_is_explained():
    r = run(["replay", "tau-bench", "--limt", "3"])
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--limt" in r.stderr


@pytest.mark.integration
def test_query_answers_on_a_filled_lake(kafka, tmp_path):
    """`trajlake query` over bronze tables written by the sink's writer."""
    import orjson

    from streams.ingest import SourceRecord, clean_record
    from streams.sink import BRONZE_TARGETS, DeltaSinkWriter, Record
    from schemas.contract import CONTRACT_DIR

    s = kafka.model_copy(update={"state_dir": tmp_path})
    ev = orjson.loads((CONTRACT_DIR / "examples/valid/feedback.json").read_bytes())
    value = clean_record(ev, SourceRecord("tl.frontend.raw", 0, 0, None, b""), "2026-11-02T08:00:00+00:00",
                         "privacy-1")
    DeltaSinkWriter(s, BRONZE_TARGETS["events.clean"], "g").commit([Record("tl.events.clean", 0, 0, value)])
    r = run(["query", "SELECT event_type, count(*) n FROM bronze_events GROUP BY 1", "--format", "csv"],
            settings_env(s))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["event_type,n", "feedback,1"]


@pytest.mark.integration
def test_status_shows_broker_topics_lag_and_tables(kafka, tmp_path):
    r = run(["status"], settings_env(kafka.model_copy(update={"state_dir": tmp_path})))
    assert r.returncode == 0, r.stderr
    assert "up" in r.stdout and kafka.topic("events.clean") in r.stdout and "silver/episodes" in r.stdout
    assert "none running" in r.stdout  # no worker in the group


@pytest.mark.integration
def test_status_reports_a_caught_up_worker_as_json(tau_lake):
    """After the worker drained the τ-bench replay: each table's version and row count as the lake has them,
    every partition read to its end by the worker's group, and each sink table's Delta commits at the end of
    its topic."""
    import orjson

    from lake.readers import table_dataset
    from lake.tables import open_table
    from schemas.tables import TABLES

    s, _, events = tau_lake
    r = run(["status", "--json"], settings_env(s))
    assert r.returncode == 0, r.stderr
    report = orjson.loads(r.stdout)
    assert report["broker"]["up"] and report["group"] == s.worker_id and report["sink_group"] == s.sink_group
    assert report["workers"]["members"] == []  # the worker has stopped: no member reads any partition
    topics = {t["topic"]: t for t in report["topics"]}
    assert sum(topics[s.topic(name)]["messages"] for name in ("frontend.raw", "agent.raw")) == len(events)
    assert {lag for t in topics.values() for lags in t["lag"].values() for lag in lags.values()} == {0}, topics
    readers = {name: set(topics[s.topic(name)]["lag"]) for name in ("frontend.raw", "events.clean", "steps")}
    assert readers == {"frontend.raw": {s.worker_id}, "events.clean": {s.worker_id, s.sink_group},
                       "steps": {s.sink_group}}
    tables = {t["table"]: t for t in report["tables"]}
    for tid, spec in TABLES.items():
        dt = open_table(s, spec)
        expected = (None, None) if dt is None else (dt.version(), table_dataset(s, spec).count_rows())
        assert (tables[tid]["version"], tables[tid]["rows"]) == expected, tid
    assert tables["bronze/events"]["rows"] == len(events)
    for tid in ("bronze/events", "silver/steps", "silver/episodes"):
        assert tables[tid]["source_topic"] == s.topic({"bronze/events": "events.clean"}.get(tid, tid.split("/")[1]))
        assert set(tables[tid]["behind_in_delta"].values()) == {0}, tables[tid]


@pytest.mark.integration
def test_replay_synthetic_sends_n_events_and_writes_the_planted_parameters(kafka, tmp_path):
    import uuid

    import orjson
    from kafka import KafkaConsumer, TopicPartition

    from infra.kafka import broker

    tag = uuid.uuid4().hex[:6]
    s = kafka.model_copy(update={"topic_prefix": f"y{tag}.", "state_dir": tmp_path})
    broker.ensure_topics(s)
    r = run(["replay", "synthetic", "--events", "700", "--seed", "5"], settings_env(s))
    assert r.returncode == 0, r.stderr
    planted = orjson.loads((s.lake / "_sources" / "synthetic-seed5.json").read_bytes())
    assert planted["seed"] == 5 and len(planted["segments"]) == 12
    c = KafkaConsumer(bootstrap_servers=s.bootstrap)
    try:
        tps = [TopicPartition(s.topic(t), p) for t in ("frontend.raw", "agent.raw") for p in range(s.topic_partitions)]
        assert sum(c.end_offsets(tps).values()) == 700
    finally:
        c.close()


@pytest.mark.unit
def test_compact_names_an_unknown_table(base_settings, tmp_path):
    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path}))
    assert_clean_error(run(["compact", "--table", "gold/nope"], env), "--table")
    (tmp_path / "lake").mkdir()  # one that does not exist is named (tests/trajlake/test_cli_mistakes.py)
    r = run(["compact"], env)  # an empty lake: nothing to do, no error
    assert r.returncode == 0, r.stderr


@pytest.mark.unit
def test_vacuum_names_an_unknown_table(base_settings, tmp_path):
    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path}))
    assert_clean_error(run(["vacuum", "--table", "gold/nope"], env), "--table")
    (tmp_path / "lake").mkdir()  # one that does not exist is named (tests/trajlake/test_cli_mistakes.py)
    r = run(["vacuum", "--dry-run"], env)  # an empty lake: nothing to do, no error
    assert r.returncode == 0 and "gold/step_signals: would delete 0 files" in r.stdout, r.stderr


@pytest.mark.unit
def test_scrub_a_file_offline(base_settings, tmp_path):
    import json

    from schemas.contract import CONTRACT_DIR

    good = json.loads((CONTRACT_DIR / "examples/valid/user_message.json").read_text())
    good["body"]["text"] = "Reach me at mia.li3818@example.com, card ending in 7447, about Project Falcon"
    src = tmp_path / "events.jsonl"
    src.write_text(json.dumps(good) + "\n" + "{broken\n")
    out = tmp_path / "clean.jsonl"
    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path})) | {
        "TRAJLAKE_SCRUB_DENY_TERMS": '["project falcon"]'}
    r = run(["scrub", "--in", str(src), "--out", str(out), "--no-ner"], env)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "mia.li3818@example.com" not in text and "7447" not in text and good["user_id"] not in text
    assert "Falcon" not in text  # the deny-list from settings
    assert len(text.splitlines()) == 1
    assert json.loads((tmp_path / "clean.jsonl.rejects.jsonl").read_text())["reason"] == "invalid_json"
    assert_clean_error(run(["scrub", "--in", str(tmp_path / "nope.jsonl"), "--out", str(out)], env), "--in")


@pytest.mark.unit
def test_a_refused_publish_is_a_clean_error():
    """A job's pre-publish refusal (nulls, repeated keys) reaches the user as one line, not a traceback."""
    code = ("import trajlake.cli as c; from quality.errors import PublishRefused\n"
            "def boom(): raise PublishRefused('gold.episode_scores: nulls in NOT NULL columns [\\'composite\\']; "
            "nothing was published')\n"
            "c.app = boom; c.main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert_clean_error(r, "gold.episode_scores: nulls in NOT NULL columns", "nothing was published")


@pytest.mark.unit
def test_a_members_assignment_is_read_in_any_protocol_version():
    import struct

    from trajlake.cli import _assigned_partitions

    def assignment(version: int, topics: dict[str, list[int]]) -> bytes:
        out = struct.pack(">hi", version, len(topics))
        for topic, parts in topics.items():
            out += struct.pack(">h", len(topic)) + topic.encode() + struct.pack(f">i{len(parts)}i", len(parts), *parts)
        return out + struct.pack(">i", 3) + b"xyz"  # user data (Faust's, compressed)

    topics = {"tl.agent.raw": [1, 2], "tl.deadletter": [0], "w-join-state-changelog": []}
    for version in (0, 3, 4):
        assert _assigned_partitions(assignment(version, topics)) == topics
    assert _assigned_partitions(b"") == {}
