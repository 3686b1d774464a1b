"""Small additions to a generated world, written the way the generator writes its tables.

The training tests train on the real generator's backfill; these builders add the cases it does
not make on purpose: a store seen on one day only, a product that never sells, a tiny world with
no sales at all. Demand here is Poisson around popularity x store size x weekday x promotion x
holiday; stock follows an (s, Q) reorder policy and a stockout censors sales.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

from common.store import Store

# The main test world: the generator's backfill from START for DAYS days, plus these additions.
START = dt.date(2025, 1, 1)
DAYS = 120
STORES = 4
PRODUCTS = 15
SILENT_PRODUCT = "gQUIET"
ONE_DAY_STORE_PREFIX = "new"
ONE_DAY_STORE = "newS00"
# Training settings small enough for 2 shared cores.
TINY = {"folds": 2, "horizon": 14, "max_evals": 2, "max_trees": 30, "max_depth": 8}

WEEKDAY_FACTOR = np.array([0.85, 0.8, 0.85, 0.95, 1.15, 1.4, 1.0])  # Monday .. Sunday
PROMO_UPLIFT = 0.6
HOLIDAY_UPLIFT = 0.5


@dataclass(frozen=True)
class WorldSpec:
    """Size and shape of the world; ids get ``prefix`` so several worlds share one store."""

    prefix: str
    stores: int = 3
    products: int = 8
    days: int = 90
    start: dt.date = dt.date(2025, 1, 1)
    seed: int = 7
    silent_products: int = 0
    stockout_pressure: float = 1.0


def build_world(
    store: Store, spec: WorldSpec, products: pd.DataFrame | None = None
) -> dict[str, pd.DataFrame]:
    """Simulate ``spec`` and insert catalog, calendar, ground truth and raw events; return them.

    Pass ``products`` to open more stores in an existing world: its catalog and calendar are
    not re-inserted.
    """
    rng = np.random.default_rng(spec.seed)
    stores = _stores(spec, rng)
    new_catalog = products is None
    products = _products(spec, rng) if products is None else products
    calendar = _calendar(spec)
    truth, sales, inventory = _simulate(spec, rng, stores, products, calendar)
    with store.session():
        store.insert_df("stores", stores)
        if new_catalog:
            store.insert_df("products", products)
            store.insert_df("calendar", calendar)
        store.insert_df("ground_truth", truth)
        store.insert_df("sales_events", sales)
        store.insert_df("inventory_events", inventory)
    return {"stores": stores, "products": products, "ground_truth": truth, "sales": sales}


def _stores(spec: WorldSpec, rng: np.random.Generator) -> pd.DataFrame:
    size = rng.uniform(300, 2500, spec.stores).round()
    return pd.DataFrame(
        {
            "store_id": [f"{spec.prefix}S{i:02d}" for i in range(spec.stores)],
            "name": [f"Store {i}" for i in range(spec.stores)],
            "city": rng.choice(["Lyon", "Porto", "Graz"], spec.stores),
            "region": rng.choice(["north", "south"], spec.stores),
            "size_sqm": size,
            "size_class": np.where(size > 1500, "large", np.where(size > 800, "medium", "small")),
        }
    )


def _products(spec: WorldSpec, rng: np.random.Generator) -> pd.DataFrame:
    popularity = np.sort(rng.lognormal(1.2, 0.9, spec.products))[::-1]
    if spec.silent_products:
        popularity[-spec.silent_products :] = 0.0
    return pd.DataFrame(
        {
            "product_id": [f"{spec.prefix}P{i:03d}" for i in range(spec.products)],
            "name": [f"Product {i}" for i in range(spec.products)],
            "category": rng.choice(["grocery", "drinks", "home"], spec.products),
            "unit_price": rng.uniform(1.5, 25, spec.products).round(2),
            "unit_cost": rng.uniform(1.0, 10, spec.products).round(2),
            "lead_time_days": rng.integers(2, 6, spec.products).astype(float),
            "case_pack": rng.choice([6, 12, 24], spec.products).astype("int32"),
            "popularity": popularity,
        }
    )


def _calendar(spec: WorldSpec) -> pd.DataFrame:
    dates = pd.date_range(spec.start, periods=spec.days, freq="D")
    holiday = (dates.day == 1) | ((dates.month == 5) & (dates.day == 8))
    return pd.DataFrame(
        {
            "date": dates.date,
            "is_holiday": holiday.astype("uint8"),
            "holiday_name": np.where(holiday, "holiday", ""),
            "day_of_week": (dates.dayofweek + 1).astype("uint8"),
        }
    )


def _simulate(
    spec: WorldSpec,
    rng: np.random.Generator,
    stores: pd.DataFrame,
    products: pd.DataFrame,
    calendar: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    n_s, n_p = len(stores), len(products)
    size_factor = (stores["size_sqm"].to_numpy() / 1000.0) ** 0.5
    base = np.outer(size_factor, products["popularity"].to_numpy())
    lead = products["lead_time_days"].to_numpy().astype(int)
    price = products["unit_price"].to_numpy()
    daily_mean = base * WEEKDAY_FACTOR.mean()
    reorder_point = np.ceil(daily_mean * (lead + 1) / spec.stockout_pressure)
    order_qty = np.ceil(daily_mean * 7 + 1)
    stock = np.ceil(daily_mean * 10).astype(int)
    pipeline: dict[int, np.ndarray] = {}
    truth_rows, sales_rows, inventory_rows = [], [], []
    for t, day in enumerate(calendar.itertuples(index=False)):
        promo = rng.random((n_s, n_p)) < 0.08
        discount = np.where(promo, 0.25, 0.0)
        mean = (
            base
            * WEEKDAY_FACTOR[day.day_of_week - 1]
            * (1 + PROMO_UPLIFT * promo)
            * (1 + HOLIDAY_UPLIFT * day.is_holiday)
        )
        demand = rng.poisson(mean)
        opening = stock.copy()
        receipts = pipeline.pop(t, np.zeros((n_s, n_p), dtype=int))
        available = opening + receipts
        sold = np.minimum(demand, available)
        closing = available - sold
        out = (demand > available) | (closing == 0)
        ordering = (closing <= reorder_point) & ~_on_order(pipeline, n_s, n_p)
        for j in range(n_p):
            due = pipeline.setdefault(t + lead[j], np.zeros((n_s, n_p), dtype=int))
            due[:, j] += np.where(ordering[:, j], order_qty[:, j], 0).astype(int)
        stock = closing
        event_time = pd.Timestamp(day.date) + pd.Timedelta(hours=20)
        for s in range(n_s):
            for p in range(n_p):
                store_id, product_id = stores.store_id[s], products.product_id[p]
                truth_rows.append(
                    (day.date, store_id, product_id, mean[s, p], demand[s, p], sold[s, p],
                     demand[s, p] - sold[s, p], mean[s, p], int(promo[s, p]), price[p],
                     discount[s, p], opening[s, p], receipts[s, p], 0, 0, closing[s, p],
                     int(out[s, p]))
                )  # fmt: skip
                if sold[s, p] > 0:
                    amount = sold[s, p] * price[p] * (1 - discount[s, p])
                    sales_rows.append(
                        (_event_id(rng), event_time,
                         f"T{t}-{s}-{p}", store_id, None, product_id, "grocery", int(sold[s, p]),
                         float(price[p]), float(discount[s, p]), round(float(amount), 2), "card",
                         "store", int(promo[s, p]), "backfill")
                    )  # fmt: skip
                inventory_rows.append(
                    (_event_id(rng), event_time + pd.Timedelta(hours=3), store_id, product_id,
                     "snapshot", 0, int(closing[s, p]), int(reorder_point[s, p]),
                     float(lead[p]), 1.0, "backfill")
                )  # fmt: skip
    truth = pd.DataFrame(
        truth_rows,
        columns=[
            "date", "store_id", "product_id", "expected_demand", "true_demand", "sales_units",
            "lost_sales", "noise_variance", "on_promotion", "unit_price", "discount",
            "opening_stock", "receipts", "shrinkage", "adjustments", "closing_stock", "stockout",
        ],
    )  # fmt: skip
    int_columns = ["true_demand", "sales_units", "lost_sales", "opening_stock", "receipts",
                   "shrinkage", "adjustments", "closing_stock"]  # fmt: skip
    truth[int_columns] = truth[int_columns].astype("int32")
    truth[["on_promotion", "stockout"]] = truth[["on_promotion", "stockout"]].astype("uint8")
    sales = pd.DataFrame(
        sales_rows,
        columns=[
            "event_id", "event_time", "transaction_id", "store_id", "customer_id", "product_id",
            "category", "quantity", "unit_price", "discount", "total_amount", "payment_method",
            "channel", "on_promotion", "source",
        ],
    )  # fmt: skip
    sales["quantity"] = sales["quantity"].astype("int32")
    sales["on_promotion"] = sales["on_promotion"].astype("uint8")
    inventory = pd.DataFrame(
        inventory_rows,
        columns=[
            "event_id", "event_time", "store_id", "product_id", "event_type", "quantity_change",
            "stock_level", "reorder_point", "lead_time_days", "unit_cost", "source",
        ],
    )  # fmt: skip
    return truth, sales, inventory


def _on_order(pipeline: dict[int, np.ndarray], n_s: int, n_p: int) -> np.ndarray:
    pending = np.zeros((n_s, n_p), dtype=bool)
    for due in pipeline.values():
        pending |= due > 0
    return pending


def _event_id(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16)))


def add_silent_product(
    store: Store, store_ids: list[str], product_id: str, start: dt.date, days: int
) -> None:
    """A product on the shelf of ``store_ids`` every day (stock snapshots) that never sells."""
    product = pd.DataFrame(
        [
            {
                "product_id": product_id,
                "name": "Never sold",
                "category": "Garden",
                "unit_price": 19.9,
                "unit_cost": 9.5,
                "lead_time_days": 3.0,
                "case_pack": 6,
                "popularity": 0.0,
            }
        ]
    )
    product["case_pack"] = product["case_pack"].astype("int32")
    rng = np.random.default_rng(11)
    snapshots = pd.DataFrame(
        [
            (_event_id(rng), pd.Timestamp(start + dt.timedelta(days=d)) + pd.Timedelta(hours=23),
             store_id, product_id, "snapshot", 0, 12, 4, 3.0, 9.5, "backfill")
            for store_id in store_ids
            for d in range(days)
        ],
        columns=[
            "event_id", "event_time", "store_id", "product_id", "event_type", "quantity_change",
            "stock_level", "reorder_point", "lead_time_days", "unit_cost", "source",
        ],
    )  # fmt: skip
    with store.session():
        store.insert_df("products", product)
        store.insert_df("inventory_events", snapshots)


@contextmanager
def tracking_at(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API and clients at ``uri`` for a block, then restore it and the
    active experiment: one set in the block names an id of this server, which a test run later
    against another server would otherwise start its runs in."""
    import mlflow
    from mlflow.tracking import fluent

    previous = mlflow.get_tracking_uri()
    # MLflow has no public way to unset the active experiment: its global and its variable.
    experiment = (fluent._active_experiment_id, os.environ.get("MLFLOW_EXPERIMENT_ID"))
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        fluent._active_experiment_id = experiment[0]
        if experiment[1] is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = experiment[1]
