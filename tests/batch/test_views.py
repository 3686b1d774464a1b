"""The daily views kept on insert: same aggregates as the raw tables, no double counting of a
replayed insert, and a repair for days the views missed."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
from batch_world import RUN_DAY

from batch import views

NO_RUN = "no-quarantine-run"


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return frame.sort_values(keys).reset_index(drop=True)


def test_views_hold_the_same_daily_aggregates_as_the_raw_tables(batch_store, clean_world) -> None:
    keys = ["date", "store_id", "product_id"]
    from_view = _sorted(views.sales_grain(batch_store, RUN_DAY, RUN_DAY), keys)
    from_raw = _sorted(views.raw_sales_grain(batch_store, RUN_DAY, NO_RUN), keys)
    pd.testing.assert_frame_equal(from_view, from_raw, check_dtype=False)
    assert from_view["revenue"].sum() == 39.0
    assert from_view["line_items"].sum() == 6

    baskets = ["date", "level", "store_id", "category"]
    pd.testing.assert_frame_equal(
        _sorted(views.basket_counts(batch_store, RUN_DAY, RUN_DAY), baskets),
        _sorted(views.raw_basket_counts(batch_store, RUN_DAY, NO_RUN), baskets),
        check_dtype=False,
    )
    stock_from_view = _sorted(views.inventory_days(batch_store, RUN_DAY, RUN_DAY), keys)
    pd.testing.assert_frame_equal(
        stock_from_view,
        _sorted(views.raw_inventory_days(batch_store, RUN_DAY, NO_RUN), keys),
        check_dtype=False,
    )
    s2_bread = stock_from_view.query("store_id == 'BT-S2' and product_id == 'BT-P2'").iloc[0]
    assert (s2_bread.opening_units, s2_bread.closing_units, s2_bread.min_units) == (0, 8, 0)
    assert s2_bread.received_units == 10


def test_stock_before_a_day_is_the_last_closing_level(batch_store, clean_world) -> None:
    before = views.stock_before(batch_store, RUN_DAY).set_index(["store_id", "product_id"])
    assert before.loc[("BT-S1", "BT-P1"), "closing_units"] == 10
    assert before.loc[("BT-S2", "BT-P4"), "closing_units"] == 0
    after = views.stock_before(batch_store, RUN_DAY + timedelta(days=1))
    after = after.set_index(["store_id", "product_id"])
    assert after.loc[("BT-S1", "BT-P1"), "closing_units"] == 7
    assert after.loc[("BT-S1", "BT-P4"), "closing_units"] == 2


def test_a_replayed_insert_is_not_counted_twice(batch_store, make_world) -> None:
    day = date(2019, 9, 2)
    world = make_world("replay")
    rows = pd.DataFrame([world.sale(day, 10, "BT-S1", "BT-P1", 2)]).astype(
        {"quantity": "int32", "on_promotion": "uint8"}
    )
    for _ in range(2):
        batch_store.insert_df("sales_events", rows, dedup_token="replay-test-1")
    counts = views.daily_row_counts(batch_store, "sales_events", day, day)
    assert (counts["raw_rows"].iloc[0], counts["view_rows"].iloc[0]) == (1, 1)


def test_repair_rebuilds_the_days_the_views_missed(batch_store, make_world) -> None:
    day = date(2019, 9, 9)
    world = make_world("repair")
    world.insert_sales(
        [world.sale(day, 9, "BT-S2", "BT-P3", 4), world.sale(day, 17, "BT-S1", "BT-P2", 1)]
    )
    batch_store.execute(
        "DELETE FROM sales_daily WHERE sale_date = {day:Date}", views.day_params(day)
    )
    assert views.daily_row_counts(batch_store, "sales_events", day, day)["view_rows"].iloc[0] == 0

    assert views.repair_daily_views(batch_store, day - timedelta(days=1), day) == [day]
    grain = views.sales_grain(batch_store, day, day)
    assert sorted(zip(grain["product_id"], grain["units"], grain["revenue"], strict=True)) == [
        ("BT-P2", 1, 3.0),
        ("BT-P3", 4, 20.0),
    ]
    assert views.repair_daily_views(batch_store, day - timedelta(days=1), day) == []
