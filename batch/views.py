"""Reads for the daily batch: the materialized daily views first, the raw tables where they must.

``sales_daily_v2`` and ``inventory_daily`` (common/sql/050_batch.sql) are kept on insert by
materialized views, so the batch reads small daily aggregates instead of scanning raw events.
A view counts every inserted row, while the raw tables are deduplicated by ``event_id`` (read with
FINAL) and the quality gate may quarantine rows. So a day is read from the views only when the
view's row count equals the day's deduplicated row count and nothing was quarantined; otherwise
that day is aggregated from the raw table, without the quarantined rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd

from common.store import Store

log = logging.getLogger(__name__)

RAW_TABLES = {"sales": "sales_events", "inventory": "inventory_events"}
# Empty keys are how a missing value arrives in a non-nullable ClickHouse String column.
_KEY_COLUMNS = {
    "sales_events": ["event_id", "transaction_id", "store_id", "product_id", "category"],
    "inventory_events": ["event_id", "store_id", "product_id", "event_type"],
}

_SALES_DAILY_SELECT = """
SELECT
    toDate(event_time) AS sale_date,
    store_id,
    category,
    product_id,
    count() AS line_items,
    sum(toInt64(quantity)) AS units,
    sum(total_amount) AS revenue,
    uniqExactState(cityHash64(transaction_id)) AS transactions,
    uniqExactState(cityHash64(customer_id)) AS customers
FROM sales_events
WHERE toDate(event_time) = {day:Date}
GROUP BY sale_date, store_id, category, product_id
"""

_INVENTORY_DAILY_SELECT = """
SELECT
    toDate(event_time) AS movement_date,
    store_id,
    product_id,
    count() AS movements,
    argMinState(toInt64(stock_level) - quantity_change, event_time) AS opening_units,
    argMaxState(toInt64(stock_level), event_time) AS closing_units,
    min(least(toInt64(stock_level), toInt64(stock_level) - quantity_change)) AS min_units,
    sumIf(toInt64(quantity_change), event_type = 'restock') AS received_units
FROM inventory_events
WHERE toDate(event_time) = {day:Date}
GROUP BY movement_date, store_id, product_id
"""

_VIEW_COUNTS = {
    "sales_events": ("sales_daily_v2", "sale_date", "line_items"),
    "inventory_events": ("inventory_daily", "movement_date", "movements"),
}
_REBUILD = {"sales_events": _SALES_DAILY_SELECT, "inventory_events": _INVENTORY_DAILY_SELECT}


def day_params(day: date, **extra: object) -> dict[str, object]:
    """Bound parameters for a day, as ClickHouse reads them."""
    return {"day": day.isoformat(), **extra}


def table_exists(store: Store, name: str) -> bool:
    """Whether ``name`` is a table or view of the current database."""
    found = store.scalar(
        "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = {name:String}",
        {"name": name},
    )
    return bool(found)


def daily_row_counts(store: Store, raw_table: str, first: date, last: date) -> pd.DataFrame:
    """Rows per day between two dates, as inserted (raw) and as the daily view counted them."""
    view, day_column, count_column = _VIEW_COUNTS[raw_table]
    raw = store.query_df(
        f"SELECT toDate(event_time) AS date, count() AS raw_rows FROM {raw_table} "  # noqa: S608 - constant names
        "WHERE toDate(event_time) BETWEEN {first:Date} AND {last:Date} GROUP BY date",
        {"first": first.isoformat(), "last": last.isoformat()},
    )
    counted = store.query_df(
        f"SELECT {day_column} AS date, sum({count_column}) AS view_rows FROM {view} "  # noqa: S608 - constant names
        f"WHERE {day_column} BETWEEN {{first:Date}} AND {{last:Date}} GROUP BY date",
        {"first": first.isoformat(), "last": last.isoformat()},
    )
    frame = pd.DataFrame({"date": pd.date_range(first, last, freq="D").date})
    for part in (raw, counted):
        part["date"] = pd.to_datetime(part["date"]).dt.date
        frame = frame.merge(part, on="date", how="left")
    return frame.fillna(0).astype({"raw_rows": "int64", "view_rows": "int64"})


def repair_daily_views(store: Store, first: date, last: date) -> list[date]:
    """Rebuild the days whose view rows differ from the raw rows (data inserted before the views
    existed, or a view changed); return the days rebuilt."""
    rebuilt: set[date] = set()
    with store.session():
        for raw_table, select in _REBUILD.items():
            view, day_column, _ = _VIEW_COUNTS[raw_table]
            counts = daily_row_counts(store, raw_table, first, last)
            for day in counts.loc[counts["raw_rows"] != counts["view_rows"], "date"]:
                store.execute(
                    f"DELETE FROM {view} WHERE {day_column} = {{day:Date}}",  # noqa: S608 - constant names
                    day_params(day),
                )
                store.execute(f"INSERT INTO {view} {select}", day_params(day))  # noqa: S608
                rebuilt.add(day)
    if rebuilt:
        log.info("rebuilt the daily views for %s", ", ".join(str(d) for d in sorted(rebuilt)))
    return sorted(rebuilt)


def raw_events(store: Store, raw_table: str, day: date) -> pd.DataFrame:
    """One day's deduplicated raw events (FINAL), with empty keys read as null."""
    frame = store.query_df(
        f"SELECT * EXCEPT (ingested_at) FROM {raw_table} FINAL "  # noqa: S608 - constant names
        "WHERE toDate(event_time) = {day:Date} ORDER BY event_time, event_id",
        day_params(day),
    )
    for column in _KEY_COLUMNS[raw_table]:
        if column in frame.columns:
            frame[column] = frame[column].where(frame[column] != "", None)
    return frame


def latest_event_time(store: Store, raw_table: str, day: date) -> pd.Timestamp | None:
    """The newest event of the day or the day after: how far the day's data has arrived."""
    latest = store.scalar(
        f"SELECT max(event_time) FROM {raw_table} "  # noqa: S608 - constant names
        "WHERE toDate(event_time) BETWEEN {day:Date} AND {day:Date} + 1",
        day_params(day),
    )
    if latest is None or pd.isna(latest) or pd.Timestamp(latest).year <= 1970:
        return None
    return pd.Timestamp(latest).tz_convert("UTC")


def is_holiday(store: Store, day: date) -> bool:
    """The calendar marks ``day`` as a holiday (a day it does not hold is not one)."""
    return bool(
        store.scalar(
            "SELECT max(is_holiday) FROM calendar FINAL WHERE date = {day:Date}", day_params(day)
        )
    )


def first_view_day(store: Store, raw_table: str) -> date | None:
    """The first day the daily view holds data for."""
    view, day_column, _ = _VIEW_COUNTS[raw_table]
    first = store.scalar(f"SELECT min({day_column}) FROM {view}")  # noqa: S608 - constant names
    if first is None or pd.isna(first) or pd.Timestamp(first).year <= 1970:
        return None
    return pd.Timestamp(first).date()


@dataclass(frozen=True)
class Scope:
    """The days one batch computation covers, and where each day's rows come from.

    ``days`` run from the first to the last day of the range (stock positions are carried
    through all of them); ``run_dates`` are the days that passed the gate and get output rows.
    The ``raw_*_days`` are aggregated from the raw tables without ``run_id``'s quarantined rows;
    every other day is read from the views. Trailing windows reach ``history_days`` back.
    """

    days: tuple[date, ...]
    run_dates: tuple[date, ...]
    run_id: str = ""
    raw_sales_days: tuple[date, ...] = ()
    raw_inventory_days: tuple[date, ...] = ()
    history_days: int = 28

    @property
    def first(self) -> date:
        return min(self.days)

    @property
    def last(self) -> date:
        return max(self.days)

    def params(self) -> dict[str, object]:
        """The bound parameters every batch query of this scope reads."""

        def listed(days: tuple[date, ...]) -> list[str]:
            return sorted(d.isoformat() for d in days)

        return {
            "first": self.first.isoformat(),
            "last": self.last.isoformat(),
            "history_first": (self.first - timedelta(days=self.history_days - 1)).isoformat(),
            "run_dates": listed(self.run_dates),
            "raw_sales_days": listed(self.raw_sales_days),
            "raw_inventory_days": listed(self.raw_inventory_days),
            "run_id": self.run_id,
        }


def dates(name: str) -> str:
    """SQL for the Array(Date) parameter ``name`` (bound as a list of ISO dates): a constant, so
    ``has()`` over it costs no more than a set lookup per row."""
    return f"{{{name}:Array(Date)}}"


def _from_raw(dataset: str, days: str) -> str:
    """The deduplicated raw rows of the ``days`` parameter, without the run's quarantined rows."""
    return f"""
        FROM {RAW_TABLES[dataset]} FINAL
        WHERE toDate(event_time) BETWEEN {{first:Date}} AND {{last:Date}}
          AND has({dates(days)}, toDate(event_time))
          AND event_id != ''
          AND (toDate(event_time), event_id) NOT IN (
              SELECT batch_date, event_id FROM quarantine
              WHERE run_id = {{run_id:String}} AND dataset = '{dataset}')
    """  # noqa: S608 - constant fragments, values bound


def sales_grain_sql(scope: Scope) -> str:
    """Units, revenue and line items per day, store, category and product, from the history's
    first day to the last day."""
    view = f"""
        SELECT sale_date AS date, toString(store_id) AS store_id, toString(category) AS category,
               toString(product_id) AS product_id, toInt64(sum(line_items)) AS line_items,
               toInt64(sum(units)) AS units, toFloat64(sum(revenue)) AS revenue
        FROM sales_daily_v2
        WHERE sale_date BETWEEN {{history_first:Date}} AND {{last:Date}}
          AND NOT has({dates("raw_sales_days")}, sale_date)
        GROUP BY date, store_id, category, product_id
    """  # noqa: S608 - constant fragments
    if not scope.raw_sales_days:
        return view
    raw = f"""
        SELECT toDate(event_time) AS date, toString(store_id) AS store_id,
               toString(category) AS category, toString(product_id) AS product_id,
               toInt64(count()) AS line_items, sum(toInt64(quantity)) AS units,
               toFloat64(sum(total_amount)) AS revenue
        {_from_raw("sales", "raw_sales_days")}
        GROUP BY date, store_id, category, product_id
    """  # noqa: S608 - constant fragments
    return f"{view}\nUNION ALL\n{raw}"


def _basket_counts_sql(source: str, transactions: str, customers: str) -> str:
    """The three levels in one pass over ``source`` (grouping sets; a key left out is NULL)."""
    return f"""
        SELECT date,
               multiIf(grouped_store IS NULL AND grouped_category IS NULL, 'overall',
                       grouped_category IS NULL, 'store', 'category') AS level,
               toString(coalesce(grouped_store, 'ALL')) AS store_id,
               toString(coalesce(grouped_category, 'ALL')) AS category,
               toInt64({transactions}) AS transactions, toInt64({customers}) AS unique_customers
        FROM (SELECT *, sale_date AS date, store_id AS grouped_store,
                     category AS grouped_category FROM {source})
        GROUP BY GROUPING SETS ((date), (date, grouped_store), (date, grouped_category))
        SETTINGS group_by_use_nulls = 1
    """  # noqa: S608 - constant fragments


def basket_counts_sql(scope: Scope) -> str:
    """Distinct transactions and customers per day overall, per store and per category, from the
    first to the last day (distinct counts do not add up across products, so they are merged
    here from the views' states)."""
    view = _basket_counts_sql(
        "(SELECT * FROM sales_daily_v2 WHERE sale_date BETWEEN {first:Date} AND {last:Date} "  # noqa: S608
        f"AND NOT has({dates('raw_sales_days')}, sale_date))",
        "uniqExactMerge(transactions)",
        "uniqExactMerge(customers)",
    )
    if not scope.raw_sales_days:
        return view
    raw_rows = (
        "(SELECT toDate(event_time) AS sale_date, store_id, category, transaction_id, customer_id "
        f"{_from_raw('sales', 'raw_sales_days')})"
    )
    raw = _basket_counts_sql(raw_rows, "uniqExact(transaction_id)", "uniqExact(customer_id)")
    return f"{view}\nUNION ALL\n{raw}"


def inventory_days_sql(scope: Scope) -> str:
    """Opening, closing and lowest stock and units received per day, store and product, from the
    first to the last day."""
    view = f"""
        SELECT movement_date AS date, toString(store_id) AS store_id,
               toString(product_id) AS product_id, toInt64(sum(movements)) AS movements,
               argMinMerge(opening_units) AS opening_units,
               argMaxMerge(closing_units) AS closing_units,
               min(min_units) AS min_units, sum(received_units) AS received_units
        FROM inventory_daily
        WHERE movement_date BETWEEN {{first:Date}} AND {{last:Date}}
          AND NOT has({dates("raw_inventory_days")}, movement_date)
        GROUP BY date, store_id, product_id
    """  # noqa: S608 - constant fragments
    if not scope.raw_inventory_days:
        return view
    raw = f"""
        SELECT toDate(event_time) AS date, toString(store_id) AS store_id,
               toString(product_id) AS product_id, toInt64(count()) AS movements,
               argMin(toInt64(stock_level) - quantity_change, event_time) AS opening_units,
               argMax(toInt64(stock_level), event_time) AS closing_units,
               min(least(toInt64(stock_level), toInt64(stock_level) - quantity_change)) AS min_units,
               sumIf(toInt64(quantity_change), event_type = 'restock') AS received_units
        {_from_raw("inventory", "raw_inventory_days")}
        GROUP BY date, store_id, product_id
    """  # noqa: S608 - constant fragments
    return f"{view}\nUNION ALL\n{raw}"


STOCK_BEFORE_SQL = """
    SELECT store_id, product_id, argMax(closing_units, date) AS closing_units
    FROM (
        SELECT movement_date AS date, toString(store_id) AS store_id,
               toString(product_id) AS product_id, argMaxMerge(closing_units) AS closing_units
        FROM inventory_daily
        WHERE movement_date < {first:Date}
        GROUP BY date, store_id, product_id
    )
    GROUP BY store_id, product_id
"""
"""The last known closing stock of every store and product before the first day."""

PRODUCTS_SQL = """
    SELECT toString(product_id) AS product_id, toString(name) AS product_name,
           toString(category) AS category, toFloat64(unit_cost) AS unit_cost,
           toFloat64(unit_price) AS unit_price
    FROM products FINAL
"""

STORES_SQL = """
    SELECT toString(store_id) AS store_id, toString(name) AS store_name,
           toString(region) AS region
    FROM stores FINAL
"""

FORECASTS_SQL = """
    SELECT forecast_date AS date, toString(store_id) AS store_id,
           toString(product_id) AS product_id, toFloat64(predicted_units) AS forecast_units,
           toString(model_name) AS model_name, model_version
    FROM forecasts FINAL
    WHERE forecast_date BETWEEN {history_first:Date} AND {last:Date}
"""
"""The champion's stored forecasts per day, store and product, over the history and the days."""


def read(store: Store, source_select: str, scope: Scope, order_by: str = "") -> pd.DataFrame:
    """The rows of one of the sources above (SQL built from this module's constant fragments)."""
    query = f"SELECT * FROM ({source_select})" + (f" ORDER BY {order_by}" if order_by else "")  # noqa: S608
    return store.query_df(query, scope.params())


def products(store: Store) -> pd.DataFrame:
    """The product catalog (one row per product), empty when the generator has not written it."""
    if not table_exists(store, "products"):
        return pd.DataFrame(
            columns=["product_id", "product_name", "category", "unit_cost", "unit_price"]
        )
    return store.query_df(f"{PRODUCTS_SQL} ORDER BY product_id")


def stores(store: Store) -> pd.DataFrame:
    """The store catalog (one row per store), empty when the generator has not written it."""
    if not table_exists(store, "stores"):
        return pd.DataFrame(columns=["store_id", "store_name", "region"])
    return store.query_df(f"{STORES_SQL} ORDER BY store_id")


def forecasts(store: Store, scope: Scope) -> pd.DataFrame:
    """The stored forecasts of the scope's history and days; empty when there are none."""
    columns = ["date", "store_id", "product_id", "forecast_units", "model_name", "model_version"]
    if not table_exists(store, "forecasts"):
        return pd.DataFrame(columns=columns)
    return read(store, FORECASTS_SQL, scope, "date, store_id, product_id")
