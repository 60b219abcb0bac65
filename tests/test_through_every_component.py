"""Once through every real component: Kafka (kafka-python) → delta-rs → Spark + DuckDB, and Spark → delta-rs + DuckDB."""
import uuid

import pyarrow as pa
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

pytestmark = pytest.mark.integration


def test_kafka_to_delta_rs_to_spark_and_duckdb(kafka, spark, lake_settings):
    import duckdb
    from deltalake import DeltaTable, write_deltalake

    topic = f"it-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    admin.create_topics([NewTopic(topic, 2, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=True)
    for i in range(100):
        producer.send(topic, key=f"s{i % 7}".encode(), value=f'{{"n": {i}}}'.encode())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest",
                             group_id=f"g-{topic}", consumer_timeout_ms=10_000)
    got = [(m.partition, m.offset, m.key.decode(), m.value.decode()) for m in consumer]
    consumer.close()
    assert len(got) == 100

    path = str(lake_settings.lake / "it" / "from_kafka")
    write_deltalake(path, pa.table({"partition": [g[0] for g in got], "offset": [g[1] for g in got],
                                    "key": [g[2] for g in got], "value": [g[3] for g in got]}), mode="overwrite")
    df = spark.read.format("delta").load(path)
    assert df.count() == 100
    assert df.select("key").distinct().count() == 7
    dataset = DeltaTable(path).file_uris()
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet({dataset!r})").fetchall()[0][0]
    assert n == 100


def test_spark_writes_delta_that_delta_rs_and_duckdb_read(spark, lake_settings):
    import duckdb
    from deltalake import DeltaTable

    path = str(lake_settings.lake / "it" / "from_spark")
    spark.range(1000).selectExpr("id", "id % 10 AS bucket", "current_date() AS date") \
        .write.format("delta").partitionBy("date").mode("overwrite").save(path)
    dt = DeltaTable(path)
    assert dt.metadata().partition_columns == ["date"]
    assert not (dt.protocol().reader_features or [])  # plain protocol: readable by every delta-rs
    assert dt.to_pyarrow_table(columns=["bucket"]).num_rows == 1000
    files = dt.file_uris()
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT bucket) FROM read_parquet({files!r}, hive_partitioning=true)"
                      ).fetchall() == [(1000, 10)]
