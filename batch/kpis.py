"""Daily KPIs as ClickHouse SQL over the daily views.

The views reduce raw events to one row per day, store and product on insert (and keep mergeable
states of the distinct counts of transactions and customers, which do not add up). The queries
here add stock positions, costs and forecasts to those grains and roll them up per store, per
category and overall, inside the store: only the KPI rows leave it.

Definitions (per day and level):
    revenue, units         sums of the sales line items
    transactions           distinct transaction ids; avg_order_value = revenue / transactions
    unique_customers       distinct known customer ids (both merged from the view's states of
                           64-bit id hashes: see common/sql/050_batch.sql)
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

from batch import views
from batch.views import Scope
from common.store import Store

ALL = "ALL"
UNKNOWN_CATEGORY = "unknown"
DAYS_PER_YEAR = 365
SUPPLY_WINDOW_DAYS = 7
# A left join leaves NULL (not the type's default) where nothing matched, as in standard SQL.
SQL_SETTINGS = "SETTINGS join_use_nulls = 1"

RUN_DATES = views.dates("run_dates")


_STOCK_POSITIONS = """
    SELECT date, store_id, product_id,
           coalesce(closing_that_day, carried_units) AS closing,
           coalesce(opening_that_day, carried_units, closing) AS opening,
           coalesce(received_that_day, 0) AS received,
           toInt64(least(opening, coalesce(min_that_day, closing), closing) <= 0) AS stocked_out
    FROM (
        SELECT store_id, product_id,
               arrayMap(n -> {first:Date} - 1 + n,
                   range(toUInt32(dateDiff('day', {first:Date}, {last:Date}) + 2))) AS days,
               arrayMap(day -> indexOf(moves.1, day), days) AS moved_at,
               arrayMap(i -> moves[i].2, moved_at) AS opening_by_day,
               arrayMap(i -> moves[i].3, moved_at) AS closing_by_day,
               arrayMap(i -> moves[i].4, moved_at) AS min_by_day,
               arrayMap(i -> moves[i].5, moved_at) AS received_by_day,
               arrayPopBack(arrayPushFront(
                   arrayFill(units -> units IS NOT NULL, closing_by_day), NULL)) AS carried_by_day
        FROM (
            -- Tuples: groupArray would skip a NULL on its own, and the days would shift. Nullable
            -- units: a day without a movement (index 0) reads NULL, not 0.
            SELECT store_id, product_id,
                   groupArray((date, toNullable(opening_units), toNullable(closing_units),
                               toNullable(min_units), toNullable(received_units))) AS moves
            FROM (
                SELECT date, store_id, product_id, opening_units, closing_units, min_units,
                       received_units
                FROM inventory
                UNION ALL
                SELECT {first:Date} - 1, store_id, product_id, NULL, closing_units, NULL, NULL
                FROM stock_before
            )
            GROUP BY store_id, product_id
        )
    )
    ARRAY JOIN days AS date, closing_by_day AS closing_that_day,
               opening_by_day AS opening_that_day, min_by_day AS min_that_day,
               received_by_day AS received_that_day, carried_by_day AS carried_units
    WHERE date >= {first:Date} AND closing IS NOT NULL
"""
"""Opening, closing and received units and a stockout flag per day, store and product. Days
without a stock movement carry the last known closing stock forward (from before the first day
too); a pair enters the grid from its first known position on. Each pair's days are laid out as
arrays from the day before the first (the closing stock known before it) to the last, and the
carried stock is the last known closing before each day (``arrayFill``): a pass over arrays, not a
join of the days with the movements and a window function over the result (half the time at
300,000 store x product days)."""


_SALES_WINDOWS = f"""
    SELECT run_date AS date, store_id, product_id,
           sumIfOrNull(sold, sale_date = run_date) AS units,
           sumIfOrNull(takings, sale_date = run_date) AS revenue,
           sum(sold) AS window_units,
           nullIf(anyIf(category, sale_date = run_date), '') AS sales_category
    FROM (
        SELECT date AS sale_date, store_id, product_id, category, units AS sold,
               revenue AS takings,
               arrayJoin(arrayFilter(d -> has({RUN_DATES}, d),
                   arrayMap(n -> sale_date + n, range({SUPPLY_WINDOW_DAYS})))) AS run_date
        FROM sales
    )
    GROUP BY run_date, store_id, product_id
"""  # noqa: S608 - constant fragments
"""Per run day, store and product: the day's sales and the units of the supply window."""

_FACTS = f"""
    SELECT grouped.*, coalesce(catalog.category, grouped.sales_category, '{UNKNOWN_CATEGORY}')
               AS category,
           catalog.unit_cost AS unit_cost,
           coalesce(grouped.units, 0) AS units_sold,
           closing_units IS NOT NULL AS tracked,
           forecast_units IS NOT NULL AS forecast
    FROM (
        SELECT date, store_id, product_id, any(sales_category) AS sales_category,
               sum(units) AS units, sum(revenue) AS revenue, sum(window_units) AS window_units,
               max(opening) AS opening_units, max(received) AS received_units,
               max(closing) AS closing_units, max(stocked_out) AS stocked_out,
               max(forecast_units) AS forecast_units
        FROM (
            SELECT date, store_id, product_id, sales_category, units, revenue, window_units,
                   NULL AS opening, NULL AS received, NULL AS closing, NULL AS stocked_out,
                   NULL AS forecast_units
            FROM sales_windows
            UNION ALL
            SELECT date, store_id, product_id, NULL, NULL, NULL, NULL,
                   opening, received, closing, stocked_out, NULL
            FROM positions WHERE has({RUN_DATES}, date)
            UNION ALL
            SELECT date, store_id, product_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                   forecast_units
            FROM forecasts WHERE has({RUN_DATES}, date)
        )
        GROUP BY date, store_id, product_id
        HAVING units IS NOT NULL OR closing_units IS NOT NULL OR forecast_units IS NOT NULL
    ) AS grouped
    LEFT JOIN products AS catalog ON catalog.product_id = grouped.product_id
"""  # noqa: S608 - constant fragments
"""One row per run day, store and product that sold, held stock or was forecast. The three
sources are stacked and grouped once instead of outer-joined."""

_ROLLUP = f"""
    SELECT date, level_key.1 AS level, level_key.2 AS store_key, level_key.3 AS category_key,
           sum(coalesce(revenue, 0)) AS revenue_sum,
           sum(units_sold) AS units_sum,
           sum(units_sold * unit_cost) AS cogs_sum,
           sum(opening_units) AS opening_sum,
           sum(received_units) AS received_sum,
           sum(closing_units) AS closing_sum,
           sum(if(tracked, units_sold, NULL)) AS tracked_units,
           sum(if(tracked, units_sold * unit_cost, NULL)) AS tracked_cogs,
           sum(if(tracked, coalesce(window_units, 0) * unit_cost, NULL)) AS tracked_cogs_window,
           sum(stocked_out) AS stockout_sum,
           sum(toInt64(tracked)) AS tracked_sum,
           sum(closing_units * unit_cost) AS inventory_value_sum,
           sum((opening_units + closing_units) / 2 * unit_cost) AS average_inventory_value,
           sum(forecast_units) AS forecast_sum,
           sum(if(forecast, units_sold, NULL)) AS forecast_actual_sum,
           sum(if(forecast, abs(forecast_units - units_sold), NULL)) AS forecast_abs_error
    FROM facts
    ARRAY JOIN [('overall', '{ALL}', '{ALL}'), ('store', store_id, '{ALL}'),
                ('category', '{ALL}', category)] AS level_key
    GROUP BY date, level, store_key, category_key
"""  # noqa: S608 - constant fragments


def _ratio(numerator: str, denominator: str) -> str:
    return f"if(({denominator}) != 0, ({numerator}) / ({denominator}), NULL)"


_KPI_COLUMNS = f"""
    rolled.date AS date, rolled.level AS level, rolled.store_key AS store_id,
    rolled.category_key AS category,
    toFloat64(revenue_sum) AS revenue,
    toInt64(units_sum) AS units,
    toInt64(coalesce(baskets.transactions, 0)) AS transactions,
    {_ratio("revenue_sum", "transactions")} AS avg_order_value,
    toInt64(coalesce(baskets.unique_customers, 0)) AS unique_customers,
    toFloat64(coalesce(cogs_sum, 0)) AS cogs,
    revenue_sum - cogs AS gross_margin,
    {_ratio("gross_margin", "revenue_sum")} AS gross_margin_pct,
    toInt64(coalesce(opening_sum, 0)) AS opening_stock_units,
    toInt64(coalesce(received_sum, 0)) AS received_units,
    toInt64(coalesce(closing_sum, 0)) AS closing_stock_units,
    {_ratio("tracked_units", "opening_sum + received_sum")} AS sell_through,
    toInt64(coalesce(stockout_sum, 0)) AS stockout_days,
    toInt64(coalesce(tracked_sum, 0)) AS tracked_days,
    {_ratio("stockout_sum", "tracked_sum")} AS stockout_rate,
    toFloat64(coalesce(inventory_value_sum, 0)) AS inventory_value,
    {_ratio(f"tracked_cogs * {DAYS_PER_YEAR}", "average_inventory_value")} AS inventory_turnover,
    {_ratio("inventory_value_sum", f"tracked_cogs_window / {SUPPLY_WINDOW_DAYS}")}
        AS days_of_supply,
    toNullable(toFloat64(forecast_sum)) AS forecast_units,
    toNullable(toFloat64(forecast_actual_sum)) AS forecast_actual_units,
    {_ratio("forecast_abs_error", "forecast_actual_sum")} AS forecast_wape,
    {_ratio("forecast_sum - forecast_actual_sum", "forecast_actual_sum")} AS forecast_bias
"""


def sources(scope: Scope, *names: str) -> str:
    """A WITH clause naming the scope's sources (in order, later ones may use earlier ones)."""
    known = {
        "sales": lambda: views.sales_grain_sql(scope),
        "inventory": lambda: views.inventory_days_sql(scope),
        "stock_before": lambda: views.STOCK_BEFORE_SQL,
        "positions": lambda: _STOCK_POSITIONS,
        "products": lambda: views.PRODUCTS_SQL,
        "stores": lambda: views.STORES_SQL,
        "forecasts": lambda: views.FORECASTS_SQL,
        "baskets": lambda: views.basket_counts_sql(scope),
        "sales_windows": lambda: _SALES_WINDOWS,
        "facts": lambda: _FACTS,
    }
    return "WITH " + ",\n".join(f"{name} AS ({known[name]()})" for name in names)


def daily_kpis(store: Store, scope: Scope) -> pd.DataFrame:
    """The KPI rows of every run day: one overall, one per store and one per category."""
    with_clause = sources(
        scope,
        "sales",
        "inventory",
        "stock_before",
        "positions",
        "products",
        "forecasts",
        "baskets",
        "sales_windows",
        "facts",
    )
    sql = f"""
    {with_clause}
    SELECT {_KPI_COLUMNS}
    FROM ({_ROLLUP}) AS rolled
    LEFT JOIN baskets ON baskets.date = rolled.date AND baskets.level = rolled.level
        AND baskets.store_id = rolled.store_key AND baskets.category = rolled.category_key
    ORDER BY date, level, store_id, category
    {SQL_SETTINGS}
    """  # noqa: S608 - constant fragments, values bound
    return store.query_df(sql, scope.params())


def daily_trend(store: Store, scope: Scope) -> pd.DataFrame:
    """Revenue and units per day of the history and the days, with the champion's forecast
    beside the actual units of the pairs it forecast (for the report's charts)."""
    sql = f"""
    {sources(scope, "sales", "forecasts")}
    SELECT date, toFloat64(sum(coalesce(takings, 0))) AS revenue,
           toInt64(sum(coalesce(sold, 0))) AS units,
           toNullable(toFloat64(sum(forecast))) AS forecast_units,
           toNullable(toFloat64(sum(if(forecast IS NOT NULL, coalesce(sold, 0), NULL))))
               AS forecast_actual_units
    FROM (
        SELECT date, store_id, product_id, sum(units) AS sold, sum(revenue) AS takings,
               max(forecast_units) AS forecast
        FROM (
            SELECT date, store_id, product_id, units, revenue, NULL AS forecast_units FROM sales
            UNION ALL
            SELECT date, store_id, product_id, NULL, NULL, forecast_units FROM forecasts
        )
        GROUP BY date, store_id, product_id
    )
    GROUP BY date
    ORDER BY date
    {SQL_SETTINGS}
    """  # noqa: S608 - constant fragments, values bound
    return store.query_df(sql, scope.params())
