"""Table schemas are declared once in Arrow; the Spark form derived from them matches what Spark reads from Delta."""
import pyarrow as pa
import pytest

from schemas.tables import TABLES, spark_ddl


def _names(typ: pa.DataType) -> int:
    """Field names a type's DDL quotes: a struct's fields, also inside lists."""
    if pa.types.is_list(typ):
        return _names(typ.value_type)
    if pa.types.is_struct(typ):
        return sum(1 + _names(f.type) for f in typ)
    return 0


@pytest.mark.unit
def test_ddl_of_every_table_is_derivable():
    for spec in TABLES.values():
        ddl = spark_ddl(spec.schema)
        assert ddl.count("`") == 2 * sum(1 + _names(f.type) for f in spec.schema)
        assert set(spec.partition_by) <= set(spec.schema.names)
        assert set(spec.keys) <= set(spec.schema.names)


@pytest.mark.unit
def test_unknown_arrow_type_is_refused():
    with pytest.raises(TypeError, match="no Spark type"):
        spark_ddl(pa.schema([pa.field("x", pa.dictionary(pa.int8(), pa.string()))]))


@pytest.mark.integration
@pytest.mark.parametrize("table_id", sorted(TABLES))
def test_spark_reads_the_declared_schema(spark, lake_settings, table_id):
    """delta-rs creates the table from the Arrow schema; Spark + delta-spark reads the same columns and types."""
    from pyspark.sql.types import StructType

    from lake.tables import ensure_table, table_path

    spec = TABLES[table_id]
    ensure_table(lake_settings, spec)
    read = spark.read.format("delta").load(str(table_path(lake_settings, spec))).schema
    declared = StructType.fromDDL(spark_ddl(spec.schema))
    assert [(f.name, f.dataType) for f in read] == [(f.name, f.dataType) for f in declared]


@pytest.mark.unit
def test_stream_tables_are_the_sinks_tables():
    from schemas.tables import STREAM_TABLES
    from streams.sink import SINK_TARGETS

    assert {t.spec for t in SINK_TARGETS.values()} == set(STREAM_TABLES)
