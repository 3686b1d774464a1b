"""The KPI and ranking transforms on hand-made grains, against values worked out by hand."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest
from batch_world import EXPECTED_KPIS, RUN_DAY
from pyspark.sql import DataFrame
from pyspark.sql.types import StructType
from pyspark.testing import assertDataFrameEqual

from batch import kpis, rankings

pytestmark = pytest.mark.spark

D1, D2 = date(2021, 1, 4), date(2021, 1, 5)
PAIRS = [(s, p) for s in ("BT-S1", "BT-S2") for p in ("BT-P1", "BT-P2", "BT-P3", "BT-P4")]


def frame(spark, rows: list[tuple] | list[dict], schema: StructType) -> DataFrame:
    """Rows as a local Spark frame (through pandas and Arrow, no Python workers)."""
    columns = None if rows and isinstance(rows[0], dict) else schema.fieldNames()
    return kpis.frame_to_spark(spark, pd.DataFrame(rows, columns=columns), schema)


def test_stock_positions_carry_the_last_level_and_flag_stockouts(spark) -> None:
    inventory = frame(
        spark,
        [
            (D1, "S", "A", 2, 4, 1, 1, 0),  # sells down to 1, carried to D2
            (D2, "S", "B", 1, 3, 0, 0, 0),  # sells out on D2
            (D2, "S", "D", 1, 0, 5, 0, 5),  # first seen on D2: restocked from 0
        ],
        kpis.INVENTORY_DAYS_SCHEMA,
    )
    before = frame(spark, [("S", "B", 3), ("S", "C", 0), ("S", "A", 4)], kpis.STOCK_BEFORE_SCHEMA)
    run_dates = frame(spark, [(D1,), (D2,)], kpis.RUN_DATES_SCHEMA)
    positions = kpis.daily_stock_positions(inventory, before, run_dates)
    expected = frame(
        spark,
        [
            (D1, "S", "A", 4, 1, 0, 0),
            (D2, "S", "A", 1, 1, 0, 0),
            (D1, "S", "B", 3, 3, 0, 0),
            (D2, "S", "B", 3, 0, 0, 1),
            (D1, "S", "C", 0, 0, 0, 1),
            (D2, "S", "C", 0, 0, 0, 1),
            (D2, "S", "D", 0, 5, 5, 1),
        ],
        positions.schema,
    )
    assertDataFrameEqual(positions, expected)


def run_day_inputs(spark) -> dict[str, DataFrame]:
    """The hand-made world of conftest.py as daily grains (what the store's views return)."""
    day = RUN_DAY
    sales = [
        (day, "BT-S1", "bt-fruit", "BT-P1", 1, 3, 6.0),
        (day, "BT-S1", "bt-bakery", "BT-P2", 1, 1, 3.0),
        (day, "BT-S1", "bt-dairy", "BT-P3", 1, 2, 9.0),
        (day, "BT-S2", "bt-fruit", "BT-P1", 1, 5, 10.0),
        (day, "BT-S2", "bt-bakery", "BT-P2", 1, 2, 6.0),
        (day, "BT-S2", "bt-dairy", "BT-P3", 1, 1, 5.0),
    ]
    for back in range(1, 14):
        past = day - timedelta(days=back)
        apples = 1 if back >= 7 else 2
        sales += [
            (past, "BT-S1", "bt-fruit", "BT-P1", 1, apples, 2.0 * apples),
            (past, "BT-S2", "bt-bakery", "BT-P2", 1, 1, 3.0),
            (past, "BT-S2", "bt-fruit", "BT-P1", 1, 1, 2.0),
        ]
    inventory = [
        (day, "BT-S1", "BT-P1", 1, 10, 7, 7, 0),
        (day, "BT-S1", "BT-P2", 2, 1, 6, 0, 6),
        (day, "BT-S1", "BT-P3", 1, 5, 3, 3, 0),
        (day, "BT-S2", "BT-P1", 1, 5, 0, 0, 0),
        (day, "BT-S2", "BT-P2", 2, 0, 8, 0, 10),
        (day, "BT-S2", "BT-P3", 1, 4, 3, 3, 0),
    ]
    closing = [10, 1, 5, 2, 5, 0, 4, 0]
    baskets = [
        (day, "overall", "ALL", "ALL", 4, 2),
        (day, "store", "BT-S1", "ALL", 2, 1),
        (day, "store", "BT-S2", "ALL", 2, 2),
        (day, "category", "ALL", "bt-fruit", 2, 2),
        (day, "category", "ALL", "bt-bakery", 2, 1),
        (day, "category", "ALL", "bt-dairy", 2, 1),
    ]
    products = [
        ("BT-P1", "Apple", "bt-fruit", 1.2, 2.0),
        ("BT-P2", "Bread", "bt-bakery", 1.0, 3.0),
        ("BT-P3", "Cheese", "bt-dairy", 3.0, 5.0),
        ("BT-P4", "Dates", "bt-fruit", 4.0, 6.0),
    ]
    forecasts = [
        (day, "BT-S1", "BT-P1", 4.0),
        (day, "BT-S2", "BT-P1", 4.0),
        (day, "BT-S2", "BT-P2", 3.0),
    ]
    return {
        "sales": frame(spark, sales, kpis.SALES_GRAIN_SCHEMA),
        "inventory": frame(spark, inventory, kpis.INVENTORY_DAYS_SCHEMA),
        "before": frame(
            spark,
            [(s, p, c) for (s, p), c in zip(PAIRS, closing, strict=True)],
            kpis.STOCK_BEFORE_SCHEMA,
        ),
        "baskets": frame(spark, baskets, kpis.BASKET_COUNTS_SCHEMA),
        "products": frame(spark, products, kpis.PRODUCTS_SCHEMA),
        "stores": frame(
            spark, [("BT-S1", "North", "north"), ("BT-S2", "South", "south")], kpis.STORES_SCHEMA
        ),
        "forecasts": frame(spark, forecasts, kpis.FORECASTS_SCHEMA),
        "run_dates": frame(spark, [(day,)], kpis.RUN_DATES_SCHEMA),
    }


@pytest.fixture(scope="module")
def inputs(spark) -> dict[str, DataFrame]:
    return run_day_inputs(spark)


def expected_kpis(spark, schema) -> DataFrame:
    rows = [
        {"date": RUN_DAY, "level": level, "store_id": store_id, "category": category, **values}
        for (level, store_id, category), values in EXPECTED_KPIS.items()
    ]
    return frame(spark, rows, schema)


def test_daily_kpis_equal_the_hand_computed_values(spark, inputs) -> None:
    positions = kpis.daily_stock_positions(
        inputs["inventory"], inputs["before"], inputs["run_dates"]
    )
    facts = kpis.product_day_facts(
        inputs["sales"], positions, inputs["products"], inputs["forecasts"], inputs["run_dates"]
    )
    result = kpis.daily_kpis(facts, inputs["baskets"])
    assertDataFrameEqual(result, expected_kpis(spark, result.schema), rtol=1e-9)


def test_daily_kpis_without_forecasts_leave_accuracy_null(spark, inputs) -> None:
    positions = kpis.daily_stock_positions(
        inputs["inventory"], inputs["before"], inputs["run_dates"]
    )
    no_forecasts = inputs["forecasts"].limit(0)
    facts = kpis.product_day_facts(
        inputs["sales"], positions, inputs["products"], no_forecasts, inputs["run_dates"]
    )
    accuracy = kpis.daily_kpis(facts, inputs["baskets"]).select(
        "forecast_units", "forecast_wape", "forecast_bias"
    )
    assert accuracy.distinct().collect() == [(None, None, None)]


def test_product_rankings_by_revenue_margin_and_growth(spark, inputs) -> None:
    performance = rankings.product_performance(
        inputs["sales"], inputs["products"], inputs["run_dates"]
    )
    ranked = rankings.rank_products(performance, top_n=2).where("store_id = 'ALL'")
    picked = ranked.select("metric", "direction", "rank", "product_id", "value")
    expected = frame(
        spark,
        [
            ("revenue", "top", 1, "BT-P1", 16.0),
            ("revenue", "top", 2, "BT-P3", 14.0),
            ("revenue", "bottom", 1, "BT-P2", 9.0),
            ("revenue", "bottom", 2, "BT-P3", 14.0),
            ("margin", "top", 1, "BT-P1", 16.0 - 8 * 1.2),
            ("margin", "top", 2, "BT-P2", 6.0),
            ("margin", "bottom", 1, "BT-P3", 5.0),
            ("margin", "bottom", 2, "BT-P2", 6.0),
            # 7-day revenue against the 7 days before: P1 52 / 28, P2 27 / 21; P3 is new.
            ("growth", "top", 1, "BT-P1", 52 / 28 - 1),
            ("growth", "top", 2, "BT-P2", 27 / 21 - 1),
            ("growth", "bottom", 1, "BT-P2", 27 / 21 - 1),
            ("growth", "bottom", 2, "BT-P1", 52 / 28 - 1),
        ],
        picked.schema,
    )
    assertDataFrameEqual(picked, expected, rtol=1e-9)
    per_store = rankings.rank_products(performance, top_n=1).where(
        "store_id = 'BT-S1' AND metric = 'revenue' AND direction = 'top'"
    )
    assert [(r.product_id, r.value) for r in per_store.collect()] == [("BT-P3", 9.0)]


def test_store_ranking_with_week_over_week_change(spark, inputs) -> None:
    ranked = rankings.rank_stores(
        inputs["sales"], inputs["products"], inputs["stores"], inputs["run_dates"]
    )
    picked = ranked.select(
        "store_id",
        "store_name",
        "rank",
        "revenue",
        "revenue_7d",
        "revenue_prev_7d",
        "wow_change",
        "rank_prev_week",
        "rank_change",
    )
    expected = frame(
        spark,
        [
            ("BT-S2", "South", 1, 21.0, 51.0, 35.0, 51 / 35 - 1, 1, 0),
            ("BT-S1", "North", 2, 18.0, 42.0, 14.0, 2.0, 2, 0),
        ],
        picked.schema,
    )
    assertDataFrameEqual(picked, expected, rtol=1e-9)
