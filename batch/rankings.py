"""Product and store rankings as pure Spark transforms over the daily sales grain.

For each run day D: revenue and gross margin are D's; ``revenue_7d`` covers D-6..D and
``revenue_prev_7d`` D-13..D-7. Growth and the stores' week-over-week change compare the two.
A product is ranked in a scope (a store, or ``ALL`` stores) when it sold there in D-13..D.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from batch.kpis import ALL, UNKNOWN_CATEGORY

WEEK_DAYS = 7
RANKING_METRICS = {"revenue": "revenue", "margin": "gross_margin", "growth": "growth"}


def _two_weeks(sales_grain: DataFrame, run_dates: DataFrame) -> DataFrame:
    """Each run day joined to its sales rows of the 14 days ending that day."""
    window = run_dates.select(F.col("date").alias("run_date"))
    age = F.datediff(window["run_date"], sales_grain["date"])
    return sales_grain.join(F.broadcast(window), (age >= 0) & (age < 2 * WEEK_DAYS)).withColumn(
        "age_days", F.datediff("run_date", "date")
    )


def _window_sums() -> list[Column]:
    cost = F.coalesce(F.col("unit_cost"), F.lit(0.0))
    today = F.col("age_days") == 0
    return [
        F.sum(F.when(today, F.col("revenue")).otherwise(0.0)).alias("revenue"),
        F.sum(F.when(today, F.col("units")).otherwise(0)).alias("units"),
        F.sum(F.when(today, F.col("revenue") - F.col("units") * cost).otherwise(0.0)).alias(
            "gross_margin"
        ),
        F.sum(F.when(F.col("age_days") < WEEK_DAYS, F.col("revenue")).otherwise(0.0)).alias(
            "revenue_7d"
        ),
        F.sum(F.when(F.col("age_days") >= WEEK_DAYS, F.col("revenue")).otherwise(0.0)).alias(
            "revenue_prev_7d"
        ),
    ]


def product_performance(
    sales_grain: DataFrame, products: DataFrame, run_dates: DataFrame
) -> DataFrame:
    """Revenue, margin and growth per run day, scope (store or ALL) and product."""
    rows = _two_weeks(sales_grain, run_dates).join(
        F.broadcast(products.select("product_id", "unit_cost")), ["product_id"], "left"
    )
    performance = (
        rows.withColumn("scope", F.explode(F.array(F.col("store_id"), F.lit(ALL))))
        .groupBy("run_date", "scope", "product_id")
        .agg(*_window_sums())
        .withColumnRenamed("scope", "store_id")
    )
    growth = F.when(
        F.col("revenue_prev_7d") > 0, F.col("revenue_7d") / F.col("revenue_prev_7d") - 1
    )
    return performance.join(
        F.broadcast(products.select("product_id", "product_name", "category")),
        ["product_id"],
        "left",
    ).select(
        F.col("run_date").alias("date"),
        "store_id",
        "product_id",
        F.coalesce("product_name", "product_id").alias("product_name"),
        F.coalesce("category", F.lit(UNKNOWN_CATEGORY)).alias("category"),
        "revenue",
        "units",
        "gross_margin",
        "revenue_7d",
        "revenue_prev_7d",
        growth.alias("growth"),
    )


def rank_products(performance: DataFrame, top_n: int) -> DataFrame:
    """The top and bottom ``top_n`` products per day and scope by revenue, margin and growth."""
    metrics = F.array(
        *[
            F.struct(F.lit(metric).alias("metric"), F.col(column).cast("double").alias("value"))
            for metric, column in RANKING_METRICS.items()
        ]
    )
    per_metric = Window.partitionBy("date", "store_id", "metric")
    directions = F.array(
        F.struct(F.lit("top").alias("direction"), F.col("top_rank").alias("rank")),
        F.struct(F.lit("bottom").alias("direction"), F.col("bottom_rank").alias("rank")),
    )
    ranked = (
        performance.withColumn("ranked_metric", F.explode(metrics))
        .select("*", "ranked_metric.*")
        .where(F.col("value").isNotNull())
        .withColumn(
            "top_rank", F.row_number().over(per_metric.orderBy(F.desc("value"), "product_id"))
        )
        .withColumn(
            "bottom_rank", F.row_number().over(per_metric.orderBy(F.asc("value"), "product_id"))
        )
        .where((F.col("top_rank") <= top_n) | (F.col("bottom_rank") <= top_n))
        .withColumn("ranked_direction", F.explode(directions))
        .select("*", "ranked_direction.*")
        .where(F.col("rank") <= top_n)
    )
    return ranked.select(
        "date",
        "store_id",
        "metric",
        "direction",
        "rank",
        "product_id",
        "product_name",
        "category",
        "value",
        "revenue",
        "units",
        "gross_margin",
        "revenue_7d",
        "revenue_prev_7d",
    )


def rank_stores(
    sales_grain: DataFrame, products: DataFrame, stores: DataFrame, run_dates: DataFrame
) -> DataFrame:
    """Stores ranked per day by their trailing 7-day revenue, with the week-over-week change
    and the rank they held on the previous week's revenue."""
    rows = _two_weeks(sales_grain, run_dates).join(
        F.broadcast(products.select("product_id", "unit_cost")), ["product_id"], "left"
    )
    per_store = rows.groupBy("run_date", "store_id").agg(*_window_sums())
    this_week = Window.partitionBy("run_date").orderBy(F.desc("revenue_7d"), "store_id")
    last_week = Window.partitionBy("run_date").orderBy(F.desc("revenue_prev_7d"), "store_id")
    had_last_week = F.col("revenue_prev_7d") > 0
    ranked = per_store.withColumn("rank", F.row_number().over(this_week)).withColumn(
        "rank_prev_week", F.when(had_last_week, F.row_number().over(last_week))
    )
    return ranked.join(F.broadcast(stores), ["store_id"], "left").select(
        F.col("run_date").alias("date"),
        "store_id",
        F.coalesce("store_name", "store_id").alias("store_name"),
        F.coalesce("region", F.lit(UNKNOWN_CATEGORY)).alias("region"),
        "rank",
        "revenue",
        "gross_margin",
        "revenue_7d",
        "revenue_prev_7d",
        F.when(had_last_week, F.col("revenue_7d") / F.col("revenue_prev_7d") - 1).alias(
            "wow_change"
        ),
        "rank_prev_week",
        (F.col("rank_prev_week") - F.col("rank")).cast("int").alias("rank_change"),
    )
