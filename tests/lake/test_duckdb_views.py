"""DuckDB's views of the lake: DuckDB's own parquet reader where a table's files alone hold its rows, the pyarrow
dataset otherwise; both give the same rows and types."""
import datetime as dt

import duckdb
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lake.duckdb_views import connect, native_view_sql, view_name
from lake.readers import table_dataset
from lake.tables import table_path
from schemas.tables import BRONZE_EVENTS, TableSpec

pytestmark = pytest.mark.component

THINGS = TableSpec("test", "things", pa.schema([
    ("id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("n", pa.int64()), ("tags", pa.list_(pa.string())),
    ("score", pa.float64()), ("kind", pa.string()), ("date", pa.date32())]), ("kind", "date"), ("id",), "a test table")
D1, D2 = dt.date(2026, 11, 2), dt.date(2026, 11, 3)


def _rows(ids, kind="a", date=D1, **extra):
    return [{"id": f"x{i}", "ts": dt.datetime(2026, 11, 2, 10, i, tzinfo=dt.timezone.utc), "n": i, "tags": ["t", str(i)],
             "score": i / 3, "kind": kind, "date": date, **extra} for i in ids]


def _write(settings, rows, spec=THINGS):
    write_deltalake(str(table_path(settings, spec)), pa.Table.from_pylist(rows, spec.schema), mode="append",
                    partition_by=list(spec.partition_by))


def _both(con, settings, version=None, spec=THINGS):
    sql = native_view_sql(con, settings, spec, version)
    assert sql is not None
    native = con.sql(f"SELECT * FROM ({sql}) ORDER BY id")
    con.register("via_dataset", table_dataset(settings, spec, version))
    arrow = con.sql("SELECT * FROM via_dataset ORDER BY id")
    return native, arrow


def test_the_native_view_reads_what_the_pyarrow_dataset_reads(lake_settings):
    _write(lake_settings, _rows(range(3)))
    _write(lake_settings, _rows(range(3, 6), kind="b", date=D2) + [{**_rows([6])[0], "n": None, "tags": None}])
    con = duckdb.connect()
    for version in (None, 0):
        native, arrow = _both(con, lake_settings, version)
        assert native.columns == arrow.columns == THINGS.schema.names
        assert native.types == arrow.types
        assert native.fetchall() == arrow.fetchall()
    sql = native_view_sql(con, lake_settings, THINGS, None)
    # partition columns filter like any other
    assert con.sql(f"SELECT count(*) FROM ({sql}) WHERE date = DATE '2026-11-03' AND kind = 'b'").fetchall() == [(3,)]


def test_files_written_before_a_column_existed_read_it_as_null(lake_settings):
    older = TableSpec("test", "things", pa.schema([f for f in THINGS.schema if f.name != "score"]),
                      THINGS.partition_by, THINGS.keys, "")
    _write(lake_settings, [{k: v for k, v in r.items() if k != "score"} for r in _rows(range(2))], older)
    con = duckdb.connect()
    native, arrow = _both(con, lake_settings)
    assert native.types == arrow.types and native.fetchall() == arrow.fetchall()
    assert con.sql(f"SELECT count(*) FROM ({native_view_sql(con, lake_settings, THINGS, None)}) "
                   "WHERE score IS NULL").fetchall() == [(2,)]


@pytest.mark.parametrize("kind", ["a/b", "50%", "a b=c", "x[1]*"])
def test_partition_values_the_paths_encode_are_read_through_the_dataset(lake_settings, kind):
    _write(lake_settings, _rows(range(2), kind=kind))
    con = duckdb.connect()
    sql = native_view_sql(con, lake_settings, THINGS, None)
    con.register("via_dataset", table_dataset(lake_settings, THINGS))
    expected = con.sql("SELECT kind, count(*) FROM via_dataset GROUP BY kind").fetchall()
    assert expected == [(kind, 2)]
    assert sql is None   # delta-rs URL-encodes each of these in the path: the dataset decodes them, DuckDB would not


def test_a_table_not_written_yet_is_an_empty_view(lake_settings):
    con = duckdb.connect()
    assert native_view_sql(con, lake_settings, BRONZE_EVENTS, None) is None
    connect(lake_settings, con=con)
    assert con.sql(f"SELECT count(*) FROM {view_name(BRONZE_EVENTS.id)}").fetchall() == [(0,)]


def test_connecting_twice_replaces_the_views(lake_settings):
    con = connect(lake_settings)
    assert native_view_sql(con, lake_settings, BRONZE_EVENTS, None) is None
    now = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)
    row = {f.name: None if f.nullable else {pa.string(): "x", pa.int64(): 0, pa.int32(): 0}.get(f.type, now)
           for f in BRONZE_EVENTS.schema}
    row.update(event_id="e1", event_type="task_started", date=D1)
    _write(lake_settings, [row], BRONZE_EVENTS)
    assert native_view_sql(con, lake_settings, BRONZE_EVENTS, None) is not None
    connect(lake_settings, con=con)   # bronze/events' view changes kind: the dataset's, then DuckDB's reader
    assert con.sql("SELECT event_id, date FROM bronze_events").fetchall() == [("e1", D1)]


def test_times_are_utc_whatever_the_connection_or_machine_zone(lake_settings):
    """The lake's days are UTC days: `ts::DATE` in the machine's zone disagreed with `date` (found in review)."""
    _write(lake_settings, [{**_rows([0])[0], "ts": dt.datetime(2026, 11, 2, 23, 30, tzinfo=dt.timezone.utc)}])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'America/New_York'")
    connect(lake_settings, con=con)
    assert con.sql("SELECT current_setting('TimeZone')").fetchall() == [("UTC",)]
    sql = native_view_sql(con, lake_settings, THINGS, None)
    assert con.sql(f"SELECT ts::DATE = date, date_trunc('day', ts)::DATE FROM ({sql})").fetchall() == [(True, D1)]


def test_a_table_with_column_mapping_is_refused_not_read_as_nulls(lake_settings):
    from deltalake import DeltaTable

    from lake.tables import UnreadableTable

    path = str(table_path(lake_settings, THINGS))
    DeltaTable.create(path, schema=THINGS.schema, partition_by=list(THINGS.partition_by),
                      configuration={"delta.columnMapping.mode": "name"})
    _write(lake_settings, _rows(range(2)))
    con = duckdb.connect()
    for read in (lambda: native_view_sql(con, lake_settings, THINGS, None),
                 lambda: table_dataset(lake_settings, THINGS)):
        with pytest.raises(UnreadableTable, match="columnMapping.*Rewrite the table"):
            read()


def test_pins_the_table_cannot_give_are_refused_with_the_cause(lake_settings):
    import os
    from urllib.parse import urlparse

    from deltalake import DeltaTable

    from lake.tables import UnreadableTable

    con = duckdb.connect()
    with pytest.raises(UnreadableTable, match="never been written"):
        native_view_sql(con, lake_settings, THINGS, 0)
    _write(lake_settings, _rows(range(2)))
    path = str(table_path(lake_settings, THINGS))
    write_deltalake(path, pa.Table.from_pylist(_rows(range(3)), THINGS.schema), mode="overwrite",
                    partition_by=list(THINGS.partition_by))
    with pytest.raises(UnreadableTable, match="no version 7 .its latest is 1"):
        native_view_sql(con, lake_settings, THINGS, 7)
    for uri in DeltaTable(path, version=0).file_uris():   # what a vacuum does to the files version 1 replaced
        os.remove(urlparse(uri).path)
    for read in (lambda: native_view_sql(con, lake_settings, THINGS, 0),
                 lambda: table_dataset(lake_settings, THINGS, 0)):
        with pytest.raises(UnreadableTable, match=r"version 0: 1 of its 1 files are gone .*latest is 1"):
            read()
    assert con.sql(f"SELECT count(*) FROM ({native_view_sql(con, lake_settings, THINGS, 1)})").fetchall() == [(3,)]
