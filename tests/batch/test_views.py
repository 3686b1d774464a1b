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
    from_views = views.Scope(days=(RUN_DAY,), run_dates=(RUN_DAY,), history_days=1)
    from_raw = views.Scope(
        days=(RUN_DAY,),
        run_dates=(RUN_DAY,),
        run_id=NO_RUN,
        raw_sales_days=(RUN_DAY,),
        raw_inventory_days=(RUN_DAY,),
        history_days=1,
    )

    def both(source, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        return tuple(
            _sorted(views.read(batch_store, source(scope), scope), keys)
            for scope in (from_views, from_raw)
        )

    keys = ["date", "store_id", "product_id"]
    view_sales, raw_sales = both(views.sales_grain_sql, keys)
    pd.testing.assert_frame_equal(view_sales, raw_sales, check_dtype=False)
    assert view_sales["revenue"].sum() == 39.0
    assert view_sales["line_items"].sum() == 6
    pd.testing.assert_frame_equal(
        *both(views.basket_counts_sql, ["date", "level", "store_id", "category"]),
        check_dtype=False,
    )
    view_stock, raw_stock = both(views.inventory_days_sql, keys)
    pd.testing.assert_frame_equal(view_stock, raw_stock, check_dtype=False)
    s2_bread = view_stock.query("store_id == 'BT-S2' and product_id == 'BT-P2'").iloc[0]
    assert (s2_bread.opening_units, s2_bread.closing_units, s2_bread.min_units) == (0, 8, 0)
    assert s2_bread.received_units == 10


def _stock_before(batch_store, day: date) -> pd.DataFrame:
    scope = views.Scope(days=(day,), run_dates=(day,))
    return views.read(batch_store, views.STOCK_BEFORE_SQL, scope).set_index(
        ["store_id", "product_id"]
    )


def test_stock_before_a_day_is_the_last_closing_level(batch_store, clean_world) -> None:
    before = _stock_before(batch_store, RUN_DAY)
    assert before.loc[("BT-S1", "BT-P1"), "closing_units"] == 10
    assert before.loc[("BT-S2", "BT-P4"), "closing_units"] == 0
    after = _stock_before(batch_store, RUN_DAY + timedelta(days=1))
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
        "DELETE FROM sales_daily_v2 WHERE sale_date = {day:Date}", views.day_params(day)
    )
    assert views.daily_row_counts(batch_store, "sales_events", day, day)["view_rows"].iloc[0] == 0

    assert views.repair_daily_views(batch_store, day - timedelta(days=1), day) == [day]
    scope = views.Scope(days=(day,), run_dates=(day,), history_days=1)
    grain = views.read(batch_store, views.sales_grain_sql(scope), scope)
    assert sorted(zip(grain["product_id"], grain["units"], grain["revenue"], strict=True)) == [
        ("BT-P2", 1, 3.0),
        ("BT-P3", 4, 20.0),
    ]
    assert views.repair_daily_views(batch_store, day - timedelta(days=1), day) == []


def test_the_migration_replaces_the_views_of_id_strings(batch_store) -> None:
    """A store from before 2026-12-07 kept the distinct counts as states of the id strings in
    ``sales_daily``: the migration drops that view and its target (the repair above rebuilds the
    days from the raw table into ``sales_daily_v2``)."""
    from common.store import migrate

    batch_store.execute(
        "CREATE TABLE IF NOT EXISTS sales_daily (sale_date Date, store_id String, "
        "transactions AggregateFunction(uniqExact, String)) ENGINE = AggregatingMergeTree "
        "ORDER BY (sale_date, store_id)"
    )
    batch_store.execute(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS sales_daily_mv TO sales_daily AS "
        "SELECT toDate(event_time) AS sale_date, store_id, "
        "uniqExactState(transaction_id) AS transactions FROM sales_events "
        "GROUP BY sale_date, store_id"
    )
    assert views.table_exists(batch_store, "sales_daily_mv")

    migrate(batch_store)

    assert not views.table_exists(batch_store, "sales_daily_mv")
    assert not views.table_exists(batch_store, "sales_daily")
    assert views.table_exists(batch_store, "sales_daily_v2")
