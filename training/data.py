"""Load the sales history from the store into Spark: one row per store x product x day.

The store aggregates the raw events (ClickHouse is good at that); Spark gets the daily panel:
units sold, whether the day ended in a stockout, the price paid against the list price, the
promotion flag, the calendar and the store and product attributes. Days without a sale are
filled with zero units from the first day a series is seen (a sale or a stock movement) to the
end of the window, so a product that never sells is a series of zeros, not a missing series.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.store import Store

log = logging.getLogger(__name__)

DAILY_COLUMNS = [
    "date",
    "store_id",
    "product_id",
    "units_sold",
    "stockout",
    "on_promotion",
    "price_ratio",
    "is_holiday",
    "region",
    "size_class",
    "size_sqm",
    "category",
    "list_price",
    "lead_time_days",
]


class TrainingDataError(ValueError):
    """The history cannot train a useful model; the message says what is missing."""


@dataclass(frozen=True)
class HistoryWindow:
    """The first and last day of history to use (both inclusive)."""

    start: dt.date
    end: dt.date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


_SALES_DAILY = """
SELECT toDate(event_time) AS date, store_id, product_id,
       toFloat64(sum(quantity)) AS units_sold,
       sum(total_amount) / nullIf(sum(quantity * unit_price), 0) AS price_ratio,
       toInt32(max(on_promotion)) AS on_promotion
FROM sales_events FINAL
WHERE toDate(event_time) BETWEEN {start:Date} AND {end:Date}
  AND ({products:String} = '' OR has(splitByChar(',', {products:String}), product_id))
GROUP BY date, store_id, product_id
"""

_STOCK_DAILY = """
SELECT toDate(event_time) AS date, store_id, product_id,
       toInt32(min(stock_level) <= 0) AS stockout
FROM inventory_events FINAL
WHERE toDate(event_time) BETWEEN {start:Date} AND {end:Date}
  AND ({products:String} = '' OR has(splitByChar(',', {products:String}), product_id))
GROUP BY date, store_id, product_id
"""

_EVENT_RANGE = """
SELECT min(d) AS first_day, max(d) AS last_day FROM (
    SELECT toDate(event_time) AS d FROM sales_events
    UNION ALL
    SELECT toDate(event_time) AS d FROM inventory_events
)
"""

_STORES = "SELECT store_id, region, size_class, toFloat64(size_sqm) AS size_sqm FROM stores FINAL"
_PRODUCTS = """
SELECT product_id, category, toFloat64(unit_price) AS list_price,
       toFloat64(lead_time_days) AS lead_time_days
FROM products FINAL
"""
_CALENDAR = """
SELECT date, toInt32(is_holiday) AS is_holiday FROM calendar FINAL
WHERE date BETWEEN {start:Date} AND {end:Date}
"""


def resolve_window(
    store: Store, start: dt.date | None = None, end: dt.date | None = None
) -> HistoryWindow:
    """The requested window, with open ends taken from the first event in the store and the last
    whole day: the day of its last event, or yesterday (UTC) while today's events still arrive."""
    bounds = store.query_df(_EVENT_RANGE)
    first, last = bounds.iloc[0]["first_day"], bounds.iloc[0]["last_day"]
    if pd.isna(first) or pd.Timestamp(first).year <= 1970:
        raise TrainingDataError(
            "the store holds no sales or inventory events: generate or load history first "
            "(`retail generate backfill --days 120`)"
        )
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    window = HistoryWindow(
        start or pd.Timestamp(first).date(),
        end or min(pd.Timestamp(last).date(), yesterday),
    )
    if window.end < window.start:
        raise TrainingDataError(
            f"the window {window.start}..{window.end} is empty"
            + ("" if end else " (today's events are not a whole day yet)")
        )
    return window


def load_daily_history(
    spark: SparkSession,
    store: Store,
    window: HistoryWindow,
    products: Iterable[str] | None = None,
) -> DataFrame:
    """The daily panel (DAILY_COLUMNS) for every series seen in the window, zero-filled."""
    product_filter = _product_filter(products)
    params = {"start": window.start.isoformat(), "end": window.end.isoformat()}
    params["products"] = product_filter
    with store.session():
        sales = store.query_df(_SALES_DAILY, params)
        stock = store.query_df(_STOCK_DAILY, params)
        stores = store.query_df(_STORES)
        catalog = store.query_df(_PRODUCTS)
        calendar = store.query_df(_CALENDAR, params)
    if sales.empty and stock.empty:
        raise TrainingDataError(
            f"no sales or inventory events between {window.start} and {window.end}"
            + (f" for products {product_filter}" if product_filter else "")
        )
    series = _first_seen(sales, stock)
    return assemble_daily_panel(
        grid=expand_series(spark, series, window.end),
        sales=_to_spark(spark, sales, ["date"], _SALES_SCHEMA),
        stock=_to_spark(spark, stock, ["date"], _STOCK_SCHEMA),
        stores=_to_spark(spark, stores, [], _STORES_SCHEMA),
        products=_to_spark(spark, catalog, [], _PRODUCTS_SCHEMA),
        calendar=_to_spark(spark, calendar, ["date"], _CALENDAR_SCHEMA),
    )


def expand_series(spark: SparkSession, series: pd.DataFrame, end: dt.date) -> DataFrame:
    """One row per series and day, from the day a series is first seen to ``end``."""
    frame = spark.createDataFrame(
        series, schema="store_id string, product_id string, first_day date"
    )
    return frame.select(
        "store_id",
        "product_id",
        F.explode(F.sequence(F.col("first_day"), F.lit(end))).alias("date"),
    )


def assemble_daily_panel(
    grid: DataFrame,
    sales: DataFrame,
    stock: DataFrame,
    stores: DataFrame,
    products: DataFrame,
    calendar: DataFrame,
) -> DataFrame:
    """Join the daily aggregates, calendar and attributes onto the grid; fill the quiet days."""
    keys = ["date", "store_id", "product_id"]
    panel = (
        grid.join(sales, keys, "left")
        .join(stock, keys, "left")
        .join(calendar, ["date"], "left")
        .join(stores, ["store_id"], "left")
        .join(products, ["product_id"], "left")
    )
    return panel.select(
        "date",
        "store_id",
        "product_id",
        F.coalesce("units_sold", F.lit(0.0)).alias("units_sold"),
        F.coalesce("stockout", F.lit(0)).alias("stockout"),
        F.coalesce("on_promotion", F.lit(0)).alias("on_promotion"),
        F.coalesce("price_ratio", F.lit(1.0)).alias("price_ratio"),
        F.coalesce("is_holiday", F.lit(0)).alias("is_holiday"),
        F.coalesce("region", F.lit("unknown")).alias("region"),
        F.coalesce("size_class", F.lit("unknown")).alias("size_class"),
        "size_sqm",
        F.coalesce("category", F.lit("unknown")).alias("category"),
        "list_price",
        "lead_time_days",
    )


def load_catalog_rows(
    spark: SparkSession, store: Store, keys: DataFrame, dates: list[dt.date]
) -> DataFrame:
    """Daily rows without sales for ``keys`` on ``dates`` (days to score): calendar, attributes,
    list price, no promotion. What is known about a day before it happens."""
    params = {"start": min(dates).isoformat(), "end": max(dates).isoformat()}
    with store.session():
        stores = store.query_df(_STORES)
        catalog = store.query_df(_PRODUCTS)
        calendar = store.query_df(_CALENDAR, params)
    day_frame = spark.createDataFrame([(d,) for d in dates], schema="date date")
    return assemble_daily_panel(
        grid=keys.select("store_id", "product_id").distinct().crossJoin(day_frame),
        sales=spark.createDataFrame([], schema=_SALES_SCHEMA),
        stock=spark.createDataFrame([], schema=_STOCK_SCHEMA),
        stores=_to_spark(spark, stores, [], _STORES_SCHEMA),
        products=_to_spark(spark, catalog, [], _PRODUCTS_SCHEMA),
        calendar=_to_spark(spark, calendar, ["date"], _CALENDAR_SCHEMA),
    )


def keys_frame(spark: SparkSession, keys: Iterable[tuple[str, str]] | DataFrame) -> DataFrame:
    """(store_id, product_id) pairs as a Spark frame, from tuples or a frame holding them."""
    if isinstance(keys, DataFrame):
        return keys.select("store_id", "product_id").distinct()
    rows = sorted({(str(s), str(p)) for s, p in keys})
    if not rows:
        raise TrainingDataError("no (store_id, product_id) keys given")
    return spark.createDataFrame(rows, schema="store_id string, product_id string")


def _product_filter(products: Iterable[str] | None) -> str:
    if products is None:
        return ""
    names = sorted({str(p) for p in products})
    if any("," in p for p in names):
        raise TrainingDataError("product ids must not contain commas")
    return ",".join(names)


def _first_seen(sales: pd.DataFrame, stock: pd.DataFrame) -> pd.DataFrame:
    keys = ["store_id", "product_id"]
    seen = pd.concat([sales[[*keys, "date"]], stock[[*keys, "date"]]], ignore_index=True)
    first = seen.groupby(keys, as_index=False)["date"].min().rename(columns={"date": "first_day"})
    first["first_day"] = pd.to_datetime(first["first_day"]).dt.date
    first[keys] = first[keys].astype(str)
    return first


_SALES_SCHEMA = (
    "date date, store_id string, product_id string, units_sold double, price_ratio double, "
    "on_promotion int"
)
_STOCK_SCHEMA = "date date, store_id string, product_id string, stockout int"
_STORES_SCHEMA = "store_id string, region string, size_class string, size_sqm double"
_PRODUCTS_SCHEMA = "product_id string, category string, list_price double, lead_time_days double"
_CALENDAR_SCHEMA = "date date, is_holiday int"


def _to_spark(
    spark: SparkSession, frame: pd.DataFrame, date_keys: list[str], schema: str
) -> DataFrame:
    """A store result as a Spark frame with an explicit schema (dates as dates, ids as strings)."""
    frame = frame.copy()
    for column in date_keys:
        frame[column] = pd.to_datetime(frame[column]).dt.date
    for column in ("store_id", "product_id", "region", "size_class", "category"):
        if column in frame.columns:
            frame[column] = frame[column].astype(str)
    names = [part.strip().split(" ")[0] for part in schema.split(",")]
    return spark.createDataFrame(frame[names], schema=schema)


_ORACLE = """
SELECT date, store_id, product_id, toFloat64(expected_demand) AS expected_demand
FROM ground_truth FINAL
WHERE date BETWEEN {start:Date} AND {end:Date}
"""


def load_oracle(store: Store, window: HistoryWindow) -> pd.DataFrame | None:
    """The generator's expected demand per store x product x day, or None without ground truth."""
    exists = store.scalar(
        "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ground_truth'"
    )
    if not exists:
        return None
    frame = store.query_df(
        _ORACLE, {"start": window.start.isoformat(), "end": window.end.isoformat()}
    )
    if frame.empty:
        return None
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    frame[["store_id", "product_id"]] = frame[["store_id", "product_id"]].astype(str)
    return frame
