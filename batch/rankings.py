"""Product and store rankings as pure Spark transforms over the daily sales grain.

For each run day D: revenue and gross margin are D's; ``revenue_7d`` covers D-6..D and
``revenue_prev_7d`` D-13..D-7. Growth and the stores' week-over-week change compare the two.
A product is ranked in a scope (a store, or ``ALL`` stores) when it sold there in D-13..D.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from batch.kpis import ALL, UNKNOWN_CATEGORY, trailing_sums

WEEK_DAYS = 7
RANKING_METRICS = {"revenue": "revenue", "margin": "gross_margin", "growth": "growth"}


def _with_margin(sales_grain: DataFrame, products: DataFrame) -> DataFrame:
    cost = F.coalesce(F.col("unit_cost"), F.lit(0.0))
    return sales_grain.join(
        F.broadcast(products.select("product_id", "unit_cost")), ["product_id"], "left"
    ).withColumn("gross_margin", F.col("revenue") - F.col("units") * cost)


def _weekly(daily: DataFrame, keys: list[str], run_dates: DataFrame) -> DataFrame:
    """The run day's revenue, units and margin, and the revenue of the week ending the run day
    and of the week before, for the keys that sold in those two weeks."""
    windows = trailing_sums(
        daily,
        keys,
        run_dates,
        {
            "revenue": ("revenue", 0, 0),
            "units": ("units", 0, 0),
            "gross_margin": ("gross_margin", 0, 0),
            "revenue_7d": ("revenue", -(WEEK_DAYS - 1), 0),
            "revenue_prev_7d": ("revenue", -(2 * WEEK_DAYS - 1), -WEEK_DAYS),
        },
    )
    return windows.fillna(
        0, subset=["revenue", "units", "gross_margin", "revenue_7d", "revenue_prev_7d"]
    )


def product_performance(
    sales_grain: DataFrame, products: DataFrame, run_dates: DataFrame
) -> DataFrame:
    """Revenue, margin and growth per run day, scope (store or ALL) and product."""
    daily = (
        _with_margin(sales_grain, products)
        .withColumn("scope", F.explode(F.array(F.col("store_id"), F.lit(ALL))))
        .groupBy("date", "scope", "product_id")
        .agg(
            F.sum("revenue").alias("revenue"),
            F.sum("units").alias("units"),
            F.sum("gross_margin").alias("gross_margin"),
        )
    )
    growth = F.when(
        F.col("revenue_prev_7d") > 0, F.col("revenue_7d") / F.col("revenue_prev_7d") - 1
    )
    return (
        _weekly(daily, ["scope", "product_id"], run_dates)
        .join(
            F.broadcast(products.select("product_id", "product_name", "category")),
            ["product_id"],
            "left",
        )
        .select(
            "date",
            F.col("scope").alias("store_id"),
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
    )


def rank_products(performance: DataFrame, top_n: int) -> DataFrame:
    """The top and bottom ``top_n`` products per day and scope by revenue, margin and growth.

    One sort per day, scope and metric: the bottom list is the top list read from the end, so
    ties are broken by product id ascending at the top and descending at the bottom.
    """
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
        .withColumn("bottom_rank", F.count("*").over(per_metric) - F.col("top_rank") + 1)
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
    daily = (
        _with_margin(sales_grain, products)
        .groupBy("date", "store_id")
        .agg(
            F.sum("revenue").alias("revenue"),
            F.sum("units").alias("units"),
            F.sum("gross_margin").alias("gross_margin"),
        )
    )
    per_store = _weekly(daily, ["store_id"], run_dates)
    this_week = Window.partitionBy("date").orderBy(F.desc("revenue_7d"), "store_id")
    last_week = Window.partitionBy("date").orderBy(F.desc("revenue_prev_7d"), "store_id")
    had_last_week = F.col("revenue_prev_7d") > 0
    ranked = per_store.withColumn("rank", F.row_number().over(this_week)).withColumn(
        "rank_prev_week", F.when(had_last_week, F.row_number().over(last_week))
    )
    return ranked.join(F.broadcast(stores), ["store_id"], "left").select(
        "date",
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
