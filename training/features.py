"""Features for both models, computed by one code path for training and for scoring.

Every feature of day ``d`` uses only days before ``d`` (lags, rolling statistics, past promotion
days) or facts known in advance about ``d`` itself (calendar, list price, store and product
attributes). The day's own promotion flag and price ratio are not inputs: they come from its
sales (no plan of promotions is stored), so a day with either had sold, and scoring cannot know
them. Training applies :func:`add_demand_features` to the whole daily panel; scoring
(:func:`build_scoring_features`, used by the streaming jobs, serving and the forecast refresh)
applies the same function to the last ``FEATURE_HISTORY_DAYS`` of stored history plus the rows to
score, so the model sees the same numbers in both places.

Stockout days censor demand: the units sold on such a day are a lower bound of what customers
wanted. They are masked out (``demand_observed`` is null) so that no lag or rolling statistic
learns a censored number, and they are never used as labels or for judging a model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from common.store import Store
from training.data import (
    HistoryWindow,
    TrainingDataError,
    keys_frame,
    load_catalog_rows,
    load_daily_history,
)

FEATURE_HISTORY_DAYS = 28
MAX_LEAD_TIME_DAYS = 28
LAG_DAYS = (1, 7, 14, 28)
LEVEL_OFFSET = 0.1  # added to a level before dividing by it, so a silent series stays finite

CATEGORICAL_FEATURES = ["category", "region", "size_class"]
DEMAND_NUMERIC_FEATURES = [
    "units_lag_1",
    "units_lag_7",
    "units_lag_14",
    "units_lag_28",
    "units_mean_7d",
    "units_mean_28d",
    "units_regular_mean_28d",
    "promo_days_28d",
    "units_std_28d",
    "units_same_weekday_mean_4w",
    "units_lag_1_ratio",
    "units_mean_7d_ratio",
    "units_same_weekday_ratio",
    "product_units_mean_28d",
    "observed_days_28d",
    "day_of_week",
    "month",
    "is_holiday",
    "size_sqm",
    "list_price",
]
STOCK_NUMERIC_FEATURES = [*DEMAND_NUMERIC_FEATURES, "lead_time_days", "naive_lead_time_demand"]

DEMAND_LABEL = "demand_label"
STOCK_LABEL = "lead_time_demand"
KEY_COLUMNS = ["store_id", "product_id", "date"]


def model_input_columns(model_name: str) -> list[str]:
    """The columns a model's pipeline reads (its MLflow signature)."""
    numeric = STOCK_NUMERIC_FEATURES if model_name == "stock_optimizer" else DEMAND_NUMERIC_FEATURES
    return [*CATEGORICAL_FEATURES, *numeric]


def add_demand_features(daily: DataFrame) -> DataFrame:
    """Add lags, rolling statistics, calendar and price features, and both labels.

    ``daily`` is the panel of :func:`training.data.load_daily_history` (one row per series and
    day). Missing history falls back in order: the series' own 28-day mean, the product's mean
    over all stores, zero; ``observed_days_28d`` tells the model how much history was real.
    """
    frame = daily.withColumn(
        "day_index", F.datediff("date", F.lit(dt.date(1970, 1, 1)))
    ).withColumn("demand_observed", F.when(F.col("stockout") == 0, F.col("units_sold")))
    frame = frame.join(_product_level(frame), ["product_id", "day_index"], "left")
    series = Window.partitionBy("store_id", "product_id").orderBy("day_index")

    def past(first: int, last: int) -> Window:
        return series.rangeBetween(-first, -last)

    observed = F.col("demand_observed")
    raw_lags = {k: F.max(observed).over(past(k, k)) for k in LAG_DAYS}
    same_weekday = F.max(observed).over(past(21, 21))
    frame = frame.select(
        "*",
        *[raw_lags[k].alias(f"raw_lag_{k}") for k in LAG_DAYS],
        same_weekday.alias("raw_lag_21"),
        F.avg(observed).over(past(7, 1)).alias("raw_mean_7d"),
        F.avg(observed).over(past(28, 1)).alias("raw_mean_28d"),
        F.stddev_samp(observed).over(past(28, 1)).alias("raw_std_28d"),
        F.count(observed).over(past(28, 1)).cast("double").alias("observed_days_28d"),
        F.avg(F.when(F.col("on_promotion") == 0, observed))
        .over(past(28, 1))
        .alias("raw_regular_mean_28d"),
        F.coalesce(F.sum("on_promotion").over(past(28, 1)), F.lit(0))
        .cast("double")
        .alias("promo_days_28d"),
    )
    level = F.coalesce("raw_mean_28d", "product_units_mean_28d", F.lit(0.0))
    weekday_mean = _mean_of([F.col(f"raw_lag_{k}") for k in (7, 14, 21, 28)])
    frame = frame.select(
        "*",
        level.alias("units_mean_28d"),
        F.coalesce(weekday_mean, level).alias("units_same_weekday_mean_4w"),
        F.coalesce("raw_mean_7d", level).alias("units_mean_7d"),
        F.coalesce("raw_std_28d", F.sqrt(level)).alias("units_std_28d"),
        F.coalesce("raw_regular_mean_28d", level).alias("units_regular_mean_28d"),
    )
    frame = frame.select(
        "*",
        F.coalesce("raw_lag_1", "units_mean_7d").alias("units_lag_1"),
        *[
            F.coalesce(f"raw_lag_{k}", "units_same_weekday_mean_4w").alias(f"units_lag_{k}")
            for k in (7, 14, 28)
        ],
        F.dayofweek("date").cast("double").alias("day_of_week"),
        F.month("date").cast("double").alias("month"),
        (F.col("units_mean_28d") * F.col("lead_time_days")).alias("naive_lead_time_demand"),
        observed.alias(DEMAND_LABEL),
    )
    level = F.col("units_mean_28d") + F.lit(LEVEL_OFFSET)
    frame = frame.select(
        "*",
        (F.col("units_lag_1") / level).alias("units_lag_1_ratio"),
        (F.col("units_mean_7d") / level).alias("units_mean_7d_ratio"),
        (F.col("units_same_weekday_mean_4w") / level).alias("units_same_weekday_ratio"),
    )
    frame = _add_lead_time_label(frame, series)
    return frame.select(
        *KEY_COLUMNS,
        "units_sold",
        "stockout",
        *CATEGORICAL_FEATURES,
        *[F.col(c).cast("double").alias(c) for c in STOCK_NUMERIC_FEATURES],
        DEMAND_LABEL,
        STOCK_LABEL,
        "lead_time_end_date",
    )


def build_scoring_features(
    spark: SparkSession,
    store: Store,
    keys: Iterable[tuple[str, str]] | DataFrame,
    as_of_date: dt.date,
) -> DataFrame:
    """Feature rows for ``keys`` (store_id, product_id) on ``as_of_date``, from stored history.

    Serves both models: the frame holds ``model_input_columns(name)`` for either name. History
    is read for every store that sells the requested products, so cross-store features match
    training. A key without history gets the documented fallbacks (product mean, then zero).
    """
    wanted = materialize(spark, keys_frame(spark, keys))
    history = load_recent_history(spark, store, wanted, as_of_date)
    return score_rows_with_history(
        None if history is None else materialize(spark, history),
        materialize(spark, load_catalog_rows(spark, store, wanted, [as_of_date])),
    ).join(wanted, ["store_id", "product_id"], "inner")


def materialize(spark: SparkSession, frame: DataFrame) -> DataFrame:
    """``frame`` computed once and held as local rows. Scoring panels are small (the keys' last
    weeks), and the feature plan reads its panel several times: from local rows it stays a few
    stages instead of re-running every store query and join for each read."""
    return spark.createDataFrame(frame.toPandas(), schema=frame.schema)


def load_recent_history(
    spark: SparkSession, store: Store, keys: DataFrame, as_of_date: dt.date
) -> DataFrame | None:
    """The FEATURE_HISTORY_DAYS of panel before ``as_of_date`` for the products in ``keys``
    (None for no keys: the store's filter would read every product)."""
    products = [row.product_id for row in keys.select("product_id").distinct().collect()]
    if not products:
        return None
    window = HistoryWindow(
        as_of_date - dt.timedelta(days=FEATURE_HISTORY_DAYS), as_of_date - dt.timedelta(days=1)
    )
    try:
        return load_daily_history(spark, store, window, products)
    except TrainingDataError:
        return None


def score_rows_with_history(history: DataFrame | None, rows: DataFrame) -> DataFrame:
    """Features of ``rows`` (days to score, same columns as the panel) computed over history."""
    if history is None:
        panel = rows
    else:
        panel = history.unionByName(rows.select(*history.columns))
    scored_dates = rows.select("date", "store_id", "product_id").distinct()
    return add_demand_features(panel).join(scored_dates, KEY_COLUMNS, "inner")


def _product_level(frame: DataFrame) -> DataFrame:
    """The product's mean observed demand per store over the previous 28 days."""
    per_day = frame.groupBy("product_id", "day_index").agg(
        F.avg("demand_observed").alias("product_units_mean_1d")
    )
    window = Window.partitionBy("product_id").orderBy("day_index").rangeBetween(-28, -1)
    return per_day.select(
        "product_id",
        "day_index",
        F.avg("product_units_mean_1d").over(window).alias("product_units_mean_28d"),
    )


def _add_lead_time_label(frame: DataFrame, series: Window) -> DataFrame:
    """Units sold over the replenishment lead time starting on the day (null if censored/short)."""
    lead_days = F.least(
        F.greatest(F.ceil(F.coalesce("lead_time_days", F.lit(1.0))), F.lit(1)),
        F.lit(MAX_LEAD_TIME_DAYS),
    ).cast("int")
    ahead = F.collect_list(F.struct("day_index", "units_sold", "stockout")).over(
        series.rangeBetween(0, MAX_LEAD_TIME_DAYS - 1)
    )
    frame = frame.withColumn("lead_days", lead_days).withColumn("ahead", ahead)
    within = F.filter("ahead", lambda x: x["day_index"] < F.col("day_index") + F.col("lead_days"))
    total = F.aggregate(within, F.lit(0.0), lambda acc, x: acc + x["units_sold"])
    complete = (F.size(within) == F.col("lead_days")) & ~F.exists(
        within, lambda x: x["stockout"] == 1
    )
    return frame.withColumn(STOCK_LABEL, F.when(complete, total)).withColumn(
        "lead_time_end_date", F.date_add("date", F.col("lead_days") - 1)
    )


def _mean_of(columns: list[Column]) -> Column:
    """Mean of the non-null values among ``columns`` (null when all are null)."""
    present = sum(F.when(c.isNotNull(), 1).otherwise(0) for c in columns)
    total = sum(F.coalesce(c, F.lit(0.0)) for c in columns)
    return F.when(present > 0, total / present)
