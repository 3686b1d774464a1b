"""A small hand-made world for the batch tests: 2 stores, 4 products, 14 days of history.

``EXPECTED_KPIS`` holds the KPIs of the run day, worked out by hand from these rows.
"""

from __future__ import annotations

import itertools
from datetime import date, datetime, time, timedelta

import pandas as pd

RUN_DAY = date(2019, 6, 10)
MODEL_VERSION = "7"

PRODUCTS = pd.DataFrame(
    {
        "product_id": ["BT-P1", "BT-P2", "BT-P3", "BT-P4"],
        "name": ["Apple", "Bread", "Cheese", "Dates"],
        "category": ["bt-fruit", "bt-bakery", "bt-dairy", "bt-fruit"],
        "unit_price": [2.0, 3.0, 5.0, 6.0],
        "unit_cost": [1.2, 1.0, 3.0, 4.0],
        "lead_time_days": [2.0, 1.0, 3.0, 5.0],
        "case_pack": [10, 5, 6, 12],
        "popularity": [1.0, 0.8, 0.5, 0.1],
    }
)
STORES = pd.DataFrame(
    {
        "store_id": ["BT-S1", "BT-S2"],
        "name": ["North", "South"],
        "city": ["Northtown", "Southtown"],
        "region": ["north", "south"],
        "size_sqm": [800.0, 1200.0],
        "size_class": ["small", "large"],
    }
)
_PRICE = dict(zip(PRODUCTS["product_id"], PRODUCTS["unit_price"], strict=True))
_CATEGORY = dict(zip(PRODUCTS["product_id"], PRODUCTS["category"], strict=True))
_COST = dict(zip(PRODUCTS["product_id"], PRODUCTS["unit_cost"], strict=True))


class World:
    """Builds sales, inventory and forecast rows with unique ids, and inserts them."""

    def __init__(self, store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self._ids = itertools.count(1)

    def _id(self, kind: str) -> str:
        return f"{self.prefix}-{kind}-{next(self._ids):05d}"

    def sale(
        self,
        day: date,
        hour: float,
        store_id: str | None,
        product_id: str,
        quantity: int,
        *,
        transaction: str | None = None,
        customer: str | None = None,
        discount: float = 0.0,
        event_id: str | None = None,
        category: str | None = None,
    ) -> dict[str, object]:
        """One line item; the total is quantity x price x (1 - discount)."""
        price = _PRICE.get(product_id, 1.0)
        return {
            "event_id": event_id or self._id("sale"),
            "event_time": _at(day, hour),
            "transaction_id": transaction or self._id("tx"),
            "store_id": store_id or "",
            "customer_id": customer,
            "product_id": product_id,
            "category": category or _CATEGORY.get(product_id, "bt-unknown"),
            "quantity": quantity,
            "unit_price": price,
            "discount": discount,
            "total_amount": round(quantity * price * (1 - discount), 6),
            "payment_method": "card",
            "channel": "store",
            "on_promotion": 0,
            "source": "backfill",
        }

    def movement(
        self,
        day: date,
        hour: float,
        store_id: str,
        product_id: str,
        event_type: str,
        change: int,
        level: int,
    ) -> dict[str, object]:
        """One stock movement that leaves ``level`` units on hand."""
        return {
            "event_id": self._id("inv"),
            "event_time": _at(day, hour),
            "store_id": store_id,
            "product_id": product_id,
            "event_type": event_type,
            "quantity_change": change,
            "stock_level": level,
            "reorder_point": 2,
            "lead_time_days": 2.0,
            "unit_cost": _COST.get(product_id, 1.0),
            "source": "backfill",
        }

    def insert_sales(self, rows: list[dict[str, object]]) -> None:
        frame = pd.DataFrame(rows).astype({"quantity": "int32", "on_promotion": "uint8"})
        self.store.insert_df("sales_events", frame)

    def insert_movements(self, rows: list[dict[str, object]]) -> None:
        frame = pd.DataFrame(rows).astype(
            {"quantity_change": "int32", "stock_level": "int32", "reorder_point": "int32"}
        )
        self.store.insert_df("inventory_events", frame)

    def insert_forecasts(self, day: date, predicted: dict[tuple[str, str], float]) -> None:
        frame = pd.DataFrame(
            [
                {
                    "store_id": store_id,
                    "product_id": product_id,
                    "forecast_date": day,
                    "horizon_day": 1,
                    "predicted_units": units,
                    "lower_90": units / 2,
                    "upper_90": units * 2,
                    "model_name": "demand_forecaster",
                    "model_version": MODEL_VERSION,
                }
                for (store_id, product_id), units in predicted.items()
            ]
        ).astype({"horizon_day": "uint16"})
        self.store.insert_df("forecasts", frame)

    def history(self, run_day: date) -> None:
        """Sales of the 13 days before ``run_day`` and the closing stock the evening before."""
        rows = []
        for back in range(13, 0, -1):
            day = run_day - timedelta(days=back)
            rows += [
                self.sale(day, 12, "BT-S1", "BT-P1", 1 if back >= 7 else 2),
                self.sale(day, 13, "BT-S2", "BT-P2", 1),
                self.sale(day, 14, "BT-S2", "BT-P1", 1),
            ]
        self.insert_sales(rows)
        evening = run_day - timedelta(days=1)
        closing = {
            ("BT-S1", "BT-P1"): 10,
            ("BT-S1", "BT-P2"): 1,
            ("BT-S1", "BT-P3"): 5,
            ("BT-S1", "BT-P4"): 2,
            ("BT-S2", "BT-P1"): 5,
            ("BT-S2", "BT-P2"): 0,
            ("BT-S2", "BT-P3"): 4,
            ("BT-S2", "BT-P4"): 0,
        }
        self.insert_movements(
            [
                self.movement(evening, 22, s, p, "snapshot", 0, level)
                for (s, p), level in closing.items()
            ]
        )

    def clean_day(self, day: date) -> None:
        """The run day: 4 baskets, 6 line items, 8 stock movements and 3 forecasts."""
        t1, t2, t3, t4 = (self._id("tx") for _ in range(4))
        self.insert_sales(
            [
                self.sale(day, 10, "BT-S1", "BT-P1", 3, transaction=t1, customer="BT-C1"),
                self.sale(day, 10, "BT-S1", "BT-P2", 1, transaction=t1, customer="BT-C1"),
                self.sale(day, 13, "BT-S1", "BT-P3", 2, transaction=t2, discount=0.1),
                self.sale(day, 11, "BT-S2", "BT-P1", 5, transaction=t3, customer="BT-C2"),
                self.sale(day, 20.5, "BT-S2", "BT-P2", 2, transaction=t4, customer="BT-C1"),
                self.sale(day, 20.5, "BT-S2", "BT-P3", 1, transaction=t4, customer="BT-C1"),
            ]
        )
        self.insert_movements(
            [
                self.movement(day, 10, "BT-S1", "BT-P1", "sale", -3, 7),
                self.movement(day, 10, "BT-S1", "BT-P2", "sale", -1, 0),
                self.movement(day, 15, "BT-S1", "BT-P2", "restock", 6, 6),
                self.movement(day, 13, "BT-S1", "BT-P3", "sale", -2, 3),
                self.movement(day, 11, "BT-S2", "BT-P1", "sale", -5, 0),
                self.movement(day, 8, "BT-S2", "BT-P2", "restock", 10, 10),
                self.movement(day, 20.5, "BT-S2", "BT-P2", "sale", -2, 8),
                self.movement(day, 20.5, "BT-S2", "BT-P3", "sale", -1, 3),
            ]
        )
        self.insert_forecasts(
            day, {("BT-S1", "BT-P1"): 4.0, ("BT-S2", "BT-P1"): 4.0, ("BT-S2", "BT-P2"): 3.0}
        )


def _at(day: date, hour: float) -> pd.Timestamp:
    whole = int(hour)
    return pd.Timestamp(
        datetime.combine(day, time(whole, int(round((hour - whole) * 60))))
    ).tz_localize("UTC")


# The run day's KPIs, by hand. Costs: P1 1.2, P2 1.0, P3 3.0, P4 4.0.
# Stock (opening, received, closing): S1-P1 (10, 0, 7), S1-P2 (1, 6, 6) out at 10:00,
# S1-P3 (5, 0, 3), S1-P4 (2, 0, 2) carried, S2-P1 (5, 0, 0) out, S2-P2 (0, 10, 8) out at opening,
# S2-P3 (4, 0, 3), S2-P4 (0, 0, 0) carried and out.
# Average inventory at cost ((opening + closing) / 2 x cost): S1 10.2 + 3.5 + 12 + 8 = 33.7,
# S2 3.0 + 4 + 10.5 + 0 = 17.5. Cost of the units sold in the 7 days to the run day:
# S1-P1 15 x 1.2, S1-P2 1.0, S1-P3 6.0; S2-P1 11 x 1.2, S2-P2 8.0, S2-P3 3.0.
# Forecast units (actual): S1-P1 4 (3), S2-P1 4 (5), S2-P2 3 (2).
EXPECTED_KPIS = {
    ("overall", "ALL", "ALL"): {
        "revenue": 39.0,
        "units": 14,
        "transactions": 4,
        "avg_order_value": 9.75,
        "unique_customers": 2,
        "cogs": 21.6,
        "gross_margin": 17.4,
        "gross_margin_pct": 17.4 / 39,
        "opening_stock_units": 27,
        "received_units": 16,
        "closing_stock_units": 29,
        "sell_through": 14 / 43,
        "stockout_days": 4,
        "tracked_days": 8,
        "stockout_rate": 0.5,
        "inventory_value": 48.4,
        "inventory_turnover": 21.6 * 365 / 51.2,
        "days_of_supply": 48.4 / (49.2 / 7),
        "forecast_units": 11.0,
        "forecast_actual_units": 10.0,
        "forecast_wape": 0.3,
        "forecast_bias": 0.1,
    },
    ("store", "BT-S1", "ALL"): {
        "revenue": 18.0,
        "units": 6,
        "transactions": 2,
        "avg_order_value": 9.0,
        "unique_customers": 1,
        "cogs": 10.6,
        "gross_margin": 7.4,
        "gross_margin_pct": 7.4 / 18,
        "opening_stock_units": 18,
        "received_units": 6,
        "closing_stock_units": 18,
        "sell_through": 6 / 24,
        "stockout_days": 1,
        "tracked_days": 4,
        "stockout_rate": 0.25,
        "inventory_value": 31.4,
        "inventory_turnover": 10.6 * 365 / 33.7,
        "days_of_supply": 31.4 / (25.0 / 7),
        "forecast_units": 4.0,
        "forecast_actual_units": 3.0,
        "forecast_wape": 1 / 3,
        "forecast_bias": 1 / 3,
    },
    ("store", "BT-S2", "ALL"): {
        "revenue": 21.0,
        "units": 8,
        "transactions": 2,
        "avg_order_value": 10.5,
        "unique_customers": 2,
        "cogs": 11.0,
        "gross_margin": 10.0,
        "gross_margin_pct": 10 / 21,
        "opening_stock_units": 9,
        "received_units": 10,
        "closing_stock_units": 11,
        "sell_through": 8 / 19,
        "stockout_days": 3,
        "tracked_days": 4,
        "stockout_rate": 0.75,
        "inventory_value": 17.0,
        "inventory_turnover": 11.0 * 365 / 17.5,
        "days_of_supply": 17.0 / (24.2 / 7),
        "forecast_units": 7.0,
        "forecast_actual_units": 7.0,
        "forecast_wape": 2 / 7,
        "forecast_bias": 0.0,
    },
    ("category", "ALL", "bt-fruit"): {
        "revenue": 16.0,
        "units": 8,
        "transactions": 2,
        "avg_order_value": 8.0,
        "unique_customers": 2,
        "cogs": 9.6,
        "gross_margin": 6.4,
        "gross_margin_pct": 0.4,
        "opening_stock_units": 17,
        "received_units": 0,
        "closing_stock_units": 9,
        "sell_through": 8 / 17,
        "stockout_days": 2,
        "tracked_days": 4,
        "stockout_rate": 0.5,
        "inventory_value": 16.4,
        "inventory_turnover": 9.6 * 365 / 21.2,
        "days_of_supply": 16.4 / (31.2 / 7),
        "forecast_units": 8.0,
        "forecast_actual_units": 8.0,
        "forecast_wape": 0.25,
        "forecast_bias": 0.0,
    },
    ("category", "ALL", "bt-bakery"): {
        "revenue": 9.0,
        "units": 3,
        "transactions": 2,
        "avg_order_value": 4.5,
        "unique_customers": 1,
        "cogs": 3.0,
        "gross_margin": 6.0,
        "gross_margin_pct": 6 / 9,
        "opening_stock_units": 1,
        "received_units": 16,
        "closing_stock_units": 14,
        "sell_through": 3 / 17,
        "stockout_days": 2,
        "tracked_days": 2,
        "stockout_rate": 1.0,
        "inventory_value": 14.0,
        "inventory_turnover": 3.0 * 365 / 7.5,
        "days_of_supply": 14.0 / (9.0 / 7),
        "forecast_units": 3.0,
        "forecast_actual_units": 2.0,
        "forecast_wape": 0.5,
        "forecast_bias": 0.5,
    },
    ("category", "ALL", "bt-dairy"): {
        "revenue": 14.0,
        "units": 3,
        "transactions": 2,
        "avg_order_value": 7.0,
        "unique_customers": 1,
        "cogs": 9.0,
        "gross_margin": 5.0,
        "gross_margin_pct": 5 / 14,
        "opening_stock_units": 9,
        "received_units": 0,
        "closing_stock_units": 6,
        "sell_through": 3 / 9,
        "stockout_days": 0,
        "tracked_days": 2,
        "stockout_rate": 0.0,
        "inventory_value": 18.0,
        "inventory_turnover": 9.0 * 365 / 22.5,
        "days_of_supply": 18.0 / (9.0 / 7),
        "forecast_units": None,
        "forecast_actual_units": None,
        "forecast_wape": None,
        "forecast_bias": None,
    },
}
