"""The one SparkSession factory: local[*] or spark://, Kafka connector on the classpath, UTC."""

from __future__ import annotations

import os
import sys
import time
import zipfile
from pathlib import Path

from pyspark.sql import SparkSession

from common.settings import Settings, get_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONNECTOR_DIR = PROJECT_ROOT / ".jvm" / "spark-kafka"
DRIVER_MEMORY = "2g"
# 32 MiB G1 regions: a buffer under 16 MiB (a Kafka fetch, an Arrow batch for Python) is then an
# ordinary allocation, not a "humongous" one that starts a concurrent marking cycle. Draining a
# backlog, this halved the marking cycles and gained 5-10% events/s on local[2] (docs/streaming.md).
JVM_OPTIONS = "-Duser.timezone=UTC -XX:G1HeapRegionSize=32m"


def connector_jars() -> list[Path]:
    """The Kafka connector jars resolved from Maven Central by `make setup`."""
    if zipfile.is_zipfile(PROJECT_ROOT):
        return []  # shipped as a zip by spark-submit --py-files, whose --jars carry the connector
    jars = sorted(CONNECTOR_DIR.glob("*.jar"))
    if not jars:
        raise RuntimeError(
            f"the Spark Kafka connector is not in {CONNECTOR_DIR}: run `make setup` "
            "(it resolves spark-sql-kafka-0-10_2.13 from Maven Central once and caches it)"
        )
    return jars


def use_utc_clock() -> None:
    """Make this process's local time UTC (and that of the Python workers it starts).

    PySpark converts a naive datetime (``lit``, rows of ``createDataFrame``) as local time; the
    platform's naive datetimes are UTC, like its JVM and session.
    """
    os.environ["TZ"] = "UTC"
    time.tzset()


def build_spark_session(
    app_name: str,
    settings: Settings | None = None,
    extra_conf: dict[str, str] | None = None,
) -> SparkSession:
    """Build (or return the running) SparkSession for ``app_name`` on ``SPARK_MASTER`` (under
    spark-submit, on its ``--master``)."""
    settings = settings or get_settings()
    # Spark's Python workers must run this interpreter, or they will not find pandas and the project.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    use_utc_clock()
    conf = {
        "spark.sql.session.timeZone": "UTC",
        # A stateful query keeps the number it started with in its checkpoint.
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.default.parallelism": str(settings.spark_shuffle_partitions),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
        # A query whose batch is stuck fails its stop() after this long instead of waiting forever.
        "spark.sql.streaming.stopTimeout": "120s",
        "spark.driver.memory": DRIVER_MEMORY,
        "spark.pyspark.python": sys.executable,
        "spark.driver.extraJavaOptions": JVM_OPTIONS,
        "spark.executor.extraJavaOptions": JVM_OPTIONS,
        "spark.sql.warehouse.dir": str(settings.data_root / "spark-warehouse"),
    }
    jars = connector_jars()
    if jars:
        conf["spark.jars"] = ",".join(str(j) for j in jars)
    conf.update(extra_conf or {})
    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Under spark-submit (which starts the JVM and hands it over through this variable) the
        # master is spark-submit's `--master`: set here, it would silently replace it.
        builder = builder.master(settings.spark_master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
