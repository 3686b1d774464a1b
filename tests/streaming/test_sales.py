"""The sales job: hand-computed window metrics, anomalies and scoring on static frames, then the real
thing on the real broker: duplicates, late events, exactly once across a SIGKILL, and alias swaps."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import NormalDist

import pandas as pd
import pyarrow as pa
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf
from pyspark.testing import assertDataFrameEqual

from streaming.runtime import stop_gracefully
from streaming.sales import (
    BASKETS_MIN,
    BASKETS_SCHEMA,
    JUDGED_WINDOWS_SCHEMA,
    PROFILE_SCHEMA,
    SILENCE_MAX_MINUTES,
    STORE_EXPECTATIONS_SQL,
    TYPICAL_BASKETS_SQL,
    AnomalyRules,
    detect_sales_anomalies,
    detect_store_silences,
    hourly_profile,
    judged_span,
    panes_of_rows,
    sales_panes,
    scoring_keys,
    since_last_sales,
    sliding_window_metrics,
    windowed_sales_metrics,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
JUDGED_WINDOWS_COLUMNS = [column.split()[0] for column in JUDGED_WINDOWS_SCHEMA.split(", ")]
EVENT_COLUMNS = (
    "event_id string, event_time timestamp, transaction_id string, store_id string, "
    "customer_id string, product_id string, category string, quantity int, unit_price double, "
    "discount double, total_amount double, payment_method string, channel string, "
    "on_promotion boolean"
)
METRIC_COLUMNS = (
    "window_start timestamp, window_end timestamp, store_id string, revenue double, "
    "transactions long, customers long, units long, line_items long, avg_basket double, "
    "units_per_transaction double"
)


def at(day: dt.date, clock: str) -> dt.datetime:
    """A UTC moment on ``day`` from 'HH:MM:SS[.fff]'."""
    return dt.datetime.combine(day, dt.time.fromisoformat(clock), tzinfo=dt.UTC)


def sale(
    event_id: str,
    moment: dt.datetime,
    transaction_id: str,
    store_id: str,
    customer_id: str | None,
    quantity: int,
    total_amount: float,
    product_id: str = "P1",
) -> dict:
    """One line item as the generator would send it."""
    return {
        "event_id": event_id,
        "event_time": moment.isoformat().replace("+00:00", "Z"),
        "transaction_id": transaction_id,
        "store_id": store_id,
        "customer_id": customer_id,
        "product_id": product_id,
        "category": "grocery",
        "quantity": quantity,
        "unit_price": round(total_amount / quantity, 4),
        "discount": 0.0,
        "total_amount": total_amount,
        "payment_method": "card",
        "channel": "store",
        "on_promotion": False,
    }


def insert_sales(store, events: list[dict], **columns: str) -> None:
    """``events`` (as ``sale`` makes them) written straight into ``sales_events``, as a backfill
    writes history, with ``columns`` set on every row."""
    rows = pd.DataFrame(events).assign(on_promotion=0, **columns)
    rows["event_time"] = pd.to_datetime(rows["event_time"], utc=True)
    store.insert_df("sales_events", rows.astype({"quantity": "int32", "on_promotion": "uint8"}))


def hand_events(day: dt.date, s1: str, s2: str) -> list[dict]:
    """Six line items in two stores; the expected windows below are worked out by hand."""
    return [
        sale("e1", at(day, "10:00:10"), "t1", s1, "c1", 2, 10.00),
        sale("e2", at(day, "10:00:40"), "t1", s1, "c1", 1, 5.50, "P2"),
        sale("e3", at(day, "10:02:05"), "t2", s1, "c2", 3, 15.00),
        sale("e4", at(day, "10:06:30"), "t3", s1, None, 1, 4.25),
        sale("e5", at(day, "10:01:00"), "t4", s2, "c1", 4, 20.00, "P3"),
        sale("e6", at(day, "10:01:59.999"), "t5", s2, "c3", 1, 5.00, "P3"),
    ]


def hand_windows(day: dt.date, s1: str, s2: str) -> list[tuple]:
    """(window start, store, revenue, transactions, customers, units, line items), by hand."""
    rows = [
        ("09:56", s1, 15.50, 1, 1, 3, 2),
        ("09:57", s1, 15.50, 1, 1, 3, 2),
        ("09:58", s1, 30.50, 2, 2, 6, 3),
        ("09:59", s1, 30.50, 2, 2, 6, 3),
        ("10:00", s1, 30.50, 2, 2, 6, 3),
        ("10:01", s1, 15.00, 1, 1, 3, 1),
        ("10:02", s1, 19.25, 2, 1, 4, 2),  # e4 is anonymous: no customer
        ("10:03", s1, 4.25, 1, 0, 1, 1),
        ("10:04", s1, 4.25, 1, 0, 1, 1),
        ("10:05", s1, 4.25, 1, 0, 1, 1),
        ("10:06", s1, 4.25, 1, 0, 1, 1),
        ("09:57", s2, 25.00, 2, 2, 5, 2),
        ("09:58", s2, 25.00, 2, 2, 5, 2),
        ("09:59", s2, 25.00, 2, 2, 5, 2),
        ("10:00", s2, 25.00, 2, 2, 5, 2),
        ("10:01", s2, 25.00, 2, 2, 5, 2),
        ("09:56", "ALL", 15.50, 1, 1, 3, 2),
        ("09:57", "ALL", 40.50, 3, 2, 8, 4),  # c1 shops in both stores: counted once
        ("09:58", "ALL", 55.50, 4, 3, 11, 5),
        ("09:59", "ALL", 55.50, 4, 3, 11, 5),
        ("10:00", "ALL", 55.50, 4, 3, 11, 5),
        ("10:01", "ALL", 40.00, 3, 3, 8, 3),
        ("10:02", "ALL", 19.25, 2, 1, 4, 2),
        ("10:03", "ALL", 4.25, 1, 0, 1, 1),
        ("10:04", "ALL", 4.25, 1, 0, 1, 1),
        ("10:05", "ALL", 4.25, 1, 0, 1, 1),
        ("10:06", "ALL", 4.25, 1, 0, 1, 1),
    ]
    result = []
    for start, store, revenue, transactions, customers, units, lines in rows:
        window_start = at(day, f"{start}:00").replace(tzinfo=None)
        result.append(
            (
                window_start,
                window_start + dt.timedelta(minutes=5),
                store,
                revenue,
                transactions,
                customers,
                units,
                lines,
                revenue / transactions,
                units / transactions,
            )
        )
    return result


def events_frame(spark: SparkSession, events: list[dict]) -> DataFrame:
    rows = [
        {**e, "event_time": dt.datetime.fromisoformat(e["event_time"].replace("Z", "+00:00"))}
        for e in events
    ]
    return spark.createDataFrame(pd.DataFrame(rows), EVENT_COLUMNS)


@pytest.mark.spark
def test_window_metrics_equal_hand_computed(spark: SparkSession) -> None:
    day = dt.date(2026, 3, 2)
    events = events_frame(spark, hand_events(day, "S1", "S2"))
    expected = spark.createDataFrame(hand_windows(day, "S1", "S2"), METRIC_COLUMNS)

    assertDataFrameEqual(windowed_sales_metrics(events), expected)
    assertDataFrameEqual(sliding_window_metrics(events), expected)


@pytest.mark.spark
def test_panes_of_a_collected_batch_equal_the_spark_panes(spark: SparkSession) -> None:
    day = dt.date(2026, 3, 3)
    events = [
        *hand_events(day, "S1", "S2"),
        sale("r1", at(day, "10:03:00"), "t9", "S1", None, 1, 0.0000125),  # half a millionth
        sale("r2", at(day, "10:03:01"), "t9", "S1", "c9", 1, 2.675),  # 2.67499999999999982...
        sale("r3", at(day, "10:03:02"), "t9", "S1", "c9", 3, 1e6 - 0.005),
    ]
    frame = events_frame(spark, events)
    by_spark = sales_panes(frame)
    by_arrow = panes_of_rows(frame.toArrow())

    def sorted_ids(panes: DataFrame) -> DataFrame:  # id sets come in no particular order
        return panes.withColumns({c: sf.array_sort(c) for c in ("transaction_ids", "customer_ids")})

    assertDataFrameEqual(
        sorted_ids(spark.createDataFrame(by_arrow.to_pandas(), by_spark.schema)),
        sorted_ids(by_spark),
    )


@pytest.mark.spark
def test_a_late_event_rewrites_its_own_windows_and_not_those_between(spark, settings, store):
    from streaming.sales import SalesBatchWriter

    day, tag = dt.date(2026, 3, 23), uuid.uuid4().hex[:6]
    shop = f"S1-{tag}"
    writer = SalesBatchWriter(spark, settings, query_name=f"sales-between-{tag}")
    batches = [
        [sale(f"a-{tag}", at(day, "10:00:00"), "t1", shop, "c1", 1, 1.0)],
        [sale(f"b-{tag}", at(day, "12:00:00"), "t2", shop, "c2", 1, 2.0)],
        [  # late for 10:00, and new at 14:00: 12:00's windows did not change
            sale(f"c-{tag}", at(day, "10:00:30"), "t3", shop, "c3", 1, 4.0),
            sale(f"d-{tag}", at(day, "14:00:00"), "t4", shop, "c4", 1, 8.0),
        ],
    ]
    for batch_id, events in enumerate(batches):
        writer(classified_batch(spark, events, at(day, "14:00:05").replace(tzinfo=None)), batch_id)

    versions = store.query_df(
        "SELECT toHour(window_end - 1) AS hour, count() AS rows FROM sales_metrics_versions "
        "WHERE store_id = {s:String} GROUP BY hour ORDER BY hour",
        {"s": shop},
    )
    assert list(versions.itertuples(index=False, name=None)) == [(10, 10), (12, 5), (14, 5)]
    latest = store_metrics(store, day, tag).query("store_id == @shop")
    assert latest.groupby(latest["window_start"].dt.hour)["revenue"].max().to_dict() == {
        9: 5.0,  # the windows from 09:56 hold 10:00:00 and 10:00:30
        10: 5.0,
        11: 2.0,
        12: 2.0,
        13: 8.0,
        14: 8.0,
    }


@pytest.mark.spark
def test_repeats_move_the_clock_whichever_batch_they_fall_into(spark, settings, store) -> None:
    """A restarted job (a new checkpoint) reads sales it stored before (repeats) after new ones:
    what has closed is the same whether the repeats share the new sales' batch or not."""
    from streaming.sales import SalesBatchWriter

    day, tag = dt.date(2026, 3, 24), uuid.uuid4().hex[:6]
    shop, kafka_time = f"S1-{tag}", dt.datetime(2026, 3, 24, 12, 31)

    def line(minute: int, label: str) -> dict:
        moment = at(day, "10:00:00") + dt.timedelta(minutes=minute)
        return sale(f"{label}{minute}-{tag}", moment, f"t{minute}", shop, "c1", 1, 1.0)

    stored_before = [line(m, "before") for m in range(120, 151, 5)]
    first_run = SalesBatchWriter(spark, settings, query_name=f"sales-first-{tag}")
    first_run(classified_batch(spark, stored_before, kafka_time), 0)

    def judged_until(split: list[list[dict]], name: str) -> pd.Timestamp:
        writer = SalesBatchWriter(spark, settings, query_name=f"sales-{name}-{tag}")
        for batch_id, records in enumerate(split):
            writer(classified_batch(spark, records, kafka_time), batch_id)
        writer.finish()
        return pd.Timestamp(
            store.scalar(
                "SELECT max(judged_until) FROM sales_anomaly_horizon FINAL "
                "WHERE query_name = {q:String}",
                {"q": writer.query_name},
            )
        ).tz_localize(None)

    closed = dt.datetime(2026, 3, 24, 12, 30) - dt.timedelta(
        minutes=settings.sales_watermark_minutes
    )
    together = [line(m, "together") for m in range(0, 61, 5)]  # new: each split's own ids
    assert judged_until([together + stored_before], "together") == closed
    apart = [line(m, "apart") for m in range(0, 61, 5)]
    assert judged_until([apart, stored_before], "apart") == closed


@pytest.mark.spark
def test_revenue_keeps_amounts_below_a_cent(spark, settings, store) -> None:
    """The contract's total_amount is quantity x unit_price x (1 - discount), not rounded: 3 at
    3.99 with 15% off is 10.1745. Revenue sums it exactly (before 2026-12-07: 10.17)."""
    from streaming.sales import SalesBatchWriter

    day, tag = dt.date(2026, 3, 22), uuid.uuid4().hex[:6]
    shop = f"S1-{tag}"
    events = [
        sale(f"m1-{tag}", at(day, "10:00:10"), "t1", shop, "c1", 3, 3 * 3.99 * (1 - 0.15)),
        sale(f"m2-{tag}", at(day, "10:00:20"), "t2", shop, "c2", 1, 0.285),
    ]
    expected = [10.4595] * 5  # the five windows holding 10:00

    by_spark = windowed_sales_metrics(events_frame(spark, events)).where(sf.col("store_id") == shop)
    assert [r.revenue for r in by_spark.orderBy("window_start").collect()] == pytest.approx(
        expected, rel=1e-12
    )
    batch = classified_batch(spark, events, dt.datetime(2026, 3, 22, 10, 1))
    SalesBatchWriter(spark, settings, query_name=f"sales-micros-{tag}")(batch, 0)
    stored = store_metrics(store, day, tag).query("store_id == @shop").sort_values("window_start")
    assert list(stored["revenue"]) == pytest.approx(expected, rel=1e-12)


def test_scoring_keys_are_the_distinct_store_product_and_utc_day_of_a_batch() -> None:
    times = [
        dt.datetime(2026, 3, 3, 23, 59, 59, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 3, 23, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 4, 0, 0, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 4, 0, 0, 2, tzinfo=dt.UTC),
    ]
    batch = pa.table(
        {
            "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "store_id": ["S1", "S1", "S1", "S2"],
            "product_id": ["P1", "P1", "P1", "P1"],
        }
    )
    keys = scoring_keys(batch).to_pylist()
    assert sorted(keys, key=lambda k: (k["forecast_date"], k["store_id"])) == [
        {"store_id": "S1", "product_id": "P1", "forecast_date": dt.date(2026, 3, 3)},
        {"store_id": "S1", "product_id": "P1", "forecast_date": dt.date(2026, 3, 4)},
        {"store_id": "S2", "product_id": "P1", "forecast_date": dt.date(2026, 3, 4)},
    ]


def baseline_metrics(
    spark: SparkSession, day: dt.date, store: str, last_revenue: float, last_units: float
) -> DataFrame:
    """An hour of steady windows (revenue 100 +/- 4, units 10 +/- 1, one unit a basket), then one
    judged window."""
    start = at(day, "09:00:00").replace(tzinfo=None)
    rows = [(start + dt.timedelta(minutes=i), *steady_window(i)) for i in range(60)]
    rows.append((start + dt.timedelta(minutes=60), last_revenue, last_units, last_units))
    return spark.createDataFrame(
        [(when, store, revenue, units, baskets) for when, revenue, units, baskets in rows],
        JUDGED_WINDOWS_SCHEMA,
    )


def steady_window(i: int) -> tuple[float, float, float]:
    """The revenue, units and transactions of ``baseline_metrics``'s window ``i``."""
    units = 10.0 + (i % 3 - 1)
    return 100.0 + (i % 5 - 2) * 2, units, units


def judging_the_window_at_ten(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """(judge_after, judge_until) that judge the window 10:00-10:05 of ``day`` alone."""
    judged_end = at(day, "10:05:00").replace(tzinfo=None)
    return judged_end - dt.timedelta(minutes=1), judged_end


def flagged_directions(
    spark: SparkSession, rows: list[tuple], after: dt.datetime, judged_end: dt.datetime, **kwargs
) -> set[tuple[str, str]]:
    """The (metric, direction) pairs ``detect_sales_anomalies`` flags among hand-built windows."""
    metrics = spark.createDataFrame(rows, JUDGED_WINDOWS_SCHEMA)
    found = detect_sales_anomalies(metrics, after, judged_end, **kwargs)
    return {(r.metric, r.direction) for r in found.collect()}


@pytest.mark.spark
def test_anomaly_needs_baseline_and_model_to_agree(spark: SparkSession) -> None:
    day = dt.date(2026, 3, 3)
    after, judged_end = judging_the_window_at_ten(day)
    metrics = baseline_metrics(spark, day, "S1", last_revenue=400.0, last_units=40.0)
    rules = AnomalyRules()

    no_model = detect_sales_anomalies(metrics, after, judged_end, None, rules).collect()
    assert {(r.metric, r.direction, r.severity) for r in no_model} == {
        ("revenue", "above", "critical"),
        ("units", "above", "critical"),
    }
    revenue = next(r for r in no_model if r.metric == "revenue")
    assert revenue.expected == 100.0  # the median of the 56 baseline windows
    assert revenue.baseline_mad == 2.0
    # The scale is the spread of baskets arriving at random (the MAD's is 2.97): the root mean
    # square basket times sqrt(mean baskets a window) plus the Poisson tail's margin at z = 3.5.
    baseline = [steady_window(i) for i in range(56)]
    basket = math.sqrt(sum((r / n) ** 2 for r, _, n in baseline) / len(baseline))
    baskets = sum(n for _, _, n in baseline) / len(baseline)
    scale = basket * (math.sqrt(baskets) + (3.5**2 - 1) / (6 * 3.5))
    assert revenue.score == pytest.approx((400.0 - 100.0) / scale)
    assert f"{baskets:.2f} baskets a window, typically of {basket:.2f}" in revenue.reason
    assert revenue.model_expected is None and "rolling baseline only" in revenue.reason

    # The model expected this surge (40 units in 5 minutes = 11520 a day): not an anomaly.
    agrees = spark.createDataFrame(
        [("S1", day, 11520.0, "demand_forecaster", "3")],
        "store_id string, forecast_date date, expected_units_day double, model_name string, "
        "model_version string",
    )
    assert detect_sales_anomalies(metrics, after, judged_end, agrees, rules).count() == 0

    # The model expected the usual 10 units: both disagree with the observation.
    usual = agrees.withColumn("expected_units_day", sf.lit(2880.0))
    flagged = detect_sales_anomalies(metrics, after, judged_end, usual, rules).collect()
    units = next(r for r in flagged if r.metric == "units")
    assert units.model_expected == pytest.approx(10.0)
    assert units.model_version == "3" and "300% above the expectation" in units.reason


@pytest.mark.spark
def test_a_quiet_window_and_a_store_going_silent_are_judged(spark: SparkSession) -> None:
    day = dt.date(2026, 3, 4)
    after, judged_end = judging_the_window_at_ten(day)
    normal = baseline_metrics(spark, day, "S1", last_revenue=101.0, last_units=10.0)
    assert detect_sales_anomalies(normal, after, judged_end).count() == 0

    # S2 sells steadily, then has no window row at all in the judged minute: it counts as zero.
    silent = baseline_metrics(spark, day, "S2", 0.0, 0.0).where(
        sf.col("window_start") < at(day, "10:00:00").replace(tzinfo=None)
    )
    flagged = detect_sales_anomalies(normal.unionByName(silent), after, judged_end).collect()
    assert {(r.store_id, r.metric, r.direction) for r in flagged} == {
        ("S2", "revenue", "below"),
        ("S2", "units", "below"),
    }


@pytest.mark.spark
def test_a_store_that_opens_is_judged_on_its_own_windows_not_on_zeros_before(
    spark: SparkSession,
) -> None:
    day = dt.date(2026, 3, 5)
    after, judged_end = judging_the_window_at_ten(day)
    open_all_hour = baseline_metrics(spark, day, "S1", last_revenue=101.0, last_units=10.0)
    # S3 opens at 09:45 and sells like S1: its 11 windows before the judged one are its baseline.
    opens_later = baseline_metrics(spark, day, "S3", 101.0, 10.0).where(
        sf.col("window_start") >= at(day, "09:45:00").replace(tzinfo=None)
    )
    metrics = open_all_hour.unionByName(opens_later)
    assert detect_sales_anomalies(metrics, after, judged_end).count() == 0

    surge = opens_later.withColumn(
        "revenue",
        sf.when(
            sf.col("window_start") == at(day, "10:00:00").replace(tzinfo=None), 400.0
        ).otherwise(sf.col("revenue")),
    )
    flagged = detect_sales_anomalies(open_all_hour.unionByName(surge), after, judged_end)
    assert [(r.store_id, r.metric, r.expected) for r in flagged.collect()] == [
        ("S3", "revenue", 100.0)
    ]


def consecutive_spans(
    first: dt.datetime, last: dt.datetime, step: dt.timedelta
) -> list[tuple[dt.datetime, dt.datetime]]:
    """(judge_after, judge_until) spans of ``step`` from ``first`` to ``last``, as a job judges."""
    starts = [first + k * step for k in range(-(-(last - first) // step))]
    return [(start, min(start + step, last)) for start in starts]


@pytest.mark.spark
def test_a_store_selling_again_after_an_hour_of_silence_is_judged_alike_whatever_the_spans(
    spark: SparkSession,
) -> None:
    """Its history before the silence is unknown, as before a store's first window: selling as
    before is no surge, whether the job judges the windows minute by minute (the frame it reads
    starts after the silence began) or in one span that reads the hour before the silence too."""
    day = dt.date(2026, 3, 6)
    start = at(day, "09:00:00").replace(tzinfo=None)
    sells = [*range(60), *range(130, 160)]  # silent from 10:00 to 11:10
    rows = [(start + dt.timedelta(minutes=i), "S1", *steady_window(i)) for i in sells]
    metrics = spark.createDataFrame(rows, JUDGED_WINDOWS_SCHEMA).cache()
    judged_from, judged_until = start + dt.timedelta(minutes=60), start + dt.timedelta(minutes=160)
    lead = dt.timedelta(minutes=AnomalyRules().baseline_minutes + 5)

    def flagged(after: dt.datetime, until: dt.datetime) -> set[tuple[dt.datetime, str, str]]:
        read = metrics.where(sf.col("window_start") >= after - lead)  # what the job reads
        found = detect_sales_anomalies(read, after, until).collect()
        return {(r.window_start, r.metric, r.direction) for r in found}

    at_once = flagged(judged_from, judged_until)
    spans = consecutive_spans(judged_from, judged_until, dt.timedelta(minutes=20))
    in_steps = set().union(*(flagged(after, until) for after, until in spans))
    assert {direction for _, _, direction in at_once} == {"below"}  # the silence, not the return
    assert in_steps == at_once


def test_judged_spans_end_at_midnight_and_after_six_hours() -> None:
    """Each window is judged with its own day's history however the job's judgements fall: a
    span that would cross midnight stops there; a backlog is judged 6 hours at a time."""
    day = dt.datetime(2026, 3, 14)
    evening, morning = day + dt.timedelta(hours=23, minutes=30), day + dt.timedelta(hours=24.5)
    midnight = day + dt.timedelta(days=1)
    assert judged_span(evening, morning) == (evening, midnight)
    assert judged_span(midnight, morning) == (midnight, morning)
    assert judged_span(morning, morning) is None
    backlog = day + dt.timedelta(hours=8)
    assert judged_span(backlog, backlog + dt.timedelta(hours=10)) == (
        backlog,
        backlog + dt.timedelta(hours=6),
    )


def test_an_hourly_profile_is_each_stores_share_of_its_day_by_hour() -> None:
    rows = [
        (store, dt.date(2026, 3, d), h, u)
        for d in (1, 2, 3)
        for store, h, u in (("S1", 8, 10), ("S1", 9, 30), ("S2", 9, 20))
    ]
    rows.append(("S3", dt.date(2026, 3, 1), 9, 5))  # sold on 1 day only: no profile
    rows.append(("S3", dt.date(2026, 3, 2), 10, 5))
    profile = hourly_profile(pd.DataFrame(rows, columns=["store_id", "day", "hour", "units"]))
    shares = {(r.store_id, r.hour): r.share for r in profile.itertuples()}
    assert shares == pytest.approx(
        {
            ("S1", 8): 0.25,
            ("S1", 9): 0.75,
            ("S2", 9): 1.0,
            ("ALL", 8): 30 / 190,
            ("ALL", 9): 155 / 190,
            ("ALL", 10): 5 / 190,
        }
    )


@pytest.mark.spark
def test_the_model_expectation_follows_the_stores_hours_and_a_closed_store_is_not_below(
    spark: SparkSession,
) -> None:
    day = dt.date(2026, 3, 6)
    after, judged_end = judging_the_window_at_ten(day)
    # 40 units in 5 minutes: 4 times the baseline.
    surge = baseline_metrics(spark, day, "S1", last_revenue=400.0, last_units=40.0)
    model = spark.createDataFrame(
        [
            ("S1", day, 960.0, "demand_forecaster", "3"),
            ("S2", day, 960.0, "demand_forecaster", "3"),
        ],
        "store_id string, forecast_date date, expected_units_day double, model_name string, "
        "model_version string",
    )
    # S1 sells half its day between 10:00 and 11:00, S2 only before 10:00.
    profile = spark.createDataFrame(
        [("S1", 9, 0.5), ("S1", 10, 0.5), ("S2", 9, 1.0)], PROFILE_SCHEMA
    )
    # Spread evenly, the model expects 3.33 units in the window: the surge strays from it.
    evenly = detect_sales_anomalies(surge, after, judged_end, model)
    assert {r.metric for r in evenly.collect()} == {"revenue", "units"}
    # By S1's hours it expects 960 x 0.5 x 5/60 = 40 units: just what was sold.
    assert detect_sales_anomalies(surge, after, judged_end, model, profile=profile).count() == 0

    # S2 goes silent at 10:00, when it closes: not an anomaly, with the model or without.
    closes = baseline_metrics(spark, day, "S2", 0.0, 0.0).where(
        sf.col("window_start") < at(day, "10:00:00").replace(tzinfo=None)
    )
    assert detect_sales_anomalies(closes, after, judged_end).count() == 2  # no profile: below
    for expectations in (None, model):
        judged = detect_sales_anomalies(closes, after, judged_end, expectations, profile=profile)
        assert judged.count() == 0


@pytest.mark.spark
def test_a_store_selling_in_hours_it_used_to_be_closed_is_judged_on_its_baseline(
    spark: SparkSession,
) -> None:
    day = dt.date(2026, 3, 7)
    after, judged_end = judging_the_window_at_ten(day)
    # S1's history sells only in the afternoon, but this morning it has sold for an hour.
    afternoons = spark.createDataFrame([("S1", 14, 0.5), ("S1", 15, 0.5)], PROFILE_SCHEMA)
    usual = baseline_metrics(spark, day, "S1", last_revenue=101.0, last_units=10.0)
    assert detect_sales_anomalies(usual, after, judged_end, profile=afternoons).count() == 0

    surge = baseline_metrics(spark, day, "S1", last_revenue=400.0, last_units=40.0)
    flagged = detect_sales_anomalies(surge, after, judged_end, profile=afternoons).collect()
    assert sorted((r.metric, r.direction, r.expected) for r in flagged) == [
        ("revenue", "above", 100.0),
        ("units", "above", 10.0),
    ]


@pytest.mark.spark
def test_a_store_that_sells_in_few_windows_is_not_flagged_for_one_basket(
    spark: SparkSession,
) -> None:
    day = dt.date(2026, 3, 8)
    after, judged_end = judging_the_window_at_ten(day)
    start = at(day, "09:00:00").replace(tzinfo=None)
    # A basket of 20.00 (2 units) in 2 windows of every 5: the median window is empty (MAD 0).
    sparse = [
        (start + dt.timedelta(minutes=i), "S1", *((20.0, 2.0, 1.0) if i % 5 < 2 else (0.0,) * 3))
        for i in range(60)
    ]

    def judged(revenue: float, units: float, baskets: float) -> set[tuple[str, str]]:
        rows = [*sparse, (start + dt.timedelta(minutes=60), "S1", revenue, units, baskets)]
        return flagged_directions(spark, rows, after, judged_end)

    assert judged(20.0, 2.0, 1.0) == set()  # one basket, as usual
    assert judged(200.0, 20.0, 10.0) == {("revenue", "above"), ("units", "above")}  # ten at once


@pytest.mark.spark
def test_an_empty_window_is_a_drop_only_for_a_store_that_sells_many_baskets_a_window(
    spark: SparkSession,
) -> None:
    day = dt.date(2026, 3, 9)
    after, judged_end = judging_the_window_at_ten(day)
    start = at(day, "09:00:00").replace(tzinfo=None)

    def judged(baskets_a_window: float) -> set[tuple[str, str]]:
        # A basket of 20.00 (2 units) every 5/n minutes: each baseline window holds exactly n, so
        # the baseline is flat (MAD 0); the window judged at 10:00 holds none.
        n = baskets_a_window
        rows = [(start + dt.timedelta(minutes=i), "S1", 20.0 * n, 2.0 * n, n) for i in range(60)]
        rows.append((start + dt.timedelta(minutes=60), "S1", 0.0, 0.0, 0.0))
        return flagged_directions(spark, rows, after, judged_end)

    # One basket a window: an empty one is a basket a minute late, which baskets arriving at
    # random do a third of the time (Poisson), not a drop.
    assert judged(1.0) == set()
    # Twenty a window going to none happens at random about once in 500 million windows.
    assert judged(20.0) == {("revenue", "below"), ("units", "below")}


@pytest.mark.spark
def test_a_store_silent_for_longer_than_its_rate_makes_likely_is_flagged_once(
    spark: SparkSession,
) -> None:
    day = dt.date(2026, 3, 11)
    start = at(day, "09:00:00").replace(tzinfo=None)
    judge_after, judge_until = start + dt.timedelta(minutes=34), start + dt.timedelta(minutes=65)
    model_columns = (
        "store_id string, forecast_date date, expected_units_day double, model_name string, "
        "model_version string"
    )

    def silences(
        baskets_a_window: float,
        profile: DataFrame | None = None,
        model: DataFrame | None = None,
    ) -> list:
        # Windows 08:29-09:29 hold n baskets of 20.00 (2 units each); the store then sells nothing.
        n = baskets_a_window
        rows = [
            (start + dt.timedelta(minutes=i), "S1", 20.0 * n, 2.0 * n, n) for i in range(-31, 30)
        ]
        metrics = spark.createDataFrame(rows, JUDGED_WINDOWS_SCHEMA)
        found = detect_store_silences(
            metrics, judge_after, judge_until, model, AnomalyRules(), profile
        )
        return found.collect()

    # Three baskets a window: 61 x 3 / 5 = 36.6 baskets in the 59 minutes' worth of windows to
    # the last sale at 09:29, 35.6 but that one. If the rate held, all of them fall before the 35
    # silent minutes from 09:30 to 10:05 with probability (59 / 94)^35.6 = exp(-16.58): once in 16
    # million. One row, for the longest judged window.
    [silence] = silences(3.0)
    assert (silence.store_id, silence.window_start, silence.window_end) == (
        "S1",
        start + dt.timedelta(minutes=30),
        judge_until,
    )
    assert (silence.metric, silence.observed, silence.direction) == ("transactions", 0.0, "below")
    assert silence.expected == pytest.approx(35.6 * 35 / 59)
    tail = math.exp(-35.6 * math.log(94 / 59))
    assert silence.score == pytest.approx(NormalDist().inv_cdf(tail), abs=0.05)
    assert silence.severity == "warning" and "for 35 minutes" in silence.reason

    # One basket a window: (59 / 94)^11.2, once in 180 such spans: not flagged.
    assert silences(1.0) == []
    # Its hours say the store closes at 10:00: 30 of the silent minutes count.
    closes_at_ten = spark.createDataFrame([("S1", 8, 0.5), ("S1", 9, 0.5)], PROFILE_SCHEMA)
    [closing] = silences(3.0, closes_at_ten)
    assert closing.expected == pytest.approx(35.6 * 30 / 59)
    # Its hours say it closes at 09:00: the silence is its usual closing time.
    assert silences(3.0, spark.createDataFrame([("S1", 8, 1.0)], PROFILE_SCHEMA)) == []

    # The champion expects sales in those minutes: flagged with its expectation in baskets
    # (its units in 35 minutes of an even day, 2 units a basket).
    model = spark.createDataFrame([("S1", day, 1440.0, "demand_forecaster", "3")], model_columns)
    [modelled] = silences(3.0, model=model)
    assert modelled.model_expected == pytest.approx(1440.0 * 35 / 1440 / 2)
    assert modelled.model_version == "3"
    # The champion expects nothing that day: the silence is what the model foresaw.
    nothing = model.withColumn("expected_units_day", sf.lit(0.0))
    assert silences(3.0, model=nothing) == []


@pytest.mark.spark
def test_a_silence_longer_than_the_baseline_hour_grows_until_the_store_sells_again(
    spark: SparkSession,
) -> None:
    """A silence's row grows past the hour its rate is measured on, however the judged spans
    fall, and ends where the store sells again, or where its usual hours end."""
    start = at(dt.date(2026, 3, 13), "09:00:00").replace(tzinfo=None)
    # Windows 08:29-09:29 and from 11:56 hold 3 baskets of 20.00; nothing from 09:30 to 11:59.
    rows = [
        (start + dt.timedelta(minutes=i), "S1", 60.0, 6.0, 3.0)
        for i in [*range(-31, 30), *range(176, 200)]
    ]
    metrics = pd.DataFrame(rows, columns=JUDGED_WINDOWS_COLUMNS)
    judge_from, judge_until = start + dt.timedelta(minutes=34), start + dt.timedelta(minutes=210)
    baseline_span = dt.timedelta(minutes=AnomalyRules().baseline_minutes + 5)
    lead = dt.timedelta(minutes=SILENCE_MAX_MINUTES) + baseline_span

    def silences(after: dt.datetime, until: dt.datetime, profile: DataFrame | None = None) -> list:
        # What the job reads, and keeps of it.
        read = since_last_sales(
            metrics[metrics["window_start"] >= after - lead], after, baseline_span
        )
        frame = spark.createDataFrame(read, JUDGED_WINDOWS_SCHEMA)
        return detect_store_silences(frame, after, until, None, AnomalyRules(), profile).collect()

    [silence] = silences(judge_from, judge_until)
    assert (silence.window_start, silence.window_end) == (
        start + dt.timedelta(minutes=30),
        start + dt.timedelta(hours=3),
    )
    assert silence.expected == pytest.approx(35.6 * 150 / 59)
    assert "for 150 minutes" in silence.reason and silence.severity == "critical"
    # Judged in half-hour spans, the last judgement's row (which replaces the others) is the same.
    spans = consecutive_spans(judge_from, judge_until, dt.timedelta(minutes=30))
    last = [row for after, until in spans for row in silences(after, until)][-1]
    assert last == silence
    # Its hours say it closes at 11:00: the silence ends with the last window open a minute.
    closes_at_eleven = spark.createDataFrame(
        [("S1", hour, 1 / 3) for hour in (8, 9, 10)], PROFILE_SCHEMA
    )
    [closing] = silences(judge_from, judge_until, closes_at_eleven)
    assert closing.window_end == start + dt.timedelta(minutes=124)


@pytest.mark.spark
def test_a_store_without_hours_of_its_own_keeps_the_chains(spark: SparkSession) -> None:
    """A new store has no hourly profile yet (fewer than 3 days of sales): it is judged by the
    chain's (``ALL``'s), so closing at the chain's usual hour is not a drop nor a silence."""
    day = dt.date(2026, 3, 12)
    after, judged_end = judging_the_window_at_ten(day)
    chain_closes_at_ten = spark.createDataFrame(
        [("ALL", 8, 0.5), ("ALL", 9, 0.5), ("S9", 14, 1.0)], PROFILE_SCHEMA
    )
    closes = baseline_metrics(spark, day, "S2", 0.0, 0.0).where(
        sf.col("window_start") < at(day, "10:00:00").replace(tzinfo=None)
    )
    assert detect_sales_anomalies(closes, after, judged_end).count() == 2  # no profile: below
    assert (
        detect_sales_anomalies(closes, after, judged_end, profile=chain_closes_at_ten).count() == 0
    )

    # Three baskets a window until 09:29, then nothing until 10:05: with the chain's hours, 30
    # of the 35 silent minutes count (as with a profile of its own saying the same).
    start = at(day, "09:00:00").replace(tzinfo=None)
    rows = [(start + dt.timedelta(minutes=i), "S1", 60.0, 6.0, 3.0) for i in range(-31, 30)]
    metrics = spark.createDataFrame(rows, JUDGED_WINDOWS_SCHEMA)
    judge_after, judge_until = start + dt.timedelta(minutes=34), start + dt.timedelta(minutes=65)

    def silences(profile: DataFrame) -> list:
        return detect_store_silences(
            metrics, judge_after, judge_until, None, AnomalyRules(), profile
        ).collect()

    [closing] = silences(chain_closes_at_ten)
    assert closing.expected == pytest.approx(35.6 * 30 / 59)
    # The chain closes at 09:00: the silence is the usual closing time.
    assert silences(spark.createDataFrame([("ALL", 8, 1.0)], PROFILE_SCHEMA)) == []
    # Its own profile, where it has one, comes before the chain's.
    own = spark.createDataFrame([("ALL", 8, 1.0), ("S1", 8, 0.5), ("S1", 9, 0.5)], PROFILE_SCHEMA)
    [own_hours] = silences(own)
    assert own_hours.expected == pytest.approx(35.6 * 30 / 59)


@pytest.mark.spark
def test_a_basket_is_judged_against_the_stores_usual_baskets(spark: SparkSession) -> None:
    day = dt.date(2026, 3, 10)
    after, judged_end = judging_the_window_at_ten(day)
    start = at(day, "09:00:00").replace(tzinfo=None)
    # The hour before held two baskets of 2.00, each in 5 windows; the store's usual basket is 30.
    cheap = [
        (start + dt.timedelta(minutes=i), "S1", *((2.0, 1.0, 1.0) if i % 30 < 5 else (0.0,) * 3))
        for i in range(60)
    ]
    usual = spark.createDataFrame([("S1", 30.0, 3.0)], BASKETS_SCHEMA)

    def judged(revenue: float, units: float, baskets: float, history: DataFrame | None) -> set:
        rows = [*cheap, (start + dt.timedelta(minutes=60), "S1", revenue, units, baskets)]
        return flagged_directions(spark, rows, after, judged_end, baskets=history)

    # One basket of 25.00 and 5 units: far beyond the baseline's, within the store's usual ones.
    assert judged(25.0, 5.0, 1.0, None) == {("revenue", "above"), ("units", "above")}
    assert judged(25.0, 5.0, 1.0, usual) == set()
    assert judged(250.0, 50.0, 10.0, usual) == {("revenue", "above"), ("units", "above")}

    # After an hour without a basket, a window is scored in its own baskets: one is no surge.
    empty = [(when, store, 0.0, 0.0, 0.0) for when, store, *_ in cheap]
    for revenue, units, baskets, flagged in ((40.0, 4.0, 1.0, False), (200.0, 20.0, 5.0, True)):
        rows = [*empty, (start + dt.timedelta(minutes=60), "S1", revenue, units, baskets)]
        found = detect_sales_anomalies(
            spark.createDataFrame(rows, JUDGED_WINDOWS_SCHEMA), after, judged_end
        )
        assert (found.count() == 2) is flagged, baskets


def test_typical_baskets_are_the_root_mean_square_of_each_stores_transactions(store) -> None:
    tag = uuid.uuid4().hex[:6]
    # A minute of 2018 of this test run's own: ALL sums every store's baskets in the span.
    moment = dt.datetime(2018, 1, 1) + dt.timedelta(minutes=int(tag, 16) % 500_000)
    # 20 baskets of one line (10.00, 1 unit) and 10 of two (20.00 and 2 units each) in one store,
    # 29 baskets of 5.00 in another: too few for a typical basket of its own.
    lines = [(f"a{t}", f"A-{tag}", 10.0, 1) for t in range(20)]
    lines += [(f"b{t}", f"A-{tag}", 20.0, 2) for t in range(10) for _ in range(2)]
    lines += [(f"c{t}", f"C-{tag}", 5.0, 1) for t in range(29)]
    insert_sales(
        store,
        [
            sale(f"{tag}-{i}", moment, f"{tag}-{txn}", shop, None, units, amount)
            for i, (txn, shop, amount, units) in enumerate(lines)
        ],
    )

    found = store.query_df(
        TYPICAL_BASKETS_SQL,
        {
            "since": moment,
            "until": moment + dt.timedelta(minutes=1),
            "min_baskets": BASKETS_MIN,
        },
    ).set_index("store_id")
    assert BASKETS_MIN == 30 and set(found.index) == {f"A-{tag}", "ALL"}
    assert found.loc[f"A-{tag}", "revenue"] == pytest.approx(math.sqrt((20 * 100 + 10 * 1600) / 30))
    assert found.loc[f"A-{tag}", "units"] == pytest.approx(math.sqrt((20 * 1 + 10 * 16) / 30))
    assert found.loc["ALL", "revenue"] == pytest.approx(
        math.sqrt((20 * 100 + 10 * 1600 + 29 * 25) / 59)
    )


def test_a_days_expectation_sums_each_pairs_latest_score_and_names_the_model_that_scored_last(
    store,
) -> None:
    tag = uuid.uuid4().hex[:6]
    day = dt.date(2017, 1, 1) + dt.timedelta(days=int(tag, 16) % 3000)  # a day of this run's own
    start = dt.datetime.combine(day, dt.time(8))
    shop, other = f"A-{tag}", f"B-{tag}"

    def scored(minute: int, store_id: str, product_id: str, units: float, version: str) -> dict:
        return {
            "store_id": store_id,
            "product_id": product_id,
            "forecast_date": day,
            "predicted_units": units,
            "model_name": "demand_forecaster",
            "model_version": version,
            "query_name": "tests",
            "batch_id": minute,
            "scored_at": start + dt.timedelta(minutes=minute),
        }

    store.insert_df(
        "demand_scores",
        pd.DataFrame(
            [
                scored(0, shop, "P1", 4.0, "9"),
                scored(0, shop, "P2", 6.0, "9"),
                scored(0, other, "P1", 1.0, "9"),
                scored(1, shop, "P1", 5.0, "10"),  # promoted: P1 scored again
                scored(2, other, "P1", 2.0, "8"),  # rolled back to 8
            ]
        ),
    )
    found = store.query_df(STORE_EXPECTATIONS_SQL, {"first_date": day, "last_date": day})
    found = found.set_index("store_id")
    assert found.loc[shop, "expected_units_day"] == pytest.approx(11.0)  # P1 by 10, P2 by 9
    assert found.loc[shop, "model_version"] == "10"
    assert found.loc[other, "expected_units_day"] == pytest.approx(2.0)
    assert found.loc[other, "model_version"] == "8"
    assert found.loc["ALL", "expected_units_day"] == pytest.approx(13.0)
    assert found.loc["ALL", "model_version"] == "8"


# --- On the real broker ----------------------------------------------------------------------


def create_topic(settings, topic: str, partitions: int = 2) -> None:
    """A fresh topic for one test, so that tests never read each other's records."""
    from common import stack

    stack.ensure_topics(
        settings.model_copy(update={"sales_topic": topic, "inventory_topic": topic}), partitions
    )


def produce(bootstrap: str, topic: str, records: list[dict | bytes]) -> list[tuple[int, int]]:
    """Send records (dicts as JSON, keyed store|product; bytes as they are); their (partition, offset)."""
    from kafka import KafkaProducer

    from common.schemas import event_key

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = []
        for record in records:
            if isinstance(record, dict):
                key = event_key(record.get("store_id", "?"), record.get("product_id", "?"))
                futures.append(producer.send(topic, value=json.dumps(record).encode(), key=key))
            else:
                futures.append(producer.send(topic, value=record, key=b"poison"))
        producer.flush()
        return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close()


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 2.0
) -> None:
    """Poll ``condition`` (each poll takes the store's lock, so not too often)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def drain(queries) -> None:
    for query in queries:
        query.processAllAvailable()


def drain_job(spark, job_settings, job: str, **build_kwargs) -> list:
    """Run the sales job in this process over what its topic holds (AvailableNow) until it ends,
    as ``main`` runs it; the queries as they ended."""
    from streaming.runtime import run_queries
    from streaming.sales import build_queries

    queries = build_queries(spark, job_settings, job=job, available_now=True, **build_kwargs)
    console = build_kwargs.get("console", False)
    return run_queries(spark, queries, job=job, settings=job_settings, record_progress=not console)


def stop(queries) -> None:
    """Stop the queries as the job does, between batches."""
    for query in queries:
        stop_gracefully(query)


def store_metrics(store, day: dt.date, tag: str) -> pd.DataFrame:
    """The stored windows of the test's stores (ids ending in ``-tag``) and the overall row of
    ``day`` (each test owns its own day), read as a user would: a plain SELECT, no FINAL."""
    return store.query_df(
        "SELECT window_start, window_end, store_id, revenue, transactions, customers, units, "
        "line_items, avg_basket, units_per_transaction FROM sales_metrics "
        "WHERE toDate(window_end - 1) >= {day:Date} AND toDate(window_start) <= {day:Date} "
        "AND (endsWith(store_id, {suffix:String}) OR store_id = 'ALL')",
        {"day": day, "suffix": f"-{tag}"},
    )


def metrics_frame(spark: SparkSession, rows: pd.DataFrame) -> DataFrame:
    rows = rows.assign(
        window_start=pd.to_datetime(rows["window_start"]).dt.tz_localize(None),
        window_end=pd.to_datetime(rows["window_end"]).dt.tz_localize(None),
    )
    for column in ("transactions", "customers", "units", "line_items"):
        rows[column] = rows[column].astype("int64")
    return spark.createDataFrame(rows, METRIC_COLUMNS)


@pytest.fixture
def sales_job(spark, settings, kafka, store) -> Iterator[Callable[..., list]]:
    """Start the sales job in this process on a fresh topic; stops its queries afterwards."""
    from streaming.sales import build_queries

    started: list = []

    def start(topic: str, **kwargs) -> list:
        job = f"sales-test-{uuid.uuid4().hex[:8]}"
        job_settings = settings.model_copy(update={"sales_topic": topic})
        queries = build_queries(spark, job_settings, job=job, **kwargs)
        started.extend(queries)
        return queries

    yield start
    stop(started)


@pytest.mark.services
@pytest.mark.spark
def test_a_new_checkpoint_does_not_take_its_batches_for_replays(
    spark, settings, kafka, store, tmp_path
) -> None:

    day, tag = dt.date(2026, 3, 11), uuid.uuid4().hex[:6]
    shop, topic, job = f"S-{tag}", f"sales-reset-{tag}", f"sales-reset-{tag}"
    create_topic(settings, topic, partitions=1)

    def drain_with(checkpoints: Path, starting_offsets: str) -> None:
        job_settings = settings.model_copy(
            update={
                "sales_topic": topic,
                "checkpoint_dir": checkpoints,
                "starting_offsets": starting_offsets,
            }
        )
        drain_job(spark, job_settings, job)

    first = [
        sale(f"a{i}-{tag}", at(day, f"10:0{i}:00"), f"ta{i}", shop, "c", 1, 2.0) for i in range(3)
    ]
    produce(kafka, topic, first)
    drain_with(tmp_path / "before-clean", "earliest")
    # `submit_jobs.sh clean`, then the same job from the offsets after the first events: its
    # batch ids start at 0 again.
    second = [
        sale(f"b{i}-{tag}", at(day, f"10:1{i}:00"), f"tb{i}", shop, "c", 1, 2.0) for i in range(3)
    ]
    produce(kafka, topic, second)
    drain_with(tmp_path / "after-clean", json.dumps({topic: {"0": len(first)}}))

    stored = store.query_df(
        "SELECT event_id FROM sales_events WHERE store_id = {s:String}", {"s": shop}
    )
    assert sorted(stored.event_id) == sorted(e["event_id"] for e in first + second)
    line_items = store.scalar(
        "SELECT sum(line_items) FROM sales_panes WHERE store_id = {s:String}", {"s": shop}
    )
    assert line_items == len(first) + len(second)


@pytest.mark.services
@pytest.mark.spark
def test_a_new_checkpoint_reading_the_topic_again_counts_nothing_twice(
    spark, settings, kafka, store, tmp_path
) -> None:
    """`submit_jobs.sh clean`, then a start from `earliest`: the events, the windows and the dead
    letters the first run stored are each stored once, read without FINAL. The progress of both
    runs is kept (batch ids start again at 0 in the new checkpoint)."""
    day, tag = dt.date(2026, 3, 17), uuid.uuid4().hex[:6]
    shop, topic, job = f"S-{tag}", f"sales-again-{tag}", f"sales-again-{tag}"
    create_topic(settings, topic)
    events = [
        sale(f"e{i}-{tag}", at(day, f"10:0{i}:00"), f"t{i}", shop, "c", 1, 2.0) for i in range(4)
    ]
    produce(kafka, topic, [*events, b"{not json", b"\xff\xfe"])

    for run in ("before-clean", "after-clean"):
        job_settings = settings.model_copy(
            update={"sales_topic": topic, "checkpoint_dir": tmp_path / run}
        )
        ended = drain_job(spark, job_settings, job)

    counts = store.query_df(
        "SELECT (SELECT count() FROM sales_events WHERE store_id = {s:String}) AS events, "
        "(SELECT sum(line_items) FROM sales_panes WHERE store_id = {s:String}) AS line_items, "
        "(SELECT count() FROM dead_letters WHERE topic = {t:String}) AS dead",
        {"s": shop, "t": topic},
    )
    assert counts.iloc[0].tolist() == [4, 4, 2]
    metrics = store_metrics(store, day, tag).query("store_id == @shop")
    assert metrics.transactions.max() == 4 and metrics.revenue.max() == pytest.approx(8.0)

    def progress_per_query() -> dict[str, tuple[int, int]]:
        """Per query: the checkpoints it ran from, and the records read, as ``stream_progress``
        keeps them."""
        frame = store.query_df(
            "SELECT query_name, uniqExact(query_id) AS runs, sum(input_rows) AS records "
            "FROM stream_progress FINAL WHERE job = {j:String} GROUP BY query_name",
            {"j": job},
        )
        return {r.query_name: (r.runs, r.records) for r in frame.itertuples(index=False)}

    records = len(events) + 2
    expected = {q.name: (2, 2 * records) for q in ended}
    wait_for(lambda: progress_per_query() == expected, 60, f"{expected} in stream_progress")


@pytest.mark.services
@pytest.mark.spark
def test_the_console_sink_prints_every_record_and_leaves_the_store_alone(
    spark, settings, kafka, store
) -> None:
    """The seed's default sink: the windows and the dead letters go to the console, and nothing
    (no event, dead letter or progress row) to the store."""
    day, tag = dt.date(2026, 3, 16), uuid.uuid4().hex[:6]
    shop, topic, job = f"S-{tag}", f"sales-console-{tag}", f"sales-console-{tag}"
    create_topic(settings, topic)
    job_settings = settings.model_copy(update={"sales_topic": topic})
    events = [
        sale(f"e{i}-{tag}", at(day, f"10:0{i}:00"), f"t{i}", shop, "c", 1, 2.0) for i in range(3)
    ]
    produce(kafka, topic, [*events, b"{not json"])

    ended = drain_job(spark, job_settings, job, console=True)

    assert {q.exception() for q in ended} == {None}
    for query in ended:
        assert "Console" in query.lastProgress["sink"]["description"]
        assert sum(p["numInputRows"] for p in query.recentProgress) == 4, query.name
    stored = store.query_df(
        "SELECT (SELECT count() FROM sales_events WHERE store_id = {s:String}) AS events, "
        "(SELECT count() FROM dead_letters WHERE topic = {t:String}) AS dead, "
        "(SELECT count() FROM stream_progress WHERE job = {j:String}) AS progress",
        {"s": shop, "t": topic, "j": job},
    )
    assert stored.iloc[0].tolist() == [0, 0, 0]


@pytest.mark.services
@pytest.mark.spark
def test_a_checkpoint_of_the_stateful_query_is_retired_and_the_job_resumes_from_its_offsets(
    spark, settings, kafka, store
) -> None:
    from streaming.runtime import checkpoint_location, read_topic, start_query
    from streaming.sales import parse_sales, query_names

    day, tag = dt.date(2026, 3, 15), uuid.uuid4().hex[:6]
    shop, topic, job = f"S-{tag}", f"sales-upgrade-{tag}", f"sales-upgrade-{tag}"
    create_topic(settings, topic, partitions=1)
    job_settings = settings.model_copy(update={"sales_topic": topic})
    events_query = query_names(job)["events"]
    before = [
        sale(f"a{i}-{tag}", at(day, f"10:0{i}:00"), f"ta{i}", shop, "c", 1, 2.0) for i in range(3)
    ]
    produce(kafka, topic, before)
    # The query as released before 2026-12-05: Spark's deduplication state in its checkpoint.
    valid, _ = parse_sales(read_topic(spark, job_settings, topic, job), job)
    deduplicated = valid.withWatermark("event_time", "10 minutes").dropDuplicatesWithinWatermark(
        ["event_id"]
    )
    old = start_query(
        deduplicated,
        job=job,
        query_name=events_query,
        settings=job_settings,
        sink=lambda batch, batch_id: batch.count(),
        available_now=True,
    )
    old.awaitTermination()
    after = [
        sale(f"b{i}-{tag}", at(day, f"10:1{i}:00"), f"tb{i}", shop, "c", 1, 2.0) for i in range(3)
    ]
    produce(kafka, topic, after)

    drain_job(spark, job_settings, job)

    stored = store.query_df(
        "SELECT event_id FROM sales_events WHERE store_id = {s:String}", {"s": shop}
    )
    assert sorted(stored.event_id) == sorted(e["event_id"] for e in after)  # none read twice
    folder = checkpoint_location(job_settings, job, events_query).parent
    assert len(list(folder.glob(f"{events_query}.stateful-*"))) == 1
    assert not (folder / events_query / "state").exists()


@pytest.mark.services
@pytest.mark.spark
def test_stream_counts_duplicates_and_late_events_once(
    spark, settings, kafka, store, sales_job
) -> None:
    day, tag = dt.date(2026, 3, 10), uuid.uuid4().hex[:6]
    s1, s2 = f"S1-{tag}", f"S2-{tag}"
    events = {e["event_id"]: e for e in hand_events(day, s1, s2)}
    for event in events.values():
        event["event_id"] = f"{event['event_id']}-{tag}"
    e = {key: events[key] for key in events}
    topic = f"sales-dup-{tag}"
    create_topic(settings, topic)
    queries = sales_job(topic)

    # First batch: everything but e3, and e2 twice (a producer re-send).
    produce(kafka, topic, [e["e1"], e["e2"], e["e2"], e["e4"], e["e5"], e["e6"]])
    drain(queries)
    # Second batch: e3 twice, 4.5 minutes behind the newest event, e1 again, and an event 26
    # minutes behind, beyond the 10-minute watermark: late events count, once, however late.
    too_late = sale(f"e7-{tag}", at(day, "09:40:00"), "t9", s1, "c9", 9, 99.0)
    produce(kafka, topic, [e["e3"], e["e3"], e["e1"], too_late])
    drain(queries)
    # Third batch: repeats only, long after the first copies.
    produce(kafka, topic, [too_late, e["e2"], e["e6"]])
    drain(queries)

    raw = store.query_df(
        "SELECT event_id FROM sales_events WHERE endsWith(store_id, {s:String})", {"s": f"-{tag}"}
    )
    assert sorted(raw["event_id"]) == sorted([*(ev["event_id"] for ev in e.values()), f"e7-{tag}"])
    late_windows = [  # e7 alone (09:40, s1, 9 units, 99.00), by hand
        (start, start + dt.timedelta(minutes=5), store_id, 99.0, 1, 1, 9, 1, 99.0, 9.0)
        for store_id in (s1, "ALL")
        for start in (at(day, f"09:{minute}:00").replace(tzinfo=None) for minute in range(36, 41))
    ]
    expected = spark.createDataFrame(hand_windows(day, s1, s2) + late_windows, METRIC_COLUMNS)
    assertDataFrameEqual(metrics_frame(spark, store_metrics(store, day, tag)), expected)
    assert all(q.isActive for q in queries)


class CrashBefore:
    """A store whose insert into ``table`` fails: the job dies between two writes of a batch."""

    def __init__(self, table: str, store) -> None:
        self.table, self.store = table, store

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def insert_df(self, table: str, *args, **kwargs):
        if table == self.table:
            raise RuntimeError(f"crash before the {table} insert")
        return self.store.insert_df(table, *args, **kwargs)


def classified_batch(
    spark: SparkSession, records: list[dict], kafka_time: dt.datetime
) -> DataFrame:
    """``records`` as the sales writer gets them: one micro-batch of Kafka records (one partition,
    from offset 0, stamped ``kafka_time``), classified, watermarked and shaped as the job does."""
    from common.settings import Settings
    from streaming.runtime import watermark_classified
    from streaming.sales import classify_sales, storable_rows

    raw = spark.createDataFrame(
        [("t", 0, offset, json.dumps(r).encode(), kafka_time) for offset, r in enumerate(records)],
        "topic string, partition int, offset long, value binary, timestamp timestamp",
    )
    lead = Settings.model_fields["event_max_lead_minutes"].default  # the job's default check
    return storable_rows(watermark_classified(classify_sales(raw, max_lead_minutes=lead)))


@pytest.mark.spark
def test_a_replayed_batch_writes_what_its_first_attempt_did(spark, settings, store) -> None:
    from streaming.sales import SalesBatchWriter

    day, tag = dt.date(2026, 3, 14), uuid.uuid4().hex[:6]
    s1, s2 = f"S1-{tag}", f"S2-{tag}"
    events = hand_events(day, s1, s2)
    for event in events:
        event["event_id"] = f"{event['event_id']}-{tag}"
    records = [*events, events[1]]  # e2 twice in the batch
    batch = classified_batch(spark, records, dt.datetime(2026, 3, 14, 10, 7))
    writer = SalesBatchWriter(spark, settings, query_name=f"sales-replay-{tag}")

    def stored() -> tuple[int, int, int]:
        counts = store.query_df(
            "SELECT count() AS n, uniqExact(event_id) AS ids FROM sales_events "
            "WHERE endsWith(store_id, {s:String})",
            {"s": f"-{tag}"},
        )
        line_items = store.scalar(
            "SELECT sum(line_items) FROM sales_panes WHERE store_id = 'ALL' "
            "AND toDate(pane_start) = {d:Date}",
            {"d": day},
        )
        return int(counts["n"][0]), int(counts["ids"][0]), int(line_items or 0)

    writer.store = CrashBefore("sales_panes", store)  # the events are in, their panes are not
    with pytest.raises(RuntimeError, match="crash before the sales_panes insert"):
        writer(batch, 0)
    assert stored() == (6, 6, 0)
    writer.store = store
    writer(batch, 0)  # the replay: the events it finds are its own, not repeats
    assert stored() == (6, 6, 6)
    writer(batch, 1)  # the same events again in a later batch: repeats, nothing added
    assert stored() == (6, 6, 6)
    expected = spark.createDataFrame(hand_windows(day, s1, s2), METRIC_COLUMNS)
    assertDataFrameEqual(metrics_frame(spark, store_metrics(store, day, tag)), expected)


@pytest.mark.spark
def test_an_event_id_on_two_days_is_stored_alike_however_the_batches_split(spark, settings, store):
    """A repeat is the same event_id on the same UTC day: however the batches split, the same rows."""
    from streaming.sales import SalesBatchWriter

    day, next_day = dt.date(2026, 3, 20), dt.date(2026, 3, 21)
    kafka_time = dt.datetime(2026, 3, 21, 10, 0)

    def stored_with(split: list[list[int]]) -> list[tuple]:
        tag = uuid.uuid4().hex[:6]
        events = [
            sale(f"x-{tag}", at(day, "10:00:00"), "t1", f"S1-{tag}", "c1", 1, 5.0),
            sale(f"y-{tag}", at(next_day, "09:00:00"), "t2", f"S1-{tag}", "c2", 2, 8.0),
            sale(f"x-{tag}", at(next_day, "09:30:00"), "t3", f"S1-{tag}", "c3", 3, 9.0),
            sale(f"z-{tag}", at(day, "10:05:00"), "t4", f"S1-{tag}", "c4", 4, 12.0),
        ]
        writer = SalesBatchWriter(spark, settings, query_name=f"sales-days-{tag}")
        for batch_id, positions in enumerate(split):
            records = [events[p] for p in positions]
            writer(classified_batch(spark, records, kafka_time), batch_id)
        rows = store.query_df(
            "SELECT replaceAll(event_id, {t:String}, '') AS id, toString(toDate(event_time)) AS day, "
            "quantity FROM sales_events WHERE store_id = {s:String} ORDER BY day, id",
            {"t": f"-{tag}", "s": f"S1-{tag}"},
        )
        return list(rows.itertuples(index=False, name=None))

    first, second = day.isoformat(), next_day.isoformat()
    expected = [("x", first, 1), ("z", first, 4), ("x", second, 3), ("y", second, 2)]
    assert stored_with([[0], [1], [2], [3]]) == expected
    assert stored_with([[0, 1, 2, 3]]) == expected
    assert stored_with([[0], [3, 2, 1]]) == expected  # x of the first day is stored by then


@pytest.mark.spark
def test_a_store_named_like_the_overall_rows_is_a_dead_letter(spark: SparkSession) -> None:
    day = dt.date(2026, 3, 14)
    records = [
        sale("own", at(day, "10:00:00"), "t1", "S1", "c1", 1, 5.0),
        sale("overall", at(day, "10:00:00"), "t2", "ALL", "c1", 1, 5.0),
    ]
    batch = classified_batch(spark, records, dt.datetime(2026, 3, 14, 10, 1))
    errors = {r.event_id: r.error for r in batch.select("event_id", "error").collect()}
    assert errors == {"own": None, "overall": "store_id 'ALL' names the overall rows"}


@pytest.mark.spark
def test_impossible_money_and_blank_ids_are_dead_letters(spark: SparkSession) -> None:
    day = dt.date(2026, 3, 14)
    good = sale("good", at(day, "10:00:00"), "t1", "S1", "c1", 2, 9.0)
    cases = {
        "price-zero": {"unit_price": 0.0},
        "price-huge": {"unit_price": 2e6},
        "discount-whole": {"discount": 1.0},
        "discount-negative": {"discount": -0.1},
        "total-negative": {"total_amount": -1.0},
        "total-huge": {"total_amount": 2e9},
        "total-nan": {"total_amount": float("nan")},
        "total-infinite": {"total_amount": float("inf")},
        "blank-transaction": {"transaction_id": "  "},
        "blank-product": {"product_id": ""},
        "discount-edge": {"discount": 0.0},  # valid: no discount
        "price-edge": {"unit_price": 1e6},  # valid: the highest price
    }
    records = [good, *({**good, "event_id": name, **change} for name, change in cases.items())]
    batch = classified_batch(spark, records, dt.datetime(2026, 3, 14, 10, 1))
    errors = {r.event_id: r.error for r in batch.select("event_id", "error").collect()}

    price, discount = "unit_price must be > 0 and <= 1e6", "discount must be in [0, 1)"
    total, blank = (
        "total_amount must be between 0 and 1e9",
        "event_id, transaction_id, store_id and product_id must not be blank",
    )
    assert errors == {
        "good": None,
        "price-zero": price,
        "price-huge": price,
        "discount-whole": discount,
        "discount-negative": discount,
        "total-negative": total,
        "total-huge": total,
        "total-nan": total,
        "total-infinite": total,
        "blank-transaction": blank,
        "blank-product": blank,
        "discount-edge": None,
        "price-edge": None,
    }


def eager_writer(spark, settings, query_name: str, batch_limit: int):
    """A sales writer that may judge after every batch (no 30-s throttle) but, while it catches
    up on a backlog (batches of half ``batch_limit`` or more), only once an hour."""
    from streaming.sales import SalesBatchWriter

    return SalesBatchWriter(
        spark,
        settings.model_copy(update={"max_offsets_per_trigger": batch_limit}),
        query_name=query_name,
        anomaly_interval_s=0.0,
        catch_up_interval_s=3600.0,
    )


@pytest.mark.spark
def test_a_job_working_through_a_backlog_judges_once_its_batches_thin_out(
    spark, settings, store
) -> None:
    """Full batches (half of ``max_offsets_per_trigger`` or more) wait for the catch-up interval,
    counted from the job's start, however often judging is otherwise allowed. The first batch
    that is not full judges every window closed since one baseline span before what the first
    batch closed, as if it had judged then: the surge that batch held is flagged."""
    from streaming.sales import HORIZON_SQL

    day, tag = dt.date(2026, 3, 16), uuid.uuid4().hex[:6]  # a day no other test sells on
    shop, surge = f"S-{tag}", at(day, "09:30")
    minutes = [at(day, "08:00") + dt.timedelta(minutes=m) for m in range(180)]  # to 10:59
    steady = [sale(f"m{i}-{tag}", t, f"t{i}", shop, "c1", 1, 10.0) for i, t in enumerate(minutes)]
    rush = [sale(f"r{i}-{tag}", surge, f"r{i}", shop, f"c{i}", 1, 10.0) for i in range(25)]
    backlog, thinning = [*steady[:120], *rush], steady[120:]  # to 09:59, then 60 sales

    kafka_time = dt.datetime(2026, 3, 16, 12, 0)
    writer = eager_writer(spark, settings, f"sales-backlog-{tag}", len(backlog))
    writer(classified_batch(spark, backlog, kafka_time), 0)
    assert pd.isna(store.scalar(HORIZON_SQL, {"query": writer.query_name}))
    writer(classified_batch(spark, thinning, kafka_time), 1)
    judged = store.scalar(HORIZON_SQL, {"query": writer.query_name})
    delay = dt.timedelta(minutes=settings.sales_watermark_minutes)
    assert pd.Timestamp(judged).tz_convert(None) == at(day, "10:59").replace(tzinfo=None) - delay
    # Judged from 08:44 (09:49, what the backlog closed, less 65 minutes), not from 09:44.
    assert_surge_flagged(store, shop, surge)


@pytest.mark.spark
def test_a_drain_read_in_one_batch_judges_every_window_it_read(spark, settings, store) -> None:
    """Three hours of sales in one micro-batch (a drain with a large MAX_OFFSETS_PER_TRIGGER):
    the surge in its second hour is judged, as it is when the batches are small (until
    2026-12-07 a new query judged only the last baseline span of its first batch)."""
    day, tag = dt.date(2026, 3, 25), uuid.uuid4().hex[:6]
    shop, surge = f"S-{tag}", at(day, "09:10")
    minutes = [at(day, "08:00") + dt.timedelta(minutes=m) for m in range(180)]  # to 10:59
    steady = [sale(f"m{i}-{tag}", t, f"t{i}", shop, "c1", 1, 10.0) for i, t in enumerate(minutes)]
    rush = [sale(f"r{i}-{tag}", surge, f"r{i}", shop, f"c{i}", 1, 10.0) for i in range(25)]

    writer = eager_writer(spark, settings, f"sales-one-batch-{tag}", 1_000_000)
    writer(classified_batch(spark, [*steady, *rush], dt.datetime(2026, 3, 25, 12, 0)), 0)
    writer.finish()

    assert_surge_flagged(store, shop, surge)


@pytest.mark.spark
def test_a_job_keeping_up_with_live_sales_judges_its_full_batches(spark, settings, store) -> None:
    """A full batch of sales up to a minute ago is not a backlog: it is judged at once, not
    deferred by the catch-up interval, however busy the feed."""
    from streaming.sales import HORIZON_SQL

    tag = uuid.uuid4().hex[:6]
    shop = f"S-{tag}"
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    live = [
        sale(f"l{m}-{tag}", now - dt.timedelta(minutes=m), f"t{m}", shop, "c1", 1, 10.0)
        for m in range(90, 0, -1)
    ]
    writer = eager_writer(spark, settings, f"sales-live-{tag}", len(live))
    writer(classified_batch(spark, live, now.replace(tzinfo=None)), 0)

    judged = store.scalar(HORIZON_SQL, {"query": writer.query_name})
    assert not pd.isna(judged), "the batch deferred its judgement as if it were a backlog"
    closed = (now - dt.timedelta(minutes=1 + settings.sales_watermark_minutes)).replace(tzinfo=None)
    # Up to what the batch closed (or to midnight, where a judgement ends, just after it).
    assert closed - dt.timedelta(minutes=65) < pd.Timestamp(judged).tz_convert(None) <= closed


@pytest.mark.spark
def test_a_till_clock_ahead_in_a_backlog_does_not_close_the_windows_still_to_come(
    spark, settings, store
) -> None:
    """Long after the fact (a backlog), a till 5 hours ahead moves what has closed only as far as
    its record's Kafka timestamp: the windows of the events still to come are judged once they
    came, not as a silence before."""
    from streaming.sales import HORIZON_SQL

    day, tag = dt.date(2026, 3, 22), uuid.uuid4().hex[:6]
    shop = f"S-{tag}"

    def at_minute(m: int) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(10), tzinfo=dt.UTC) + dt.timedelta(minutes=m)

    def minutes(first: int, last: int) -> list[dict]:
        return [
            sale(f"m{m}-{tag}", at_minute(m), f"t{m}", shop, "c1", 1, 10.0)
            for m in range(first, last)
        ]

    ahead = sale(f"ahead-{tag}", at_minute(300), "t-ahead", shop, "c1", 1, 10.0)
    writer = eager_writer(spark, settings, f"sales-skew-{tag}", 10_000)  # never a backlog
    broker_time = at_minute(61).replace(tzinfo=None)
    writer(classified_batch(spark, [*minutes(0, 60), ahead], broker_time), 0)

    judged = pd.Timestamp(store.scalar(HORIZON_SQL, {"query": writer.query_name})).tz_convert(None)
    assert judged <= broker_time - dt.timedelta(minutes=settings.sales_watermark_minutes)
    writer(classified_batch(spark, minutes(60, 120), at_minute(121).replace(tzinfo=None)), 1)
    flagged = store.query_df(
        "SELECT window_start, metric FROM sales_anomalies FINAL WHERE store_id = {s:String} "
        "AND window_start < {ahead:DateTime}",
        {"s": shop, "ahead": at_minute(295).replace(tzinfo=None)},
    )
    assert flagged.empty, flagged


@pytest.mark.services
@pytest.mark.spark
def test_a_batch_of_anonymous_sales_only_is_stored_with_no_customers(
    settings, kafka, store, sales_job
) -> None:
    day, tag = dt.date(2026, 3, 20), uuid.uuid4().hex[:6]  # each test owns its day's ALL row
    shop, topic = f"S-{tag}", f"sales-anon-{tag}"
    create_topic(settings, topic, partitions=1)
    queries = sales_job(topic)
    anonymous = [
        sale(f"a{i}-{tag}", at(day, "10:00:30"), f"t{i}", shop, None, 1, 2.5) for i in (1, 2)
    ]
    produce(kafka, topic, anonymous)
    drain(queries)

    assert all(q.isActive for q in queries)
    stored = store.scalar(
        "SELECT count() FROM sales_events WHERE store_id = {s:String}", {"s": shop}
    )
    assert stored == len(anonymous)
    windows = store.query_df(
        "SELECT transactions, customers FROM sales_metrics WHERE store_id = {s:String}",
        {"s": shop},
    )
    assert len(windows) == 5  # the 10:00 pane is in five 5-minute windows
    assert windows["transactions"].tolist() == [2] * 5
    assert windows["customers"].tolist() == [0] * 5


@pytest.mark.services
@pytest.mark.spark
def test_poison_records_go_to_dead_letters_and_the_query_goes_on(
    spark, settings, kafka, store, sales_job
) -> None:
    day, tag = dt.date(2026, 3, 11), uuid.uuid4().hex[:6]
    shop = f"S-{tag}"
    good = [
        sale(f"g{i}-{tag}", at(day, f"12:0{i}:00"), f"t{i}", shop, "c1", 1, 2.0) for i in range(3)
    ]
    wrong_type = {**good[0], "event_id": f"w-{tag}", "quantity": "two"}
    missing = {k: v for k, v in good[0].items() if k != "store_id"} | {"event_id": f"m-{tag}"}
    negative = {**good[0], "event_id": f"n-{tag}", "quantity": -1}
    poison = {
        "malformed JSON": b'{"event_id": "x", "quantity": ',
        "wrong type": wrong_type,
        "missing required field(s): store_id": missing,
        "payload is not valid UTF-8": b"\xff\xfe\x00binary",
        "quantity must be > 0": negative,
    }
    topic = f"sales-poison-{tag}"
    create_topic(settings, topic)
    queries = sales_job(topic)

    sent_at = dt.datetime.now(dt.UTC)
    coordinates = produce(kafka, topic, [good[0], *poison.values(), good[1]])
    drain(queries)

    dead = store.query_df(
        "SELECT kafka_partition, kafka_offset, error, payload_encoding, raw_payload, "
        "toUnixTimestamp64Milli(received_at) AS received_ms, "
        "toUnixTimestamp64Milli(kafka_timestamp) AS kafka_ms "
        "FROM dead_letters WHERE topic = {t:String} ORDER BY kafka_partition, kafka_offset",
        {"t": topic},
    )
    # The store stamps each dead letter as the job writes it; the broker, as it took the record.
    now_ms = dt.datetime.now(dt.UTC).timestamp() * 1000
    for stamp in ("received_ms", "kafka_ms"):
        assert dead[stamp].between(sent_at.timestamp() * 1000 - 1000, now_ms).all(), stamp
    poison_at = dict(zip(poison, coordinates[1:-1], strict=True))
    assert sorted(zip(dead["kafka_partition"], dead["kafka_offset"], strict=True)) == sorted(
        poison_at.values()
    )
    for expected_error, (partition, offset) in poison_at.items():
        row = dead[(dead["kafka_partition"] == partition) & (dead["kafka_offset"] == offset)].iloc[
            0
        ]
        assert expected_error.split(" ")[0] in row["error"], (expected_error, row["error"])
    binary = dead[dead["payload_encoding"] == "base64"]
    assert list(binary["raw_payload"]) == ["//4AYmluYXJ5"]
    valid = store.scalar(
        "SELECT count() FROM sales_events WHERE store_id = {s:String}", {"s": shop}
    )
    assert valid + len(dead) == len(coordinates)

    produce(kafka, topic, [good[2]])  # the queries are still running
    drain(queries)
    assert all(q.isActive for q in queries)
    assert (
        store.scalar("SELECT count() FROM sales_events WHERE store_id = {s:String}", {"s": shop})
        == 3
    )


@pytest.mark.services
@pytest.mark.spark
def test_a_till_clock_ahead_neither_lands_years_ahead_nor_closes_windows_early(
    spark, settings, kafka, store, sales_job
) -> None:
    tag = uuid.uuid4().hex[:6]
    shop = f"S-{tag}"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def line(name: str, minutes_from_now: int) -> dict:
        moment = now + dt.timedelta(minutes=minutes_from_now)
        return sale(f"{name}-{tag}", moment, f"t-{name}", shop, "c1", 1, 2.0)

    on_time = [line(f"m{m}", -m) for m in range(30, 0, -3)]
    topic = f"sales-ahead-{tag}"
    create_topic(settings, topic)
    queries = sales_job(topic, anomaly_interval_s=0.0)
    records = [*on_time, line("ahead", 50), line("years", 3 * 365 * 24 * 60)]
    coordinates = produce(kafka, topic, records)
    drain(queries)

    dead = store.query_df(
        "SELECT kafka_partition, kafka_offset, error FROM dead_letters WHERE topic = {t:String}",
        {"t": topic},
    )
    assert list(zip(dead["kafka_partition"], dead["kafka_offset"], strict=True)) == [
        coordinates[-1]
    ]
    lead = settings.event_max_lead_minutes
    assert (
        dead["error"][0] == f"event_time is more than {lead} minutes ahead of its Kafka timestamp"
    )
    ids = store.query_df(
        "SELECT event_id FROM sales_events WHERE store_id = {s:String}", {"s": shop}
    )["event_id"]
    assert sorted(ids) == sorted(r["event_id"] for r in records[:-1])
    judged = store.scalar(
        "SELECT max(judged_until) FROM sales_anomaly_horizon FINAL WHERE query_name = {q:String}",
        {"q": queries[0].name},
    )
    delay = dt.timedelta(minutes=settings.sales_watermark_minutes)
    closed_by = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0, tzinfo=None) - delay
    # Judged up to the windows the wall clock closed, not 40 minutes ahead of it.
    assert now.replace(second=0, tzinfo=None) - delay <= pd.Timestamp(judged).tz_localize(None)
    assert pd.Timestamp(judged).tz_localize(None) <= closed_by


@pytest.mark.services
@pytest.mark.spark
def test_a_batch_judges_the_windows_it_closed_on_both_sides_of_midnight(
    spark, settings, kafka, store, sales_job
) -> None:
    """A judged span ends at midnight, so a batch whose windows close on both sides of it judges
    in two spans: the horizon reaches the newest closed window, whatever the hour of the run."""
    tag = uuid.uuid4().hex[:6]
    shop, topic = f"S-{tag}", f"sales-midnight-{tag}"
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    midnight = dt.datetime.combine(yesterday, dt.time(), tzinfo=dt.UTC)  # long past at any hour
    events = [
        sale(f"m{m}-{tag}", midnight + dt.timedelta(minutes=m), f"t{m}", shop, "c1", 1, 2.0)
        for m in range(-90, 21)
    ]
    create_topic(settings, topic)
    queries = sales_job(topic, anomaly_interval_s=0.0)
    produce(kafka, topic, events)
    drain(queries)

    judged = store.scalar(
        "SELECT max(judged_until) FROM sales_anomaly_horizon FINAL WHERE query_name = {q:String}",
        {"q": queries[0].name},
    )
    delay = dt.timedelta(minutes=settings.sales_watermark_minutes)
    newest_closed = midnight + dt.timedelta(minutes=20) - delay
    assert pd.Timestamp(judged).tz_localize(None) == newest_closed.replace(tzinfo=None)


@pytest.mark.services
@pytest.mark.spark
def test_windows_closing_just_after_midnight_are_judged_with_their_days_model(
    spark, settings, kafka, store, sales_job
) -> None:
    """A window that starts before midnight belongs to that day, also when it closes after
    midnight and is judged in the span that starts there: the model's expectation of its day,
    which foresaw the rush, keeps the baseline's alarm quiet."""
    tag = uuid.uuid4().hex[:6]
    shop, topic = f"S-{tag}", f"sales-eve-{tag}"
    today = dt.datetime.now(dt.UTC).date()
    midnight = dt.datetime.combine(today - dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    rush_minute = midnight - dt.timedelta(minutes=2)
    steady = [
        sale(f"m{m}-{tag}", midnight + dt.timedelta(minutes=m), f"t{m}", shop, "c1", 1, 10.0)
        for m in range(-150, 21)
    ]
    rush = [sale(f"r{i}-{tag}", rush_minute, f"r{i}", shop, f"c{i}", 1, 10.0) for i in range(25)]
    # 30 units in any 5 minutes of the eve (without an hourly profile a window is 5/1440 of a
    # day): what each window holding the rush minute sold.
    store.insert_df(
        "demand_scores",
        pd.DataFrame(
            [
                {
                    "store_id": shop,
                    "product_id": "P1",
                    "forecast_date": rush_minute.date(),
                    "predicted_units": 30.0 * 288,
                    "model_name": "demand_forecaster",
                    "model_version": "7",
                    "query_name": "test",
                    "batch_id": 0,
                }
            ]
        ),
    )
    create_topic(settings, topic)
    queries = sales_job(topic, anomaly_interval_s=0.0)
    produce(kafka, topic, [*steady, *rush])
    drain(queries)

    judged = store.scalar(
        "SELECT max(judged_until) FROM sales_anomaly_horizon FINAL WHERE query_name = {q:String}",
        {"q": queries[0].name},
    )
    assert pd.Timestamp(judged).tz_localize(None) > midnight.replace(tzinfo=None)
    flagged = store.query_df(
        "SELECT window_start, metric FROM sales_anomalies FINAL WHERE store_id = {s:String}",
        {"s": shop},
    )
    assert flagged.empty, flagged


def surge_sales(tag: str, shop: str) -> tuple[list[dict], dt.datetime]:
    """A sale of 10.00 every minute from 150 to 15 minutes ago, then 25 more sales in the minute
    40 minutes ago (produced last): the sales and the surge minute. A window holding it has 30
    baskets against 5: critical (10 more, 15 against 5, are a warning: as many as a Poisson
    stream of 5 a window reaches once in about 4,400 windows)."""
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    surge = now - dt.timedelta(minutes=40)
    steady = [
        sale(f"m{m}-{tag}", now - dt.timedelta(minutes=m), f"t{m}", shop, "c1", 1, 10.0)
        for m in range(150, 14, -1)
    ]
    rush = [sale(f"r{i}-{tag}", surge, f"r{i}", shop, f"c{i}", 1, 10.0) for i in range(25)]
    return [*steady, *rush], surge


def assert_surge_flagged(store, shop: str, surge: dt.datetime) -> None:
    """The five windows holding the surge minute, and only they, are critical anomalies above the
    baseline, for revenue (300 against 50) and for units (30 against 5)."""
    flagged = store.query_df(
        "SELECT window_start, metric, direction, severity, observed, expected "
        "FROM sales_anomalies FINAL WHERE store_id = {s:String} ORDER BY metric, window_start",
        {"s": shop},
    )
    surge_windows = [
        (surge - dt.timedelta(minutes=k)).replace(tzinfo=None) for k in range(4, -1, -1)
    ]
    for metric, observed, usual in (("revenue", 300.0, 50.0), ("units", 30.0, 5.0)):
        rows = flagged[flagged["metric"] == metric]
        starts = [pd.Timestamp(t).tz_localize(None).to_pydatetime() for t in rows["window_start"]]
        assert starts == surge_windows, metric
        assert set(rows["direction"]) == {"above"} and set(rows["severity"]) == {"critical"}
        assert set(rows["observed"]) == {observed} and set(rows["expected"]) == {usual}


@pytest.mark.services
@pytest.mark.spark
def test_a_new_job_flags_a_surge_in_the_windows_that_closed(
    spark, settings, kafka, store, sales_job
) -> None:
    tag = uuid.uuid4().hex[:6]
    shop, topic = f"S-{tag}", f"sales-surge-{tag}"
    events, surge = surge_sales(tag, shop)
    create_topic(settings, topic)
    produce(kafka, topic, events)  # before the start: one micro-batch, however the producer sends
    queries = sales_job(topic, anomaly_interval_s=0.0)
    drain(queries)

    assert_surge_flagged(store, shop, surge)


@pytest.mark.services
@pytest.mark.spark
def test_a_store_that_stops_selling_is_flagged_once_by_the_job(
    spark, settings, kafka, store, sales_job
) -> None:
    """A store selling 3 baskets a minute stops 60 minutes ago while another sells on until 15
    minutes ago: the windows closed end 25 minutes ago, 34 silent minutes after its last sale."""
    tag = uuid.uuid4().hex[:6]
    quiet, busy, topic = f"Q-{tag}", f"B-{tag}", f"sales-silence-{tag}"
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    events = [
        sale(f"q{m}-{i}-{tag}", now - dt.timedelta(minutes=m), f"q{m}-{i}", quiet, "c1", 1, 10.0)
        for m in range(150, 59, -1)
        for i in range(3)
    ]
    events += [
        sale(f"b{m}-{tag}", now - dt.timedelta(minutes=m), f"b{m}", busy, "c2", 1, 10.0)
        for m in range(150, 14, -1)
    ]
    create_topic(settings, topic)
    queries = sales_job(topic, anomaly_interval_s=0.0)
    produce(kafka, topic, events)
    drain(queries)

    silences = store.query_df(
        "SELECT store_id, window_start, window_end, observed, direction, severity "
        "FROM sales_anomalies FINAL WHERE metric = 'transactions' AND store_id IN "
        "({q:String}, {b:String})",
        {"q": quiet, "b": busy},
    )
    assert len(silences) == 1, silences
    [row] = silences.itertuples()
    assert row.store_id == quiet
    assert pd.Timestamp(row.window_start).tz_localize(None) == (
        now - dt.timedelta(minutes=59)
    ).replace(tzinfo=None)
    assert pd.Timestamp(row.window_end).tz_localize(None) == (
        now - dt.timedelta(minutes=25)
    ).replace(tzinfo=None)
    # 182 baskets before, none in 34 minutes: about 12 SDs below.
    assert (row.observed, row.direction, row.severity) == (0.0, "below", "critical")


def surge_in_small_batches(settings, kafka: str, kind: str, batch: int = 30) -> tuple:
    """``surge_sales`` on a topic of its own, and settings for a job of its own that reads it
    from the start in micro-batches of ``batch`` events: (shop, job, job settings, events,
    surge)."""
    tag = uuid.uuid4().hex[:6]
    shop, topic, job = f"S-{tag}", f"sales-{kind}-{tag}", f"sales-{kind}-{tag}"
    events, surge = surge_sales(tag, shop)
    create_topic(settings, topic)
    produce(kafka, topic, events)
    job_settings = settings.model_copy(
        update={
            "sales_topic": topic,
            "starting_offsets": "earliest",
            "max_offsets_per_trigger": batch,
        }
    )
    return shop, job, job_settings, events, surge


@pytest.mark.services
@pytest.mark.spark
def test_a_drain_judges_the_windows_its_last_batches_closed(spark, settings, kafka, store) -> None:
    """Judging is throttled while events flow (here to once an hour, and the full batches of 30
    wait for the catch-up interval): the windows the batches closed are judged by the last,
    smaller batch or when the run ends."""

    shop, job, job_settings, _events, surge = surge_in_small_batches(settings, kafka, "drain")
    ended = drain_job(spark, job_settings, job, anomaly_interval_s=3600.0)

    assert len([p for p in ended[0].recentProgress if p["numInputRows"]]) >= 5
    assert_surge_flagged(store, shop, surge)


@pytest.mark.services
@pytest.mark.spark
def test_a_job_waiting_for_events_judges_the_windows_its_last_batches_closed(
    spark, settings, kafka, store
) -> None:
    """The same throttled judging on a job that keeps running: once it has read the topic and
    waits, it judges the windows its batches closed, with no new batch and no stop. Its batches
    of 33 (the last 29; one shop and product, so one partition) all come full, so none of them
    judges: judging is left to the wait."""
    from streaming.runtime import run_queries
    from streaming.sales import build_queries

    shop, job, job_settings, events, surge = surge_in_small_batches(settings, kafka, "waiting", 33)
    queries = build_queries(spark, job_settings, job=job, anomaly_interval_s=3600.0)
    stop_request = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            run_queries(spark, queries, job=job, settings=job_settings, stop=stop_request)
        except BaseException as exc:  # seen by the test's thread below
            failures.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        wait_for(
            lambda: (
                bool(failures)
                or store.scalar(
                    "SELECT count() FROM sales_anomalies FINAL WHERE store_id = {s:String}",
                    {"s": shop},
                )
                > 0
            ),
            180,
            "the surge judged while the job waits",
        )
        assert not failures, failures
        assert queries[0].isActive
        batches = [p for p in queries[0].recentProgress if p["numInputRows"]]
        assert sum(p["numInputRows"] for p in batches) == len(events) and len(batches) >= 5
    finally:
        stop_request.set()
        runner.join(timeout=120)
    assert not runner.is_alive() and not failures, failures
    assert_surge_flagged(store, shop, surge)


@pytest.mark.services
@pytest.mark.spark
def test_a_store_closing_at_its_usual_hour_is_not_flagged_by_the_job(
    spark, settings, kafka, store
) -> None:
    """Three days of history (a sale a minute, 08:00-10:00) give the shop's hours; on the fourth
    it closes at 10:00 as usual while another store sells on: none of its windows is flagged."""

    tag = uuid.uuid4().hex[:6]
    shop, other, topic = f"S-{tag}", f"O-{tag}", f"sales-hours-{tag}"
    day = dt.date(2026, 3, 9)
    events = [
        sale(f"{d}-{m}-{tag}", moment, f"t{d}-{m}", shop, "c1", 1, 10.0)
        for d in range(3, -1, -1)
        for m in range(120)
        for moment in [at(day - dt.timedelta(days=d), "08:00:00") + dt.timedelta(minutes=m)]
    ]
    events += [  # the other store sells until 10:40, so windows until 10:30 close
        sale(
            f"o{m}-{tag}",
            at(day, "08:00:00") + dt.timedelta(minutes=m),
            f"o{m}",
            other,
            None,
            1,
            10.0,
        )
        for m in range(161)
    ]
    create_topic(settings, topic)
    produce(kafka, topic, events)
    job = f"sales-hours-{tag}"
    job_settings = settings.model_copy(
        update={"sales_topic": topic, "starting_offsets": "earliest"}
    )
    drain_job(spark, job_settings, job)

    flagged = store.query_df(
        "SELECT window_start, metric, observed, expected FROM sales_anomalies FINAL "
        "WHERE store_id = {s:String} AND toDate(window_start) = {d:Date}",
        {"s": shop, "d": day},
    )
    # The day before (judged too: the drain reads a day back) had two days of history, too few
    # for the shop's hours, so its closing there is a silence; on the fourth it is not.
    assert flagged.empty, flagged.to_string()
    horizon = store.scalar(
        "SELECT max(judged_until) FROM sales_anomaly_horizon FINAL WHERE query_name = {q:String}",
        {"q": f"{job}-events"},
    )
    assert pd.Timestamp(horizon).tz_localize(None) == pd.Timestamp(at(day, "10:30:00")).tz_localize(
        None
    )


def many_events(day: dt.date, tag: str, count: int) -> list[dict]:
    """``count`` line items over 20 minutes of ``day`` in 4 stores (2-3 items per basket)."""
    events = []
    for i in range(count):
        moment = at(day, "08:00:00") + dt.timedelta(seconds=i * 1200 / count)
        basket = i // 3
        events.append(
            sale(
                f"k{i}-{tag}",
                moment,
                f"t{basket}-{tag}",
                f"S{basket % 4}-{tag}",
                None if basket % 5 == 0 else f"c{basket % 17}",
                1 + i % 4,
                round(1.25 + (i % 13) * 0.75, 2),
                f"P{i % 9}",
            )
        )
    return events


def start_job_process(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    """`python -m streaming sales` in its own process group (so its JVM can be killed with it)."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "streaming", "sales", *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.services
@pytest.mark.spark
def test_sigkill_and_restart_write_every_event_exactly_once(
    spark, settings, services, store, tmp_path, killed_job_env
) -> None:
    day, tag = dt.date(2026, 3, 12), uuid.uuid4().hex[:6]
    topic = f"sales-crash-{tag}"
    create_topic(settings, topic)
    events = many_events(day, tag, 600)
    produce(settings.kafka_bootstrap_servers, topic, events)
    env = {
        **os.environ,
        **killed_job_env,
        "SALES_TOPIC": topic,
        "CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "MAX_OFFSETS_PER_TRIGGER": "100",
    }
    log_path = tmp_path / "job.log"

    def stored() -> int:
        return int(
            store.scalar(
                "SELECT count() FROM sales_events WHERE endsWith(store_id, {s:String})",
                {"s": f"-{tag}"},
            )
        )

    first = start_job_process(env, log_path)
    try:
        wait_for(lambda: stored() >= 200, 240, "the first batches", interval_s=0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    assert stored() < len(events), "the job finished before it could be killed"

    second = start_job_process(env, log_path)
    try:
        wait_for(lambda: stored() >= len(events), 300, "the restarted job to catch up")
    finally:
        second.send_signal(signal.SIGTERM)  # to the driver: the running batch completes first
        try:
            second.wait(120)
        finally:
            os.killpg(second.pid, signal.SIGKILL) if second.poll() is None else None
    assert second.returncode == 0, log_path.read_text()[-3000:]
    assert "stop requested (SIGTERM)" in log_path.read_text()

    counts = store.query_df(
        "SELECT count() AS rows, uniqExact(event_id) AS ids FROM sales_events "
        "WHERE endsWith(store_id, {s:String})",
        {"s": f"-{tag}"},
    )
    assert (counts["rows"][0], counts["ids"][0]) == (len(events), len(events))
    stored_events = store.query_df(
        "SELECT * EXCEPT (source, ingested_at, ingest_token) FROM sales_events "
        "WHERE endsWith(store_id, {s:String})",
        {"s": f"-{tag}"},
    )
    stored_events["event_time"] = stored_events["event_time"].dt.tz_localize(None)
    stored_events["on_promotion"] = stored_events["on_promotion"].astype(bool)
    recomputed = windowed_sales_metrics(spark.createDataFrame(stored_events, EVENT_COLUMNS))
    assertDataFrameEqual(metrics_frame(spark, store_metrics(store, day, tag)), recomputed)


def toy_pipeline(spark: SparkSession, slope: float, feature: str = "signal"):
    """A fitted Spark ML pipeline predicting ``slope * feature``."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import LinearRegression

    data = spark.createDataFrame(
        [(x, slope * x) for x in (1.0, 2.0, 3.0)], f"{feature} double, label double"
    )
    stages = [VectorAssembler(inputCols=[feature], outputCol="features"), LinearRegression()]
    return Pipeline(stages=stages).fit(data)


def register(model, name: str) -> str:
    import mlflow
    import mlflow.spark

    with mlflow.start_run():
        info = mlflow.spark.log_model(
            model, "model", registered_model_name=name, pip_requirements=[]
        )
    return str(info.registered_model_version)


def toy_versions(spark: SparkSession, settings, name: str, *slopes: float):
    """``name`` registered with a toy version per slope: (name, the registry client, versions)."""
    from mlflow import MlflowClient

    versions = [register(toy_pipeline(spark, slope), name) for slope in slopes]
    return name, MlflowClient(settings.mlflow_tracking_uri), versions


def toy_features(spark: SparkSession, store, keys: DataFrame, day: dt.date) -> DataFrame:
    """The toy models' input: the keys, the day and signal = 10."""
    return keys.select(
        "store_id", "product_id", sf.lit(day).alias("date"), sf.lit(10.0).alias("signal")
    )


def sell_one_basket(
    settings, queries, topic: str, shop: str, moment: dt.datetime, products: list[str]
) -> None:
    """One basket of ``shop`` at ``moment``: a unit of each of ``products``; then drain the job."""
    basket = f"{shop}-{moment:%Y%m%dT%H%M%S}"
    produce(
        settings.kafka_bootstrap_servers,
        topic,
        [sale(f"{basket}-{p}", moment, basket, shop, "c", 1, 1.0, p) for p in products],
    )
    drain(queries)


@pytest.mark.services
@pytest.mark.spark
def test_every_day_of_a_batch_gets_its_catalogue_scored(spark, settings, services, store) -> None:
    """A backlog batch holding three days scores each day's catalogue, as three batches do
    (before 2026-12-07 its oldest day had only the pairs it sold)."""
    from common.models import ChampionModel
    from streaming.sales import SalesBatchWriter

    before, tag = dt.date(2026, 4, 10), uuid.uuid4().hex[:6]
    days = [before + dt.timedelta(days=n) for n in (1, 2, 3)]
    kafka_time = dt.datetime.combine(days[-1], dt.time(10, 1))
    name, client, (version,) = toy_versions(spark, settings, f"test_catalogue_{tag}", 1.0)
    client.set_registered_model_alias(name, "champion", version)

    def scored(split: list[list[int]], label: str) -> list[tuple[str, str]]:
        shop = f"S-{label}-{tag}"
        history = [  # the catalogue: three products sold the day before
            sale(f"h{p}-{shop}", at(before, "10:00:00"), f"h{p}", shop, "c", 1, 1.0, p)
            for p in ("P1", "P2", "P3")
        ]
        past = SalesBatchWriter(spark, settings, query_name=f"sales-past-{label}-{tag}")
        past(classified_batch(spark, history, kafka_time), 0)
        sales = [sale(f"{d}-{shop}", at(d, "10:00:00"), f"t{d}", shop, "c", 1, 1.0) for d in days]
        writer = SalesBatchWriter(
            spark,
            settings,
            query_name=f"sales-{label}-{tag}",
            champion=ChampionModel(name, job="sales-test", store=store, registry_timeout_s=60),
            feature_builder=toy_features,
        )
        for batch_id, positions in enumerate(split):
            writer(classified_batch(spark, [sales[p] for p in positions], kafka_time), batch_id)
        rows = store.query_df(
            "SELECT DISTINCT toString(forecast_date) AS day, product_id FROM demand_scores "
            "WHERE store_id = {s:String} ORDER BY day, product_id",
            {"s": shop},
        )
        return list(rows.itertuples(index=False, name=None))

    expected = [(d.isoformat(), p) for d in days for p in ("P1", "P2", "P3")]
    assert scored([[0], [1], [2]], "apart") == expected
    assert scored([[0, 1, 2]], "together") == expected


@pytest.mark.services
@pytest.mark.spark
def test_alias_moves_switch_scoring_within_one_batch_and_a_broken_model_is_not_used(
    spark, settings, services, store, sales_job, failing_on_rows
) -> None:

    from common.models import ChampionModel
    from streaming.runtime import model_probes

    day, tag = dt.date(2026, 3, 13), uuid.uuid4().hex[:6]
    name, client, (v1, v2) = toy_versions(spark, settings, f"test_demand_{tag}", 1.0, 2.0)
    # Logged without a signature, like the toy versions: only transforming the features that the
    # job makes shows it cannot score. The job's own probes find it.
    broken = register(toy_pipeline(spark, 3.0, feature="missing_feature"), name)
    fails_on_rows = register(failing_on_rows(toy_pipeline(spark, 4.0)), name)
    client.set_registered_model_alias(name, "champion", v1)
    probes = model_probes(spark, store, toy_features, name)
    champion = ChampionModel(
        name, job="sales-test", store=store, probe=probes, registry_timeout_s=60
    )
    topic = f"sales-alias-{tag}"
    create_topic(settings, topic)
    queries = sales_job(topic, champion=champion, feature_builder=toy_features)
    shop = f"S-{tag}"

    def send(batch: int, products: list[str]) -> None:
        sell_one_basket(settings, queries, topic, shop, at(day, f"09:0{batch}:00"), products)

    send(1, ["P1", "P2"])
    client.set_registered_model_alias(name, "champion", v2)
    send(2, ["P1", "P2"])  # the same pairs again: scored again by the new version
    client.set_registered_model_alias(name, "champion", broken)
    send(3, ["P3"])  # a new pair: still scored, by the last good version
    client.set_registered_model_alias(name, "champion", v1)
    send(4, ["P1"])  # a rollback: the older version scores again what it scored before
    client.set_registered_model_alias(name, "champion", fails_on_rows)
    send(5, ["P4"])  # passes the probes, fails on the batch's rows: v1 scores the batch

    scores = store.query_df(
        "SELECT batch_id, product_id, model_version, predicted_units FROM demand_scores "
        "WHERE store_id = {s:String} ORDER BY batch_id, product_id",
        {"s": shop},
    )
    assert scores.groupby("batch_id")["model_version"].nunique().max() == 1  # never mixed
    assert sorted(
        zip(
            scores["product_id"],
            scores["model_version"],
            scores["predicted_units"].round(6),
            strict=True,
        )
    ) == sorted(
        [
            ("P1", v1, 10.0),
            ("P2", v1, 10.0),
            ("P1", v2, 20.0),
            ("P2", v2, 20.0),
            ("P3", v2, 20.0),
            ("P1", v1, 10.0),
            ("P4", v1, 10.0),
        ]
    )
    failed = store.query_df(
        "SELECT model_version, detail FROM model_events WHERE model_name = {n:String} "
        "AND event_type = 'load_failed' ORDER BY event_time",
        {"n": name},
    )
    assert list(failed["model_version"]) == [broken, fails_on_rows]
    assert (
        "missing_feature" in failed["detail"][0] and f"keeping version {v2}" in failed["detail"][0]
    )
    assert "failed on the job's rows" in failed["detail"][1]
    assert f"keeping version {v1}" in failed["detail"][1]


@pytest.mark.services
@pytest.mark.spark
def test_a_batch_replayed_after_the_alias_moved_is_scored_by_the_new_version(
    spark, settings, services, store
) -> None:

    from common.models import ChampionModel
    from streaming.sales import STORE_EXPECTATIONS_SQL, SalesBatchWriter

    day, tag = dt.date(2026, 3, 16), uuid.uuid4().hex[:6]
    name, client, (v1, v2) = toy_versions(spark, settings, f"test_rescore_{tag}", 1.0, 2.0)
    s1, s2 = f"S1-{tag}", f"S2-{tag}"
    events = hand_events(day, s1, s2)
    for event in events:
        event["event_id"] = f"{event['event_id']}-{tag}"
    batch = classified_batch(spark, events, dt.datetime(2026, 3, 16, 10, 7))

    def run_batch_0() -> None:
        """A fresh process of the job (a writer of its own) runs batch 0."""
        champion = ChampionModel(name, job="sales-test", store=store, registry_timeout_s=60)
        writer = SalesBatchWriter(
            spark,
            settings,
            query_name=f"sales-rescore-{tag}",
            champion=champion,
            feature_builder=toy_features,
        )
        writer(batch, 0)

    def expected() -> dict[str, tuple[str, float]]:
        rows = store.query_df(STORE_EXPECTATIONS_SQL, {"first_date": day, "last_date": day})
        rows = rows[rows["store_id"].isin([s1, s2])]
        return {
            r.store_id: (r.model_version, round(r.expected_units_day, 6)) for r in rows.itertuples()
        }

    client.set_registered_model_alias(name, "champion", v1)
    run_batch_0()
    assert expected() == {s1: (v1, 20.0), s2: (v1, 10.0)}  # P1 and P2 in s1, P3 in s2
    client.set_registered_model_alias(name, "champion", v2)
    run_batch_0()  # the job died before Spark committed batch 0, and the alias moved meanwhile
    assert expected() == {s1: (v2, 40.0), s2: (v2, 20.0)}


def backfilled(store, shop: str, sold: dict[str, dt.date], stocked: dict[str, dt.date]) -> None:
    """History of ``shop`` as a backfill writes it: a sale of each product of ``sold`` on its day,
    a stock count of each product of ``stocked`` on its day."""
    insert_sales(
        store,
        [
            sale(
                f"h-{shop}-{product}",
                at(day, "12:00:00"),
                f"h-{product}",
                shop,
                None,
                1,
                1.0,
                product,
            )
            for product, day in sold.items()
        ],
        source="backfill",
    )
    if not stocked:
        return
    stock = pd.DataFrame(
        [
            {
                "event_id": f"h-{shop}-{product}-stock",
                "event_time": pd.Timestamp(at(day, "07:00:00")),
                "store_id": shop,
                "product_id": product,
                "event_type": "stock_count",
                "quantity_change": 0,
                "stock_level": 20,
                "reorder_point": 5,
                "lead_time_days": 2.0,
                "unit_cost": 1.0,
                "source": "backfill",
            }
            for product, day in stocked.items()
        ]
    )
    counts = ("quantity_change", "stock_level", "reorder_point")
    store.insert_df("inventory_events", stock.astype(dict.fromkeys(counts, "int32")))


@pytest.mark.services
@pytest.mark.spark
def test_the_first_sale_of_a_day_scores_the_whole_catalogue(
    spark, settings, services, store, sales_job
) -> None:
    """The catalogue is what stores sold or stocked in the 28 days before: the first sale of the
    day scores all of it, so the model's expectation of each store's day is whole from the start;
    a product new to a store is scored when it first sells, nothing is scored twice, and a sale
    days late scores its own pair, for its day and the current one, not its day's catalogue."""
    from mlflow import MlflowClient

    from common.models import ChampionModel
    from streaming.sales import STORE_EXPECTATIONS_SQL

    day, tag = dt.date(2026, 3, 21), uuid.uuid4().hex[:6]
    shop, other = f"S-{tag}", f"O-{tag}"
    name = f"test_catalogue_{tag}"
    MlflowClient(settings.mlflow_tracking_uri).set_registered_model_alias(
        name, "champion", register(toy_pipeline(spark, 1.0), name)
    )
    days_ago = {n: day - dt.timedelta(days=n) for n in (1, 3, 10, 28, 29)}
    backfilled(
        store,
        shop,
        sold={"P1": days_ago[1], "P2": days_ago[3], "P5": days_ago[28], "P9": days_ago[29]},
        stocked={"P3": days_ago[10]},
    )
    backfilled(store, other, sold={"P7": days_ago[1]}, stocked={})
    topic = f"sales-catalogue-{tag}"
    create_topic(settings, topic)
    queries = sales_job(
        topic,
        champion=ChampionModel(name, job="sales-test", store=store, registry_timeout_s=60),
        feature_builder=toy_features,
    )

    def send(batch: int, products: list[str]) -> None:
        sell_one_basket(settings, queries, topic, shop, at(day, f"09:0{batch}:00"), products)

    def expected_units(store_id: str) -> float:
        rows = store.query_df(STORE_EXPECTATIONS_SQL, {"first_date": day, "last_date": day})
        return float(rows.loc[rows["store_id"] == store_id, "expected_units_day"].iloc[0])

    send(1, ["P1"])
    assert expected_units(shop) == pytest.approx(40.0)  # P1, P2, P3 and P5 at 10 units each
    assert expected_units(other) == pytest.approx(10.0)  # it has not sold today yet
    send(2, ["P2", "P4"])  # P4: new to the shop
    assert expected_units(shop) == pytest.approx(50.0)

    scores = store.query_df(
        "SELECT batch_id, store_id, product_id, forecast_date FROM demand_scores "
        "WHERE store_id IN ({s:String}, {o:String}) ORDER BY batch_id, store_id, product_id",
        {"s": shop, "o": other},
    )
    first_batch = scores["batch_id"] == scores["batch_id"].min()

    def pairs(rows: pd.DataFrame) -> list[tuple[str, str]]:
        return list(zip(rows["store_id"], rows["product_id"], strict=True))

    assert pairs(scores[first_batch]) == [
        (other, "P7"),
        (shop, "P1"),
        (shop, "P2"),
        (shop, "P3"),
        (shop, "P5"),
    ]
    assert pairs(scores[~first_batch]) == [(shop, "P4")]  # in whichever batch P4 came

    # A sale 5 days late scores its own pair for its day, not that day's catalogue.
    late = day - dt.timedelta(days=5)
    sell_one_basket(settings, queries, topic, shop, at(late, "09:00:00"), ["P6"])
    late_scores = store.query_df(
        "SELECT store_id, product_id FROM demand_scores WHERE forecast_date = {d:Date} "
        "AND store_id IN ({s:String}, {o:String})",
        {"d": late, "s": shop, "o": other},
    )
    assert pairs(late_scores) == [(shop, "P6")]
    assert set(pd.to_datetime(scores["forecast_date"]).dt.date) == {day}
    # A pair first sold in the 28 days before a day joins its catalogue when it arrives, late or
    # from another partition after the day's first sale.
    assert expected_units(shop) == pytest.approx(60.0)  # P6 too
    sell_one_basket(settings, queries, topic, other, at(days_ago[1], "23:59:00"), ["P8"])
    assert expected_units(other) == pytest.approx(20.0)  # P7 and P8
    repeats = store.query_df(
        "SELECT store_id, product_id, forecast_date, count() AS n FROM demand_scores "
        "WHERE store_id IN ({s:String}, {o:String}) GROUP BY ALL HAVING n > 1",
        {"s": shop, "o": other},
    )
    assert repeats.empty
