"""The KPI and ranking queries on the hand-made world, against values worked out by hand."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from batch_world import EXPECTED_KPIS, RUN_DAY

from batch import kpis, rankings
from batch.views import Scope

D0, D1, D2 = date(2021, 1, 3), date(2021, 1, 4), date(2021, 1, 5)
RUN = Scope(days=(RUN_DAY,), run_dates=(RUN_DAY,))


def assert_rows_equal(actual: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> None:
    """Same rows (in any order); numbers within 1e-9, nulls where expected."""
    actual = actual[list(expected.columns)].sort_values(keys).reset_index(drop=True)
    expected = expected.sort_values(keys).reset_index(drop=True)
    assert len(actual) == len(expected), actual
    for column in expected.columns:
        got, want = actual[column], expected[column]
        if pd.api.types.is_numeric_dtype(want) and not pd.api.types.is_bool_dtype(want):
            np.testing.assert_allclose(
                got.astype("float64"), want.astype("float64"), rtol=1e-9, err_msg=column
            )
        else:
            assert got.astype(str).tolist() == want.astype(str).tolist(), column


@pytest.fixture(scope="module")
def stock_world(make_world):
    """A store whose stock is known before D1 (snapshots on D0) and moves on D1 and D2."""
    world = make_world("stock")
    world.insert_movements(
        [
            world.movement(D0, 22, "KP-S", "KP-A", "snapshot", 0, 4),
            world.movement(D0, 22, "KP-S", "KP-B", "snapshot", 0, 3),
            world.movement(D0, 22, "KP-S", "KP-C", "snapshot", 0, 0),
            world.movement(D1, 9, "KP-S", "KP-A", "sale", -1, 3),  # sells down to 1,
            world.movement(D1, 15, "KP-S", "KP-A", "sale", -2, 1),  # carried to D2
            world.movement(D2, 11, "KP-S", "KP-B", "sale", -3, 0),  # sells out on D2
            world.movement(D2, 8, "KP-S", "KP-D", "restock", 5, 5),  # first seen on D2
        ]
    )
    return world


def test_stock_positions_carry_the_last_level_and_flag_stockouts(batch_store, stock_world) -> None:
    scope = Scope(days=(D1, D2), run_dates=(D1, D2))
    positions = batch_store.query_df(
        f"{kpis.sources(scope, 'inventory', 'stock_before', 'positions')} "  # noqa: S608
        f"SELECT * FROM positions WHERE store_id = 'KP-S' {kpis.SQL_SETTINGS}",
        scope.params(),
    )
    positions["date"] = pd.to_datetime(positions["date"]).dt.date
    columns = ["date", "product_id", "opening", "closing", "received", "stocked_out"]
    expected = pd.DataFrame(
        [
            (D1, "KP-A", 4, 1, 0, 0),
            (D2, "KP-A", 1, 1, 0, 0),
            (D1, "KP-B", 3, 3, 0, 0),
            (D2, "KP-B", 3, 0, 0, 1),
            (D1, "KP-C", 0, 0, 0, 1),
            (D2, "KP-C", 0, 0, 0, 1),
            (D2, "KP-D", 0, 5, 5, 1),
        ],
        columns=columns,
    )
    assert_rows_equal(positions, expected, ["date", "product_id"])


def test_daily_kpis_equal_the_hand_computed_values(batch_store, clean_world) -> None:
    expected = pd.DataFrame(
        [
            {"level": level, "store_id": store_id, "category": category, **values}
            for (level, store_id, category), values in EXPECTED_KPIS.items()
        ]
    )
    result = kpis.daily_kpis(batch_store, RUN)
    assert set(pd.to_datetime(result["date"]).dt.date) == {RUN_DAY}
    assert_rows_equal(result, expected, ["level", "store_id", "category"])


def test_a_day_without_forecasts_leaves_accuracy_null(batch_store, clean_world) -> None:
    day_before = RUN_DAY - timedelta(days=1)
    result = kpis.daily_kpis(batch_store, Scope(days=(day_before,), run_dates=(day_before,)))
    assert len(result) > 0
    accuracy = result[["forecast_units", "forecast_wape", "forecast_bias"]]
    assert accuracy.isna().all().all()


def test_product_rankings_by_revenue_margin_and_growth(batch_store, clean_world) -> None:
    ranked = rankings.product_rankings(batch_store, RUN, top_n=2)
    overall = ranked[ranked["store_id"] == "ALL"]
    expected = pd.DataFrame(
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
        columns=["metric", "direction", "rank", "product_id", "value"],
    )
    assert_rows_equal(overall, expected, ["metric", "direction", "rank"])
    first_in_s1 = rankings.product_rankings(batch_store, RUN, top_n=1).query(
        "store_id == 'BT-S1' and metric == 'revenue' and direction == 'top'"
    )
    assert list(zip(first_in_s1["product_id"], first_in_s1["value"], strict=True)) == [
        ("BT-P3", 9.0)
    ]


def test_store_ranking_with_week_over_week_change(batch_store, clean_world) -> None:
    ranked = rankings.store_rankings(batch_store, RUN)
    expected = pd.DataFrame(
        [
            ("BT-S2", "South", 1, 21.0, 51.0, 35.0, 51 / 35 - 1, 1, 0),
            ("BT-S1", "North", 2, 18.0, 42.0, 14.0, 2.0, 2, 0),
        ],
        columns=[
            "store_id",
            "store_name",
            "rank",
            "revenue",
            "revenue_7d",
            "revenue_prev_7d",
            "wow_change",
            "rank_prev_week",
            "rank_change",
        ],
    )
    assert_rows_equal(ranked, expected, ["rank"])
