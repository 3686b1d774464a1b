"""The streaming runtime shared by the sales and the inventory jobs.

Everything a job needs between Kafka and the store, so that a job module only holds its pure
transforms and a thin ``main()``. Public API (stable; the inventory job builds on it):

Reading and parsing
    ``check_source(settings, topic, variable)`` fails fast, saying what to fix, when no broker
    answers or the topic does not exist (call it before Spark).

    ``read_topic(spark, settings, topic, application)`` -> raw Kafka rows (``key``, ``value``,
    ``topic``, ``partition``, ``offset``, ``timestamp``), consumer group ``{application}-group``
    (``run_queries`` commits the offsets the job finished to it), ``startingOffsets`` and
    ``maxOffsetsPerTrigger`` from the settings.

    ``parse_events(raw, schema, checks, job=...)`` -> ``(valid, dead)``. ``valid`` holds the
    contract's fields (the ``time_fields`` parsed to timestamps) plus ``kafka_topic``,
    ``kafka_partition``, ``kafka_offset`` and ``kafka_timestamp``. ``dead`` has exactly the
    columns of the ``dead_letters`` table. ``classify_events`` is the same with one frame and an
    ``error`` column (null when the record is good), for a job that writes both from one query.
    A record is dead when it is empty, larger than ``MAX_RECORD_BYTES``, not UTF-8 (the payload is
    then kept as base64), not a JSON object, has a value of the wrong type, misses a required
    field, has an unreadable timestamp or fails one of the job's ``Check`` rules
    (``Check("quantity must be > 0", col("quantity") > 0)``), or (with ``max_lead_minutes``) has
    a time more than that far ahead of its Kafka timestamp: a producer whose clock runs ahead.
    Bad records never raise: the query keeps running.

    ``watermark_classified(classified, delay)`` watermarks a ``classify_events`` frame and drops
    nothing, so that one query writes both good and bad records (``valid_events`` and
    ``dead_letters`` split a batch again); the job then keeps each event once itself
    (``repeated_events`` finds the ones its store already holds). Watermarks follow
    ``event_time`` but never run ahead of the records' Kafka timestamps (``WATERMARK_TIME``), so an
    event stamped in the future cannot make the events after it late.

Writing
    ``store_sink(table, query_name, settings, transform_batch=None)`` -> a ``foreachBatch``
    function that inserts each micro-batch into ``table`` with the deduplication token
    ``stream_token(spark, query_name, batch_id)`` = ``"<query>.<stream id>-<batch id>"``: a batch
    replayed after a crash writes nothing twice, and a new checkpoint's batches are not mistaken
    for replays. ``insert_batch(store, table, frame, token)`` does one such insert from
    inside a job's own ``foreachBatch`` function (a token is per table, so one batch may write
    several tables with the same token).

Running
    ``start_query(frame, job=..., query_name=..., settings=..., sink=...)`` starts a query with its
    checkpoint under ``CHECKPOINT_DIR/<job>/<query>`` (``sink="console"`` prints instead, with its
    own checkpoint ``<query>.console``). ``run_queries(spark, queries, job=..., settings=...)`` waits
    for them, records progress (input and processed rate, batch duration, Kafka lag, watermark) to
    the log and the ``stream_progress`` table, stops them gracefully on SIGTERM/SIGINT (the running
    batch finishes first; the next one is parked before it reads anything, see ``BatchGate``) and
    stops them all when one fails. A ``foreachBatch`` function with a ``finish()`` method has it
    called once its query has ended without failing, and one with an ``idle()`` method has it
    called while its running query waits for data (from the thread that runs the queries). A
    query without events for ``QUIET_AFTER`` (5 minutes: a stopped producer or topic) is logged
    once as a warning, and its events' return as such.
"""

from __future__ import annotations

import functools
import json
import logging
import operator
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from kafka.errors import RetriableError
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as sf
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener
from pyspark.sql.types import StringType, StructField, StructType
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from common.broker import check_broker
from common.models import LoadedModel, Probe, check_signature, check_transform
from common.schemas import required_fields
from common.settings import Settings, SettingsError
from common.store import Store, open_store
from streaming.activity import QUIET_AFTER

log = logging.getLogger(__name__)

BatchFunction = Callable[[DataFrame, int], None]
CONSOLE: Literal["console"] = "console"

# Large fetches for a backlog, each under half a G1 region (common/spark.py): not humongous.
FETCH_BYTES_PER_PARTITION = 8 << 20
MAX_POLL_RECORDS = 20_000  # Kafka's default of 500 costs a poll per 500 records of a backlog
# With no new record, the broker holds a fetch at a partition's end this long (Kafka's default is
# 500 ms), and a task reading up to that end waits for it: a trickle's reads, a drain's last one.
FETCH_MAX_WAIT_MS = 50
# Committing to the consumer group: a new broker answers "coordinator not available" until its
# offsets topic exists, so a commit is tried a few times, a second apart, each try bounded.
COMMIT_ATTEMPTS = 5
COMMIT_TIMEOUT_MS = 5000
_CORRUPT = "_corrupt_record"
# The contract's events are under 1 KiB: a record past this is refused (the generator's oversized
# fault pads one to 256 KiB), and its payload kept in dead_letters.
MAX_RECORD_BYTES = 64 * 1024
_KAFKA_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp")
WATERMARK_TIME = "watermark_time"  # the event time, no later than the record's Kafka timestamp
# The dead_letters columns a job writes; the store sets received_at as it writes the row, so no
# micro-batch's time is a literal in Spark's generated code.
DEAD_LETTER_COLUMNS = [
    "topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "raw_payload",
    "payload_encoding",
    "error",
    "job",
]


@dataclass(frozen=True)
class Check:
    """A rule a parsed event must satisfy; ``message`` becomes the dead letter's error text."""

    message: str
    condition: Column


def consumer_group(application: str) -> str:
    """The Kafka consumer group of a job: ``{application}-group``."""
    return f"{application}-group"


def kafka_source_options(settings: Settings, topic: str, application: str) -> dict[str, str]:
    """The options of the Kafka source for ``topic`` (starting offsets and rate from settings)."""
    options = {
        "kafka.bootstrap.servers": settings.kafka_bootstrap_servers,
        "subscribe": topic,
        "startingOffsets": settings.starting_offsets,
        # Spark reads from its checkpoint, never from the group: the job commits each micro-batch's
        # end offsets to it (``GroupOffsets``) so that Kafka's own tools show the job's lag.
        "kafka.group.id": consumer_group(application),
        "kafka.client.id": f"{application}-spark",
        # Fetch a backlog in large requests (Kafka's defaults: 1 MiB per partition, 50 MiB).
        "kafka.max.partition.fetch.bytes": str(FETCH_BYTES_PER_PARTITION),
        "kafka.fetch.max.bytes": str(4 * FETCH_BYTES_PER_PARTITION),
        "kafka.max.poll.records": str(MAX_POLL_RECORDS),
        "kafka.fetch.max.wait.ms": str(FETCH_MAX_WAIT_MS),
    }
    if settings.max_offsets_per_trigger is not None:
        options["maxOffsetsPerTrigger"] = str(settings.max_offsets_per_trigger)
    return options


def check_source(settings: Settings, topic: str, variable: str) -> None:
    """Before Spark starts, fail in seconds with what to fix when no broker answers (Spark's Kafka
    source would retry for minutes) or the broker lacks ``topic`` (set by ``variable``)."""
    if check_broker(settings, topics=[topic]):
        raise SettingsError(
            f"{variable}={topic}: the broker at {settings.kafka_bootstrap_servers} has no such "
            f"topic. Create it (`retail up` creates the topics the settings name) or fix {variable}."
        )


def read_topic(spark: SparkSession, settings: Settings, topic: str, application: str) -> DataFrame:
    """The raw records of ``topic`` as a streaming frame (Kafka's own columns)."""
    return (
        spark.readStream.format("kafka")
        .options(**kafka_source_options(settings, topic, application))
        .load()
    )


def _type_name(field: StructField) -> str:
    return field.dataType.simpleString()


def classify_events(
    raw: DataFrame,
    schema: StructType,
    checks: Sequence[Check] = (),
    *,
    job: str,
    time_fields: Sequence[str] = ("event_time",),
    max_lead_minutes: int | None = None,
) -> DataFrame:
    """Parse every raw record against ``schema``; ``error`` says why a record is bad, else null.

    A time field outside ``EVENT_ERA`` is an impossible value. With ``max_lead_minutes``, so is a
    time field later than the record's Kafka timestamp plus that many minutes (records with no
    Kafka timestamp are not judged).

    Output: the schema's fields (``time_fields`` as timestamps), the Kafka coordinates, the raw
    payload (text, or base64 when not UTF-8) with its encoding, ``error`` and ``job``. No
    ``current_timestamp()``: a micro-batch's time is a literal in the generated code, so each
    micro-batch would compile its projections anew (70 ms of a 5,000-event batch's 0.22 s read).
    """
    checks = [*checks, *[_in_era(name) for name in time_fields]]
    if max_lead_minutes is not None:
        checks = [*checks, *[_not_ahead(name, max_lead_minutes) for name in time_fields]]
    text = sf.col("value").cast("string")
    typed_schema = StructType([*schema.fields, StructField(_CORRUPT, StringType(), True)])
    as_text_schema = StructType([StructField(f.name, StringType(), True) for f in schema.fields])
    utf8 = sf.is_valid_utf8(text)
    parsed = raw.select(
        sf.col("topic").alias("kafka_topic"),
        sf.col("partition").alias("kafka_partition"),
        sf.col("offset").alias("kafka_offset"),
        sf.col("timestamp").alias("kafka_timestamp"),
        sf.col("value"),
        utf8.alias("_utf8"),
        sf.when(utf8, text).alias("_text"),
    ).select(
        "*",
        sf.from_json(
            sf.col("_text"),
            typed_schema,
            {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT},
        ).alias("_event"),
    )
    corrupt = sf.col(f"_event.{_CORRUPT}").isNotNull()
    # Only a corrupt record is parsed a second time, as text, to name the fields of the wrong type.
    as_text = sf.when(corrupt, sf.from_json(sf.col("_text"), as_text_schema))
    wrong_types = sf.concat_ws(
        ", ",
        *[
            sf.when(
                as_text[f.name].isNotNull() & sf.col(f"_event.{f.name}").isNull(),
                sf.lit(f"{f.name} (expected {_type_name(f)})"),
            )
            for f in schema.fields
        ],
    )
    missing = sf.concat_ws(
        ", ",
        *[
            sf.when(sf.col(f"_event.{name}").isNull(), sf.lit(name))
            for name in required_fields(schema)
        ],
    )
    bad_times = sf.concat_ws(
        ", ",
        *[
            sf.when(
                sf.col(f"_event.{name}").isNotNull()
                & iso_timestamp(sf.col(f"_event.{name}")).isNull(),
                sf.lit(name),
            )
            for name in time_fields
        ],
    )
    failed_checks = sf.concat_ws("; ", *[sf.when(~c.condition, sf.lit(c.message)) for c in checks])
    # Most records are good: one chain of booleans says so without building any message string.
    size = sf.length("value")
    good = _all(
        [
            sf.col("value").isNotNull(),
            size <= MAX_RECORD_BYTES,
            sf.coalesce(sf.col("_utf8"), sf.lit(False)),
            sf.coalesce(~corrupt, sf.lit(False)),
            *[sf.col(f"_event.{name}").isNotNull() for name in required_fields(schema)],
            *[
                sf.col(f"_event.{name}").isNull()
                | iso_timestamp(sf.col(f"_event.{name}")).isNotNull()
                for name in time_fields
            ],
            *[sf.coalesce(c.condition, sf.lit(True)) for c in checks],
        ]
    )
    error = (
        sf.when(good, sf.lit(None).cast("string"))
        .when(sf.col("value").isNull(), sf.lit("empty payload"))
        .when(
            size > MAX_RECORD_BYTES,
            sf.concat(
                sf.lit("record too large: "),
                size.cast("string"),
                sf.lit(f" bytes (at most {MAX_RECORD_BYTES})"),
            ),
        )
        .when(~sf.col("_utf8"), sf.lit("payload is not valid UTF-8"))
        .when(corrupt & (wrong_types == ""), sf.lit("malformed JSON: not a JSON object"))
        .when(corrupt, sf.concat(sf.lit("wrong type for field(s): "), wrong_types))
        .when(missing != "", sf.concat(sf.lit("missing required field(s): "), missing))
        .when(bad_times != "", sf.concat(sf.lit("not an ISO-8601 timestamp: "), bad_times))
        .when(failed_checks != "", failed_checks)
    )
    fields = [
        (
            iso_timestamp(sf.col(f"_event.{f.name}"))
            if f.name in time_fields
            else sf.col(f"_event.{f.name}")
        ).alias(f.name)
        for f in schema.fields
    ]
    # The checks refer to the parsed fields by name, so they are evaluated over a frame that has them.
    with_fields = parsed.select("*", *fields)
    return with_fields.select(
        *[f.name for f in schema.fields],
        *_KAFKA_COLUMNS,
        sf.coalesce(sf.col("_text"), sf.base64("value")).alias("raw_payload"),
        sf.when(sf.col("_utf8") | sf.col("value").isNull(), sf.lit("utf-8"))
        .otherwise(sf.lit("base64"))
        .alias("payload_encoding"),
        error.alias("error"),
        sf.lit(job).alias("job"),
    )


# Event times outside it are impossible values: a till whose clock was reset sends 1970 (or year
# 1), which the store's minute panes (DateTime, 1970-2106) cannot hold.
EVENT_ERA = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))

# ISO-8601 times Spark's cast does not read: no seconds, or a lowercase 't' or 'z'.
_MINUTES_ONLY = r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})(Z|[+-]\d{2}(:?\d{2})?)?$"


def iso_timestamp(text: Column) -> Column:
    """An ISO-8601 time (UTC unless it names an offset) as a timestamp; null when unreadable."""
    return sf.coalesce(
        sf.try_to_timestamp(text),
        sf.try_to_timestamp(sf.regexp_replace(sf.upper(text), _MINUTES_ONLY, "$1:00$2")),
    )


def _kafka_time_known() -> Column:
    """A record's Kafka timestamp is set (a producer that sends none leaves -1 ms)."""
    return sf.col("kafka_timestamp") > sf.lit(0).cast("timestamp")


def _in_era(time_field: str) -> Check:
    """``time_field`` inside ``EVENT_ERA``."""
    first, end = EVENT_ERA
    return Check(
        f"{time_field} is outside the years {first.year}-{end.year - 1}",
        (sf.col(time_field) >= sf.lit(first)) & (sf.col(time_field) < sf.lit(end)),
    )


def _not_ahead(time_field: str, max_lead_minutes: int) -> Check:
    """``time_field`` no later than the record's Kafka timestamp plus ``max_lead_minutes``."""
    latest = sf.col("kafka_timestamp") + sf.expr(f"INTERVAL {max_lead_minutes} MINUTES")
    return Check(
        f"{time_field} is more than {max_lead_minutes} minutes ahead of its Kafka timestamp",
        ~_kafka_time_known() | (sf.col(time_field) <= latest),
    )


def _all(conditions: Sequence[Column]) -> Column:
    """The conjunction of ``conditions`` (evaluated left to right, stopping at the first false)."""
    return functools.reduce(operator.and_, conditions)


def valid_events(classified: DataFrame, schema: StructType) -> DataFrame:
    """The good records of ``classify_events``: the contract's fields plus the Kafka coordinates."""
    return classified.where(sf.col("error").isNull()).select(
        *[f.name for f in schema.fields], *_KAFKA_COLUMNS
    )


def dead_letters(classified: DataFrame) -> DataFrame:
    """The bad records of ``classify_events``, shaped like the ``dead_letters`` table (whose
    ``received_at`` the store sets as it writes them)."""
    return classified.where(sf.col("error").isNotNull()).select(
        sf.col("kafka_topic").alias("topic"),
        *[c for c in DEAD_LETTER_COLUMNS if c != "topic"],
    )


def parse_events(
    raw: DataFrame,
    schema: StructType,
    checks: Sequence[Check] = (),
    *,
    job: str,
    time_fields: Sequence[str] = ("event_time",),
    max_lead_minutes: int | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Split raw Kafka records into ``(valid, dead)`` frames; see ``classify_events``."""
    classified = classify_events(
        raw, schema, checks, job=job, time_fields=time_fields, max_lead_minutes=max_lead_minutes
    )
    return valid_events(classified, schema), dead_letters(classified)


def _with_watermark_time(frame: DataFrame, time_column: str) -> DataFrame:
    """``frame`` with ``WATERMARK_TIME``: ``time_column``, or the record's Kafka timestamp when the
    event claims a later time. A producer whose clock runs ahead then cannot move the watermark
    past the time the broker took its records, which would make every event after it late."""
    event_time, kafka_time = sf.col(time_column), sf.col("kafka_timestamp")
    ahead = _kafka_time_known() & (event_time > kafka_time)
    return frame.withColumn(WATERMARK_TIME, sf.when(ahead, kafka_time).otherwise(event_time))


def watermark_classified(
    classified: DataFrame, delay: str = "10 minutes", time_column: str = "event_time"
) -> DataFrame:
    """Watermark a ``classify_events`` frame by ``delay`` (on ``WATERMARK_TIME``, see
    ``_with_watermark_time``), dropping nothing, so that one query (one Kafka read) carries good and
    bad records. Bad records get a null ``time_column`` (they never move the watermark) and only
    they keep ``raw_payload`` (what ``dead_letters`` stores). With no stateful operator after it,
    the watermark (the newest bounded event time minus ``delay``) is reported in the progress and
    nothing is late: a job that keeps each event once by itself (the sales job, against its store)
    counts late events too. Split the batch with ``error``.
    """
    good = sf.col("error").isNull()
    kept = classified.withColumn(time_column, sf.when(good, sf.col(time_column))).withColumn(
        "raw_payload", sf.when(~good, sf.col("raw_payload"))
    )
    return _with_watermark_time(kept, time_column).withWatermark(WATERMARK_TIME, delay)


Key = TypeVar("Key")
Value = TypeVar("Value")


FeatureBuilder = Callable[[SparkSession, Store, DataFrame, date], DataFrame]


def default_feature_builder() -> FeatureBuilder | None:
    """The training package's ``build_scoring_features`` (one feature code path), if installed."""
    try:
        from training.features import build_scoring_features
    except ImportError:
        return None
    return build_scoring_features


def model_probes(
    spark: SparkSession, store: Store, feature_builder: FeatureBuilder | None, model_name: str
) -> list[Probe]:
    """Reject a new champion of ``model_name`` whose signature asks for columns the feature
    builder does not make, or whose pipeline cannot transform the rows it makes (Spark resolves
    the columns and types when it plans: a model logged without a signature is checked too)."""
    try:
        from training.features import KEY_COLUMNS, model_input_columns
    except ImportError:
        return []
    probes = [check_signature([*model_input_columns(model_name), *KEY_COLUMNS])]
    if feature_builder is not None:
        no_keys = spark.createDataFrame([], "store_id string, product_id string")
        today = datetime.now(UTC).date()
        probes.append(check_transform(feature_builder(spark, store, no_keys, today)))
    return probes


CANCELLED = ("cancelled", "canceled", "interrupted")  # Spark's words for a job a stop cut short
Result = TypeVar("Result")


class ModelTransformError(Exception):
    """A model's transform failed on a job's real features: the version to reject."""

    def __init__(self, cause: Exception, loaded: LoadedModel) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.loaded = loaded


def scored_by(loaded: LoadedModel, score: Callable[[], Result]) -> Result:
    """``score()``, a transform by ``loaded`` and its collect; its failure as a
    ``ModelTransformError``, unless a stop cancelled it (not the model's failure)."""
    try:
        return score()
    except Exception as exc:
        if any(word in str(exc).lower() for word in CANCELLED):
            raise
        raise ModelTransformError(exc, loaded) from exc


class ByDay(Generic[Key, Value]):
    """A job's cache of values by day and key that forgets whole days (``keep_newest``): a job
    that runs for months would otherwise hold every key it ever saw."""

    def __init__(self) -> None:
        self._days: dict[date, dict[Key, Value]] = {}

    def get(self, day: date, key: Key) -> Value | None:
        return self._days.get(day, {}).get(key)

    def put(self, day: date, key: Key, value: Value) -> None:
        self._days.setdefault(day, {})[key] = value

    def setdefault(self, day: date, key: Key, value: Value) -> Value:
        """The value held for ``key`` on ``day``, after holding ``value`` when there was none."""
        return self._days.setdefault(day, {}).setdefault(key, value)

    def keep_newest(self, days: int) -> None:
        """Forget every day before the newest ``days`` days (counted from the newest day held)."""
        if self._days:
            first_kept = max(self._days) - timedelta(days=days - 1)
            for day in [d for d in self._days if d < first_kept]:
                del self._days[day]

    def __len__(self) -> int:
        return sum(len(values) for values in self._days.values())


class StepTimer:
    """Seconds spent in each step of a batch, for the log line."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._steps: list[tuple[str, float]] = []

    def lap(self, step: str) -> None:
        now = time.monotonic()
        self._steps.append((step, now - self._last))
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{step} {seconds:.2f} s" for step, seconds in self._steps)


def batch_token(query_name: str, batch_id: int) -> str:
    """The insert deduplication token of one micro-batch: ``<query>-<batch id>``."""
    return f"{query_name}-{batch_id}"


def stream_token(spark: SparkSession, query_name: str, batch_id: int) -> str:
    """``<query>.<stream id>-<batch id>``: the batch token, unique to the query's checkpoint.

    The stream id survives restarts from the same checkpoint (a replayed batch gets the same token
    and is dropped) but differs for a new checkpoint (after ``submit_jobs.sh clean``), whose batch
    ids start at 0 again and must not be taken for replays of the old ones.
    """
    ids = [q.id for q in spark.streams.active if q.name == query_name]
    suffix = f".{ids[0]}" if ids else ""
    return batch_token(f"{query_name}{suffix}", batch_id)


def to_pandas(frame: DataFrame) -> pd.DataFrame:
    """Collect a (small, per-batch) frame to pandas through Arrow."""
    return frame.toPandas()


def to_arrow(frame: DataFrame) -> pa.Table:
    """Collect a (per-batch) frame as an Arrow table: no pandas objects for its strings."""
    return frame.toArrow()


def insert_batch(store: Store, table: str, frame: DataFrame | pd.DataFrame, token: str) -> int:
    """Insert one micro-batch's rows into ``table`` idempotently (``token`` = batch_token)."""
    rows = frame if isinstance(frame, pd.DataFrame) else to_pandas(frame)
    return store.insert_df(table, rows, dedup_token=token)


def repeated_events(store: Store, table: str, events: pa.Table, token: str) -> pa.Array:
    """Which of ``events`` (``event_id``, ``event_time``) ``table`` already holds: the same
    ``event_id`` on the same UTC day, whenever it arrived. Rows the batch ``token`` wrote itself (an
    earlier attempt of a replayed batch; ``table`` keeps each row's ``ingest_token``) are not
    repeats, so that a replay writes exactly what its first attempt did. One lookup per day."""
    days = pc.cast(events["event_time"], pa.date32())
    repeats = pa.repeat(False, events.num_rows)
    for day in pc.unique(days).to_pylist():
        of_day = pc.equal(days, day)
        known = store.known_keys(
            table,
            "event_id",
            events["event_id"].filter(of_day),
            "toDate(event_time) = {day:Date} AND ingest_token != {token:String}",
            {"day": day.isoformat(), "token": token},
        )
        if len(known):
            repeats = pc.or_(
                repeats, pc.and_(of_day, pc.is_in(events["event_id"], value_set=known))
            )
    return repeats


STORED_DEAD_LETTERS_SQL = """
SELECT topic, kafka_partition, kafka_offset, kafka_timestamp, raw_payload FROM dead_letters
WHERE has({topics:Array(String)}, topic) AND kafka_offset BETWEEN {low:Int64} AND {high:Int64}
"""


def store_dead_letters(store: Store, dead: pa.Table, token: str) -> int:
    """Insert a batch's dead letters (``token`` = batch_token) but the records the store already
    holds (same topic, partition, offset, Kafka timestamp and payload): a topic read again from
    its start (a new checkpoint, after ``submit_jobs.sh clean``) stores each bad record once, while
    a recreated topic's new record at an old offset is kept beside the old one. A row stored
    before ``kafka_timestamp`` was recorded (1970-01-01) matches on the rest. The rows written."""
    if dead.num_rows == 0:
        return 0
    stored = store.query_arrow(
        STORED_DEAD_LETTERS_SQL,
        {
            "topics": pc.unique(dead["topic"].cast(pa.string())).to_pylist(),
            "low": pc.min(dead["kafka_offset"]).as_py(),
            "high": pc.max(dead["kafka_offset"]).as_py(),
        },
    )
    known = pc.greater(_epoch_ms(stored), 0)
    seen = pc.or_(
        pc.is_in(_record_key(dead, timed=True), value_set=_record_key(stored, timed=True)),
        pc.is_in(_record_key(dead), value_set=_record_key(stored.filter(pc.invert(known)))),
    )
    new = dead.filter(pc.invert(seen))
    if new.num_rows:
        store.insert_df("dead_letters", new, dedup_token=token)
    return new.num_rows


def _epoch_ms(records: pa.Table) -> pa.ChunkedArray:
    """Each record's Kafka timestamp in epoch milliseconds (0: unknown)."""
    times = records["kafka_timestamp"].cast(pa.timestamp("ms", tz="UTC"), safe=False)
    return pc.fill_null(times.cast(pa.int64()), 0)


def _record_key(records: pa.Table, timed: bool = False) -> pa.ChunkedArray:
    """``topic|partition|offset|payload`` of each Kafka record, and its timestamp when ``timed``."""
    columns = ("topic", "kafka_partition", "kafka_offset", "raw_payload")
    texts = [pc.fill_null(records[c].cast(pa.string()), "") for c in columns]  # a null: stored ''
    if timed:
        texts.append(_epoch_ms(records).cast(pa.string()))
    return pc.binary_join_element_wise(*texts, "|")


def store_sink(
    table: str,
    query_name: str,
    settings: Settings,
    transform_batch: Callable[[DataFrame, int], DataFrame] | None = None,
) -> BatchFunction:
    """A ``foreachBatch`` function inserting each batch into ``table`` exactly once."""

    def write(batch: DataFrame, batch_id: int) -> None:
        frame = transform_batch(batch, batch_id) if transform_batch else batch
        token = stream_token(batch.sparkSession, query_name, batch_id)
        written = insert_batch(open_store(settings), table, frame, token)
        log.debug("%s batch %d: %d rows into %s", query_name, batch_id, written, table)

    return write


def write_to_store(
    table: str,
    query_name: str,
    settings: Settings,
    transform_batch: Callable[[DataFrame, int], DataFrame] | None = None,
) -> BatchFunction:
    """Alias of ``store_sink`` (the name the design notes use)."""
    return store_sink(table, query_name, settings, transform_batch)


def checkpoint_location(settings: Settings, job: str, query_name: str) -> Path:
    """``CHECKPOINT_DIR/<job>/<query>``: where a query keeps its offsets and state (created here,
    so that a folder the job cannot write is named in a message rather than a JVM trace)."""
    location = settings.checkpoint_root / job / query_name
    try:
        location.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            f"CHECKPOINT_DIR={settings.checkpoint_root}: cannot create {location} "
            f"({exc.strerror or type(exc).__name__}). Point CHECKPOINT_DIR (or DATA_DIR) at a "
            "folder this user can write."
        ) from None
    return location


class BatchGate:
    """Lets a stop land between two micro-batches of a ``foreachBatch`` query.

    Spark's ``StreamingQuery.stop()`` interrupts the running batch, and under steady input a batch
    is always running: the stop would cut a batch function short between two of its writes (safe,
    since replays write nothing twice, but the batch's work is lost). Once ``close()`` is called,
    the next batch parks at its start, before it reads or writes anything, in a JVM sleep on the
    query's own thread; ``stop()`` interrupts that sleep, which Spark counts as a stop rather than
    a failure (SPARK-39218). The parked batch was only planned: the next start runs it.
    """

    PARK_MS = 600_000  # far longer than a stop takes; a batch never leaves the park by itself

    def __init__(self, sink: BatchFunction) -> None:
        self.sink = sink
        self.closing = threading.Event()
        self.parked = threading.Event()

    def close(self) -> None:
        """Park the next batch (the running one finishes)."""
        self.closing.set()

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        if self.closing.is_set():
            self._park(batch, batch_id)
        self.sink(batch, batch_id)

    def _park(self, batch: DataFrame, batch_id: int) -> None:
        """Wait for ``stop()`` and end the batch with an error Spark reads as the stop. Never
        returns: Spark would commit a batch that returned, with nothing written."""
        from py4j.protocol import Py4JJavaError

        self.parked.set()
        log.info("batch %d parked before it started: the query is stopping", batch_id)
        jvm = batch.sparkSession.sparkContext._jvm  # noqa: SLF001 - py4j's view of the JVM
        try:
            jvm.java.lang.Thread.sleep(self.PARK_MS)  # runs on the query's thread (pinned mode)
        except Py4JJavaError as interrupted:
            # Spark tells a stop from a failure by matching the text Python sends back against
            # "py4j.protocol.Py4JJavaError: An error occurred while calling ... InterruptedException"
            # with a regex that overflows the stack on a full Java trace: send that line only.
            if "InterruptedException" not in str(interrupted.java_exception.toString()):
                raise
            raise BatchParked(
                f"py4j.protocol.Py4JJavaError: {interrupted.errmsg.strip()} "
                f"{interrupted.java_exception.toString()}"
            ) from None
        raise BatchParked(f"batch {batch_id} was parked for a stop that never came")


class BatchParked(Exception):  # noqa: N818 - it is the event, not an error of the job
    """A parked batch was interrupted by ``stop()`` (see ``BatchGate``)."""


class _NotAParkedBatch(logging.Filter):
    """py4j logs every exception a Python callback raises as an ERROR; a parked batch's is the
    stop working as meant."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[0] is BatchParked)


logging.getLogger("py4j.clientserver").addFilter(_NotAParkedBatch())


def start_query(
    frame: DataFrame,
    *,
    job: str,
    query_name: str,
    settings: Settings,
    sink: BatchFunction | Literal["console"],
    output_mode: str = "append",
    available_now: bool = False,
    trigger_interval: str | None = None,
) -> StreamingQuery:
    """Start ``frame`` as a named query into ``sink`` (a foreachBatch function or ``"console"``)."""
    writer = frame.writeStream.queryName(query_name).outputMode(output_mode)
    gate = None
    if sink == CONSOLE:
        location = checkpoint_location(settings, job, f"{query_name}.console")
        writer = writer.format("console").option("truncate", "false").option("numRows", 50)
    else:
        location = checkpoint_location(settings, job, query_name)
        gate = BatchGate(sink)
        writer = writer.foreachBatch(gate)
    writer = writer.option("checkpointLocation", str(location))
    if available_now:
        writer = writer.trigger(availableNow=True)
    elif trigger_interval:
        writer = writer.trigger(processingTime=trigger_interval)
    query = writer.start()
    _RESTARTS[str(query.id)] = writer.start
    if gate is not None:
        _GATES[str(query.id)] = gate
    log.info("started query %s of job %s (checkpoint %s)", query_name, job, location)
    return query


# How to start each query again from its checkpoint (by query id, which a restart keeps).
_RESTARTS: dict[str, Callable[[], StreamingQuery]] = {}
# The gate of each foreachBatch query (by query id), through which a stop parks its next batch.
_GATES: dict[str, BatchGate] = {}
MAX_RESTARTS = 3


def hit_kafka_metrics_bug(trace: str) -> bool:
    """The failure is Spark 4.1's NullPointerException in ``KafkaMicroBatchStream.metrics``
    (SPARK-55271): the first batch after a restart re-runs a batch planned before the crash, and
    its progress report fails *after* the batch was committed. Starting the query again is safe.
    ``trace`` is the JVM exception chain (``failure_trace``)."""
    return "java.lang.NullPointerException" in trace and "KafkaMicroBatchStream" in trace


def failure_trace(query: StreamingQuery) -> str:
    """The JVM exception chain (classes, messages, frames, causes) that ended ``query``."""
    from pyspark import SparkContext

    error = query._jsq.exception()  # noqa: SLF001 - pyspark gives no stack of the cause
    if not error.isDefined() or SparkContext._jvm is None:
        return ""
    return str(SparkContext._jvm.org.apache.spark.util.Utils.exceptionString(error.get()))


def _offsets(text: str | None) -> dict[tuple[str, str], int]:
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {
        (topic, partition): int(offset)
        for topic, partitions in parsed.items()
        if isinstance(partitions, dict)
        for partition, offset in partitions.items()
    }


def kafka_lag(sources: Iterable[Any]) -> int:
    """Messages behind the end of the topic after a batch, summed over the Kafka partitions."""
    lag = 0
    for source in sources:
        latest = _offsets(source.latestOffset)
        end = _offsets(source.endOffset)
        lag += sum(max(latest[key] - end.get(key, latest[key]), 0) for key in latest)
    return lag


def _watermark(event_time: dict[str, str]) -> datetime | None:
    value = (event_time or {}).get("watermark")
    if not value:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None if moment.timestamp() <= 0 else moment


def progress_row(job: str, progress: Any) -> dict[str, Any]:
    """One ``stream_progress`` row from a ``StreamingQueryProgress``."""
    return {
        "job": job,
        "query_name": progress.name or "",
        "query_id": str(progress.id),
        "batch_id": int(progress.batchId),
        "batch_time": datetime.fromisoformat(progress.timestamp.replace("Z", "+00:00")),
        "input_rows": int(progress.numInputRows or 0),
        "input_rows_per_second": float(progress.inputRowsPerSecond or 0.0),
        "processed_rows_per_second": float(progress.processedRowsPerSecond or 0.0),
        "batch_duration_ms": int(progress.batchDuration or 0),
        "lag_messages": kafka_lag(progress.sources),
        "watermark": _watermark(progress.eventTime),
        "late_rows": late_rows(progress.stateOperators),
    }


def late_rows(state_operators: Iterable[Any]) -> int:
    """Events the stateful operators dropped in a batch for being older than the watermark."""
    return sum(int(op.numRowsDroppedByWatermark or 0) for op in state_operators or ())


class GroupOffsets:
    """Commits to the job's consumer group the offsets that every one of its queries has finished,
    so that ``kafka-consumer-groups --describe --group <job>-group`` shows the job's lag. Spark
    resumes from its checkpoint, never from these offsets: they are for monitoring."""

    def __init__(self, settings: Settings, group: str, query_names: Iterable[str]) -> None:
        self.settings = settings
        self.group = group
        self.query_names = set(query_names)
        self._ends: dict[str, dict[tuple[str, str], int]] = {}
        self._committed: dict[tuple[str, str], int] = {}
        self._done: dict[tuple[str, str], int] = {}
        self._admin: Any = None
        self._failing = False

    def finished(self, query_name: str, sources: Iterable[Any]) -> None:
        """Note a query's finished batch (its sources' end offsets); commit what all finished."""
        self._ends[query_name] = {k: v for s in sources for k, v in _offsets(s.endOffset).items()}
        if set(self._ends) != self.query_names:
            return  # a query that has not finished a batch yet holds the group back
        ends = list(self._ends.values())
        self._done = {k: min(e[k] for e in ends) for k in set.intersection(*(set(e) for e in ends))}
        self._commit_done()

    def _commit_done(self) -> None:
        done = self._done
        if done == self._committed:
            return
        try:
            self._commit(done)
        except Exception as exc:  # monitoring: it must never stop the job
            if not self._failing:
                log.warning("could not commit offsets to group %s: %s", self.group, exc)
            self._failing = True
            return
        if self._failing:
            log.info("offsets committed to group %s again", self.group)
        self._failing = False
        self._committed = done

    @retry(
        retry=retry_if_exception_type(RetriableError),
        stop=stop_after_attempt(COMMIT_ATTEMPTS),
        wait=wait_fixed(1),
        reraise=True,
    )
    def _commit(self, offsets: dict[tuple[str, str], int]) -> None:
        """Commit ``offsets``; a new broker's group coordinator needs a moment (retried)."""
        from kafka import TopicPartition
        from kafka.admin import KafkaAdminClient
        from kafka.structs import OffsetAndMetadata

        if self._admin is None:
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                client_id=f"{self.group}-offsets",
                bootstrap_timeout_ms=COMMIT_TIMEOUT_MS,
                request_timeout_ms=COMMIT_TIMEOUT_MS,
            )
        answer = self._admin.alter_group_offsets(
            self.group,
            {
                TopicPartition(topic, int(partition)): OffsetAndMetadata(offset, "", -1)
                for (topic, partition), offset in offsets.items()
            },
        )
        failed = [e for e in answer.values() if e.__name__ != "NoError"]
        if failed:
            raise failed[0](f"group {self.group}: the broker refused {len(failed)} partition(s)")

    def close(self) -> None:
        """Commit what a failed commit left (once more), then close the client."""
        self._commit_done()
        if self._admin is not None:
            self._admin.close()


class ProgressRecorder(StreamingQueryListener):
    """Log each batch's progress of the named queries and, with ``record_progress``, write it to
    ``stream_progress`` and commit the finished offsets to the job's consumer group; warn once
    about a query that has had no events for ``quiet_after_s`` (``warn_quiet``)."""

    def __init__(
        self,
        job: str,
        settings: Settings,
        query_names: Iterable[str],
        quiet_after_s: float = QUIET_AFTER.total_seconds(),
        record_progress: bool = True,
    ) -> None:
        super().__init__()
        self.job = job
        self.settings = settings
        self.record_progress = record_progress
        self.group_offsets = GroupOffsets(settings, consumer_group(job), query_names)
        self.query_names = set(query_names)
        self.terminated: set[str] = set()
        self.quiet_after_s = quiet_after_s
        started = (time.monotonic(), None)
        # Per query: when its last events came (monotonic, and wall clock; None: none yet).
        self._last_events: dict[str, tuple[float, datetime | None]] = {
            name: started for name in self.query_names
        }
        self._quiet: set[str] = set()  # warned about, no events since
        self._lock = threading.Lock()  # progress comes on Spark's listener thread

    def warn_quiet(self) -> None:
        """Warn once about each query that has had no events for ``quiet_after_s``: a feed that
        stops altogether closes no window, so no anomaly can say so."""
        now = time.monotonic()
        with self._lock:
            for name, (at, wall) in sorted(self._last_events.items()):
                if name in self._quiet or now - at < self.quiet_after_s:
                    continue
                self._quiet.add(name)
                since = f"since {wall:%Y-%m-%d %H:%M:%S} UTC" if wall else "since the job started"
                log.warning(
                    "%s/%s: no events for %.0f min (%s): check the producers and the topic",
                    self.job,
                    name,
                    (now - at) / 60,
                    since,
                )

    def _events_came(self, name: str) -> None:
        now = time.monotonic()
        with self._lock:
            at, _ = self._last_events[name]
            self._last_events[name] = (now, datetime.now(UTC))
            if name in self._quiet:
                self._quiet.discard(name)
                log.info(
                    "%s/%s: events again after %.0f min without any",
                    self.job,
                    name,
                    (now - at) / 60,
                )

    def onQueryStarted(self, event: Any) -> None:  # noqa: N802 - Spark's listener API
        return None

    def onQueryProgress(self, event: Any) -> None:  # noqa: N802 - Spark's listener API
        progress = event.progress
        if progress.name not in self.query_names:
            return
        try:
            row = progress_row(self.job, progress)
            log.info(
                "%s/%s batch %d: %d rows, %.0f in/s, %.0f processed/s, %d ms, lag %d, watermark %s",
                self.job,
                row["query_name"],
                row["batch_id"],
                row["input_rows"],
                row["input_rows_per_second"],
                row["processed_rows_per_second"],
                row["batch_duration_ms"],
                row["lag_messages"],
                row["watermark"],
            )
            if row["input_rows"]:
                self._events_came(progress.name)
            if row["late_rows"]:
                log.warning(
                    "%s/%s batch %d dropped %d events older than the watermark %s: they are not "
                    "stored or counted; raise the job's watermark setting if they should count",
                    self.job,
                    row["query_name"],
                    row["batch_id"],
                    row["late_rows"],
                    row["watermark"],
                )
            if self.record_progress:
                frame = pd.DataFrame([row])
                frame["watermark"] = pd.to_datetime(frame["watermark"], utc=True)
                open_store(self.settings).insert_df("stream_progress", frame)
                self.group_offsets.finished(progress.name, progress.sources)
        except Exception:  # progress is diagnostics: it must never stop the job
            log.exception("could not record the progress of %s", progress.name)

    def onQueryIdle(self, event: Any) -> None:  # noqa: N802 - Spark's listener API
        return None

    def onQueryTerminated(self, event: Any) -> None:  # noqa: N802 - Spark's listener API
        self.terminated.add(str(event.id))


class _StopRequest:
    """Set by SIGTERM/SIGINT; the run loop then stops the queries between batches."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name = ""

    def __call__(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        self.event.set()


def stop_gracefully(query: StreamingQuery, timeout_s: float = 60.0) -> None:
    """Let the running batch (if any) finish, then stop ``query`` between two batches: when it is
    idle or, under steady input, with its next batch parked by its ``BatchGate`` (a console query
    has none: it is stopped when idle). After ``timeout_s`` it is stopped wherever it is."""
    gate = _GATES.get(str(query.id))
    if gate is not None:
        gate.close()

    def between_batches() -> bool:
        return (gate is not None and gate.parked.is_set()) or not query.status.get(
            "isTriggerActive"
        )

    deadline = time.monotonic() + timeout_s
    while query.isActive and not between_batches() and time.monotonic() < deadline:
        time.sleep(0.05)
    query.stop()


def _wait_for_end_or_stop(
    queries: list[StreamingQuery],
    recorder: ProgressRecorder,
    request: _StopRequest,
    stop: threading.Event,
    poll_interval_s: float,
) -> bool:
    """Block until every query ended, one failed (False), or a stop was requested (True).

    A query that hit the known Spark bug (``hit_kafka_metrics_bug``) is started again in place,
    at most ``MAX_RESTARTS`` times.
    """
    restarts = 0
    while True:
        for index, query in enumerate(queries):
            error = None if query.isActive else query.exception()
            if error is None:
                continue
            if not hit_kafka_metrics_bug(failure_trace(query)) or restarts >= MAX_RESTARTS:
                return False
            restarts += 1
            log.warning(
                "query %s hit Spark's Kafka metrics bug (SPARK-55271) after committing its batch; "
                "starting it again from the checkpoint",
                query.name,
            )
            queries[index] = _RESTARTS[str(query.id)]()
        if not any(q.isActive for q in queries):
            return False
        if request.event.is_set() or stop.is_set():
            log.info(
                "stop requested (%s): stopping %s after the running batch",
                request.signal_name or "by caller",
                ", ".join(q.name for q in queries),
            )
            return True
        _tend_idle_sinks(queries)
        recorder.warn_quiet()
        time.sleep(poll_interval_s)


def _sink_hook(query: StreamingQuery, name: str) -> Callable[[], None] | None:
    """The ``foreachBatch`` function's method ``name`` (``idle``, ``finish``) of ``query``, if any."""
    gate = _GATES.get(str(query.id))
    return getattr(gate.sink, name, None) if gate else None


def _tend_idle_sinks(queries: Sequence[StreamingQuery]) -> None:
    """Call ``idle()`` on each running query's ``foreachBatch`` function that has one while the
    query waits for data (no trigger running, the last one found nothing). A failure is logged:
    the query goes on, and its next batch or ``finish()`` does the work again."""
    for query in queries:
        idle = _sink_hook(query, "idle")
        if idle is None or not query.isActive:
            continue
        status = query.status
        if status.get("isTriggerActive") or status.get("isDataAvailable"):
            continue
        try:
            idle()
        except Exception:
            log.exception("query %s: the work it does while idle failed", query.name)


def _finish_sinks(queries: Sequence[StreamingQuery], stopping: bool) -> None:
    """Call ``finish()`` on each ended query's ``foreachBatch`` function that has one."""
    for query in queries:
        finish = _sink_hook(query, "finish")
        if finish is None:
            continue
        try:
            finish()
        except Exception as exc:  # a stop by signal may have reached the JVM too
            if not stopping:
                raise
            log.warning("query %s did not finish cleanly: %s", query.name, str(exc)[:300])


def _await_termination_events(
    recorder: ProgressRecorder, queries: Sequence[StreamingQuery], timeout_s: float = 10.0
) -> None:
    """Let Spark deliver the queries' last listener events before the listener goes away."""
    deadline = time.monotonic() + timeout_s
    wanted = {str(q.id) for q in queries}
    while not wanted <= recorder.terminated and time.monotonic() < deadline:
        time.sleep(0.1)


def run_queries(
    spark: SparkSession,
    queries: Sequence[StreamingQuery],
    *,
    job: str,
    settings: Settings,
    stop: threading.Event | None = None,
    poll_interval_s: float = 0.5,
    stop_timeout_s: float = 60.0,
    quiet_after_s: float = QUIET_AFTER.total_seconds(),
    record_progress: bool = True,
) -> list[StreamingQuery]:
    """Run ``queries`` until they end (AvailableNow), one fails, or SIGTERM/SIGINT/``stop`` arrives.

    Progress of every batch goes to the log and, with ``record_progress`` (off for the console
    sink, which leaves the store and the group alone), to ``stream_progress``, and the offsets
    every query finished are committed to the job's consumer group. On a stop request each query
    finishes its running batch and stops; the checkpoint then resumes from the next one. If one
    query fails the others are stopped and the failure is raised. Once the queries ended without
    failing, each ``foreachBatch`` function with a ``finish()`` method has it called (work a job
    throttles while batches run, such as the sales job's anomaly judging); while a query waits for
    data, its function's ``idle()``, if it has one, is called at each poll. A query without events
    for ``quiet_after_s`` is logged as a warning, once until its events return. Returns the queries as
    they ended (a query restarted after SPARK-55271 is a new ``StreamingQuery`` object).
    """
    queries = list(queries)
    recorder = ProgressRecorder(
        job, settings, [q.name for q in queries], quiet_after_s, record_progress
    )
    spark.streams.addListener(recorder)
    request = _StopRequest()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main_thread:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, request)
    stop = stop or threading.Event()
    try:
        stopping = _wait_for_end_or_stop(queries, recorder, request, stop, poll_interval_s)
        for query in queries:
            try:
                if query.isActive:
                    stop_gracefully(query, stop_timeout_s)
            except Exception as exc:  # e.g. the JVM got the signal too and is shutting down
                if not stopping:
                    raise
                log.warning("query %s did not stop cleanly: %s", query.name, str(exc)[:300])
        if not stopping:
            for query in queries:
                error = query.exception()
                if error is not None:
                    raise RuntimeError(f"query {query.name} of job {job} failed: {error}") from None
        _finish_sinks(queries, stopping)
        _await_termination_events(recorder, queries)
        log.info("job %s stopped; it resumes from its checkpoints", job)
        return queries
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        spark.streams.removeListener(recorder)
        recorder.group_offsets.close()
