"""What the API answers from: the store's serving tables, held in memory and re-read on change.

A request never waits for the store (the embedded store opens and closes its directory under a
lock for every operation, 30-300 ms). The store reader (:mod:`serving.reader`) asks the store one
cheap question per cycle, a fingerprint of each table's active parts (``system.parts``), and
re-reads only the tables whose parts changed since the last read (an insert or a merge makes a
new part): :func:`read_changed_frames`. The API folds what it sends into a new immutable
:class:`ServingData`: :func:`apply_read`. Every table is read with ``FINAL`` (the serving tables
are ReplacingMergeTrees), so a newer forecast of a day replaces the older one whatever model
version wrote it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa

from common.store import Store

log = logging.getLogger(__name__)

Key = tuple[str, str]

# What a table holds, by partition: its first and last insert blocks and its newest mutation
# (a DELETE). Background merges rename the parts but keep these, so they read as no change.
FINGERPRINTS_SQL = """
SELECT table, toString(cityHash64(arraySort(groupArray(
    (partition_id, first_block, last_block, mutation))))) AS fingerprint
FROM (
    SELECT table, partition_id,
        min(min_block_number) AS first_block, max(max_block_number) AS last_block,
        max(if(data_version != min_block_number, data_version, 0)) AS mutation
    FROM system.parts
    WHERE active AND database = currentDatabase()
    GROUP BY table, partition_id
)
GROUP BY table
"""
EXISTING_TABLES_SQL = "SELECT name FROM system.tables WHERE database = currentDatabase()"

FORECASTS_SQL = """
SELECT store_id, product_id, forecast_date, horizon_day, predicted_units, lower_90, upper_90,
       model_version, created_at
FROM forecasts FINAL
WHERE model_name = {model:String}
ORDER BY store_id, product_id, forecast_date
"""
STORES_SQL = "SELECT store_id FROM stores FINAL"
PRODUCTS_SQL = """
SELECT product_id, name, toFloat64(lead_time_days) AS lead_time_days, case_pack,
       toFloat64(unit_cost) AS unit_cost
FROM products FINAL
"""
STOCK_LEVELS_SQL = """
SELECT store_id, product_id, stock_level, event_time AS observed_at, lead_time_days
FROM stock_levels FINAL
"""
# The level of each pair's latest event: the level of a pair the inventory job has not written
# (one known from the backfill alone). A scan of the events: read every EVENT_LEVELS_EVERY_S.
EVENT_LEVELS_SQL = """
SELECT store_id, product_id, argMax(stock_level, event_time) AS stock_level,
       max(event_time) AS observed_at, argMax(lead_time_days, event_time) AS lead_time_days
FROM inventory_events
GROUP BY store_id, product_id
"""
EVENT_LEVELS_EVERY_S = 300.0
# Answered from the parts' min/max index (no scan): when the newest sale is on a day after the
# forecasts' first day, they are out of date (ServingState rolls them forward).
LATEST_SALE_SQL = "SELECT max(event_time) AS latest FROM sales_events"
RECOMMENDATIONS_SQL = """
SELECT store_id, product_id, as_of, forecast_date, stock_level, lead_time_days,
       lead_time_demand, daily_demand, safety_stock, reorder_point, order_up_to, order_quantity,
       reorder_now, days_of_cover, eta_hours, stockout_eta, service_level, stock_model_name,
       stock_model_version, demand_model_name, demand_model_version, scored_at
FROM stock_recommendations FINAL
"""
OPEN_ALERTS_SQL = """
SELECT alert_id, store_id, product_id, alert_type, severity, peak_severity, status, opened_at,
       updated_at, reason, stock_level, reorder_point, threshold, eta_hours, stockout_eta,
       model_name, model_version
FROM stock_alerts FINAL
WHERE status = 'open'
ORDER BY updated_at DESC
"""
RECENT_ANOMALIES_SQL = """
SELECT toDateTime64(window_start, 0, 'UTC') AS window_start,
       toDateTime64(window_end, 0, 'UTC') AS window_end,
       store_id, metric, observed, expected, score, direction, severity, reason, model_name,
       model_version
FROM sales_anomalies
WHERE window_end >= now() - INTERVAL 7 DAY
ORDER BY window_end DESC
"""  # the week /sales-anomalies can ask for (MAX_ANOMALY_HOURS); times as Arrow timestamps
PROMOTIONS_SQL = """
SELECT model_name, to_version, max(changed_at) AS promoted_at
FROM model_promotions FINAL
WHERE alias = 'champion' AND to_version IS NOT NULL
GROUP BY model_name, to_version
"""


class ForecastDay(NamedTuple):
    """One precomputed forecast day of a store x product (a tuple of plain values: the cyclic GC
    stops tracking it, however many the snapshot holds)."""

    date: dt.date
    horizon_day: int
    predicted_units: float
    lower_90: float
    upper_90: float
    model_version: str
    created_at: dt.datetime


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    lead_time_days: float
    case_pack: int
    unit_cost: float


@dataclass(frozen=True)
class StockLevel:
    stock_level: int
    as_of: dt.datetime
    lead_time_days: float | None


@dataclass(frozen=True)
class ServingData:
    """Everything the API answers from, as of ``read_at`` per table; replaced, never mutated
    (so the derived sets below are computed once per snapshot, on first use)."""

    forecasts: Mapping[Key, Mapping[dt.date, ForecastDay]] = field(default_factory=dict)
    stores: frozenset[str] = frozenset()
    products: Mapping[str, Product] = field(default_factory=dict)
    job_stock_levels: Mapping[Key, StockLevel] = field(default_factory=dict)
    event_stock_levels: Mapping[Key, StockLevel] = field(default_factory=dict)
    recommendations: Mapping[Key, Mapping[str, Any]] = field(default_factory=dict)
    open_alerts: tuple[Mapping[str, Any], ...] = ()
    recent_anomalies: tuple[Mapping[str, Any], ...] = ()
    promoted_at: Mapping[tuple[str, str], dt.datetime] = field(default_factory=dict)
    latest_sale_at: dt.datetime | None = None
    read_at: Mapping[str, dt.datetime] = field(default_factory=dict)
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    table_errors: Mapping[str, str] = field(default_factory=dict)
    checked_at: dt.datetime | None = None

    @cached_property
    def stock_levels(self) -> Mapping[Key, StockLevel]:
        """The inventory job's level of each pair, or its latest event's when the job has
        written none (a pair known from the backfill alone)."""
        return {**self.event_stock_levels, **self.job_stock_levels}

    @cached_property
    def known_stores(self) -> frozenset[str]:
        """Stores in the catalog, or seen in the forecasts or the stock levels."""
        return self.stores | {k[0] for k in self.forecasts} | {k[0] for k in self.stock_levels}

    @cached_property
    def known_products(self) -> frozenset[str]:
        """Products in the catalog, or seen in the forecasts or the stock levels."""
        seen = {k[1] for k in self.forecasts} | {k[1] for k in self.stock_levels}
        return frozenset(self.products) | seen

    @cached_property
    def forecast_origin(self) -> dt.date | None:
        """The first forecast day of the latest precomputation (its horizon day 1)."""
        firsts = [
            d for days in self.forecasts.values() for d, f in days.items() if f.horizon_day == 1
        ]
        return max(firsts) if firsts else None

    @cached_property
    def forecast_versions(self) -> dict[str, int]:
        """Rows per model version among the precomputed forecasts."""
        counts: dict[str, int] = {}
        for days in self.forecasts.values():
            for day in days.values():
                counts[day.model_version] = counts.get(day.model_version, 0) + 1
        return counts


def to_date(value: Any) -> dt.date:
    return pd.Timestamp(value).date()


def to_datetime(value: Any) -> dt.datetime | None:
    """A UTC datetime, or None for a null (NaT) value."""
    if value is None or pd.isna(value):
        return None
    stamp = pd.Timestamp(value)
    return (
        stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    ).to_pydatetime()


def to_float(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def forecasts_by_key(frame: pd.DataFrame) -> dict[Key, dict[dt.date, ForecastDay]]:
    """The forecast rows grouped per store x product, each a dict of days in date order."""
    grouped: dict[Key, dict[dt.date, ForecastDay]] = {}
    for row in frame.itertuples(index=False):
        day = ForecastDay(
            date=to_date(row.forecast_date),
            horizon_day=int(row.horizon_day),
            predicted_units=float(row.predicted_units),
            lower_90=float(row.lower_90),
            upper_90=float(row.upper_90),
            model_version=str(row.model_version),
            created_at=to_datetime(row.created_at),
        )
        grouped.setdefault((str(row.store_id), str(row.product_id)), {})[day.date] = day
    return {key: dict(sorted(days.items())) for key, days in grouped.items()}


def products_by_id(frame: pd.DataFrame) -> dict[str, Product]:
    return {
        str(r.product_id): Product(
            str(r.product_id),
            str(r.name),
            float(r.lead_time_days),
            int(r.case_pack),
            float(r.unit_cost),
        )  # fmt: skip
        for r in frame.itertuples(index=False)
    }


def stock_levels_by_key(frame: pd.DataFrame) -> dict[Key, StockLevel]:
    return {
        (str(r.store_id), str(r.product_id)): StockLevel(
            int(r.stock_level), to_datetime(r.observed_at), to_float(r.lead_time_days)
        )
        for r in frame.itertuples(index=False)
    }


def latest_moment(frame: pd.DataFrame) -> dt.datetime | None:
    """The one value of a ``max(...)`` query (1970-01-01 on an empty table)."""
    return to_datetime(frame.iat[0, 0]) if len(frame) else None


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts: timestamps as UTC datetimes, NaN/NaT as None, ids as str."""
    rows = []
    for raw in frame.to_dict(orient="records"):
        row = {}
        for name, value in raw.items():
            if isinstance(value, pd.Timestamp | dt.datetime):
                row[name] = to_datetime(value)
            elif value is None or (not isinstance(value, str) and pd.isna(value)):
                row[name] = None
            elif hasattr(value, "item"):
                row[name] = value.item()
            else:
                row[name] = value
        rows.append(row)
    return rows


def recommendations_by_key(frame: pd.DataFrame) -> dict[Key, dict[str, Any]]:
    result = {}
    for row in records(frame):
        if row.get("forecast_date") is not None:
            row["forecast_date"] = to_date(row["forecast_date"])
        result[(str(row["store_id"]), str(row["product_id"]))] = row
    return result


def promotions_by_version(frame: pd.DataFrame) -> dict[tuple[str, str], dt.datetime]:
    return {
        (str(r.model_name), str(r.to_version)): to_datetime(r.promoted_at)
        for r in frame.itertuples(index=False)
    }


@dataclass(frozen=True)
class TableReader:
    """How one table becomes part of ``ServingData``: its query and the field it fills."""

    table: str
    sql: str
    target: str
    convert: Callable[[pd.DataFrame], Any]
    every_s: float | None = None  # read on a clock instead of when the table's parts change
    parts_of: str | None = None  # the table whose parts tell a change, for a view (else ``table``)

    @property
    def parts_table(self) -> str:
        return self.parts_of or self.table


def table_readers() -> list[TableReader]:
    """The tables the API reads, in the order they are refreshed."""
    return [
        TableReader("forecasts", FORECASTS_SQL, "forecasts", forecasts_by_key),
        TableReader("stores", STORES_SQL, "stores", lambda f: frozenset(map(str, f["store_id"]))),
        TableReader("products", PRODUCTS_SQL, "products", products_by_id),
        TableReader("stock_levels", STOCK_LEVELS_SQL, "job_stock_levels", stock_levels_by_key),
        TableReader(
            "inventory_events",
            EVENT_LEVELS_SQL,
            "event_stock_levels",
            stock_levels_by_key,
            every_s=EVENT_LEVELS_EVERY_S,
        ),
        TableReader(
            "stock_recommendations", RECOMMENDATIONS_SQL, "recommendations", recommendations_by_key
        ),
        TableReader("stock_alerts", OPEN_ALERTS_SQL, "open_alerts", lambda f: tuple(records(f))),
        TableReader(
            "sales_anomalies",
            RECENT_ANOMALIES_SQL,
            "recent_anomalies",
            lambda f: tuple(records(f)),
            parts_of="sales_anomalies_versions",  # a view has no parts; the table it shows has
        ),
        TableReader("model_promotions", PROMOTIONS_SQL, "promoted_at", promotions_by_version),
        TableReader("sales_events", LATEST_SALE_SQL, "latest_sale_at", latest_moment),
    ]


@dataclass(frozen=True)
class StoreRead:
    """One look at the store: the tables whose parts changed, as Arrow tables (cheap to pickle)."""

    checked_at: dt.datetime
    tables: dict[str, pa.Table] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    store_error: str | None = None


def read_changed_frames(
    store: Store, fingerprints: Mapping[str, str], demand_model: str
) -> StoreRead:
    """Read every serving table whose parts changed since ``fingerprints`` (one store session).

    A table that is missing or fails to read is named in ``errors`` (and read again next time);
    a store that cannot be reached at all raises.
    """
    read = StoreRead(checked_at=dt.datetime.now(dt.UTC))
    with store.session():
        existing = set(store.query_df(EXISTING_TABLES_SQL)["name"].astype(str))
        parts = _fingerprints(store.query_df(FINGERPRINTS_SQL))
        for reader in table_readers():
            if not {reader.table, reader.parts_table} <= existing:
                read.errors[reader.table] = "missing: run `retail migrate`"
                continue
            fingerprint = f"{reader.table}:{parts.get(reader.parts_table, '')}"
            if reader.every_s is not None:  # read again on a clock, not on every insert
                fingerprint = (
                    f"{reader.table}:every {reader.every_s:g} s:{time.time() // reader.every_s:g}"
                )
            if fingerprints.get(reader.table) == fingerprint:
                continue
            try:
                params = {"model": demand_model} if "{model" in reader.sql else None
                read.tables[reader.table] = store.query_arrow(reader.sql, params)
            except Exception as exc:
                read.errors[reader.table] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            read.fingerprints[reader.table] = fingerprint
    return read


def apply_read(previous: ServingData, read: StoreRead) -> ServingData:
    """``previous`` with the tables of ``read`` converted and replaced."""
    changes: dict[str, Any] = {}
    read_at = dict(previous.read_at)
    errors = dict(read.errors)
    fingerprints = {**previous.fingerprints, **read.fingerprints}
    for reader in table_readers():
        table = read.tables.get(reader.table)
        if table is None:
            continue
        try:
            changes[reader.target] = reader.convert(table.to_pandas())
        except Exception as exc:
            errors[reader.table] = f"unreadable rows: {type(exc).__name__}: {exc}"[:300]
            fingerprints.pop(reader.table, None)
            continue
        read_at[reader.table] = read.checked_at
    for table, error in errors.items():
        if table not in previous.table_errors:
            log.error("could not read %s (keeping its last rows): %s", table, error)
    return replace(
        previous,
        fingerprints=fingerprints,
        read_at=read_at,
        table_errors=errors,
        checked_at=read.checked_at,
        **changes,
    )


def read_changed_tables(store: Store, previous: ServingData, demand_model: str) -> ServingData:
    """``previous`` brought up to date with the store, in this process."""
    return apply_read(previous, read_changed_frames(store, previous.fingerprints, demand_model))


def _fingerprints(frame: pd.DataFrame) -> dict[str, str]:
    return dict(zip(frame["table"].astype(str), frame["fingerprint"].astype(str), strict=True))
