"""The sales streaming job: raw events, 5-minute sliding window metrics per store and overall,
in-stream demand scoring with the champion model, and anomalies, exactly once into the store.

Pure transforms (static or streaming frames): ``parse_sales``/``classify_sales``,
``sales_panes`` (and ``panes_of_rows``, the same on a collected batch in Arrow),
``windows_from_panes``, ``windowed_sales_metrics`` (panes, the job's way),
``sliding_window_metrics`` (Spark's sliding ``window()``, the slow way, used for the console sink),
``score_demand``, ``detect_sales_anomalies`` and ``detect_store_silences``. ``SalesBatchWriter``
is the ``foreachBatch`` wiring and ``main()`` starts the query.

How a micro-batch becomes store rows (results do not depend on how events fall into batches):
each batch keeps the first of each ``event_id`` and UTC day that ``sales_events`` does not hold
yet (late or not: nothing valid is dropped), then inserts its dead letters, raw events and 1-minute
pane partials (revenue in millionths, distinct id arrays) with the token
``<query>.<stream id>-<batch id>`` (``stream_token``); the 5-minute windows holding the batch's
panes are recomputed from all partials of their panes (``sum`` and ``uniqExactArray``: exact) into
``sales_metrics_versions``, whose latest row per window the view ``sales_metrics`` shows.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as sf
from pyspark.sql.streaming import StreamingQuery

from common.models import (
    ChampionModel,
    LoadedModel,
    use_tracking_server,
)
from common.schemas import OVERALL, SALES_EVENT_SCHEMA
from common.settings import Settings, get_settings
from common.store import Store, open_store
from streaming.runtime import (
    CONSOLE,
    DEAD_LETTER_COLUMNS,
    WATERMARK_TIME,
    ByDay,
    Check,
    FeatureBuilder,
    ModelTransformError,
    StepTimer,
    check_source,
    checkpoint_location,
    classify_events,
    default_feature_builder,
    model_probes,
    parse_events,
    read_topic,
    repeated_events,
    run_queries,
    scored_by,
    start_query,
    store_dead_letters,
    stream_token,
    to_arrow,
    to_pandas,
    watermark_classified,
)

log = logging.getLogger(__name__)

JOB = "sales-stream"
DEMAND_MODEL = "demand_forecaster"
PANE_MINUTES = 1
WINDOW_MINUTES = 5
MICROS = 1_000_000  # panes sum revenue in whole millionths: exact, and amounts below a cent count
MINUTES_PER_DAY = 24 * 60
ANOMALY_INTERVAL_S = 30.0  # closed windows are judged at most this often (wall clock)
CATCH_UP_INTERVAL_S = 300.0  # ... and, while full batches lag this far (a backlog), this often
SCORED_DAYS_KEPT = 2  # newest days whose scored pairs (and catalogue) a job remembers
SCORED_SPAN = dt.timedelta(days=SCORED_DAYS_KEPT - 1)  # from the first of those days to the last
CATALOGUE_DAYS = 28  # days of events before a day that give the catalogue to score on it
MAX_JUDGED_SPAN = dt.timedelta(hours=6)  # event time judged for anomalies in one go
FIRST_JUDGED_MAX = dt.timedelta(days=1)  # a new query judges at most this far back
SILENCE_MAX_MINUTES = 6 * 60  # a silence's row grows until its store sells again, up to this
PROFILE_DAYS = 28  # days of sales before the judged one that give a store's hourly profile
PROFILE_MIN_DAYS = 3  # a store with sales on fewer of them has no profile
BASKETS_MIN = 30  # a store with fewer baskets in those days has no typical basket from them


def _ids_present(*names: str) -> Column:
    condition = sf.lit(True)
    for name in names:
        condition = condition & (sf.length(sf.trim(sf.col(name))) > 0)
    return condition


def sales_checks() -> tuple[Check, ...]:
    """The rules a parsed sales event must satisfy (impossible values go to dead letters)."""
    return (
        Check("quantity must be > 0", sf.col("quantity") > 0),
        Check(
            "unit_price must be > 0 and <= 1e6",
            (sf.col("unit_price") > 0) & (sf.col("unit_price") <= 1e6),
        ),
        Check("discount must be in [0, 1)", (sf.col("discount") >= 0) & (sf.col("discount") < 1)),
        Check("total_amount must be between 0 and 1e9", sf.col("total_amount").between(0, 1e9)),
        Check(
            "event_id, transaction_id, store_id and product_id must not be blank",
            _ids_present("event_id", "transaction_id", "store_id", "product_id"),
        ),
        Check(f"store_id '{OVERALL}' names the overall rows", sf.col("store_id") != OVERALL),
    )


def parse_sales(
    raw: DataFrame, job: str = JOB, max_lead_minutes: int | None = None
) -> tuple[DataFrame, DataFrame]:
    """Raw Kafka records -> (valid sales events, dead letters)."""
    return parse_events(
        raw, SALES_EVENT_SCHEMA, sales_checks(), job=job, max_lead_minutes=max_lead_minutes
    )


def classify_sales(
    raw: DataFrame, job: str = JOB, max_lead_minutes: int | None = None
) -> DataFrame:
    """Raw Kafka records -> every record parsed, with ``error`` null for a valid sales event
    (``max_lead_minutes``: see ``classify_events``)."""
    return classify_events(
        raw, SALES_EVENT_SCHEMA, sales_checks(), job=job, max_lead_minutes=max_lead_minutes
    )


RAW_SALES_COLUMNS = SALES_EVENT_SCHEMA.fieldNames()  # sales_events.source defaults to 'stream'


def storable_rows(classified: DataFrame) -> DataFrame:
    """One frame holding both what ``sales_events`` and ``dead_letters`` need, so that a batch is
    collected once: the event's fields, ``error``, the dead-letter columns, which only bad
    records carry (``watermark_classified`` already kept the raw payload of bad records only),
    and ``WATERMARK_TIME``, how far the event moves the job's clock."""
    bad = sf.col("error").isNotNull()
    return classified.select(
        *[f.name for f in SALES_EVENT_SCHEMA.fields if f.name != "on_promotion"],
        sf.coalesce(sf.col("on_promotion").cast("int"), sf.lit(0)).alias("on_promotion"),
        WATERMARK_TIME,
        "error",
        sf.when(bad, sf.col("kafka_topic")).alias("topic"),
        *[
            sf.when(bad, sf.col(name)).alias(name)
            for name in (
                "kafka_partition",
                "kafka_offset",
                "kafka_timestamp",
                "payload_encoding",
                "job",
            )
        ],
        "raw_payload",
    )


def sales_panes(events: DataFrame) -> DataFrame:
    """1-minute pane partials per store and overall (``store_id`` 'ALL').

    Columns: pane_start, store_id, revenue_micros (sum of total_amount in whole millionths, so
    sums are exact and keep amounts below a cent), units, line_items, transaction_ids and customer_ids (distinct, in no particular order;
    anonymous customers are not counted).
    """
    lines = events.select(
        sf.date_trunc("minute", "event_time").alias("pane_start"),
        "store_id",
        "transaction_id",
        "customer_id",
        sf.round(sf.col("total_amount") * MICROS).cast("long").alias("revenue_micros"),
        sf.col("quantity").cast("long").alias("units"),
    )
    panes = lines.groupingSets(
        [["pane_start", "store_id"], ["pane_start"]], "pane_start", "store_id"
    ).agg(
        sf.sum("revenue_micros").alias("revenue_micros"),
        sf.sum("units").alias("units"),
        sf.count(sf.lit(1)).alias("line_items"),
        sf.collect_set("transaction_id").alias("transaction_ids"),
        sf.collect_set("customer_id").alias("customer_ids"),
        sf.grouping("store_id").alias("is_overall"),
    )
    return panes.select(
        "pane_start",
        sf.when(sf.col("is_overall") == 1, sf.lit(OVERALL))
        .otherwise(sf.col("store_id"))
        .alias("store_id"),
        "revenue_micros",
        "units",
        "line_items",
        "transaction_ids",
        "customer_ids",
    )


PANE_COLUMNS = [
    "pane_start",
    "store_id",
    "revenue_micros",
    "units",
    "line_items",
    "transaction_ids",
    "customer_ids",
]


def whole_micros(amounts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Amounts in whole millionths, half up: Spark's ``round(amount * MICROS)`` for amounts >= 0."""
    scaled = amounts.to_numpy(zero_copy_only=False).astype("float64") * MICROS
    floor = np.floor(scaled)
    return pa.array((floor + (scaled - floor >= 0.5)).astype("int64"))


_PANE_AGGREGATES = [
    ("revenue_micros", "sum"),
    ("units", "sum"),
    ("units", "count"),
    ("transaction_id", "distinct", pc.CountOptions(mode="only_valid")),
    ("customer_id", "distinct", pc.CountOptions(mode="only_valid")),
]


def panes_of_rows(rows: pa.Table) -> pa.Table:
    """``sales_panes`` of valid events a micro-batch already collected (Arrow, same columns).

    The job computes its panes here, with Arrow's vectorised group-by, rather than with a second
    Spark job over the same rows.
    """
    lines = pa.table(
        {
            "pane_start": pc.floor_temporal(rows["event_time"], unit="minute"),
            "store_id": rows["store_id"],
            "transaction_id": rows["transaction_id"],
            "customer_id": rows["customer_id"],
            "revenue_micros": whole_micros(rows["total_amount"]),
            "units": pc.cast(rows["quantity"], pa.int64()),
        }
    )
    overall = lines.set_column(
        1, "store_id", pa.array([OVERALL] * lines.num_rows, type=pa.string())
    )
    panes = [
        part.group_by(["pane_start", "store_id"], use_threads=False).aggregate(_PANE_AGGREGATES)
        for part in (lines, overall)
    ]
    return (
        pa.concat_tables(panes)
        .rename_columns(
            {
                "revenue_micros_sum": "revenue_micros",
                "units_sum": "units",
                "units_count": "line_items",
                "transaction_id_distinct": "transaction_ids",
                "customer_id_distinct": "customer_ids",
            }
        )
        .select(PANE_COLUMNS)
    )


def _window_metrics(frame: DataFrame, revenue_micros: Column) -> DataFrame:
    revenue = (revenue_micros / MICROS).alias("revenue")
    return frame.select(
        "window_start",
        (sf.col("window_start") + sf.make_dt_interval(mins=sf.lit(WINDOW_MINUTES))).alias(
            "window_end"
        ),
        "store_id",
        revenue,
        sf.col("transactions").cast("long").alias("transactions"),
        sf.col("customers").cast("long").alias("customers"),
        sf.col("units").cast("long").alias("units"),
        sf.col("line_items").cast("long").alias("line_items"),
        sf.when(sf.col("transactions") > 0, revenue / sf.col("transactions"))
        .otherwise(0.0)
        .alias("avg_basket"),
        sf.when(sf.col("transactions") > 0, sf.col("units") / sf.col("transactions"))
        .otherwise(0.0)
        .alias("units_per_transaction"),
    )


def windows_from_panes(panes: DataFrame) -> DataFrame:
    """Combine 1-minute panes into 5-minute windows sliding by 1 minute (exact distinct counts).

    Output: window_start, window_end, store_id, revenue, transactions, customers, units,
    line_items, avg_basket, units_per_transaction.
    """
    offsets = sf.sequence(sf.lit(0), sf.lit(WINDOW_MINUTES // PANE_MINUTES - 1))
    spread = panes.select("*", sf.explode(offsets).alias("offset")).withColumn(
        "window_start", sf.col("pane_start") - sf.make_dt_interval(mins=sf.col("offset"))
    )
    combined = spread.groupBy("window_start", "store_id").agg(
        sf.sum("revenue_micros").alias("revenue_micros"),
        sf.size(sf.array_distinct(sf.flatten(sf.collect_list("transaction_ids")))).alias(
            "transactions"
        ),
        sf.size(sf.array_distinct(sf.flatten(sf.collect_list("customer_ids")))).alias("customers"),
        sf.sum("units").alias("units"),
        sf.sum("line_items").alias("line_items"),
    )
    return _window_metrics(combined, sf.col("revenue_micros"))


def windowed_sales_metrics(events: DataFrame) -> DataFrame:
    """5-minute windows sliding by 1 minute, per store and overall, from sales events (via panes)."""
    return windows_from_panes(sales_panes(events))


def sliding_window_metrics(events: DataFrame) -> DataFrame:
    """The same metrics with Spark's sliding ``window()`` (each event lands in five windows).

    Works on a streaming frame too (exact distinct counts through ``collect_set``), which is what
    the console sink shows.
    """
    lines = events.select(
        sf.window("event_time", f"{WINDOW_MINUTES} minutes", f"{PANE_MINUTES} minute").alias("w"),
        "store_id",
        "transaction_id",
        "customer_id",
        sf.round(sf.col("total_amount") * MICROS).cast("long").alias("revenue_micros"),
        sf.col("quantity").cast("long").alias("units"),
    )
    # One aggregation (a rollup), so that it also runs as a single streaming aggregation.
    combined = (
        lines.rollup("w", "store_id")
        .agg(
            sf.sum("revenue_micros").alias("revenue_micros"),
            sf.size(sf.collect_set("transaction_id")).alias("transactions"),
            sf.size(sf.collect_set("customer_id")).alias("customers"),
            sf.sum("units").alias("units"),
            sf.count(sf.lit(1)).alias("line_items"),
            sf.grouping("store_id").alias("is_overall"),
        )
        .where(sf.col("w").isNotNull())
        .select(
            "*",
            sf.col("w.start").alias("window_start"),
            sf.when(sf.col("is_overall") == 1, sf.lit(OVERALL))
            .otherwise(sf.col("store_id"))
            .alias("store_key"),
        )
        .drop("store_id")
        .withColumnRenamed("store_key", "store_id")
    )
    return _window_metrics(combined, sf.col("revenue_micros"))


def score_demand(features: DataFrame, loaded: LoadedModel, date_column: str = "date") -> DataFrame:
    """Expected units per store, product and day from one pinned model version.

    Output: store_id, product_id, forecast_date, predicted_units (never negative), model_name,
    model_version: every row of one call carries the same version.
    """
    scored = loaded.model.transform(features)
    return scored.select(
        "store_id",
        "product_id",
        sf.col(date_column).cast("date").alias("forecast_date"),
        sf.greatest(sf.col("prediction").cast("double"), sf.lit(0.0)).alias("predicted_units"),
        sf.lit(loaded.name).alias("model_name"),
        sf.lit(loaded.version).alias("model_version"),
    )


@dataclass(frozen=True)
class AnomalyRules:
    """How far a closed window must stray, and from what, to be an anomaly."""

    baseline_minutes: int = 60  # preceding windows (not overlapping the judged one) in the baseline
    min_history: int = 10  # fewer baseline windows: no judgement yet
    threshold: float = 3.5  # |robust z| from the median/MAD baseline
    critical_threshold: float = 7.0
    model_tolerance: float = 0.5  # relative gap to the model's expectation, same direction
    min_scale_fraction: float = 0.05  # the MAD scale is at least this share of the median
    min_scale: float = 1.0  # and at least one unit (or currency unit)

    @classmethod
    def from_settings(cls, settings: Settings) -> AnomalyRules:
        """The rules with the thresholds of SALES_ANOMALY_* settings."""
        return cls(
            baseline_minutes=settings.sales_anomaly_baseline_minutes,
            threshold=settings.sales_anomaly_z,
            critical_threshold=2 * settings.sales_anomaly_z,
            model_tolerance=settings.sales_anomaly_model_tolerance,
        )


def _array_median(values: Column) -> Column:
    """The exact median of an array of numbers (null when empty)."""
    ordered = sf.array_sort(values)
    n = sf.size(ordered)
    middle = sf.floor(n / 2).cast("int")
    return (
        sf.when(n == 0, sf.lit(None).cast("double"))
        .when(n % 2 == 1, sf.element_at(ordered, middle + 1))
        .otherwise((sf.element_at(ordered, middle) + sf.element_at(ordered, middle + 1)) / 2)
    )


def _array_quantile(values: Column, q: float) -> Column:
    """The ``q`` quantile of an array of numbers, nearest rank (null when empty)."""
    rank = sf.greatest(sf.ceil(sf.size(values) * q).cast("int"), sf.lit(1))
    return sf.when(sf.size(values) > 0, sf.element_at(sf.array_sort(values), rank))


_JUDGED_METRICS = ("revenue", "units")  # an anomaly is in one of these
_JUDGED_QUANTITIES = (*_JUDGED_METRICS, "transactions")  # what the baselines hold


def _store_windows(
    metrics: DataFrame, judge_after: dt.datetime, judge_until: dt.datetime
) -> DataFrame:
    """The store windows of ``metrics`` (``observed``) plus a zero row for each judged minute
    without one since the store's first window there (before it, its history is unknown: a store
    that opens, or sells for the first time, is not judged against zeros it never had)."""
    observed = metrics.select(
        "store_id",
        "window_start",
        *[sf.col(c).cast("double").alias(c) for c in _JUDGED_QUANTITIES],
        sf.lit(True).alias("observed"),
    )
    first_judged = judge_after - dt.timedelta(minutes=WINDOW_MINUTES - PANE_MINUTES)
    last_judged = max(judge_until - dt.timedelta(minutes=WINDOW_MINUTES), first_judged)
    judged_starts = observed.sparkSession.range(1).select(
        sf.explode(
            sf.sequence(
                sf.lit(first_judged),
                sf.lit(last_judged),
                sf.make_dt_interval(mins=sf.lit(PANE_MINUTES)),
            )
        ).alias("window_start")
    )
    first_seen = observed.groupBy("store_id").agg(sf.min("window_start").alias("first_window"))
    silent = (
        first_seen.crossJoin(judged_starts)
        .where(sf.col("window_start") > sf.col("first_window"))
        .join(observed, ["store_id", "window_start"], "left_anti")
        .select(
            "store_id",
            "window_start",
            *[sf.lit(0.0).alias(c) for c in _JUDGED_QUANTITIES],
            sf.lit(False).alias("observed"),
        )
    )
    return observed.unionByName(silent)


def _with_baselines(
    metrics: DataFrame, judge_after: dt.datetime, judge_until: dt.datetime, baseline_minutes: int
) -> DataFrame:
    """The judged store windows (``_store_windows``), each with the revenue, units and
    transactions of its baseline windows as arrays. A store's missing windows count as zero from
    its first window within the baseline minutes before the judged one: after a longer silence,
    as before its first window, its history is unknown, and a store that sells again is judged on
    its own windows, as one that opens. So a window's baseline is the same however the judged
    spans fall (``metrics`` from ``baseline_minutes + 5`` before ``judge_after`` or earlier)."""
    windows = _store_windows(metrics, judge_after, judge_until)
    seconds = sf.unix_timestamp("window_start")
    by_time = Window.partitionBy("store_id").orderBy(seconds)
    before = by_time.rangeBetween(-baseline_minutes * 60, -WINDOW_MINUTES * 60)
    known_since = by_time.rangeBetween(-baseline_minutes * 60, 0)
    window_end = sf.col("window_start") + sf.make_dt_interval(mins=sf.lit(WINDOW_MINUTES))
    rows = windows.select(
        "*",
        window_end.alias("window_end"),
        # collect_list skips nulls: the observed windows only, the zeros are padded below.
        *[
            sf.collect_list(sf.when(sf.col("observed"), sf.col(c)))
            .over(before)
            .alias(f"baseline_{c}")
            for c in _JUDGED_QUANTITIES
        ],
        sf.min(sf.when(sf.col("observed"), seconds)).over(known_since).alias("known_since"),
    ).where(
        (sf.col("window_end") > sf.lit(judge_after)) & (sf.col("window_end") <= sf.lit(judge_until))
    )
    earliest = sf.col("known_since")
    latest = seconds - WINDOW_MINUTES * 60
    expected = sf.when(latest >= earliest, ((latest - earliest) / 60).cast("int") + 1).otherwise(0)

    def padded(column: str) -> Column:
        zeros = sf.greatest(expected - sf.size(column), sf.lit(0))
        return sf.concat(sf.col(column), sf.array_repeat(sf.lit(0.0), zeros))

    return rows.select(
        "store_id",
        "window_start",
        "window_end",
        *_JUDGED_QUANTITIES,
        *[padded(f"baseline_{c}").alias(f"baseline_{c}") for c in _JUDGED_QUANTITIES],
    )


JUDGED_WINDOWS_SCHEMA = (  # what ``detect_sales_anomalies`` reads of each window
    "window_start timestamp, store_id string, revenue double, units double, transactions double"
)
PROFILE_SCHEMA = "store_id string, hour int, share double"
BASKETS_SCHEMA = "store_id string, revenue double, units double"


@dataclass(frozen=True)
class StoreHistory:
    """What the stores' past sales say about a judged day: hourly profiles (``hourly_profile``)
    and typical baskets (store_id, revenue, units: root mean squares per transaction)."""

    profile: pd.DataFrame
    baskets: pd.DataFrame


def hourly_profile(units: pd.DataFrame, min_days: int = PROFILE_MIN_DAYS) -> pd.DataFrame:
    """Each store's share of a day's units sold in each hour of the day (UTC), and ``ALL``'s.

    ``units``: store_id, day, hour, units (a store's sales per day and hour). Output: store_id,
    hour, share, for the stores with sales on at least ``min_days`` days; an hour in which a store
    never sold has no row (share 0). A store's shares sum to 1.
    """
    columns = ["store_id", "hour", "share"]
    overall = units.assign(store_id=OVERALL)
    both = pd.concat([units[units["store_id"] != OVERALL], overall], ignore_index=True)
    days = both.groupby("store_id")["day"].nunique()
    kept = both[both["store_id"].isin(days[days >= min_days].index)]
    if kept.empty:
        return pd.DataFrame(columns=columns)
    per_hour = kept.groupby(["store_id", "hour"], as_index=False)["units"].sum()
    per_hour = per_hour[per_hour["units"] > 0]
    totals = per_hour.groupby("store_id")["units"].transform("sum")
    shares = per_hour.assign(
        hour=per_hour["hour"].astype("int32"), share=per_hour["units"] / totals
    )
    return shares[columns].reset_index(drop=True)


def _hourly_shares(profile: DataFrame) -> DataFrame:
    """store_id, hourly_share: each store's ``profile`` as a map from the hour to its share."""
    return profile.groupBy("store_id").agg(
        sf.map_from_entries(
            sf.collect_list(sf.struct(sf.col("hour").cast("int"), sf.col("share").cast("double")))
        ).alias("hourly_share")
    )


def _with_hourly_shares(frame: DataFrame, profile: DataFrame) -> DataFrame:
    """``frame`` (with store_id) and ``hourly_share``, the store's ``profile`` as a map from the
    hour to its share: ``ALL``'s for a store without one of its own (a new store keeps the chain's
    hours until it has sold on ``PROFILE_MIN_DAYS`` days), null when neither has one."""
    shares = _hourly_shares(profile)
    chain = shares.where(sf.col("store_id") == OVERALL).select(
        sf.col("hourly_share").alias("chain_share")
    )
    return (
        frame.join(sf.broadcast(shares), "store_id", "left")
        .join(sf.broadcast(chain), sf.lit(True), "left")
        .withColumn("hourly_share", sf.coalesce("hourly_share", "chain_share"))
        .drop("chain_share")
    )


def _with_store_hours(frame: DataFrame, profile: DataFrame | None) -> DataFrame:
    """``frame`` with two columns from the store's hourly ``profile`` (store_id, hour, share; the
    chain's for a store without one, see ``_with_hourly_shares``) for its window's 5 minutes:
    ``day_share``, the share of the store's day they hold (5/1440 without a profile), and
    ``open_share``, the share of them in hours the store sells in (1 without a profile)."""
    if profile is None:
        return frame.select(
            "*",
            sf.lit(WINDOW_MINUTES / MINUTES_PER_DAY).alias("day_share"),
            sf.lit(1.0).alias("open_share"),
        )
    first_hour = sf.hour("window_start")
    minutes = (  # (minutes of the window, hour of the day they are in)
        (sf.least(sf.lit(WINDOW_MINUTES), 60 - sf.minute("window_start")), first_hour),
        (
            sf.greatest(sf.minute("window_start") - (60 - WINDOW_MINUTES), sf.lit(0)),
            (first_hour + 1) % 24,
        ),
    )

    def share(hour: Column) -> Column:
        return sf.coalesce(sf.try_element_at("hourly_share", hour), sf.lit(0.0))

    day_share = sum(count * share(hour) for count, hour in minutes) / 60
    open_share = (
        sum(count * (share(hour) > 0).cast("int") for count, hour in minutes) / WINDOW_MINUTES
    )
    known = sf.col("hourly_share").isNotNull()
    return (
        _with_hourly_shares(frame, profile)
        .select(
            "*",
            sf.when(known, day_share)
            .otherwise(WINDOW_MINUTES / MINUTES_PER_DAY)
            .alias("day_share"),
            sf.when(known, open_share).otherwise(1.0).alias("open_share"),
        )
        .drop("hourly_share")
    )


def _with_expectations(frame: DataFrame, expectations: DataFrame | None) -> DataFrame:
    """``frame`` (store_id, forecast_date, ...) with the champion's ``expected_units_day``,
    ``model_name`` and ``model_version`` for the store's day (nulls without ``expectations``)."""
    if expectations is None:
        return frame.select(
            "*",
            sf.lit(None).cast("double").alias("expected_units_day"),
            sf.lit(None).cast("string").alias("model_name"),
            sf.lit(None).cast("string").alias("model_version"),
        )
    return frame.join(
        sf.broadcast(
            expectations.select(
                "store_id", "forecast_date", "expected_units_day", "model_name", "model_version"
            )
        ),
        ["store_id", "forecast_date"],
        "left",
    )


def detect_sales_anomalies(
    metrics: DataFrame,
    judge_after: dt.datetime,
    judge_until: dt.datetime,
    expectations: DataFrame | None = None,
    rules: AnomalyRules = AnomalyRules(),
    profile: DataFrame | None = None,
    baskets: DataFrame | None = None,
) -> DataFrame:
    """Judge the windows with ``judge_after < window_end <= judge_until`` against their baseline.

    ``metrics``: window_start, store_id, revenue, units, transactions for the judged windows and
    the ``baseline_minutes`` before them (a store's missing windows count as zero sales).
    ``expectations``: store_id, forecast_date, expected_units_day, model_name, model_version (the
    champion's daily forecast summed over the store's products; ``ALL`` for the overall row), or
    None. A window is an anomaly when its robust z-score ``(observed - median) / scale`` reaches
    ``threshold`` (``scale``: the largest of 1.4826 MAD, the deviations' 80th percentile / 1.2816,
    5% of the median, 1, and the spread of baskets arriving at random: see below) and, when the
    model has an expectation for it, it also strays from that expectation by ``model_tolerance``
    in the same direction. The model's daily units are spread over the day by
    the store's hourly ``profile`` (store_id, hour, share: ``hourly_profile``), or evenly for a
    store without one; its revenue expectation uses the baseline's revenue per unit.
    A window partly in hours the profile says the store is closed is also scored against its
    baseline scaled down to its open minutes, and the smaller score is kept: a store that closes
    at its usual hour is not below its baseline.

    The baskets' spread is ``b x (sqrt(mean baskets per baseline window) +- (z^2 - 1) / 6z)`` (+
    above the median, - below), with ``b`` the root mean square basket (revenue or units per
    transaction) of the store's ``baskets`` (store_id, revenue, units: its history), else of its
    baseline, else the window's own. So a basket or two in a store that sells a few an hour is not
    a surge, a store's usual big basket is not either, and an empty window of a store that sells a
    basket a window is not a drop.
    """
    judged = _with_store_hours(
        _with_baselines(metrics, judge_after, judge_until, rules.baseline_minutes), profile
    )
    if baskets is None:
        baskets = metrics.sparkSession.createDataFrame([], BASKETS_SCHEMA)
    usual = baskets.select(
        "store_id", *[sf.col(c).cast("double").alias(f"usual_{c}") for c in _JUDGED_METRICS]
    )
    judged = judged.join(sf.broadcast(usual), "store_id", "left")
    total_units = sf.aggregate("baseline_units", sf.lit(0.0), lambda acc, x: acc + x)
    total_revenue = sf.aggregate("baseline_revenue", sf.lit(0.0), lambda acc, x: acc + x)
    long = judged.select(
        "store_id",
        "window_start",
        "window_end",
        "day_share",
        "open_share",
        "transactions",
        "baseline_transactions",
        sf.when(total_units > 0, total_revenue / total_units).alias("revenue_per_unit"),
        sf.explode(
            sf.array(
                *[
                    sf.struct(
                        sf.lit(metric).alias("metric"),
                        sf.col(metric).alias("observed"),
                        sf.col(f"baseline_{metric}").alias("values"),
                        sf.col(f"usual_{metric}").alias("usual_basket"),
                    )
                    for metric in _JUDGED_METRICS
                ]
            )
        ).alias("m"),
    ).select("*", "m.metric", "m.observed", "m.values", "m.usual_basket")
    # Materialized: the MAD's lambda refers to the median, and Spark would otherwise inline the
    # median (a sort) into it for every element, and both into every use of the score (6,630
    # windows: 70 s instead of 2 s).
    with_median = long.withColumn("median", _array_median(sf.col("values"))).localCheckpoint()
    deviations = sf.transform("values", lambda x: sf.abs(x - sf.col("median")))
    mad = _array_median(deviations)
    # The MAD is 0 when most baseline windows are equal: a store that sells in fewer than half of
    # them (median 0) would have every sale flagged. The 80th percentile of the deviations is the
    # same spread for normal noise (/1.2816 against 1.4826 x MAD) and stays above 0 for a store
    # that sells in a fifth of its windows, while a surge or two in the baseline cannot inflate it.
    tail = _array_quantile(deviations, 0.8)
    # Sales are counts of baskets: a store's windows vary at least as much as baskets arriving at
    # random would make them (Poisson). With a few baskets per window a robust z-score is far too
    # narrow (a basket after an empty half hour was a surge; sliding windows that share the same
    # few baskets look steady, and the next empty one was below them), so a window's scale is at
    # least that spread: sqrt(mean baskets per baseline window), plus above (minus below) the
    # margin by which a Poisson tail at ``threshold`` lies beyond the normal one (Cornish-Fisher),
    # in typical baskets (root mean square per transaction). Below, the floor vanishes for a store
    # selling a basket or two a window, whose empty window is no news, and is a small share of
    # the median of a dense store, whose silence is still caught.
    transactions = sf.col("baseline_transactions")
    mean_transactions = sf.try_divide(
        sf.aggregate(transactions, sf.lit(0.0), lambda acc, n: acc + n), sf.size(transactions)
    )
    squared_per_basket = sf.filter(
        sf.zip_with("values", transactions, lambda v, n: sf.when(n > 0, (v / n) * (v / n))),
        lambda x: x.isNotNull(),
    )
    baseline_basket = sf.sqrt(
        sf.try_divide(
            sf.aggregate(squared_per_basket, sf.lit(0.0), lambda acc, x: acc + x),
            sf.size(squared_per_basket),
        )
    )
    # The store's usual basket (its history: many more baskets than a baseline hour holds), else
    # its baseline's, else the window's own.
    typical_basket = sf.coalesce(
        sf.col("usual_basket"),
        baseline_basket,
        sf.try_divide(sf.col("observed"), sf.col("transactions")),
    )
    skew_margin = (rules.threshold**2 - 1) / (6 * rules.threshold)

    def robust_score(expected: Column, share: Column) -> Column:
        poisson_spread = sf.sqrt(sf.col("mean_transactions") * share)
        baskets_spread = sf.col("typical_basket") * (
            sf.when(sf.col("observed") > expected, poisson_spread + skew_margin).otherwise(
                poisson_spread - skew_margin
            )
        )
        scale = sf.greatest(  # skips nulls
            sf.col("baseline_mad") * share * 1.4826,
            sf.col("baseline_tail") * share / 1.2816,
            sf.abs(expected) * rules.min_scale_fraction,
            sf.lit(rules.min_scale),
            baskets_spread,
        )
        return (sf.col("observed") - expected) / scale

    # A window partly in hours the store's profile says it is closed has two readings: open, as
    # its baseline says, or closed for that share of its minutes (median and MAD scaled down). The
    # one that explains the window better (the smaller |score|) is kept: neither a usual closing
    # nor sales in hours the store used to be closed (its baseline shows it open) is an anomaly.
    open_share = sf.col("open_share")
    readings = (
        with_median.withColumn("baseline_mad", mad)
        .withColumns(
            {
                "baseline_tail": tail,
                "mean_transactions": mean_transactions,
                "typical_basket": typical_basket,
            }
        )
        .select(
            "*",
            sf.size("values").alias("history_windows"),
            robust_score(sf.col("median"), sf.lit(1.0)).alias("open_score"),
            robust_score(sf.col("median") * open_share, open_share).alias("closed_score"),
        )
    )
    closes = sf.abs(sf.col("closed_score")) < sf.abs(sf.col("open_score"))
    baseline = readings.where(sf.col("history_windows") >= rules.min_history).select(
        *[
            c
            for c in readings.columns
            if c not in ("baseline_tail", "baseline_mad", "open_score", "closed_score")
        ],
        sf.when(closes, sf.col("median") * open_share)
        .otherwise(sf.col("median"))
        .alias("expected"),
        sf.when(closes, sf.col("baseline_mad") * open_share)
        .otherwise(sf.col("baseline_mad"))
        .alias("baseline_mad"),
        sf.when(closes, sf.col("closed_score")).otherwise(sf.col("open_score")).alias("score"),
        sf.to_date("window_start").alias("forecast_date"),
    )
    with_model = _with_expectations(baseline, expectations)
    units_expected = sf.col("expected_units_day") * sf.col("day_share")
    model_expected = sf.when(sf.col("metric") == "units", units_expected).otherwise(
        units_expected * sf.col("revenue_per_unit")
    )
    scored = with_model.withColumn("model_expected", model_expected)
    gap = sf.col("observed") - sf.col("model_expected")
    strays_from_model = (
        sf.abs(gap) >= rules.model_tolerance * sf.greatest(sf.col("model_expected"), sf.lit(1e-9))
    ) & (sf.signum(gap) == sf.signum(sf.col("score")))
    flagged = scored.where(
        (sf.abs(sf.col("score")) >= rules.threshold)
        & (sf.col("model_expected").isNull() | strays_from_model)
    )
    direction = sf.when(sf.col("score") > 0, sf.lit("above")).otherwise(sf.lit("below"))
    model_part = sf.when(
        sf.col("model_expected").isNull(),
        sf.lit("; no model expectation: rolling baseline only"),
    ).otherwise(
        sf.format_string(
            "; %.0f%% %s the expectation %.2f of %s v%s",
            sf.abs(gap) / sf.greatest(sf.col("model_expected"), sf.lit(1e-9)) * 100,
            direction,
            sf.col("model_expected"),
            sf.col("model_name"),
            sf.col("model_version"),
        )
    )
    reason = sf.concat(
        sf.format_string(
            "%s %.2f is %.1f robust SDs %s the rolling median %.2f (MAD %.2f over %d windows, "
            "%.2f baskets a window, typically of %.2f)",
            sf.col("metric"),
            sf.col("observed"),
            sf.abs(sf.col("score")),
            direction,
            sf.col("expected"),
            sf.col("baseline_mad"),
            sf.col("history_windows"),
            sf.col("mean_transactions"),
            sf.coalesce(sf.col("typical_basket"), sf.lit(0.0)),
        ),
        model_part,
    )
    return flagged.select(
        "window_start",
        "window_end",
        "store_id",
        "metric",
        sf.col("observed").cast("double").alias("observed"),
        sf.col("expected").cast("double").alias("expected"),
        sf.col("baseline_mad").cast("double").alias("baseline_mad"),
        sf.col("score").cast("double").alias("score"),
        "model_expected",
        "model_name",
        "model_version",
        direction.alias("direction"),
        sf.when(sf.abs(sf.col("score")) >= rules.critical_threshold, sf.lit("critical"))
        .otherwise(sf.lit("warning"))
        .alias("severity"),
        reason.alias("reason"),
    )


SILENCE_METRIC = "transactions"  # a silence is judged in baskets


def detect_store_silences(
    metrics: DataFrame,
    judge_after: dt.datetime,
    judge_until: dt.datetime,
    expectations: DataFrame | None = None,
    rules: AnomalyRules = AnomalyRules(),
    profile: DataFrame | None = None,
) -> DataFrame:
    """Stores that have sold nothing for longer than their rate before makes likely: a till or a
    feed that stopped, which a store selling a few baskets a window never shows in one window.

    Inputs as for ``detect_sales_anomalies``, with ``metrics`` from ``SILENCE_MAX_MINUTES +
    baseline_minutes + 5`` minutes before ``judge_after``. For a judged window without a sale, the
    silence runs from the end of the first minute of the store's last window with a sale within
    the ``SILENCE_MAX_MINUTES`` before (none there: not judged; the next window is empty, so that
    minute held the sale) to the judged window's end. A window wholly in hours the store's
    profile says it is closed ends no silence (it has none to report) when the store's profile
    held in the hour before its last sale. It is compared with the hour before it: the ``k``
    baskets of the ``baseline_minutes`` of windows up to that one (their transactions over 5,
    missing windows count as zero; 59 minutes' worth), but the last one, which started the
    silence. If the store's rate held, each basket of both spans falls in the silent one with
    probability ``t_s / (t_b + t_s)``, with times counted by the store's hourly ``profile`` (its
    hours and their shares, or the chain's; minutes alike without one, or when it says the store
    was closed before), so all ``k`` fall before it with probability ``(t_b / (t_b + t_s))^k``. This
    conditional test also weighs how few baskets the rate was measured on. The score is minus the
    normal quantile of that tail: a silence is flagged from ``threshold``, about 13 baskets in the
    hour before an hour-long silence. With a model expectation for the store's day, the model
    must expect a sale in the silent minutes too.

    One row per silence and judgement: ``window_start`` is its start, ``window_end`` the end of
    its longest flagged window (a later judgement of the same silence replaces the row),
    ``metric`` is ``transactions``, ``expected`` the baskets the silent minutes would hold at the
    rate before (``k t_s / t_b``), ``baseline_mad`` its Poisson spread (its square root), and
    ``model_expected`` the model's units in the silent minutes at the store's units per basket.
    """
    windows = _store_windows(metrics, judge_after, judge_until)
    seconds = sf.unix_timestamp("window_start")
    by_time = Window.partitionBy("store_id").orderBy(seconds)
    up_to = by_time.rangeBetween(-rules.baseline_minutes * 60, 0)
    silence_span = by_time.rangeBetween(-SILENCE_MAX_MINUTES * 60, 0)
    frame_windows = rules.baseline_minutes // PANE_MINUTES + 1
    with_rates = windows.select(
        "store_id",
        "window_start",
        "transactions",
        sf.max(sf.when(sf.col("transactions") > 0, seconds)).over(silence_span).alias("last_sale"),
        (sf.sum("transactions").over(up_to) / frame_windows).alias("rate"),
        (sf.sum("units").over(up_to) / frame_windows).alias("units_rate"),
    )
    # A store's rate is that of the baseline minutes up to its last window with a sale.
    rates = with_rates.where(sf.col("transactions") > 0).select(
        "store_id", sf.unix_timestamp("window_start").alias("last_sale"), "rate", "units_rate"
    )
    window_end = sf.col("window_start") + sf.make_dt_interval(mins=sf.lit(WINDOW_MINUTES))
    judged = (
        with_rates.where(
            (window_end > sf.lit(judge_after))
            & (window_end <= sf.lit(judge_until))
            & (sf.col("transactions") == 0)
            & sf.col("last_sale").isNotNull()
        )
        .select("store_id", "window_start", window_end.alias("window_end"), "last_sale")
        .join(rates, ["store_id", "last_sale"])
    )
    if profile is None:
        profile = metrics.sparkSession.createDataFrame([], PROFILE_SCHEMA)
    judged = _with_hourly_shares(judged, profile)
    one_minute = sf.make_dt_interval(mins=sf.lit(PANE_MINUTES))
    last_sale = sf.timestamp_seconds("last_sale")
    # The last window with a sale is followed by an empty one: its sale was in its first minute.
    silence_start = last_sale + one_minute
    minutes = sf.sequence(silence_start, sf.col("window_end") - one_minute, one_minute)
    # The windows' baskets are those of the minutes from 60 before that window to its first, the
    # earliest four counted in part (a basket is in 5 windows): 59 minutes' worth, taken as the
    # 59 minutes to the last sale.
    rate_span = rules.baseline_minutes + 1 - (WINDOW_MINUTES - 1) // 2
    rate_minutes = sf.sequence(
        last_sale - sf.make_dt_interval(mins=sf.lit(rate_span - 1)), last_sale, one_minute
    )

    def share(minute: Column) -> Column:
        return sf.coalesce(sf.try_element_at("hourly_share", sf.hour(minute)), sf.lit(0.0))

    def day_share_of(span: Column) -> Column:
        return sf.aggregate(span, sf.lit(0.0), lambda acc, m: acc + share(m) / 60)

    # Time goes as the store's day goes (its hours and their shares) when its profile says it
    # sold in the minutes before; else every minute counts the same.
    by_profile = sf.col("hourly_share").isNotNull() & (day_share_of(rate_minutes) > 0)
    # A window wholly in the store's closed hours ends no silence: the store's day had ended.
    window_minutes = sf.sequence(
        sf.col("window_start"), sf.col("window_end") - one_minute, one_minute
    )
    judged = judged.where(~(by_profile & (day_share_of(window_minutes) == 0)))
    time_before = sf.when(by_profile, day_share_of(rate_minutes)).otherwise(sf.size(rate_minutes))
    time_silent = sf.when(by_profile, day_share_of(minutes)).otherwise(sf.size(minutes))
    day_share = sf.when(sf.col("hourly_share").isNotNull(), day_share_of(minutes)).otherwise(
        sf.size(minutes) / MINUTES_PER_DAY
    )
    # Baskets before the silence (each is in 5 windows), but the last one, which started it.
    baskets = sf.greatest(sf.col("rate") * frame_windows / WINDOW_MINUTES - 1, sf.lit(0.0))
    # Given the baskets of both spans, each falls in the silent one with probability
    # time_silent / (time_before + time_silent) if the store's rate held: all of them fall
    # before it with probability exp(-surprise).
    surprise = sf.col("baskets") * sf.log1p(sf.col("time_silent") / sf.col("time_before"))
    # The normal quantile of that tail: z^2 = 2 s - 2 ln(z sqrt(2 pi)) (the normal tail is
    # phi(z) / z), one step from z = sqrt(2 s). Just short of the exact quantile: by 0.03 at
    # s = 8 (z = 3.4), by less than 0.05 from 5 up (scipy, 2026-12-06); none below 1.
    tail_z = sf.sqrt(2 * surprise - sf.log(4 * np.pi * surprise))
    silences = judged.select(
        "store_id",
        "window_end",
        "rate",
        "units_rate",
        silence_start.alias("window_start"),
        sf.size(minutes).alias("silent_minutes"),
        baskets.alias("baskets"),
        time_before.alias("time_before"),
        time_silent.alias("time_silent"),
        day_share.alias("day_share"),
        sf.to_date("window_start").alias("forecast_date"),
    ).select(
        "*",
        (sf.col("baskets") * sf.col("time_silent") / sf.col("time_before")).alias("expected"),
        sf.when(surprise > 1, -tail_z).alias("score"),
    )
    flagged = silences.where(sf.col("score") <= -rules.threshold)
    with_model = _with_expectations(flagged, expectations)
    # The model's baskets in the silent minutes: its units there at the store's units per basket.
    model_expected = (
        sf.col("expected_units_day")
        * sf.col("day_share")
        * sf.try_divide(sf.col("rate"), sf.col("units_rate"))
    )
    scored = with_model.withColumn("model_expected", model_expected)
    # No sale strays from the model's expectation by all of it, in the same direction.
    strays_from_model = (
        sf.col("model_expected") > 0 if rules.model_tolerance <= 1 else sf.lit(False)
    )
    kept = scored.where(sf.col("model_expected").isNull() | strays_from_model)
    longest = Window.partitionBy("store_id", "window_start").orderBy(sf.desc("window_end"))
    reason = sf.concat(
        sf.format_string(
            "transactions 0 for %d minutes after %.1f in the %d minutes before: %.2f expected "
            "at that rate (%.1f SDs below)",
            sf.col("silent_minutes"),
            sf.col("baskets"),
            sf.lit(rate_span),
            sf.col("expected"),
            sf.abs(sf.col("score")),
        ),
        sf.when(
            sf.col("model_expected").isNull(),
            sf.lit("; no model expectation: rolling baseline only"),
        ).otherwise(
            sf.format_string(
                "; %s v%s expected %.2f",
                sf.col("model_name"),
                sf.col("model_version"),
                sf.col("model_expected"),
            )
        ),
    )
    return (
        kept.withColumn("latest", sf.row_number().over(longest))
        .where(sf.col("latest") == 1)
        .select(
            "window_start",
            "window_end",
            "store_id",
            sf.lit(SILENCE_METRIC).alias("metric"),
            sf.lit(0.0).alias("observed"),
            sf.col("expected").cast("double").alias("expected"),
            sf.sqrt(sf.col("expected")).cast("double").alias("baseline_mad"),
            sf.col("score").cast("double").alias("score"),
            "model_expected",
            "model_name",
            "model_version",
            sf.lit("below").alias("direction"),
            sf.when(sf.col("score") <= -rules.critical_threshold, sf.lit("critical"))
            .otherwise(sf.lit("warning"))
            .alias("severity"),
            reason.alias("reason"),
        )
    )


REFRESH_WINDOWS_SQL = """
INSERT INTO sales_metrics_versions (window_start, window_end, store_id, revenue, transactions,
    customers, units, line_items, avg_basket, units_per_transaction)
SELECT
    window_start,
    window_start + toIntervalMinute({window_minutes:UInt32}) AS window_end,
    store_id,
    sum(revenue_micros) / {micros:UInt32} AS revenue,
    uniqExactArray(transaction_ids) AS transactions,
    uniqExactArray(customer_ids) AS customers,
    sum(units) AS units,
    sum(line_items) AS line_items,
    if(transactions > 0, revenue / transactions, 0) AS avg_basket,
    if(transactions > 0, units / transactions, 0) AS units_per_transaction
FROM sales_panes
ARRAY JOIN arrayMap(k -> pane_start - toIntervalMinute(k), range({window_minutes:UInt32})) AS window_start
WHERE pane_start >= {first_pane:DateTime('UTC')} AND pane_start <= {last_pane:DateTime('UTC')}
  AND has({panes:Array(DateTime('UTC'))}, pane_start)
  AND has({window_starts:Array(DateTime('UTC'))}, window_start)
  AND has({store_ids:Array(String)}, store_id)
GROUP BY window_start, store_id
"""

WINDOWS_FOR_JUDGING_SQL = """
SELECT window_start, store_id, revenue, units, transactions
FROM sales_metrics
WHERE window_start >= {first_start:DateTime('UTC')} AND window_end <= {judge_until:DateTime('UTC')}
"""

CATALOGUE_SQL = """
SELECT DISTINCT store_id, product_id FROM (
    SELECT store_id, product_id FROM sales_events
    WHERE event_time >= {since:DateTime('UTC')} AND event_time < {until:DateTime('UTC')}
    UNION ALL
    SELECT store_id, product_id FROM inventory_events
    WHERE event_time >= {since:DateTime('UTC')} AND event_time < {until:DateTime('UTC')}
)
"""

# Each pair's latest score; a day's model is the one that scored last (versions are not compared:
# "10" sorts before "9", and a rollback scores with an older version).
STORE_EXPECTATIONS_SQL = """
WITH latest AS (
    SELECT store_id, product_id, forecast_date,
        argMax(predicted_units, scored_at) AS units,
        argMax(model_name, scored_at) AS model_name,
        argMax(model_version, scored_at) AS model_version,
        max(scored_at) AS last_scored
    FROM demand_scores
    WHERE forecast_date >= {first_date:Date} AND forecast_date <= {last_date:Date}
    GROUP BY store_id, product_id, forecast_date
)
SELECT store_id, forecast_date, sum(units) AS expected_units_day,
    argMax(model_name, last_scored) AS model_name, argMax(model_version, last_scored) AS model_version
FROM latest GROUP BY store_id, forecast_date
UNION ALL
SELECT 'ALL' AS store_id, forecast_date, sum(units) AS expected_units_day,
    argMax(model_name, last_scored) AS model_name, argMax(model_version, last_scored) AS model_version
FROM latest GROUP BY forecast_date
"""

HOURLY_UNITS_SQL = """
SELECT store_id, toDate(event_time) AS day, toHour(event_time) AS hour, sum(quantity) AS units
FROM sales_events
WHERE event_time >= {since:DateTime('UTC')} AND event_time < {until:DateTime('UTC')}
GROUP BY store_id, day, hour
"""

TYPICAL_BASKETS_SQL = """
WITH baskets AS (
    SELECT store_id, transaction_id, sum(total_amount) AS revenue, sum(quantity) AS units
    FROM sales_events
    WHERE event_time >= {since:DateTime('UTC')} AND event_time < {until:DateTime('UTC')}
    GROUP BY store_id, transaction_id
)
SELECT store_id, sqrt(avg(revenue * revenue)) AS revenue, sqrt(avg(units * units)) AS units
FROM baskets GROUP BY store_id HAVING count() >= {min_baskets:UInt32}
UNION ALL
SELECT 'ALL' AS store_id, sqrt(avg(revenue * revenue)), sqrt(avg(units * units))
FROM baskets HAVING count() >= {min_baskets:UInt32}
"""

HORIZON_SQL = (  # NULL for a new query (plain max() of no rows is 1970-01-01 in ClickHouse)
    "SELECT maxOrNull(judged_until) FROM sales_anomaly_horizon FINAL "
    "WHERE query_name = {query:String}"
)


def refresh_windows(store: Store, pane_starts: list[dt.datetime], store_ids: list[str]) -> None:
    """Recompute the 5-minute windows of ``store_ids`` (a batch's stores and 'ALL') that contain
    one of ``pane_starts`` (the batch's panes), from all their panes. Only those: a batch with
    one event from days ago rewrites that event's windows and its own, not the days between."""
    span = dt.timedelta(minutes=WINDOW_MINUTES - PANE_MINUTES)
    steps = [dt.timedelta(minutes=k) for k in range(0, WINDOW_MINUTES, PANE_MINUTES)]
    window_starts = sorted({pane - step for pane in pane_starts for step in steps})
    panes = sorted({start + step for start in window_starts for step in steps})
    store.execute(
        REFRESH_WINDOWS_SQL,
        {
            "window_minutes": WINDOW_MINUTES,
            "micros": MICROS,
            "first_pane": min(pane_starts) - span,
            "last_pane": max(pane_starts) + span,
            "panes": panes,
            "window_starts": window_starts,
            "store_ids": store_ids,
        },
    )


def _minute_floor(moment: dt.datetime) -> dt.datetime:
    """The minute of ``moment`` as a naive UTC datetime."""
    return _naive_utc(moment).replace(second=0, microsecond=0)


def first_of_each_event(rows: pa.Table) -> pa.Table:
    """``rows`` with each repeat dropped: the first row (Kafka order within a batch) of each
    ``event_id`` and UTC day, the rule ``SalesBatchWriter._new_events`` applies across batches."""
    if pc.count_distinct(rows["event_id"]).as_py() == rows.num_rows:
        return rows
    keys = pa.table(
        {
            "event_id": rows["event_id"],
            "day": pc.cast(rows["event_time"], pa.date32()),
            "position": pa.array(np.arange(rows.num_rows)),
        }
    )
    firsts = keys.group_by(["event_id", "day"], use_threads=False).aggregate([("position", "min")])
    positions = firsts["position_min"]
    return rows.take(pc.take(positions, pc.sort_indices(positions)))


def scoring_keys(raw: pa.Table) -> pa.Table:
    """The distinct (store_id, product_id, forecast_date) of a batch's valid events (UTC days)."""
    keys = pa.table(
        {
            "store_id": raw["store_id"],
            "product_id": raw["product_id"],
            "forecast_date": pc.cast(raw["event_time"], pa.date32()),
        }
    )
    return keys.group_by(keys.column_names, use_threads=False).aggregate([])


class SalesBatchWriter:
    """The ``foreachBatch`` function of the sales job: one micro-batch into every sales table."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        *,
        query_name: str,
        champion: ChampionModel | None = None,
        feature_builder: FeatureBuilder | None = None,
        rules: AnomalyRules = AnomalyRules(),
        anomaly_interval_s: float = ANOMALY_INTERVAL_S,
        catch_up_interval_s: float = CATCH_UP_INTERVAL_S,
    ) -> None:
        self.spark = spark
        self.settings = settings
        self.store = open_store(settings)
        self.query_name = query_name
        self.champion = champion
        self.feature_builder = feature_builder
        self.rules = rules
        self._baseline_span = dt.timedelta(minutes=rules.baseline_minutes + WINDOW_MINUTES)
        self.watermark_delay = dt.timedelta(minutes=settings.sales_watermark_minutes)
        # What the version that scored last has scored, by day: (store, product, version) pairs
        # and the catalogue's version; emptied when the version changes (_score_demand).
        self._scored: ByDay[tuple[str, str, str], bool] = ByDay()
        self._catalogued: ByDay[str, bool] = ByDay()
        self._scoring_version: str | None = None
        self._scored_versions: set[str] = set()  # versions that have scored in this job
        self._newest_day: dt.date | None = None  # of the sales scored
        self._judged_until: dt.datetime | None = None  # see _load_horizon
        # The newest event time this writer stored, none later than its record's Kafka timestamp.
        self._latest_event_time: dt.datetime | None = None
        self._first_event_time: dt.datetime | None = None  # the earliest of the first batch stored
        self._history: tuple[dt.date, StoreHistory] | None = None  # of the newest judged day
        self._scoring_error = ""
        self.anomaly_interval_s = anomaly_interval_s
        self.catch_up_interval_s = catch_up_interval_s
        self._started_at = time.monotonic()
        self._last_judged_at = -float("inf")
        self._judging = threading.Lock()  # batches judge on the query's thread, idle() on another

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        token = stream_token(self.spark, self.query_name, batch_id)
        steps = StepTimer()
        rows = to_arrow(batch)  # one Spark job: the batch (``storable_rows``) is read once
        if rows.num_rows == 0:
            return
        good = pc.is_null(rows["error"])
        dead = rows.filter(pc.invert(good)).select(DEAD_LETTER_COLUMNS)
        raw = rows.filter(good).select(RAW_SALES_COLUMNS)
        # A till whose clock runs ahead moves the job's clock (what has closed) only as far as
        # the broker's: in a backlog, windows whose events are still in the topic stay open.
        clock = pc.max(rows.filter(good)[WATERMARK_TIME]).as_py()
        store_dead_letters(self.store, dead, token)
        if raw.num_rows == 0:
            return
        steps.lap("collect")
        received = raw.num_rows
        raw = self._new_events(first_of_each_event(raw), token)
        steps.lap("dedup")
        # Repeats show how far the tills' clocks have come too, whichever batch they fall into.
        latest = _naive_utc(clock)
        self._latest_event_time = max(latest, self._latest_event_time or latest)
        if raw.num_rows == 0:
            log.info("%s batch %d: all %d events were repeats", self.query_name, batch_id, received)
            return
        if self._first_event_time is None:
            self._first_event_time = _naive_utc(pc.min(raw["event_time"]).as_py())
        panes = panes_of_rows(raw)
        steps.lap("panes")
        stored = raw.append_column("ingest_token", pa.repeat(token, raw.num_rows))
        with self.store.session():
            # Unique by event_id already: first of each in the batch, none the store holds.
            self.store.insert_df("sales_events", stored, dedup_token=token, unique_rows=True)
            steps.lap("events")
            self.store.insert_df("sales_panes", panes, dedup_token=token)
            pane_starts = [_naive_utc(p) for p in pc.unique(panes["pane_start"]).to_pylist()]
            refresh_windows(self.store, pane_starts, pc.unique(panes["store_id"]).to_pylist())
            steps.lap("windows")
        self._score_demand(raw, batch_id, token)
        steps.lap("scoring")
        if self._judge_when_due(self._catching_up(rows.num_rows, latest)):
            steps.lap("anomalies")
        log.info(
            "%s batch %d: %d events (%d repeats dropped); %s",
            self.query_name,
            batch_id,
            raw.num_rows,
            received - raw.num_rows,
            steps,
        )

    def _new_events(self, raw: pa.Table, token: str) -> pa.Table:
        """The events of ``raw`` that ``sales_events`` does not hold yet (``repeated_events``)."""
        return raw.filter(pc.invert(repeated_events(self.store, "sales_events", raw, token)))

    def _score_demand(self, raw: pa.Table, batch_id: int, token: str) -> None:
        """Score, with the current version, every store's catalogue at the first sale of a day, and
        any pair sold that it has not scored for its day (``_to_score``). A version new to this job
        that fails on the real features (it passed its probes on an empty frame) is rejected like
        one that failed to load, and the version in use before it scores the batch."""
        if self.champion is None or self.feature_builder is None:
            return
        loaded = self.champion.current()  # pinned: this whole batch uses one version
        if loaded is None:
            return
        keys = scoring_keys(raw)
        sold = list(zip(*(keys[c].to_pylist() for c in keys.column_names), strict=True))
        days = [day for *_, day in sold]
        previous = self._newest_day
        self._newest_day = max(max(days), previous or max(days))
        # Every day of the batch from the day before the newest day known before it (every day of
        # a first batch) gets its catalogue: one batch or one a day, the same days. A late sale of
        # an older day scores its own pair.
        first_current = (previous or min(days)) - SCORED_SPAN
        while loaded is not None:
            scored_before = (self._scored, self._catalogued, self._scoring_version)
            failure = self._score_with(loaded, sold, days, first_current, batch_id, token)
            if failure is None or loaded.version in self._scored_versions:
                return
            # The rejected version wrote nothing: what the one before it scored still stands.
            self._scored, self._catalogued, self._scoring_version = scored_before
            loaded = self.champion.reject(loaded.version, failure)

    def _score_with(
        self,
        loaded: LoadedModel,
        sold: list[tuple[str, str, dt.date]],
        days: list[dt.date],
        first_current: dt.date,
        batch_id: int,
        token: str,
    ) -> Exception | None:
        """Score the batch with ``loaded``; the model's own failure, if it failed (any other error
        is logged: the metrics go on)."""
        if loaded.version != self._scoring_version:
            # A move or a rollback: the new version scores the day anew, even a version that
            # scored it before (its rows are no longer each pair's latest).
            self._scored, self._catalogued = ByDay(), ByDay()
            self._scoring_version = loaded.version
        new_days = sorted(
            {
                day
                for day in days
                if day >= first_current and not self._catalogued.get(day, loaded.version)
            }
        )
        catalogued = [
            day
            for day in (
                self._newest_day - SCORED_SPAN + dt.timedelta(days=n)
                for n in range(SCORED_DAYS_KEPT)
            )
            if self._catalogued.get(day, loaded.version)
        ]
        try:
            todo = self._to_score(sold, new_days, catalogued, loaded.version)
            if not todo:
                return None
            scores = self._scores_for(todo, loaded)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if message != self._scoring_error:
                log.exception("demand scoring failed for batch %d; metrics go on", batch_id)
                self._scoring_error = message
            return exc.cause if isinstance(exc, ModelTransformError) else None
        self._scoring_error = ""
        self._scored_versions.add(loaded.version)
        scores = scores.assign(query_name=self.query_name, batch_id=batch_id)
        # A replay scored by another version (the alias moved while the job was down) is written.
        self.store.insert_df("demand_scores", scores, dedup_token=f"{token}.v{loaded.version}")
        for store_id, product_id, day in todo:
            self._scored.put(day, (store_id, product_id, loaded.version), True)
        for day in new_days:
            self._catalogued.put(day, loaded.version, True)
        # A late sale of an older day is scored again: demand_scores replaces its row.
        self._scored.keep_newest(SCORED_DAYS_KEPT)
        self._catalogued.keep_newest(SCORED_DAYS_KEPT)
        return None

    def _to_score(
        self,
        sold: list[tuple[str, str, dt.date]],
        new_days: list[dt.date],
        catalogued: list[dt.date],
        version: str,
    ) -> list[tuple[str, str, dt.date]]:
        """The (store, product, day) triples ``version`` has yet to score: those sold, and on each
        of ``new_days`` the catalogue, every pair with sales or stock events in the
        ``CATALOGUE_DAYS`` before. So the expected units of a store's day and of all stores' (the
        anomaly check's model side) sum over everything sold, not over what has sold so far.
        A sale of an earlier day that arrives after a day of ``catalogued`` was scored (from
        another partition, or late) adds its pair to that day's catalogue."""
        wanted = set(sold)
        for day in catalogued:
            since = day - dt.timedelta(days=CATALOGUE_DAYS)
            wanted.update((store, product, day) for store, product, on in sold if since <= on < day)
        for day in new_days:
            since = dt.datetime.combine(day - dt.timedelta(days=CATALOGUE_DAYS), dt.time())
            catalogue = self.store.query_df(
                CATALOGUE_SQL, {"since": since, "until": dt.datetime.combine(day, dt.time())}
            )
            wanted.update(
                (store_id, product_id, day)
                for store_id, product_id in zip(
                    catalogue["store_id"], catalogue["product_id"], strict=True
                )
            )
        return sorted(
            (store_id, product_id, day)
            for store_id, product_id, day in wanted
            if not self._scored.get(day, (store_id, product_id, version))
        )

    def _scores_for(
        self, todo: list[tuple[str, str, dt.date]], loaded: LoadedModel
    ) -> pd.DataFrame:
        frames = []
        for day in sorted({day for _, _, day in todo}):
            pairs = pd.DataFrame(
                [(store, product) for store, product, key_day in todo if key_day == day],
                columns=["store_id", "product_id"],
            )
            keys = self.spark.createDataFrame(pairs, "store_id string, product_id string")
            features = self.feature_builder(self.spark, self.store, keys, day)
            frames.append(scored_by(loaded, lambda f=features: to_pandas(score_demand(f, loaded))))
        return pd.concat(frames, ignore_index=True)

    def finish(self) -> None:
        """Judge every window the stored events have closed (their query has ended: a drain that
        finished, or a stop), however few batches were judged while they ran."""
        started, steps = time.monotonic(), 0
        with self._judging:
            while self._judge_windows():
                steps += 1
        if steps:
            log.info(
                "%s: judged the windows closed until %s as the query ended (%.2f s)",
                self.query_name,
                self._judged_until,
                time.monotonic() - started,
            )

    def idle(self) -> None:
        """While the query waits for new events, judge the windows its stored events have closed
        (those its last batches closed would otherwise wait for the next batch or the stop), one
        ``MAX_JUDGED_SPAN`` per call, so that a batch that starts meanwhile waits for one step at
        most. Cheap when nothing new has closed."""
        with self._judging:
            started = time.monotonic()
            if self._judge_windows():
                self._last_judged_at = time.monotonic()
                log.info(
                    "%s: judged the windows closed until %s while the query waits (%.2f s)",
                    self.query_name,
                    self._judged_until,
                    self._last_judged_at - started,
                )

    def _catching_up(self, records: int, latest_event_time: dt.datetime) -> bool:
        """A batch of at least half the records the source may give at once
        (``max_offsets_per_trigger``) whose newest event is more than ``catch_up_interval_s``
        behind the wall clock: the topic holds a backlog. A job that keeps up with live sales at
        that rate is not catching up: its alerts would be late for nothing."""
        limit = self.settings.max_offsets_per_trigger
        if limit is None or records < limit / 2:
            return False
        return (_utc_now() - latest_event_time).total_seconds() > self.catch_up_interval_s

    def _judge_when_due(self, catching_up: bool) -> bool:
        """Judge the newly closed windows if the last judgement is ``anomaly_interval_s`` old or,
        while the job works through a backlog, ``catch_up_interval_s`` old (counted from the
        job's start). A judgement takes seconds whatever its span, time a backlog needs for
        reading; what it defers is judged when the batches thin out, the query waits or it ends,
        with the same results (judgements do not depend on their spans)."""
        with self._judging:
            self._load_horizon()
            if catching_up:
                due = max(self._last_judged_at, self._started_at) + self.catch_up_interval_s
            else:
                due = self._last_judged_at + self.anomaly_interval_s
            if time.monotonic() < due:
                return False
            # A span ends at midnight (``judged_span``): the new day's closed windows are due too.
            while self._judge_windows() and self._judged_until.time() == dt.time():
                pass
            self._last_judged_at = time.monotonic()
            return True

    def _closed(self, latest_event_time: dt.datetime) -> dt.datetime:
        """The end of the newest closed window: the newest stored event time (or the wall clock:
        a window has not closed before its end has passed, whatever a clock ahead stamped) less
        the watermark delay, to the minute."""
        return _minute_floor(min(latest_event_time, _utc_now()) - self.watermark_delay)

    def _load_horizon(self) -> None:
        """Where judging goes on from, fixed once the first batch is stored: the query's stored
        horizon or, for a new query, the windows of its first batch's earliest event (at least
        one baseline span before the windows that batch closed, at most ``FIRST_JUDGED_MAX``),
        however long judging is then deferred: a drain judges what it read, whatever its
        batch size."""
        latest, earliest = self._latest_event_time, self._first_event_time
        if self._judged_until is not None or latest is None or earliest is None:
            return
        value = self.store.scalar(HORIZON_SQL, {"query": self.query_name})
        stored = None if value is None or pd.isna(value) else _naive_utc(value)
        closed = self._closed(latest)
        first = min(_minute_floor(earliest), closed - self._baseline_span)
        self._judged_until = stored or max(first, closed - FIRST_JUDGED_MAX)

    def _judge_windows(self) -> bool:
        """Judge the windows closed since the last judgement (at most ``MAX_JUDGED_SPAN`` of event
        time); False when none had closed."""
        if self._judged_until is None or self._latest_event_time is None:  # nothing stored yet
            return False
        span = judged_span(self._judged_until, self._closed(self._latest_event_time))
        if span is None:
            return False
        judge_after, horizon = span
        # The range names the inserts: judging it again (a replayed batch) writes nothing twice.
        token = f"{self.query_name}.judged-{judge_after:%Y%m%dT%H%M}-{horizon:%Y%m%dT%H%M}"
        # Silences read back to a store's last sale, and the baseline minutes before it.
        first_start = judge_after - dt.timedelta(
            minutes=SILENCE_MAX_MINUTES + self.rules.baseline_minutes + WINDOW_MINUTES
        )
        metrics = self.store.query_df(
            WINDOWS_FOR_JUDGING_SQL, {"first_start": first_start, "judge_until": horizon}
        )
        if not metrics.empty:
            anomalies = self._detect(metrics, judge_after, horizon)
            self.store.insert_df("sales_anomalies_versions", anomalies, dedup_token=token)
        row = pd.DataFrame([{"query_name": self.query_name, "judged_until": horizon}])
        self.store.insert_df("sales_anomaly_horizon", row, dedup_token=token)
        self._judged_until = horizon
        return True

    def _detect(
        self, metrics: pd.DataFrame, judge_after: dt.datetime, horizon: dt.datetime
    ) -> pd.DataFrame:
        metrics = metrics.assign(
            window_start=pd.to_datetime(metrics["window_start"], utc=True).dt.tz_localize(None),
            **{c: metrics[c].astype(float) for c in _JUDGED_QUANTITIES},
        )
        metrics = since_last_sales(metrics, judge_after, self._baseline_span)
        frame = self.spark.createDataFrame(metrics, JUDGED_WINDOWS_SCHEMA)
        # A judged window or silence belongs to the day it starts on, which may be before
        # ``judge_after``'s: a window closing at 00:03 started the day before.
        reach_back = dt.timedelta(minutes=SILENCE_MAX_MINUTES + WINDOW_MINUTES)
        expectations = self.store.query_df(
            STORE_EXPECTATIONS_SQL,
            {"first_date": (judge_after - reach_back).date(), "last_date": horizon.date()},
        )
        expected = None
        if not expectations.empty:
            expected = self.spark.createDataFrame(
                expectations.assign(
                    forecast_date=pd.to_datetime(expectations["forecast_date"]).dt.date,
                    expected_units_day=expectations["expected_units_day"].astype(float),
                    model_version=expectations["model_version"].astype(str),
                ),
                "store_id string, forecast_date date, expected_units_day double, "
                "model_name string, model_version string",
            )
        history = self._store_history(judge_after.date())
        profile = self._frame_or_none(history.profile, PROFILE_SCHEMA)
        windows = detect_sales_anomalies(
            frame.where(sf.col("window_start") >= sf.lit(judge_after - self._baseline_span)),
            judge_after,
            horizon,
            expected,
            self.rules,
            profile=profile,
            baskets=self._frame_or_none(history.baskets, BASKETS_SCHEMA),
        )
        silences = detect_store_silences(frame, judge_after, horizon, expected, self.rules, profile)
        return to_pandas(windows.unionByName(silences))

    def _frame_or_none(self, rows: pd.DataFrame, schema: str) -> DataFrame | None:
        return None if rows.empty else self.spark.createDataFrame(rows, schema)

    def _store_history(self, day: dt.date) -> StoreHistory:
        """The stores' hourly profiles and typical baskets over the ``PROFILE_DAYS`` before
        ``day`` (kept for the newest day)."""
        if self._history is None or self._history[0] != day:
            span = {
                "since": dt.datetime.combine(day - dt.timedelta(days=PROFILE_DAYS), dt.time()),
                "until": dt.datetime.combine(day, dt.time()),
            }
            units = self.store.query_df(HOURLY_UNITS_SQL, span)
            baskets = self.store.query_df(TYPICAL_BASKETS_SQL, {**span, "min_baskets": BASKETS_MIN})
            self._history = (
                day,
                StoreHistory(
                    hourly_profile(units),
                    baskets.astype({"revenue": float, "units": float}),
                ),
            )
        return self._history[1]


def judged_span(
    judge_after: dt.datetime, closed: dt.datetime
) -> tuple[dt.datetime, dt.datetime] | None:
    """(judge_after, horizon): the windows to judge next, those closed since ``judge_after``; None
    when none has closed. A long backlog is judged in steps of at most ``MAX_JUDGED_SPAN``, and a
    span ends at midnight, as a window is judged with the hours and baskets of the 28 days before
    its own day, however the spans fall."""
    midnight = dt.datetime.combine(judge_after.date() + dt.timedelta(days=1), dt.time())
    horizon = min(closed, judge_after + MAX_JUDGED_SPAN, midnight)
    return (judge_after, horizon) if horizon > judge_after else None


def since_last_sales(
    metrics: pd.DataFrame, judge_after: dt.datetime, lead: dt.timedelta
) -> pd.DataFrame:
    """The windows judging from ``judge_after`` needs of ``metrics`` (read back to the longest
    silence): of a store that sold before the first judged window, those from ``lead`` before its
    last such sale (a silence judged then started at that sale or after, and its rate is of the
    hour before it); of any other store, all."""
    first_judged = judge_after - dt.timedelta(minutes=WINDOW_MINUTES)
    earlier = metrics[(metrics["window_start"] < first_judged) & (metrics["transactions"] > 0)]
    last_sale = earlier.groupby("store_id")["window_start"].max()
    since = metrics["store_id"].map(last_sale - lead)
    return metrics[since.isna() | (metrics["window_start"] >= since)]


def _utc_now() -> dt.datetime:
    """The wall clock as a naive UTC time, like the job's event times."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _naive_utc(value: Any) -> dt.datetime:
    moment = pd.Timestamp(value)
    if moment.tzinfo is not None:
        moment = moment.tz_convert("UTC").tz_localize(None)
    return moment.to_pydatetime()


def query_names(job: str) -> dict[str, str]:
    """The job's query names (also their checkpoint folders and token prefixes)."""
    return {
        "events": f"{job}-events",
        "dead_letters": f"{job}-dead-letters",
        "windows": f"{job}-windows",
    }


def retire_stateful_checkpoint(location: Path) -> str | None:
    """Move aside a checkpoint of the query as it was before 2026-12-05, when it deduplicated with
    Spark's state (Spark refuses to run the stateless query on it); return the Kafka offsets its
    last committed batch ended at (Spark's JSON form), or None when it committed none. The job
    then starts a new checkpoint from there: the stored events it reads again are repeats."""
    if not (location / "state").is_dir():
        return None
    committed = sorted(int(p.name) for p in (location / "commits").glob("[0-9]*"))
    offsets = None
    if committed:
        offsets = (location / "offsets" / str(committed[-1])).read_text().splitlines()[2]
    retired = location.with_name(f"{location.name}.stateful-{int(time.time())}")
    location.rename(retired)
    log.warning(
        "the checkpoint %s was written by the stateful query of an earlier release: moved to %s; "
        "the job goes on from the offsets of its last committed batch (%s)",
        location,
        retired,
        offsets or "none: STARTING_OFFSETS",
    )
    return offsets


def build_queries(
    spark: SparkSession,
    settings: Settings,
    *,
    job: str = JOB,
    available_now: bool = False,
    console: bool = False,
    champion: ChampionModel | None = None,
    feature_builder: FeatureBuilder | None = None,
    rules: AnomalyRules | None = None,
    anomaly_interval_s: float = ANOMALY_INTERVAL_S,
) -> list[StreamingQuery]:
    """Start the sales job: one query (one read of the topic) into every sales table and
    ``dead_letters``; with ``console``, the sliding windows and the dead letters on the console."""
    names = query_names(job)
    if not console:
        resume_at = retire_stateful_checkpoint(checkpoint_location(settings, job, names["events"]))
        if resume_at is not None:
            settings = settings.model_copy(update={"starting_offsets": resume_at})
    raw = read_topic(spark, settings, settings.sales_topic, job)
    delay = f"{settings.sales_watermark_minutes} minutes"
    common = {"job": job, "settings": settings, "available_now": available_now}
    if console:
        valid, dead = parse_sales(raw, job, settings.event_max_lead_minutes)
        # Spark's window aggregation needs its watermark on event_time itself (it allows one
        # watermark per query), so this view does not bound it by the Kafka timestamps.
        events = valid.withWatermark("event_time", delay).dropDuplicatesWithinWatermark(
            ["event_id"]
        )
        return [
            start_query(
                sliding_window_metrics(events),
                query_name=names["windows"],
                sink=CONSOLE,
                output_mode="update",
                **common,
            ),
            start_query(dead, query_name=names["dead_letters"], sink=CONSOLE, **common),
        ]
    writer = SalesBatchWriter(
        spark,
        settings,
        query_name=names["events"],
        champion=champion,
        feature_builder=feature_builder,
        rules=rules or AnomalyRules.from_settings(settings),
        anomaly_interval_s=anomaly_interval_s,
    )
    # Shaped for the store in the query, not in each batch: a batch then plans no projection of
    # its own over the classification.
    storable = storable_rows(
        watermark_classified(classify_sales(raw, job, settings.event_max_lead_minutes), delay)
    )
    return [start_query(storable, query_name=names["events"], sink=writer, **common)]


def main(
    settings: Settings | None = None, available_now: bool = False, console: bool = False
) -> None:
    """Run the sales job until stopped (or, with ``available_now``, until the topic is drained)."""
    from common.spark import build_spark_session
    from common.store import migrate

    settings = settings or get_settings()
    check_source(settings, settings.sales_topic, "SALES_TOPIC")
    use_tracking_server(settings)
    spark = build_spark_session(JOB, settings)
    champion = None
    feature_builder = default_feature_builder()
    if feature_builder is None:
        log.warning("training.features is not installed: demand scoring is off")
    if not console:
        store = open_store(settings)
        migrate(store)
        probes = model_probes(spark, store, feature_builder, DEMAND_MODEL)
        champion = ChampionModel(DEMAND_MODEL, job=JOB, settings=settings, probe=probes)
        champion.warm_up()  # while the query starts and reads its first batch
    queries = build_queries(
        spark,
        settings,
        available_now=available_now,
        console=console,
        champion=champion,
        feature_builder=feature_builder,
    )
    try:
        run_queries(spark, queries, job=JOB, settings=settings, record_progress=not console)
    finally:
        if champion is not None:
            champion.close()
        spark.stop()  # the listener bus drains before Python exits (no late callback into a dying VM)


if __name__ == "__main__":  # `spark-submit streaming/sales.py`, as jobs/sales_job.py
    import sys

    from streaming.jobs.entrypoint import run

    run("sales", sys.argv[1:])
