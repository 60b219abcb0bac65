"""CLI mistakes found in review (2026-12-08), each one line naming the problem and the fix, exit 2, nothing lost."""
import pytest

from tests.conftest import settings_env
from tests.trajlake.test_cli import assert_clean_error, run

pytestmark = pytest.mark.unit


@pytest.fixture
def env(base_settings, tmp_path):
    # wide enough that Rich does not wrap a path inside a word
    return settings_env(base_settings.model_copy(update={"state_dir": tmp_path})) | {"COLUMNS": "400"}


def a_lake(base_settings, tmp_path):
    """A lake with one (empty) table."""
    from lake.tables import ensure_table
    from schemas.tables import BRONZE_EVENTS, SILVER_STEPS

    s = base_settings.model_copy(update={"state_dir": tmp_path})
    ensure_table(s, BRONZE_EVENTS)
    ensure_table(s, SILVER_STEPS)
    return s


def test_scrub_never_writes_its_rejects_over_its_input_or_output(env, tmp_path):
    """`--rejects` naming --in emptied the input on open and deleted it for having no rejects."""
    events = tmp_path / "ev.jsonl"
    events.write_text('{"not": "an event"}\n')
    for rejects in (events, tmp_path / "o.jsonl"):
        assert_clean_error(run(["scrub", "--in", str(events), "--out", str(tmp_path / "o.jsonl"), "--rejects",
                                str(rejects), "--no-ner"], env), "is the same file as", "--rejects")
    assert events.read_text() == '{"not": "an event"}\n'
    # a file of no events at all is not "0 events scrubbed"
    assert_clean_error(run(["scrub", "--in", str(events), "--out", str(tmp_path / "o.jsonl"), "--no-ner"], env),
                       "no line of", "is a contract event", "o.jsonl.rejects.jsonl")


@pytest.mark.parametrize("name", ["TRAJLAKE_KAFKA_PORT", "TRAJLAKE_KAFKA_CONTROLLER_PORT", "TRAJLAKE_COLLECTOR_PORT"])
def test_a_port_out_of_range_is_a_setting_error(env, name):
    assert_clean_error(run(["status"], env | {name: "99999"}), name, "65535")


def test_empty_paths_and_json_items_are_named(env):
    assert_clean_error(run(["status"], env | {"TRAJLAKE_LAKE_ROOT": ""}), "TRAJLAKE_LAKE_ROOT", "is empty")
    assert_clean_error(run(["status"], env | {"TRAJLAKE_SPARK_CONF": '{"a": 1}'}), "TRAJLAKE_SPARK_CONF['a']")


def test_a_spark_that_does_not_start_names_its_settings(base_settings, tmp_path, env):
    a_lake(base_settings, tmp_path)
    assert_clean_error(run(["jobs", "run", "heuristics", "--start", "2026-11-02", "--end", "2026-11-03"],
                           env | {"TRAJLAKE_SPARK_MASTER": "bogus"}), "Spark did not start", "TRAJLAKE_SPARK_MASTER")


def test_a_file_that_is_not_tau_bench_is_named_before_the_broker(env, tmp_path):
    lines, other = tmp_path / "x.jsonl", tmp_path / "l.json"
    lines.write_text('{"a": 1}\n{"b": 2}\n')
    other.write_text("[1, 2]")
    for f in (lines, other):
        assert_clean_error(run(["replay", "tau-bench", "--file", str(f)], env), "is not a τ-bench results file",
                           "gpt-4o-airline.json")


def test_a_damaged_table_is_named_and_the_others_still_shown(base_settings, tmp_path, env):
    s = a_lake(base_settings, tmp_path)
    (s.lake / "silver/steps/_delta_log/00000000000000000001.json").write_text("{bad")
    r = run(["status"], env)
    assert_clean_error(r, "silver/steps could not be read", "restore it from a backup")
    assert "bronze/events" in r.stdout and "unreadable" in r.stdout
    r = run(["status", "--json"], env)   # scripts get the table's error and the exit status too
    assert r.returncode == 2 and '"error"' in r.stdout and "Traceback" not in r.stderr
    assert_clean_error(run(["erase", "--user", "bob", "--dry-run"], env), "a Delta table could not be read",
                       "_delta_log")


def test_a_lake_without_tables_or_none_at_all_is_not_reported_as_done(env, tmp_path):
    for args in (["compact"], ["vacuum"]):
        assert_clean_error(run(args, env), "no lake at")
    (tmp_path / "lake").mkdir()   # an empty lake: compact and vacuum have nothing to do; these say it is empty
    for args in (["quality", "check"], ["migrate"]):
        assert_clean_error(run(args, env), "has no tables yet", "TRAJLAKE_LAKE_ROOT")


def test_a_host_that_is_not_this_machines_is_not_called_a_busy_port(env):
    assert_clean_error(run(["up"], env | {"TRAJLAKE_KAFKA_HOST": "kafka.nosuch.invalid"}),
                       "kafka.nosuch.invalid is not a host name", "TRAJLAKE_KAFKA_HOST")


def test_duckdb_keeps_its_own_hint(base_settings, tmp_path, env):
    a_lake(base_settings, tmp_path)
    assert_clean_error(run(["query", "SELECT count(*) FROM silver_stepz"], env), 'Did you mean "silver_steps"?')


def test_options_that_would_be_ignored_are_refused(env, tmp_path):
    for args, said in ((["schedule", "--list", "--once"], "--list only shows"),
                       (["schedule", "--history", "5", "--dry-run"], "--history only shows"),
                       (["schedule", "--force"], "add --once"),
                       (["export", "w", "--since", "2026-11-02", "--until", "2026-11-03", "--out", str(tmp_path)],
                        "drop --out"),
                       (["export", "w", "--from-manifest", str(tmp_path / "m.json")], "drop NAME"),
                       (["export", "--from-manifest", str(tmp_path / "m.json"), "--format", "sft"], "drop --format")):
        assert_clean_error(run(args, env), said)


@pytest.mark.parametrize("manifest, said", [("[1]", "is not a trajlake export manifest"),
                                            ('{"trajlake_manifest": 1}', "missing or malformed: name, request")])
def test_a_manifest_of_the_wrong_shape_is_named(base_settings, tmp_path, env, manifest, said):
    a_lake(base_settings, tmp_path)
    m = tmp_path / "manifest.json"
    m.write_text(manifest)
    assert_clean_error(run(["export", "--from-manifest", str(m)], env), said)


def test_reconcile_takes_a_window_and_says_what_it_wrote(base_settings, tmp_path, env):
    assert_clean_error(run(["reconcile", "--start", "2026-11-03", "--end", "2026-11-02"], env), "must be after")
    assert_clean_error(run(["reconcile", "--start", "2026-11-02", "--end", "2026-11-03"], env), "no lake at")
    a_lake(base_settings, tmp_path)
    r = run(["reconcile", "--start", "2026-11-02", "--end", "2026-11-03"], env)
    assert r.returncode == 0 and "wrote 0 step and 0 episode row(s)" in r.stdout, r.stdout + r.stderr
