"""`trajlake query --format parquet --out FILE`: DuckDB's result over a real Delta table written as a Parquet file."""
from datetime import datetime

import orjson
import pyarrow.parquet as pq
import pytest

from tests.conftest import settings_env
from tests.trajlake.test_cli import assert_clean_error, run


@pytest.fixture
def one_event_lake(base_settings, tmp_path):
    """A lake whose bronze/events holds one contract example, written by the stream sink's writer."""
    from schemas.contract import CONTRACT_DIR
    from streams.ingest import SourceRecord, clean_record
    from streams.sink import BRONZE_TARGETS, DeltaSinkWriter, Record

    s = base_settings.model_copy(update={"state_dir": tmp_path / "state"})
    ev = orjson.loads((CONTRACT_DIR / "examples/valid/feedback.json").read_bytes())
    value = clean_record(ev, SourceRecord("tl.frontend.raw", 0, 0, None, b""), "2026-11-02T08:00:00+00:00",
                         "privacy-1")
    DeltaSinkWriter(s, BRONZE_TARGETS["events.clean"], "g").commit([Record("tl.events.clean", 0, 0, value)])
    return s


@pytest.mark.component
def test_parquet_keeps_rows_and_types(one_event_lake, tmp_path):
    out = tmp_path / "events.parquet"
    r = run(["query", "SELECT event_id, event_type, ts, 2 AS n FROM bronze_events", "--format", "parquet",
             "--out", str(out)], settings_env(one_event_lake))
    assert r.returncode == 0, r.stderr
    t = pq.read_table(out)
    assert t.num_rows == 1 and t.column_names == ["event_id", "event_type", "ts", "n"]
    assert t.column("event_type").to_pylist() == ["feedback"]
    assert isinstance(t.column("ts")[0].as_py(), datetime)  # a timestamp, not its text
    assert str(out) in r.stderr and r.stdout == ""  # nothing on stdout: it can still be piped


@pytest.mark.component
def test_csv_and_json_can_go_to_a_file_too(one_event_lake, tmp_path):
    env = settings_env(one_event_lake)
    r = run(["query", "SELECT event_type FROM bronze_events", "--format", "csv", "--out", str(tmp_path / "e.csv")], env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "e.csv").read_text().splitlines() == ["event_type", "feedback"]
    r = run(["query", "SELECT event_type FROM bronze_events", "--format", "json", "--out", str(tmp_path / "e.json")],
            env)
    assert r.returncode == 0, r.stderr
    assert orjson.loads((tmp_path / "e.json").read_text()) == {"event_type": "feedback"}


@pytest.mark.unit
def test_parquet_without_out_and_other_mistakes_are_one_line(base_settings, tmp_path):
    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path}))
    assert_clean_error(run(["query", "SELECT 1", "--format", "parquet"], env), "--out FILE")
    assert_clean_error(run(["query", "SELECT 1", "--format", "xml"], env), "parquet")
    assert_clean_error(run(["query", "SELECT 1", "--out", str(tmp_path / "x.txt")], env), "--format csv")
    assert_clean_error(run(["query", "SELECT 1", "--format", "parquet", "--out", str(tmp_path / "no" / "x.parquet")],
                            env), "create it first")
    assert not (tmp_path / "no").exists()


@pytest.mark.unit
def test_bytes_decimals_lists_and_structs_come_out_as_data_and_long_values_whole(base_settings, tmp_path):
    """Found in review: JSON gave bytes as "b'…'" and decimals as strings, CSV Python reprs of lists and structs,
    and the table cut long values (an id could not be copied out of it)."""
    import base64
    import csv
    import io

    env = settings_env(base_settings.model_copy(update={"state_dir": tmp_path}))
    (tmp_path / "lake").mkdir()
    sql = "SELECT 'a\"b'::BLOB AS b, 1.50::DECIMAL(4,2) AS d, ['x', 'y'] AS l, {'k': 'v'} AS st"
    r = run(["query", sql, "--format", "json"], env)
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout) == {"b": base64.b64encode(b'a"b').decode(), "d": 1.5, "l": ["x", "y"],
                                      "st": {"k": "v"}}
    r = run(["query", sql, "--format", "csv"], env)
    assert r.returncode == 0, r.stderr
    header, row = list(csv.reader(io.StringIO(r.stdout)))
    assert row == [base64.b64encode(b'a"b').decode(), "1.50", '["x","y"]', '{"k":"v"}']
    long_id = "s-" + "0123456789abcdef" * 8
    r = run(["query", f"SELECT '{long_id}' AS step_id"], env)
    assert r.returncode == 0, r.stderr
    assert long_id in "".join(ch for ch in r.stdout if ch.isalnum() or ch == "-")
