"""The SparkSession factory, and Structured Streaming through the real broker and Kafka connector."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from spark_submit import spark_submit

from common.schemas import SALES_EVENT_SCHEMA, event_key, required_fields


def test_the_session_runs_in_utc_with_the_connector(spark):
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert "spark-sql-kafka-0-10" in spark.conf.get("spark.jars")
    row = spark.sql("SELECT CAST('2026-01-01 00:00:00' AS TIMESTAMP) AS t").first()
    assert row.t.isoformat() == "2026-01-01T00:00:00"


def test_under_spark_submit_the_session_runs_on_its_master(tmp_path):
    """A plain `spark-submit --master X job.py` runs on X, whatever SPARK_MASTER says."""
    from common.spark import PROJECT_ROOT

    job, result = tmp_path / "master_job.py", tmp_path / "master.txt"
    job.write_text(
        "import sys\n"
        "from common.spark import build_spark_session\n"
        "spark = build_spark_session('master-test')\n"
        "open(sys.argv[1], 'w').write(spark.sparkContext.master)\n"
        "spark.stop()\n"
    )
    completed = spark_submit(
        "local[1]", job, str(result), PYTHONPATH=str(PROJECT_ROOT), SPARK_MASTER="local[2]"
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert result.read_text() == "local[1]"


def test_a_naive_time_is_utc_whatever_the_hosts_zone(spark, monkeypatch):
    from common.spark import use_utc_clock

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        use_utc_clock()  # as the session factory does
        moment = spark.range(1).select(F.lit(dt.datetime(2026, 1, 1, 10)).alias("t"))
        assert moment.select(F.date_format("t", "HH:mm").alias("hhmm")).first().hhmm == "10:00"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_contract_requires_the_keys():
    assert {"event_id", "event_time", "store_id", "product_id", "quantity"} <= set(
        required_fields(SALES_EVENT_SCHEMA)
    )
    assert "customer_id" not in required_fields(SALES_EVENT_SCHEMA)


@pytest.mark.services
def test_a_stream_reads_the_real_broker_into_foreach_batch(spark, kafka, tmp_path):
    topic = f"spark-check-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    events = [
        {"event_id": f"e{i}", "store_id": f"S{i % 2}", "product_id": "P1", "quantity": i + 1}
        for i in range(20)
    ]
    producer = KafkaProducer(bootstrap_servers=kafka, acks="all")
    for event in events:
        producer.send(
            topic, key=event_key(event["store_id"], "P1"), value=json.dumps(event).encode()
        )
    producer.flush()
    producer.close()

    collected = []

    def collect(batch, batch_id):
        collected.extend(batch.collect())

    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", kafka)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    parsed = raw.select(
        F.col("key").cast("string").alias("key"),
        F.from_json(
            F.col("value").cast("string"), "event_id STRING, store_id STRING, quantity INT"
        ).alias("e"),
    ).select("key", "e.*")
    query = (
        parsed.writeStream.foreachBatch(collect)
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(availableNow=True)
        .start()
    )
    try:
        query.awaitTermination(120)
    finally:
        query.stop()
    expected = spark.createDataFrame(
        [(f"{e['store_id']}|P1", e["event_id"], e["store_id"], e["quantity"]) for e in events],
        "key STRING, event_id STRING, store_id STRING, quantity INT",
    )
    assertDataFrameEqual(spark.createDataFrame(collected, expected.schema), expected)
