"""Daily KPIs as pure Spark transforms over small daily grains.

The store reduces raw events to one row per day, store and product (and merges the distinct
counts of transactions and customers, which do not add up); these transforms add stock positions,
costs and forecasts and roll the rows up per store, per category and overall.

Definitions (per day and level):
    revenue, units         sums of the sales line items
    transactions           distinct transaction ids; avg_order_value = revenue / transactions
    unique_customers       distinct known customer ids
    cogs                   units x catalog unit_cost; gross_margin = revenue - cogs
    sell_through           units sold / (opening stock + units received), tracked pairs only
    stockout_rate          store x product days out of stock (stock at 0 at any time of the day)
                           / store x product days with a known stock position
    inventory_turnover     annualised: cogs of tracked pairs x 365 / average inventory at cost
    days_of_supply         closing inventory at cost / mean daily cogs of the trailing 7 days
    forecast_wape, _bias   sum |forecast - actual| / sum actual and sum (forecast - actual) /
                           sum actual over the pairs the champion forecast for that day
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DateType,
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
)

ALL = "ALL"
UNKNOWN_CATEGORY = "unknown"
DAYS_PER_YEAR = 365.0
SUPPLY_WINDOW_DAYS = 7

_PAIR = ["store_id", "product_id"]
_DAY_PAIR = ["date", "store_id", "product_id"]


def _schema(*fields: tuple[str, object]) -> StructType:
    return StructType([StructField(name, kind, True) for name, kind in fields])


SALES_GRAIN_SCHEMA = _schema(
    ("date", DateType()),
    ("store_id", StringType()),
    ("category", StringType()),
    ("product_id", StringType()),
    ("line_items", LongType()),
    ("units", LongType()),
    ("revenue", DoubleType()),
)
BASKET_COUNTS_SCHEMA = _schema(
    ("date", DateType()),
    ("level", StringType()),
    ("store_id", StringType()),
    ("category", StringType()),
    ("transactions", LongType()),
    ("unique_customers", LongType()),
)
INVENTORY_DAYS_SCHEMA = _schema(
    ("date", DateType()),
    ("store_id", StringType()),
    ("product_id", StringType()),
    ("movements", LongType()),
    ("opening_units", LongType()),
    ("closing_units", LongType()),
    ("min_units", LongType()),
    ("received_units", LongType()),
)
STOCK_BEFORE_SCHEMA = _schema(
    ("store_id", StringType()), ("product_id", StringType()), ("closing_units", LongType())
)
PRODUCTS_SCHEMA = _schema(
    ("product_id", StringType()),
    ("product_name", StringType()),
    ("category", StringType()),
    ("unit_cost", DoubleType()),
    ("unit_price", DoubleType()),
)
STORES_SCHEMA = _schema(
    ("store_id", StringType()), ("store_name", StringType()), ("region", StringType())
)
FORECASTS_SCHEMA = _schema(
    ("date", DateType()),
    ("store_id", StringType()),
    ("product_id", StringType()),
    ("forecast_units", DoubleType()),
)
RUN_DATES_SCHEMA = _schema(("date", DateType()))


def typed_frame(frame: pd.DataFrame, schema: StructType) -> pd.DataFrame:
    """The columns of ``schema`` in pandas types that map onto it (dates, nullable longs)."""
    frame = frame[[f.name for f in schema.fields]].copy()
    for spec in schema.fields:
        kind = spec.dataType.typeName()
        if kind == "date":
            frame[spec.name] = pd.to_datetime(frame[spec.name]).dt.date
        elif kind == "long":
            frame[spec.name] = frame[spec.name].astype("Int64")
        elif kind == "double":
            frame[spec.name] = frame[spec.name].astype("float64")
    return frame


def frame_to_spark(spark: SparkSession, frame: pd.DataFrame, schema: StructType) -> DataFrame:
    """A small pandas frame as a Spark local relation of ``schema`` (through Arrow: no Python
    workers). Past some 10^4 rows a parquet file scans several times faster."""
    return spark.createDataFrame(typed_frame(frame, schema), schema=schema)


def daily_stock_positions(
    inventory_days: DataFrame, stock_before: DataFrame, run_dates: DataFrame
) -> DataFrame:
    """Opening, closing and received units and a stockout flag per run day, store and product.

    Days without a stock movement carry the last known closing stock forward; a pair enters the
    grid from its first known position on.
    """
    pairs = stock_before.select(*_PAIR).union(inventory_days.select(*_PAIR)).distinct()
    seed = stock_before.crossJoin(run_dates.agg(F.date_sub(F.min("date"), 1).alias("date"))).select(
        "date", *_PAIR, "closing_units", F.lit(True).alias("is_seed")
    )
    grid = (
        run_dates.crossJoin(pairs)
        .join(inventory_days, _DAY_PAIR, "left")
        .withColumn("is_seed", F.lit(False))
    )
    before = Window.partitionBy(*_PAIR).orderBy("date").rowsBetween(Window.unboundedPreceding, -1)
    positions = (
        grid.unionByName(seed, allowMissingColumns=True)
        .withColumn("carried_units", F.last("closing_units", ignorenulls=True).over(before))
        .where(~F.col("is_seed"))
        .withColumn("closing", F.coalesce("closing_units", "carried_units"))
        .where(F.col("closing").isNotNull())
        .withColumn("opening", F.coalesce("opening_units", "carried_units", "closing"))
        .withColumn("lowest", F.coalesce("min_units", "closing"))
    )
    return positions.select(
        "date",
        *_PAIR,
        F.col("opening").alias("opening_units"),
        F.col("closing").alias("closing_units"),
        F.coalesce("received_units", F.lit(0)).alias("received_units"),
        (F.least("opening", "lowest", "closing") <= 0).cast("long").alias("stocked_out"),
    )


def _on_run_dates(frame: DataFrame, run_dates: DataFrame) -> DataFrame:
    return frame.join(F.broadcast(run_dates), ["date"], "left_semi")


def trailing_sums(
    frame: DataFrame,
    keys: list[str],
    run_dates: DataFrame,
    sums: dict[str, tuple[str, int, int]],
) -> DataFrame:
    """Per run day and key: ``sums`` of a daily frame over day windows ending that day.

    ``sums`` maps an output column to (input column, first day, last day), days counted back
    from the run day: ``("units", -6, 0)`` is the week ending the run day. Each key gets one probe
    row per run day, so that a day without a row of its own still gets its windows; the windows
    are range frames over the day number, one sort per key. Rows whose windows hold no data at
    all are dropped.
    """
    probes = run_dates.crossJoin(frame.select(*keys).distinct()).withColumn("is_probe", F.lit(True))
    stacked = frame.withColumn("is_probe", F.lit(False)).unionByName(
        probes, allowMissingColumns=True
    )
    by_day = Window.partitionBy(*keys).orderBy(F.unix_date("date"))
    columns = [
        F.sum(column).over(by_day.rangeBetween(first, last)).alias(name)
        for name, (column, first, last) in sums.items()
    ]
    windowed = stacked.select("date", *keys, "is_probe", *columns).where("is_probe")
    has_data = None
    for name in sums:
        present = F.col(name).isNotNull()
        has_data = present if has_data is None else has_data | present
    return windowed.where(has_data).drop("is_probe")


def _sales_window(sales_grain: DataFrame, run_dates: DataFrame) -> DataFrame:
    """Per run day, store and product: the day's sales and the units of the supply window."""
    daily = sales_grain.groupBy(*_DAY_PAIR).agg(
        F.sum("units").alias("units"), F.sum("revenue").alias("revenue")
    )
    windows = trailing_sums(
        daily,
        _PAIR,
        run_dates,
        {
            "units": ("units", 0, 0),
            "revenue": ("revenue", 0, 0),
            "window_units": ("units", -(SUPPLY_WINDOW_DAYS - 1), 0),
        },
    )
    categories = (
        _on_run_dates(sales_grain, run_dates)
        .groupBy(*_DAY_PAIR)
        .agg(F.first("category").alias("sales_category"))
    )
    return windows.join(categories, _DAY_PAIR, "left")


def product_day_facts(
    sales_grain: DataFrame,
    stock_positions: DataFrame,
    products: DataFrame,
    forecasts: DataFrame,
    run_dates: DataFrame,
) -> DataFrame:
    """One row per run day, store and product that sold, held stock or was forecast.

    The three sources are stacked and grouped once (one shuffle instead of outer joins).
    """
    stacked = (
        _sales_window(sales_grain, run_dates)
        .unionByName(_on_run_dates(stock_positions, run_dates), allowMissingColumns=True)
        .unionByName(
            _on_run_dates(forecasts.select(*_DAY_PAIR, "forecast_units"), run_dates),
            allowMissingColumns=True,
        )
    )
    facts = (
        stacked.groupBy(*_DAY_PAIR)
        .agg(
            F.first("sales_category", ignorenulls=True).alias("sales_category"),
            F.sum("units").alias("units"),
            F.sum("revenue").alias("revenue"),
            F.sum("window_units").alias("window_units"),
            F.max("opening_units").alias("opening_units"),
            F.max("received_units").alias("received_units"),
            F.max("closing_units").alias("closing_units"),
            F.max("stocked_out").alias("stocked_out"),
            F.max("forecast_units").alias("forecast_units"),
        )
        .where(
            F.col("units").isNotNull()
            | F.col("closing_units").isNotNull()
            | F.col("forecast_units").isNotNull()
        )
        .join(F.broadcast(products), ["product_id"], "left")
    )
    tracked = F.col("closing_units").isNotNull()
    forecast = F.col("forecast_units").isNotNull()
    units = F.coalesce("units", F.lit(0))
    cost = F.col("unit_cost")
    return facts.select(
        *_DAY_PAIR,
        F.coalesce("category", "sales_category", F.lit(UNKNOWN_CATEGORY)).alias("category"),
        F.coalesce("revenue", F.lit(0.0)).alias("revenue"),
        units.alias("units"),
        (units * cost).alias("cogs"),
        tracked.cast("long").alias("tracked"),
        F.when(tracked, units).alias("tracked_units"),
        F.when(tracked, units * cost).alias("tracked_cogs"),
        F.when(tracked, F.coalesce("window_units", F.lit(0)) * cost).alias("tracked_cogs_window"),
        "opening_units",
        "received_units",
        "closing_units",
        "stocked_out",
        (F.col("closing_units") * cost).alias("inventory_value"),
        ((F.col("opening_units") + F.col("closing_units")) / 2 * cost).alias(
            "average_inventory_value"
        ),
        "forecast_units",
        F.when(forecast, units).alias("forecast_actual_units"),
        F.when(forecast, F.abs(F.col("forecast_units") - units)).alias("forecast_abs_error"),
    )


def _ratio(numerator: Column, denominator: Column) -> Column:
    return F.when(denominator != 0, numerator / denominator)


def daily_kpis(facts: DataFrame, basket_counts: DataFrame) -> DataFrame:
    """The KPI rows per day: one overall, one per store and one per category."""

    def rollup(level: str, store_key: Column, category_key: Column) -> Column:
        return F.struct(
            F.lit(level).alias("level"),
            store_key.alias("store_key"),
            category_key.alias("category_key"),
        )

    levels = F.array(
        rollup("overall", F.lit(ALL), F.lit(ALL)),
        rollup("store", F.col("store_id"), F.lit(ALL)),
        rollup("category", F.lit(ALL), F.col("category")),
    )
    sums = [
        F.sum("revenue").alias("revenue"),
        F.sum("units").alias("units"),
        F.sum("cogs").alias("cogs"),
        F.sum("opening_units").alias("opening_stock_units"),
        F.sum("received_units").alias("received_units"),
        F.sum("closing_units").alias("closing_stock_units"),
        F.sum("tracked_units").alias("tracked_units"),
        F.sum("tracked_cogs").alias("tracked_cogs"),
        F.sum("tracked_cogs_window").alias("tracked_cogs_window"),
        F.sum("stocked_out").alias("stockout_days"),
        F.sum("tracked").alias("tracked_days"),
        F.sum("inventory_value").alias("inventory_value"),
        F.sum("average_inventory_value").alias("average_inventory_value"),
        F.sum("forecast_units").alias("forecast_units"),
        F.sum("forecast_actual_units").alias("forecast_actual_units"),
        F.sum("forecast_abs_error").alias("forecast_abs_error"),
    ]
    rolled = (
        facts.withColumn("rollup", F.explode(levels))
        .select("*", "rollup.*")
        .groupBy("date", "level", "store_key", "category_key")
        .agg(*sums)
    )
    counts = basket_counts.select(
        "date",
        "level",
        F.col("store_id").alias("store_key"),
        F.col("category").alias("category_key"),
        "transactions",
        "unique_customers",
    )
    kpis = rolled.join(F.broadcast(counts), ["date", "level", "store_key", "category_key"], "left")
    transactions = F.coalesce("transactions", F.lit(0))
    cogs = F.coalesce("cogs", F.lit(0.0))
    margin = F.col("revenue") - cogs
    available = F.col("opening_stock_units") + F.col("received_units")
    error = F.col("forecast_units") - F.col("forecast_actual_units")
    return kpis.select(
        "date",
        "level",
        F.col("store_key").alias("store_id"),
        F.col("category_key").alias("category"),
        "revenue",
        "units",
        transactions.alias("transactions"),
        _ratio(F.col("revenue"), transactions).alias("avg_order_value"),
        F.coalesce("unique_customers", F.lit(0)).alias("unique_customers"),
        cogs.alias("cogs"),
        margin.alias("gross_margin"),
        _ratio(margin, F.col("revenue")).alias("gross_margin_pct"),
        F.coalesce("opening_stock_units", F.lit(0)).alias("opening_stock_units"),
        F.coalesce("received_units", F.lit(0)).alias("received_units"),
        F.coalesce("closing_stock_units", F.lit(0)).alias("closing_stock_units"),
        _ratio(F.col("tracked_units"), available).alias("sell_through"),
        F.coalesce("stockout_days", F.lit(0)).alias("stockout_days"),
        F.coalesce("tracked_days", F.lit(0)).alias("tracked_days"),
        _ratio(F.col("stockout_days"), F.col("tracked_days")).alias("stockout_rate"),
        F.coalesce("inventory_value", F.lit(0.0)).alias("inventory_value"),
        _ratio(F.col("tracked_cogs") * DAYS_PER_YEAR, F.col("average_inventory_value")).alias(
            "inventory_turnover"
        ),
        _ratio(F.col("inventory_value"), F.col("tracked_cogs_window") / SUPPLY_WINDOW_DAYS).alias(
            "days_of_supply"
        ),
        "forecast_units",
        F.col("forecast_actual_units").cast("double").alias("forecast_actual_units"),
        _ratio(F.col("forecast_abs_error"), F.col("forecast_actual_units")).alias("forecast_wape"),
        _ratio(error, F.col("forecast_actual_units")).alias("forecast_bias"),
    )


def daily_trend(sales_grain: DataFrame, forecasts: DataFrame) -> DataFrame:
    """Revenue and units per day, with the champion's forecast beside the actual units of the
    pairs it forecast (for the report's charts)."""
    sales = sales_grain.groupBy(*_DAY_PAIR).agg(
        F.sum("units").alias("units"), F.sum("revenue").alias("revenue")
    )
    joined = sales.join(forecasts.select(*_DAY_PAIR, "forecast_units"), _DAY_PAIR, "full")
    units = F.coalesce("units", F.lit(0))
    forecast = F.col("forecast_units").isNotNull()
    return (
        joined.groupBy("date")
        .agg(
            F.sum(F.coalesce("revenue", F.lit(0.0))).alias("revenue"),
            F.sum(units).alias("units"),
            F.sum("forecast_units").alias("forecast_units"),
            F.sum(F.when(forecast, units)).alias("forecast_actual_units"),
        )
        .orderBy("date")
    )
