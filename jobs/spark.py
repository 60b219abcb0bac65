"""The Spark session factory: local[*] by default, Delta through Ivy, everything overridable for a cluster."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # only annotations: the Airflow DAG renders spark-submit's options from LOCAL_DEFAULTS in a venv
    from schemas.settings import Settings  # without pydantic-settings

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

LOCAL_DEFAULTS = {
    # a laptop-sized cluster: few shuffle partitions, few snapshot partitions, UTC everywhere
    "spark.sql.shuffle.partitions": "4",
    # adaptive execution plans each shuffle as its own job: on tables this size that is overhead, not savings
    # (the 1M jobs benchmark ran 50.5 and 50.3 s without it against 54.3 and 56.7 s with it, bench/RESULTS.md).
    # On a cluster with skewed or large data, turn it back on in TRAJLAKE_SPARK_CONF.
    "spark.sql.adaptive.enabled": "false",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    # local mode runs the tasks in the driver, and each publish collects its table there for the quality gate
    # (Arrow, then pandas for Great Expectations): at 10M events (1.87M step rows) 2g ran out of heap in the
    # heuristics job, 6g passes (bench/RESULTS.md). A heap limit, not an allocation: the JVM takes what it uses.
    "spark.driver.memory": "6g",
    # the throughput collector: batch jobs want work done, not short pauses, and G1's write barriers tax the row
    # copies the windows and the cache are made of. A jobs round at 10M events, four warm runs each: 63.2-67.3 s
    # against 66.7-71.5 s with G1 (bench/RESULTS.md). A JVM option, so it applies when build_spark starts the
    # JVM; under spark-submit pass it on the command line.
    "spark.driver.extraJavaOptions": "-XX:+UseParallelGC",
    # the jobs cache what they read twice (the heuristics' step signals and episode scores, the scorecards' gold
    # rows and day sums) for one job only: encoding the columns on the way in cost more than the memory saved.
    # The heuristics job at 10M events took 0.89x the time without it (bench/spark_conf_ab.py, bench/RESULTS.md);
    # a cache that outgrows memory spills to disk either way.
    "spark.sql.inMemoryColumnarStorage.compressed": "false",
    # the classes whole-stage codegen compiles, kept for reuse: a scorecards run alone compiles ~185 and a
    # heuristics run ~100, so at Spark's default of 100 each run evicted the other's (and its own) and compiled
    # them again, and the JIT compiled the new classes again too: ~13 s of C2 compiler CPU per scorecards run, and
    # heuristics after scorecards ~10 s slower (bench/RESULTS.md, "Spark jobs"). A static conf: set at start.
    "spark.sql.codegen.cache.maxEntries": "1000",
    # delta-rs writers and readers share these tables; keep the protocol both speak
    "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


def spark_conf(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The effective conf: Delta, then local defaults, then settings.spark_conf, then `extra`."""
    conf = {**DELTA_CONF, **LOCAL_DEFAULTS, "spark.ui.enabled": str(settings.spark_ui).lower()}
    conf.update(settings.spark_conf)
    conf.update(extra or {})
    return conf


class SparkStartFailed(RuntimeError):
    """The SparkSession did not start: the message names the settings that shape it."""


def build_spark(settings: Settings, app_name: str = "trajlake", extra: Mapping[str, str] | None = None):
    """A SparkSession with Delta Lake. Under spark-submit set TRAJLAKE_SPARK_MASTER='' so the submit's master wins.

    The delta-spark jars are resolved by `configure_spark_with_delta_pip` through Ivy on first start. A session
    that does not start raises SparkStartFailed naming TRAJLAKE_SPARK_MASTER and TRAJLAKE_SPARK_CONF: a bad
    master or driver setting ended in PySpark's JAVA_GATEWAY_EXITED traceback (found in review).
    """
    from delta import configure_spark_with_delta_pip
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if settings.spark_master:
        builder = builder.master(settings.spark_master)
    for key, value in spark_conf(settings, extra).items():
        builder = builder.config(key, value)
    try:
        spark = configure_spark_with_delta_pip(builder).getOrCreate()
    except (PySparkException, OSError) as exc:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SparkStartFailed(
            f"Spark did not start ({cause}; the JVM's own message, if any, is above). Check TRAJLAKE_SPARK_MASTER "
            f"({settings.spark_master!r}: local[*], local[N] or a cluster URL like spark://host:7077) and "
            f"TRAJLAKE_SPARK_CONF ({dict(settings.spark_conf)!r}: e.g. spark.driver.memory takes 4g), and that "
            "Java 17 is on PATH or JAVA_HOME") from None
    spark.sparkContext.setLogLevel("WARN")
    return spark


def delta_packages() -> str:
    """The Maven coordinates delta-spark resolves through Ivy, for `spark-submit --packages`.

    Under spark-submit the JVM starts before the job's Python, so the packages must be on its command line.
    """
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    return configure_spark_with_delta_pip(SparkSession.Builder())._options["spark.jars.packages"]


if __name__ == "__main__":  # spark-submit --packages "$(python -m jobs.spark)" jobs/heuristics.py …
    print(delta_packages())
