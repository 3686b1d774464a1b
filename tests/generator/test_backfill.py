"""The backfill writes the world into the real (embedded) store: catalog, calendar, ground truth,
raw events and the state the stream continues from; the physics hold in SQL too."""

from __future__ import annotations

import datetime as dt

import pytest

from generator.backfill import backfill
from generator.simulate import initial_state, simulate_days
from generator.state import load_state
from generator.world import build_world

PREFIX = "gbf"
START = dt.date(2024, 3, 4)
DAYS = 120
SIZES = {"n_stores": 6, "n_products": 30, "n_customers": 300}


@pytest.fixture(scope="module")
def counts(store):
    return backfill(store, DAYS, 21, start_date=START, prefix=PREFIX, **SIZES)


def _scalar(store, sql: str, **params):
    return store.scalar(sql, {"prefix": f"{PREFIX}%", **params})


def test_backfill_counts_match_the_tables(store, counts):
    assert counts["days"] == DAYS
    assert counts["ground_truth_rows"] == DAYS * 6 * 30
    assert counts["sales_events"] > 20_000
    sales = _scalar(
        store,
        "SELECT count() FROM sales_events FINAL WHERE store_id LIKE {prefix:String} "
        "AND source = 'backfill'",
    )
    inventory = _scalar(
        store, "SELECT count() FROM inventory_events FINAL WHERE store_id LIKE {prefix:String}"
    )
    truth = _scalar(
        store, "SELECT count() FROM ground_truth FINAL WHERE store_id LIKE {prefix:String}"
    )
    assert (sales, inventory, truth) == (
        counts["sales_events"],
        counts["inventory_events"],
        counts["ground_truth_rows"],
    )
    catalog = store.query_df(
        "SELECT (SELECT count() FROM stores FINAL WHERE store_id LIKE {prefix:String}) AS s, "
        "(SELECT count() FROM products FINAL WHERE product_id LIKE {prefix:String}) AS p, "
        "(SELECT count() FROM customers FINAL WHERE customer_id LIKE {prefix:String}) AS c",
        {"prefix": f"{PREFIX}%"},
    )
    assert catalog.iloc[0].tolist() == [6, 30, 300]
    days = _scalar(
        store,
        "SELECT count() FROM calendar FINAL WHERE date BETWEEN {a:Date} AND {b:Date}",
        a=START,
        b=START + dt.timedelta(days=DAYS - 1),
    )
    assert days == DAYS


def test_rerun_with_the_same_seed_rewrites_identical_rows(store, counts):
    again = backfill(store, DAYS, 21, start_date=START, prefix=PREFIX, **SIZES)
    assert {k: again[k] for k in ("sales_events", "inventory_events")} == {
        k: counts[k] for k in ("sales_events", "inventory_events")
    }
    distinct = _scalar(
        store,
        "SELECT uniqExact(event_id) FROM sales_events WHERE store_id LIKE {prefix:String}",
    )
    assert distinct == counts["sales_events"]


def test_worlds_that_differ_only_by_prefix_are_both_written(store):
    tiny = {"n_stores": 1, "n_products": 3, "n_customers": 10}
    written = {
        prefix: backfill(store, 2, 7, start_date=START, prefix=prefix, **tiny)["sales_events"]
        for prefix in ("gpa", "gpb")
    }
    stored = {
        prefix: store.scalar(
            "SELECT count() FROM sales_events WHERE store_id LIKE {p:String}", {"p": f"{prefix}%"}
        )
        for prefix in written
    }
    assert stored == written and written["gpa"] > 0


def test_balance_holds_in_the_store(store, counts):
    broken = _scalar(
        store,
        "SELECT countIf(closing_stock != opening_stock - sales_units + receipts - shrinkage "
        "+ adjustments OR sales_units > true_demand OR lost_sales != true_demand - sales_units) "
        "FROM ground_truth FINAL WHERE store_id LIKE {prefix:String}",
    )
    assert broken == 0
    mismatched = store.query_df(
        """
        SELECT count() AS pair_days, countIf(moves.sold != -g.sales_units
            OR moves.received != g.receipts OR moves.shrunk != -g.shrinkage
            OR moves.adjusted != g.adjustments OR moves.snapshot_level != g.closing_stock) AS bad
        FROM (SELECT * FROM ground_truth FINAL WHERE store_id LIKE {prefix:String}) AS g
        INNER JOIN (
            SELECT toDate(event_time) AS date, store_id, product_id,
                sumIf(quantity_change, event_type = 'sale') AS sold,
                sumIf(quantity_change, event_type = 'restock') AS received,
                sumIf(quantity_change, event_type = 'shrinkage') AS shrunk,
                sumIf(quantity_change, event_type = 'adjustment') AS adjusted,
                anyIf(stock_level, event_type = 'snapshot') AS snapshot_level
            FROM inventory_events FINAL WHERE store_id LIKE {prefix:String}
            GROUP BY date, store_id, product_id
        ) AS moves USING (date, store_id, product_id)
        """,
        {"prefix": f"{PREFIX}%"},
    )
    assert mismatched.iloc[0].tolist() == [DAYS * 6 * 30, 0]


def test_sales_events_carry_the_contract(store, counts):
    row = store.query_df(
        "SELECT * FROM sales_events FINAL WHERE store_id LIKE {prefix:String} "
        "ORDER BY event_time, event_id LIMIT 1",
        {"prefix": f"{PREFIX}%"},
    ).iloc[0]
    assert row["source"] == "backfill"
    assert row["quantity"] > 0 and row["unit_price"] > 0
    assert row["event_time"].date() == START
    assert row["payment_method"] in {"card", "cash", "mobile", "gift_card"}


def test_state_lets_the_world_continue(store, counts):
    world = build_world(21, prefix=PREFIX, **SIZES)
    state = load_state(store, world)
    assert state is not None
    assert state.next_date == START + dt.timedelta(days=DAYS)
    direct = simulate_days(world, initial_state(world, START), DAYS)[-1].state
    assert (state.stock == direct.stock).all()
    assert sorted(
        zip(state.order_due, state.order_pair, state.order_quantity, strict=True)
    ) == sorted(zip(direct.order_due, direct.order_pair, direct.order_quantity, strict=True))
    resumed = simulate_days(world, state, 1)[0]
    longer = simulate_days(world, initial_state(world, START), DAYS + 1)[-1]
    assert resumed.sales["event_id"].tolist() == longer.sales["event_id"].tolist()


def test_backfill_is_fast_enough(counts):
    assert counts["line_items_per_minute"] > 100_000, counts
