"""The streaming runtime: parsing and dead-lettering, the idempotent store sink, Kafka options,
progress recording and stopping, on static frames and on the real broker."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf
from pyspark.sql.streaming import StreamingQuery

from common.schemas import INVENTORY_EVENT_SCHEMA, SALES_EVENT_SCHEMA
from common.settings import SettingsError
from streaming.runtime import (
    ByDay,
    Check,
    check_source,
    checkpoint_location,
    classify_events,
    hit_kafka_metrics_bug,
    iso_timestamp,
    kafka_lag,
    kafka_source_options,
    late_rows,
    parse_events,
    read_topic,
    run_queries,
    start_query,
    store_sink,
    watermark_classified,
)

RAW_COLUMNS = "topic string, partition int, offset long, value binary, timestamp timestamp"
GOOD = {
    "event_id": "e1",
    "event_time": "2026-04-01T10:00:00.250Z",
    "store_id": "S1",
    "product_id": "P1",
    "event_type": "restock",
    "quantity_change": 12,
    "stock_level": 40,
    "reorder_point": 10,
    "lead_time_days": 3.5,
    "unit_cost": 1.2,
}


def raw_frame(spark: SparkSession, payloads: list[bytes | None], topic: str = "t") -> DataFrame:
    now = dt.datetime(2026, 4, 1, 10, 0, 1)
    rows = [(topic, 0, offset, value, now) for offset, value in enumerate(payloads)]
    return spark.createDataFrame(rows, RAW_COLUMNS)


def encoded(event: dict) -> bytes:
    return json.dumps(event).encode()


@pytest.mark.spark
def test_every_kind_of_bad_record_is_named_and_kept(spark: SparkSession) -> None:
    payloads = [
        encoded(GOOD),
        b'{"event_id": "e2", "stock_level": ',
        b"[1, 2, 3]",
        encoded({**GOOD, "stock_level": "forty", "unit_cost": "cheap"}),
        encoded({k: v for k, v in GOOD.items() if k not in ("store_id", "event_type")}),
        encoded({**GOOD, "event_time": "last tuesday"}),
        encoded({**GOOD, "stock_level": -3}),
        b"\xc3\x28 not utf-8",
        None,
        encoded({**GOOD, "padding": "x" * 128 * 1024}),  # the generator's oversized fault
    ]
    checks = [Check("stock_level must be >= 0", sf.col("stock_level") >= 0)]
    classified = classify_events(
        raw_frame(spark, payloads), INVENTORY_EVENT_SCHEMA, checks, job="test-runtime"
    )
    errors = {r.kafka_offset: r.error for r in classified.select("kafka_offset", "error").collect()}
    assert errors == {
        0: None,
        1: "malformed JSON: not a JSON object",
        2: "malformed JSON: not a JSON object",
        3: "wrong type for field(s): stock_level (expected int), unit_cost (expected double)",
        4: "missing required field(s): store_id, event_type",
        5: "not an ISO-8601 timestamp: event_time",
        6: "stock_level must be >= 0",
        7: "payload is not valid UTF-8",
        8: "empty payload",
        9: f"record too large: {len(payloads[9])} bytes (at most 65536)",
    }

    valid, dead = parse_events(
        raw_frame(spark, payloads), INVENTORY_EVENT_SCHEMA, checks, job="test-runtime"
    )
    good = valid.collect()
    assert len(good) == 1 and good[0].event_time == dt.datetime(2026, 4, 1, 10, 0, 0, 250000)
    assert valid.columns == [
        *INVENTORY_EVENT_SCHEMA.fieldNames(),
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        "kafka_timestamp",
    ]
    assert dead.columns == [
        "topic",
        "kafka_partition",
        "kafka_offset",
        "kafka_timestamp",
        "raw_payload",
        "payload_encoding",
        "error",
        "job",
    ]
    binary = dead.where("kafka_offset = 7").first()
    assert binary.payload_encoding == "base64"
    assert base64.b64decode(binary.raw_payload) == payloads[7]
    text = dead.where("kafka_offset = 3").first()
    assert (text.payload_encoding, text.raw_payload) == ("utf-8", payloads[3].decode())
    assert valid.count() + dead.count() == len(payloads)


@pytest.mark.spark
def test_iso_8601_times_are_read_in_their_usual_forms(spark: SparkSession) -> None:
    noon = dt.datetime(2026, 12, 5, 12, 0)
    forms = {
        "2026-12-05T12:00:00Z": noon,
        "2026-12-05T12:00:00.250Z": noon.replace(microsecond=250000),
        "2026-12-05T13:00:00+01:00": noon,
        "2026-12-05 12:00:00": noon,
        "2026-12-05T12:00Z": noon,
        "2026-12-05T13:30+01:30": noon,
        "2026-12-05T12:00": noon,
        "2026-12-05t12:00:00z": noon,
        "2026-12-05T12Z": None,
        "1733400000": None,
        "last tuesday": None,
    }
    texts = spark.createDataFrame([(text,) for text in forms], "text string")
    read = texts.select("text", iso_timestamp(sf.col("text")).alias("moment")).collect()
    assert {r.text: r.moment for r in read} == forms


@pytest.mark.spark
def test_an_event_time_far_ahead_of_its_kafka_timestamp_is_a_dead_letter(
    spark: SparkSession,
) -> None:
    ahead = {  # the Kafka timestamp of raw_frame's records is 10:00:01
        "close": "2026-04-01T11:00:00Z",
        "too far": "2026-04-01T11:01:02Z",
        "years": "2099-04-01T10:00:00Z",
    }
    payloads = [encoded({**GOOD, "event_id": name, "event_time": t}) for name, t in ahead.items()]
    unstamped = spark.createDataFrame(  # a producer that sends no timestamp leaves -1 ms
        [("t", 1, 0, payloads[-1], dt.datetime(1969, 12, 31, 23, 59, 59, 999000))], RAW_COLUMNS
    )
    raw = raw_frame(spark, payloads).unionByName(unstamped)

    classified = classify_events(raw, INVENTORY_EVENT_SCHEMA, job="test-lead", max_lead_minutes=60)
    errors = {(r.kafka_partition, r.event_id): r.error for r in classified.collect()}
    late = "event_time is more than 60 minutes ahead of its Kafka timestamp"
    assert errors == {
        (0, "close"): None,
        (0, "too far"): late,
        (0, "years"): late,
        (1, "years"): None,  # not judged
    }
    unlimited = classify_events(raw, INVENTORY_EVENT_SCHEMA, job="test-lead")
    assert unlimited.where("error IS NOT NULL").count() == 0


@pytest.mark.spark
def test_an_event_time_from_a_reset_clock_is_a_dead_letter_stamped_or_not(
    spark: SparkSession,
) -> None:
    times = {
        "epoch": "1970-01-01T00:00:00Z",
        "year one": "0001-01-01T00:00:00Z",
        "last of 1999": "1999-12-31T23:59:59.999Z",
        "first of 2000": "2000-01-01T00:00:00Z",
        "year 2100": "2100-01-01T00:00:00Z",
    }
    payloads = [encoded({**GOOD, "event_id": name, "event_time": t}) for name, t in times.items()]
    stamped = raw_frame(spark, payloads)
    unstamped = stamped.withColumn("timestamp", sf.lit(dt.datetime(1969, 12, 31, 23, 59, 59)))

    for raw in (stamped, unstamped):
        classified = classify_events(raw, INVENTORY_EVENT_SCHEMA, job="test-era")
        errors = {r.event_id: r.error for r in classified.select("event_id", "error").collect()}
        outside = "event_time is outside the years 2000-2099"
        assert errors == {
            "epoch": outside,
            "year one": outside,
            "last of 1999": outside,
            "first of 2000": None,
            "year 2100": outside,
        }


@pytest.mark.spark
def test_store_sink_writes_a_replayed_batch_once(spark: SparkSession, settings, store) -> None:
    query = f"test-sink-{uuid.uuid4().hex[:8]}"
    _, dead = parse_events(
        raw_frame(spark, [b"x", b"y"], topic=query), SALES_EVENT_SCHEMA, job=query
    )
    write = store_sink("dead_letters", query, settings)

    write(dead, 0)
    write(dead, 0)  # the same batch again, as after a crash before the checkpoint commit
    assert (
        store.scalar("SELECT count() FROM dead_letters WHERE topic = {t:String}", {"t": query}) == 2
    )
    write(dead.withColumn("kafka_offset", sf.col("kafka_offset") + 2), 1)
    assert (
        store.scalar("SELECT count() FROM dead_letters WHERE topic = {t:String}", {"t": query}) == 4
    )


def test_kafka_options_and_checkpoints_come_from_settings(settings) -> None:
    tuned = settings.model_copy(
        update={"starting_offsets": "latest", "max_offsets_per_trigger": 5000}
    )
    options = kafka_source_options(tuned, "sales_events", "sales-stream")
    assert options["subscribe"] == "sales_events"
    assert options["startingOffsets"] == "latest"
    assert options["maxOffsetsPerTrigger"] == "5000"
    assert options["kafka.group.id"] == "sales-stream-group"
    assert kafka_source_options(settings, "t", "a")["maxOffsetsPerTrigger"] == "50000"
    assert checkpoint_location(settings, "sales-stream", "q") == (
        settings.checkpoint_root / "sales-stream" / "q"
    )


def test_a_checkpoint_dir_that_cannot_be_written_is_named(settings, tmp_path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    unusable = settings.model_copy(update={"checkpoint_dir": a_file / "checkpoints"})
    with pytest.raises(SettingsError, match=f"CHECKPOINT_DIR={a_file}/checkpoints: cannot create"):
        checkpoint_location(unusable, "sales-stream", "q")


@pytest.mark.services
def test_a_missing_topic_or_broker_fails_before_spark_starts(settings, kafka) -> None:
    from common import stack

    topic = f"runtime-source-{uuid.uuid4().hex[:8]}"
    with pytest.raises(SettingsError, match=f"SALES_TOPIC={topic}: the broker at .* no such topic"):
        check_source(settings, topic, "SALES_TOPIC")
    stack.ensure_topics(settings.model_copy(update={"sales_topic": topic}), 1)
    check_source(settings, topic, "SALES_TOPIC")

    started = time.monotonic()
    job = subprocess.run(
        [sys.executable, "-m", "streaming", "sales", "--available-now"],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert job.returncode == 2, job.stderr[-2000:]
    assert "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1: no Kafka broker answered" in job.stderr
    assert "Traceback" not in job.stderr
    assert time.monotonic() - started < 60


def test_a_by_day_cache_forgets_whole_days_beyond_the_newest() -> None:
    first, second, third = (dt.date(2026, 3, d) for d in (3, 4, 5))
    cache: ByDay[tuple[str, str], float] = ByDay()
    cache.put(first, ("S1", "P1"), 1.0)
    cache.put(first, ("S2", "P1"), 2.0)
    cache.put(second, ("S1", "P1"), 3.0)
    cache.keep_newest(2)
    assert cache.get(first, ("S2", "P1")) == 2.0 and cache.get(second, ("S1", "P1")) == 3.0
    assert len(cache) == 3
    assert cache.get(second, ("S2", "P1")) is None

    cache.put(third, ("S1", "P1"), 4.0)
    cache.keep_newest(2)
    assert cache.get(first, ("S1", "P1")) is None and len(cache) == 2
    cache.put(first, ("S1", "P1"), 5.0)  # a late key of a forgotten day
    cache.keep_newest(2)
    assert cache.get(first, ("S1", "P1")) is None and len(cache) == 2
    assert cache.setdefault(third, ("S1", "P1"), 9.0) == 4.0  # held: kept
    assert cache.setdefault(third, ("S2", "P1"), 9.0) == 9.0 and len(cache) == 3


def test_lag_is_summed_over_partitions() -> None:
    sources = [
        SimpleNamespace(
            endOffset=json.dumps({"t": {"0": 10, "1": 7}}),
            latestOffset=json.dumps({"t": {"0": 15, "1": 7}}),
        ),
        SimpleNamespace(endOffset=None, latestOffset=None),
    ]
    assert kafka_lag(sources) == 5


def test_only_sparks_kafka_metrics_bug_is_restarted() -> None:
    npe = (
        'java.lang.NullPointerException: Cannot invoke "scala.collection.IterableOps.map" because '
        'the return value of "scala.Option.get()" is null\n\tat org.apache.spark.sql.kafka010.'
        "KafkaMicroBatchStream$.metrics(KafkaMicroBatchStream.scala:520)"
    )
    assert hit_kafka_metrics_bug(npe)
    assert not hit_kafka_metrics_bug("common.store.base.StoreError: the store is full")
    assert not hit_kafka_metrics_bug("java.lang.NullPointerException at my.Sink.write")


def fresh_topic(settings, topic: str, partitions: int | None = None) -> str:
    """Create ``topic`` for one test (the records of other tests never reach its queries)."""
    from common import stack

    stack.ensure_topics(
        settings.model_copy(update={"sales_topic": topic, "inventory_topic": topic}), partitions
    )
    return topic


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for value in values:
        producer.send(topic, value=value)
    producer.flush()
    producer.close()


def valid_events_query(
    spark: SparkSession, settings, topic: str, job: str, sink, available_now: bool = False
) -> StreamingQuery:
    """A query ``<job>-q`` of the topic's valid inventory events into ``sink``."""
    valid, _ = parse_events(
        read_topic(spark, settings, topic, job), INVENTORY_EVENT_SCHEMA, job=job
    )
    return start_query(
        valid,
        job=job,
        query_name=f"{job}-q",
        settings=settings,
        sink=sink,
        available_now=available_now,
    )


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.3)


def stop_once(until: Callable[[], bool], what: str) -> threading.Event:
    """An event set once ``until`` holds, or when waiting for it fails: the query then ends
    either way, and the test's own assertions say what went wrong instead of a hang."""
    stop = threading.Event()

    def wait() -> None:
        try:
            wait_for(until, 180, what)
        finally:
            stop.set()

    threading.Thread(target=wait, daemon=True).start()
    return stop


@pytest.mark.services
@pytest.mark.spark
def test_queries_record_progress_and_stop_between_batches(
    spark: SparkSession, settings, kafka, store
) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, job = fresh_topic(settings, f"runtime-{tag}", 2), f"runtime-test-{tag}"
    produce(kafka, topic, [encoded({**GOOD, "event_id": f"e{i}"}) for i in range(40)])
    tuned = settings.model_copy(update={"max_offsets_per_trigger": 10})
    seen: list[int] = []
    lock = threading.Lock()

    def count_rows(batch: DataFrame, batch_id: int) -> None:
        with lock:
            seen.append(batch.count())

    query = valid_events_query(spark, tuned, topic, job, count_rows)
    stop = stop_once(lambda: sum(seen) == 40, "all rows")

    run_queries(spark, [query], job=job, settings=tuned, stop=stop)

    assert not query.isActive and query.exception() is None
    assert sum(seen) == 40 and len(seen) >= 4  # at most 10 offsets per trigger
    assert (settings.checkpoint_root / job / f"{job}-q" / "offsets").is_dir()

    def progress_rows() -> int:
        return int(
            store.scalar(
                "SELECT sum(input_rows) FROM stream_progress FINAL WHERE job = {j:String}",
                {"j": job},
            )
            or 0
        )

    wait_for(lambda: progress_rows() == 40, 60, "the progress of every batch")
    last = store.query_df(
        "SELECT lag_messages, batch_duration_ms, late_rows FROM stream_progress FINAL "
        "WHERE job = {j:String} AND input_rows > 0 ORDER BY batch_id DESC LIMIT 1",
        {"j": job},
    )
    assert last["lag_messages"][0] == 0 and last["batch_duration_ms"][0] > 0
    assert last["late_rows"][0] == 0  # the query has no watermark: nothing is late


@pytest.mark.services
@pytest.mark.spark
def test_a_query_without_events_is_warned_about_once_until_they_come_again(
    spark: SparkSession, settings, kafka, store, caplog
) -> None:
    """A feed that stops (here for 3 s, instead of 5 minutes) is logged once as a warning naming
    when its last events came, however many polls it stays quiet, and their return once."""
    import logging

    tag = uuid.uuid4().hex[:8]
    topic, job = fresh_topic(settings, f"quiet-{tag}"), f"quiet-test-{tag}"
    observed: dict[str, list[str]] = {}

    class CountingSink:
        """Counts each batch's rows, and the polls that find its query waiting (``idle``)."""

        def __init__(self) -> None:
            self.seen: list[int] = []
            self.idle_polls = 0

        def __call__(self, batch: DataFrame, _: int) -> None:
            self.seen.append(batch.count())

        def idle(self) -> None:
            self.idle_polls += 1

    sink = CountingSink()
    seen = sink.seen

    def logged(level: int, text: str) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == level and job in r.getMessage() and text in r.getMessage()
        ]

    def quiet_after_events() -> list[str]:
        # A slow start may be warned about first, "since the job started": not counted.
        return logged(logging.WARNING, "UTC): check the producers")

    def back() -> list[str]:
        return logged(logging.INFO, "events again after")

    def feed_stops_and_comes_back() -> None:
        try:
            wait_for(lambda: sum(seen) == 3, 180, "the first events")
            wait_for(quiet_after_events, 60, "the warning about the quiet feed")
            polls = sink.idle_polls
            wait_for(
                lambda: sink.idle_polls >= polls + 3, 60, "three more polls of the quiet query"
            )
            observed["warned"], observed["back"] = quiet_after_events(), back()
            produce(kafka, topic, [encoded({**GOOD, "event_id": f"b{i}"}) for i in range(2)])
            wait_for(lambda: sum(seen) == 5, 60, "the events that come again")
            wait_for(lambda: len(back()) > len(observed["back"]), 60, "the note of their return")
            observed["back"] = back()[len(observed["back"]) :]
        finally:
            stop.set()  # a scenario that failed ends the query too: its assertions then say why

    # Sent before the start, so that they come in one micro-batch: two of them a few seconds
    # apart would be a quiet spell of their own.
    produce(kafka, topic, [encoded({**GOOD, "event_id": f"a{i}"}) for i in range(3)])
    query = valid_events_query(spark, settings, topic, job, sink)
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="streaming.runtime")
    threading.Thread(target=feed_stops_and_comes_back, daemon=True).start()

    run_queries(spark, [query], job=job, settings=settings, stop=stop, quiet_after_s=3.0)

    assert sum(seen) == 5, observed
    [warning] = observed["warned"]  # once, however many polls
    assert f"{job}-q: no events for 0 min (since 20" in warning  # when the last events came
    assert len(observed["back"]) == 1, observed


@pytest.mark.spark
def test_a_stop_under_steady_input_lands_between_batches_and_loses_nothing(
    spark: SparkSession, settings, kafka, store, tmp_path
) -> None:
    """Under a backlog a batch is always running: the stop must still let it finish, park the next
    one before it starts, and the next start must run that one (every event once)."""

    tag = uuid.uuid4().hex[:8]
    topic = job = fresh_topic(settings, f"runtime-busy-{tag}", 2)
    produce(kafka, topic, [encoded({**GOOD, "event_id": f"e{i}"}) for i in range(300)])
    tuned = settings.model_copy(
        update={"max_offsets_per_trigger": 10, "checkpoint_dir": tmp_path / "checkpoints"}
    )
    started: list[int] = []
    finished: list[tuple[int, list[str]]] = []  # a batch run twice would be here twice

    def slow_sink(batch: DataFrame, batch_id: int) -> None:
        started.append(batch_id)
        ids = [row.event_id for row in batch.select("event_id").collect()]
        time.sleep(0.3)  # the batch's work: a backlog of 30 batches takes 9 s or more
        finished.append((batch_id, ids))

    def run(sink: Callable[[DataFrame, int], None], until: Callable[[], bool]) -> None:
        query = valid_events_query(spark, tuned, topic, job, sink)
        stop = stop_once(until, "the batches")
        queries = run_queries(spark, [query], job=job, settings=tuned, stop=stop)
        assert not queries[0].isActive and queries[0].exception() is None

    run(slow_sink, lambda: len(finished) >= 3)

    first_run = sum(len(ids) for _, ids in finished)
    assert first_run < 300, "the stop waited for the backlog to drain"
    assert started == [batch_id for batch_id, _ in finished], "a batch was cut short"
    commits = tuned.checkpoint_root / job / f"{job}-q" / "commits"
    assert sorted(int(p.name) for p in commits.glob("[0-9]*")) == started

    run(slow_sink, lambda: sum(len(ids) for _, ids in finished) >= 300)
    every = [i for _, ids in finished for i in ids]
    assert sorted(every) == sorted(f"e{i}" for i in range(300))  # each event once


def watermarked_query(
    spark: SparkSession, settings, kind: str
) -> tuple[str, StreamingQuery, list[str]]:
    """A fresh one-partition topic and a running query that watermarks its inventory events by 10
    minutes (``watermark_classified``); ``kept`` collects the ids of its valid events."""
    from common import stack

    tag = uuid.uuid4().hex[:8]
    topic = job = f"runtime-{kind}-{tag}"
    stack.ensure_topics(settings.model_copy(update={"inventory_topic": topic}), 1)
    kept: list[str] = []

    def keep(batch: DataFrame, batch_id: int) -> None:
        valid = batch.where(sf.col("error").isNull()).select("event_id")
        kept.extend(row.event_id for row in valid.collect())

    raw = read_topic(spark, settings, topic, job)
    classified = classify_events(raw, INVENTORY_EVENT_SCHEMA, job=job)
    events = watermark_classified(classified, "10 minutes")
    query = start_query(events, job=job, query_name=f"{job}-q", settings=settings, sink=keep)
    return topic, query, kept


def test_late_rows_sum_what_the_stateful_operators_dropped() -> None:
    operators = [
        SimpleNamespace(numRowsDroppedByWatermark=2),
        SimpleNamespace(numRowsDroppedByWatermark=None),
        SimpleNamespace(numRowsDroppedByWatermark=3),
    ]
    assert late_rows(operators) == 5
    assert late_rows(None) == 0


@pytest.mark.services
@pytest.mark.spark
def test_an_event_stamped_ahead_of_the_broker_does_not_make_later_events_late(
    spark: SparkSession, settings, kafka
) -> None:
    def stamped(event_id: str, minutes_from_now: float) -> bytes:
        moment = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes_from_now)
        return encoded({**GOOD, "event_id": event_id, "event_time": moment.isoformat()})

    topic, query, kept = watermarked_query(spark, settings, "ahead")
    try:
        produce(kafka, topic, [stamped("clock-ahead", 50)])  # a till whose clock runs ahead
        query.processAllAvailable()
        produce(kafka, topic, [stamped("now", -1), stamped("a-bit-late", -5)])
        query.processAllAvailable()
        watermark = query.lastProgress["eventTime"]["watermark"]
    finally:
        query.stop()
    assert sorted(kept) == ["a-bit-late", "clock-ahead", "now"]
    reported = dt.datetime.fromisoformat(watermark.replace("Z", "+00:00"))
    assert reported <= dt.datetime.now(dt.UTC) - dt.timedelta(minutes=9)


@pytest.mark.services
@pytest.mark.spark
def test_available_now_drains_the_topic_and_returns(spark: SparkSession, settings, kafka) -> None:
    tag = uuid.uuid4().hex[:8]
    topic = job = fresh_topic(settings, f"runtime-now-{tag}", 2)
    produce(kafka, topic, [encoded({**GOOD, "event_id": f"e{i}"}) for i in range(15)])
    collected: list[DataFrame] = []

    def keep(batch: DataFrame, batch_id: int) -> None:
        collected.append(batch.select("event_id").toPandas())

    in_fours = settings.model_copy(update={"max_offsets_per_trigger": 4})
    query = valid_events_query(spark, in_fours, topic, job, keep, available_now=True)
    run_queries(spark, [query], job=job, settings=settings)

    ids = sorted(i for frame in collected for i in frame["event_id"])
    assert ids == sorted(f"e{i}" for i in range(15))
    assert len(collected) >= 4  # at most 4 offsets per batch, also when draining


@pytest.mark.services
@pytest.mark.spark
def test_the_offsets_a_job_finished_are_committed_to_its_consumer_group(
    spark: SparkSession, settings, kafka, store
) -> None:
    """Kafka's own tools see the job as the group `{job}-group`, with no lag once it drained."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    tag = uuid.uuid4().hex[:8]
    topic, job = fresh_topic(settings, f"grouped-{tag}"), f"grouped-test-{tag}"
    produce(kafka, topic, [encoded({**GOOD, "event_id": f"g{i}"}) for i in range(7)] + [b"{"])
    query = valid_events_query(spark, settings, topic, job, lambda *_: None, available_now=True)

    run_queries(spark, [query], job=job, settings=settings)

    admin = KafkaAdminClient(bootstrap_servers=kafka)
    consumer = KafkaConsumer(bootstrap_servers=kafka)
    try:
        committed = admin.list_group_offsets({f"{job}-group": None})[f"{job}-group"]
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends = consumer.end_offsets(partitions)
    finally:
        admin.close()
        consumer.close()
    assert {tp: meta.offset for tp, meta in committed.items()} == ends
    assert sum(ends.values()) == 8


def test_group_offsets_are_committed_once_every_query_finished_and_retried_until_they_are(
    settings,
) -> None:
    """A new broker answers "coordinator not available" at first (retried at once); a commit that
    still fails is tried again when the job stops. A query that has not finished a batch holds
    the group back. (A fake admin client: a refusal cannot be caused on demand.)"""
    from types import SimpleNamespace

    from kafka.errors import CoordinatorNotAvailableError, NoError, UnknownMemberIdError

    from streaming.runtime import GroupOffsets

    class Admin:
        def __init__(self, answers: list) -> None:
            self.answers, self.committed = answers, []

        def alter_group_offsets(self, group: str, offsets: dict) -> dict:
            answer = self.answers.pop(0)
            if answer is NoError:
                self.committed.append({tp.partition: meta.offset for tp, meta in offsets.items()})
            return dict.fromkeys(offsets, answer)

        def close(self) -> None:
            pass

    def ends(**partitions: int) -> list:
        offsets = {"t": {p.lstrip("p"): n for p, n in partitions.items()}}
        return [SimpleNamespace(endOffset=json.dumps(offsets))]

    group = GroupOffsets(settings, "job-group", ["events", "dead"])
    group._admin = admin = Admin(
        [CoordinatorNotAvailableError, NoError, UnknownMemberIdError, NoError]
    )
    group.finished("events", ends(p0=5, p1=7))
    assert admin.committed == []  # "dead" has not finished a batch
    group.finished("dead", ends(p0=4, p1=9))
    assert admin.committed == [{0: 4, 1: 7}]  # what both finished, after one retry
    group.finished("dead", ends(p0=6, p1=9))
    assert admin.committed == [{0: 4, 1: 7}]  # refused: not retriable, logged
    group.close()
    assert admin.committed == [{0: 4, 1: 7}, {0: 5, 1: 7}]


def test_a_dead_letter_read_again_is_stored_once_and_a_recreated_topics_is_kept_beside_it(
    store,
) -> None:
    """A new checkpoint reads the topic's bad records again, an empty one (a null value) too:
    stored once. A topic recreated since has new records at the old offsets (later Kafka
    timestamps): they are kept beside the old ones, read with FINAL too. A row stored before
    the timestamp was recorded (1970-01-01) is matched on its payload."""
    import pyarrow as pa

    from streaming.runtime import DEAD_LETTER_COLUMNS, store_dead_letters

    topic = f"dead-{uuid.uuid4().hex[:8]}"
    first, recreated = dt.datetime(2026, 12, 1, 9, 0), dt.datetime(2026, 12, 7, 9, 0)

    def at(sent_at: dt.datetime, offset: int) -> dt.datetime:
        """The Kafka timestamp of the record at ``offset`` of a topic filled at ``sent_at``."""
        return sent_at + dt.timedelta(milliseconds=offset)

    def dead(sent_at: dt.datetime, *payloads: str | None, to: str = topic) -> pa.Table:
        rows = [
            {"topic": to, "kafka_partition": 0, "kafka_offset": offset,
             "kafka_timestamp": at(sent_at, offset),
             "raw_payload": payload, "payload_encoding": "utf-8", "error": "malformed JSON",
             "job": "test"}
            for offset, payload in enumerate(payloads)
        ]  # fmt: skip
        table = pa.Table.from_pylist(rows).select(DEAD_LETTER_COLUMNS)
        table = table.set_column(4, "raw_payload", table["raw_payload"].cast(pa.string()))
        table = table.set_column(
            3, "kafka_timestamp", table["kafka_timestamp"].cast(pa.timestamp("us", tz="UTC"))
        )
        return table.set_column(1, "kafka_partition", table["kafka_partition"].cast(pa.int32()))

    def stored(final: str = "") -> list[tuple[int, str, dt.datetime]]:
        rows = store.query_df(
            f"SELECT kafka_offset, raw_payload, kafka_timestamp FROM dead_letters {final} "  # noqa: S608
            "WHERE topic = {t:String} ORDER BY kafka_offset, kafka_timestamp",
            {"t": topic},
        )
        rows["kafka_timestamp"] = rows["kafka_timestamp"].dt.tz_localize(None)
        return [(o, p, t.to_pydatetime()) for o, p, t in rows.itertuples(index=False, name=None)]

    assert store_dead_letters(store, dead(first, "{", "[1", None), f"{topic}-a.0") == 3
    assert store_dead_letters(store, dead(first, "{", "[1", None), f"{topic}-b.0") == 0  # again
    assert stored() == [(0, "{", at(first, 0)), (1, "[1", at(first, 1)), (2, "", at(first, 2))]
    assert store_dead_letters(store, dead(recreated, "{", "x"), f"{topic}-c.0") == 2
    assert store_dead_letters(store, dead(recreated, "{", "x"), f"{topic}-d.0") == 0  # again
    assert stored("FINAL") == [
        (0, "{", at(first, 0)),
        (0, "{", at(recreated, 0)),
        (1, "[1", at(first, 1)),
        (1, "x", at(recreated, 1)),
        (2, "", at(first, 2)),
    ]

    old_topic = f"{topic}-old"  # a row as stored before kafka_timestamp: 1970-01-01
    store.execute(
        "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, raw_payload, "
        "payload_encoding, error, job) VALUES ({t:String}, 0, 0, '{', 'utf-8', 'malformed', 'x')",
        {"t": old_topic},
    )
    assert store_dead_letters(store, dead(first, "{", "y", to=old_topic), f"{topic}-e.0") == 1
