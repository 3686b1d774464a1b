"""The serving tests' tiny world: ids, a 14-day sales history, stored forecasts, helpers.

Sales: UNITS_PER_DAY units a day at one store from HISTORY_START to the day before ORIGIN (the first
forecast day). Stored forecasts of a version: ``scale`` x (1 + day index) units, distinct per day.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import pytest

HISTORY_START = dt.date(2025, 3, 1)
HISTORY_DAYS = 14
ORIGIN = HISTORY_START + dt.timedelta(days=HISTORY_DAYS)  # the first forecast day
FORECAST_DAYS = 14
UNITS_PER_DAY = 3
QUANTILES = {"q0.05": -1.0, "q0.1": -0.8, "q0.5": 0.0, "q0.8": 0.7, "q0.9": 1.1, "q0.95": 1.5,
             "q0.975": 1.8, "q0.99": 2.2}  # fmt: skip


@dataclass(frozen=True)
class World:
    """The ids and model names of the serving tests' world."""

    store_id: str
    other_store_id: str
    product_id: str
    demand_model: str
    stock_model: str


def wait_until(condition: Callable[[], object], timeout_s: float = 60.0, what: str = "") -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what or condition}")


def forecast_rows(world: World, version: str, scale: float) -> pd.DataFrame:
    """Stored forecasts of one version: ``scale`` x (1 + day index) units, distinct per day."""
    rows = []
    for index in range(FORECAST_DAYS):
        units = scale * (1 + index)
        rows.append(
            {
                "store_id": world.store_id,
                "product_id": world.product_id,
                "forecast_date": ORIGIN + dt.timedelta(days=index),
                "horizon_day": index + 1,
                "predicted_units": units,
                "lower_90": max(units - 1.5, 0.0),
                "upper_90": units + 2.25,
                "model_name": world.demand_model,
                "model_version": version,
            }
        )
    frame = pd.DataFrame(rows)
    frame["horizon_day"] = frame["horizon_day"].astype("uint16")
    return frame


def stores_frame(world: World) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "store_id": s,
                "name": f"store {s}",
                "city": "Lyon",
                "region": "south",
                "size_sqm": 800.0,
                "size_class": "medium",
            }  # fmt: skip
            for s in (world.store_id, world.other_store_id)
        ]
    )


def products_frame(world: World) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "product_id": world.product_id,
                "name": "oat milk",
                "category": "dairy",
                "unit_price": 2.5,
                "unit_cost": 1.2,
                "lead_time_days": 2.5,
                "case_pack": 6,
                "popularity": 1.0,
            }  # fmt: skip
        ]
    )


def sales_frame(world: World) -> pd.DataFrame:
    """UNITS_PER_DAY units a day at the test store, from HISTORY_START to the day before ORIGIN."""
    rows = []
    for index in range(HISTORY_DAYS):
        day = HISTORY_START + dt.timedelta(days=index)
        rows.append(
            {
                "event_id": f"{world.store_id}-{index}",
                "event_time": pd.Timestamp(day) + pd.Timedelta(hours=12),
                "transaction_id": f"t-{index}",
                "store_id": world.store_id,
                "customer_id": None,
                "product_id": world.product_id,
                "category": "dairy",
                "quantity": UNITS_PER_DAY,
                "unit_price": 2.5,
                "discount": 0.0,
                "total_amount": 2.5 * UNITS_PER_DAY,
                "payment_method": "card",
                "channel": "store",
                "source": "backfill",
            }
        )
    return pd.DataFrame(rows)
