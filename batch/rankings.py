"""Product and store rankings as ClickHouse SQL over the daily sales grain.

For each run day D: revenue and gross margin are D's; ``revenue_7d`` covers D-6..D and
``revenue_prev_7d`` D-13..D-7. Growth and the stores' week-over-week change compare the two.
A product is ranked in a scope (a store, or ``ALL`` stores) when it sold there in D-13..D.
"""

from __future__ import annotations

import pandas as pd

from batch.kpis import ALL, RUN_DATES, SQL_SETTINGS, UNKNOWN_CATEGORY, sources
from batch.views import Scope
from common.store import Store

WEEK_DAYS = 7


def _weekly(daily: str, keys: str) -> str:
    """Per run day and key of ``daily`` (rows of date, keys, revenue, units, gross_margin): the
    run day's figures and the revenue of the week ending it and of the week before, for the
    keys that sold in those two weeks."""
    return f"""
    SELECT run_date AS date, {keys},
           sumIf(takings, back = 0) AS revenue, toInt64(sumIf(sold, back = 0)) AS units,
           sumIf(margin, back = 0) AS gross_margin,
           sumIf(takings, back < {WEEK_DAYS}) AS revenue_7d,
           sumIf(takings, back >= {WEEK_DAYS}) AS revenue_prev_7d
    FROM (
        SELECT {keys}, revenue AS takings, units AS sold, gross_margin AS margin,
               arrayJoin(arrayFilter(n -> has({RUN_DATES}, date + n),
                                     range({2 * WEEK_DAYS}))) AS back,
               date + back AS run_date
        FROM ({daily})
    )
    GROUP BY run_date, {keys}
    """  # noqa: S608 - constant fragments


_DAILY_MARGINS = """
    SELECT sales.date AS date, sales.store_id AS store_id, sales.product_id AS product_id,
           sales.revenue AS revenue, sales.units AS units,
           sales.revenue - sales.units * coalesce(catalog.unit_cost, 0) AS gross_margin
    FROM sales LEFT JOIN products AS catalog ON catalog.product_id = sales.product_id
"""

_PRODUCT_DAILY = f"""
    SELECT date, store_id, product_id, sum(revenue) AS revenue, sum(units) AS units,
           sum(gross_margin) AS gross_margin
    FROM ({_DAILY_MARGINS})
    GROUP BY date, store_id, product_id
"""  # noqa: S608 - constant fragments

_PRODUCT_PERFORMANCE = f"""
    SELECT weekly.date AS date, weekly.scope AS store_id, weekly.product_id AS product_id,
           coalesce(catalog.product_name, weekly.product_id) AS product_name,
           coalesce(catalog.category, '{UNKNOWN_CATEGORY}') AS category,
           revenue, units, gross_margin, revenue_7d, revenue_prev_7d,
           if(revenue_prev_7d > 0, revenue_7d / revenue_prev_7d - 1, NULL) AS growth
    FROM (
        SELECT date, coalesce(store_id, '{ALL}') AS scope, product_id,
               sum(day_revenue) AS revenue, sum(day_units) AS units,
               sum(day_margin) AS gross_margin, sum(week_revenue) AS revenue_7d,
               sum(prev_week_revenue) AS revenue_prev_7d
        FROM (
            SELECT date, store_id, product_id, revenue AS day_revenue, units AS day_units,
                   gross_margin AS day_margin, revenue_7d AS week_revenue,
                   revenue_prev_7d AS prev_week_revenue
            FROM ({_weekly(_PRODUCT_DAILY, "store_id, product_id")})
        )
        GROUP BY GROUPING SETS ((date, store_id, product_id), (date, product_id))
    ) AS weekly
    LEFT JOIN products AS catalog ON catalog.product_id = weekly.product_id
"""  # noqa: S608 - constant fragments
"""Revenue, margin and growth per run day, scope (a store, or ALL stores: the stores' weekly
sums added up) and product."""

_ITEM = (
    "(value, product_id, product_name, category, revenue, units, gross_margin, revenue_7d, "
    "revenue_prev_7d)"
)


def product_rankings(store: Store, scope: Scope, top_n: int) -> pd.DataFrame:
    """The top and bottom ``top_n`` products per run day and scope by revenue, margin and growth.

    The bottom list is the top list read from the end, so ties (values equal to 6 decimals, so
    that the order of float additions cannot break them) are broken by product id ascending at
    the top and descending at the bottom.
    """
    sql = f"""
    {sources(scope, "sales", "products")}
    SELECT date, store_id, metric, direction, toUInt16(rank) AS rank,
           item.2 AS product_id, item.3 AS product_name, item.4 AS category, item.1 AS value,
           item.5 AS revenue, item.6 AS units, item.7 AS gross_margin, item.8 AS revenue_7d,
           item.9 AS revenue_prev_7d
    FROM (
        SELECT date, store_id, metric,
               arraySort(x -> (-round(x.1, 6), x.2), groupArray({_ITEM})) AS ordered
        FROM (
            SELECT *, metric_value.1 AS metric, assumeNotNull(metric_value.2) AS value
            FROM ({_PRODUCT_PERFORMANCE})
            ARRAY JOIN [('revenue', toNullable(revenue)), ('margin', toNullable(gross_margin)),
                        ('growth', growth)] AS metric_value
            WHERE metric_value.2 IS NOT NULL
        )
        GROUP BY date, store_id, metric
    )
    ARRAY JOIN ['top', 'bottom'] AS direction,
               [arraySlice(ordered, 1, {{top_n:UInt32}}),
                arrayReverse(arraySlice(ordered,
                    greatest(1, toInt64(length(ordered)) - {{top_n:UInt32}} + 1)))] AS chosen
    ARRAY JOIN chosen AS item, arrayEnumerate(chosen) AS rank
    ORDER BY date, store_id, metric, direction, rank
    {SQL_SETTINGS}, group_by_use_nulls = 1
    """  # noqa: S608 - constant fragments, values bound
    return store.query_df(sql, {**scope.params(), "top_n": top_n})


def store_rankings(store: Store, scope: Scope) -> pd.DataFrame:
    """Stores ranked per run day by their trailing 7-day revenue, with the week-over-week change
    and the rank they held on the previous week's revenue."""
    daily = f"""
        SELECT date, store_id, sum(revenue) AS revenue, sum(units) AS units,
               sum(gross_margin) AS gross_margin
        FROM ({_DAILY_MARGINS}) GROUP BY date, store_id
    """  # noqa: S608 - constant fragments
    sql = f"""
    {sources(scope, "sales", "products", "stores")}
    SELECT ranked.date AS date, ranked.store_id AS store_id,
           coalesce(shop.store_name, ranked.store_id) AS store_name,
           coalesce(shop.region, '{UNKNOWN_CATEGORY}') AS region,
           toUInt16(rank) AS rank, revenue, gross_margin, revenue_7d, revenue_prev_7d,
           if(revenue_prev_7d > 0, revenue_7d / revenue_prev_7d - 1, NULL) AS wow_change,
           if(revenue_prev_7d > 0, toUInt16(prev_rank), NULL) AS rank_prev_week,
           toInt32(rank_prev_week) - toInt32(rank) AS rank_change
    FROM (
        SELECT *,
               row_number() OVER (PARTITION BY date ORDER BY round(revenue_7d, 6) DESC, store_id)
                   AS rank,
               row_number() OVER (PARTITION BY date
                                  ORDER BY round(revenue_prev_7d, 6) DESC, store_id)
                   AS prev_rank
        FROM ({_weekly(daily, "store_id")})
    ) AS ranked
    LEFT JOIN stores AS shop ON shop.store_id = ranked.store_id
    ORDER BY date, rank
    {SQL_SETTINGS}
    """  # noqa: S608 - constant fragments, values bound
    return store.query_df(sql, scope.params())
