"""The simulated world keeps the promises docs/generator.md makes: reproducibility, the demand
statistics, stockout censoring and exact inventory physics (no store, no broker)."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from generator.demand import demand_of_day
from generator.params import CATEGORIES, DemandParams, promo_uplift
from generator.simulate import initial_state, simulate_days
from generator.world import build_world, calendar_frame, easter_sunday

START = dt.date(2025, 2, 3)  # a Monday; no holiday in the next 8 weeks


def _run(world, days: int, start: dt.date = START):
    results = simulate_days(world, initial_state(world, start), days)
    truth = pd.concat([r.ground_truth for r in results], ignore_index=True)
    sales = pd.concat([r.sales for r in results], ignore_index=True)
    inventory = pd.concat([r.inventory for r in results], ignore_index=True)
    return truth, sales, inventory


@pytest.fixture(scope="module")
def big_world():
    return build_world(11, n_stores=8, n_products=60, n_customers=800)


@pytest.fixture(scope="module")
def eight_weeks(big_world):
    return _run(big_world, 56)


def test_same_seed_gives_identical_world_and_events():
    first = build_world(5, n_stores=3, n_products=12, n_customers=50)
    second = build_world(5, n_stores=3, n_products=12, n_customers=50)
    assert_frame_equal(first.products, second.products)
    assert_frame_equal(first.customers, second.customers)
    for a, b in zip(_run(first, 10), _run(second, 10), strict=True):
        assert_frame_equal(a, b)
    other = build_world(6, n_stores=3, n_products=12, n_customers=50)
    assert not first.products["popularity"].equals(other.products["popularity"])
    assert set(_run(first, 2)[1]["event_id"]).isdisjoint(_run(other, 2)[1]["event_id"])


def test_event_ids_are_unique_uuids(eight_weeks):
    _, sales, inventory = eight_weeks
    ids = pd.concat([sales["event_id"], inventory["event_id"]])
    assert ids.is_unique
    assert ids.str.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    ).all()


def test_catalog_is_scaled_and_has_a_long_tail():
    world = build_world(3, scale=2.0)
    assert (world.n_stores, world.n_products, len(world.customers)) == (10, 80, 5000)
    popularity = np.sort(world.products["popularity"].to_numpy())[::-1]
    top_fifth = popularity[: len(popularity) // 5].sum() / popularity.sum()
    assert top_fifth > 0.4, "the top 20% of products should carry a large share of demand"
    assert (popularity < 0.4).sum() >= 0.1 * len(popularity), "slow movers are missing"
    assert set(world.stores["size_class"]) <= {"small", "medium", "large"}
    assert (world.products["unit_cost"] < world.products["unit_price"]).all()


def test_slow_movers_are_intermittent(eight_weeks, big_world):
    truth, _, _ = eight_weeks
    slow = big_world.products.loc[big_world.products["popularity"] < 0.2, "product_id"]
    zero_share = (truth.loc[truth["product_id"].isin(slow), "true_demand"] == 0).mean()
    assert zero_share > 0.7


def test_weekly_seasonality_is_visible(eight_weeks, big_world):
    truth, _, _ = eight_weeks
    weekday = pd.to_datetime(truth["date"]).dt.weekday
    by_day = truth.groupby(weekday)["true_demand"].mean()
    profile = np.array(big_world.demand.weekly_profile)
    measured = by_day.to_numpy() / by_day.mean()
    expected = profile / profile.mean()
    np.testing.assert_allclose(measured, expected, rtol=0.08)
    assert by_day.idxmax() == 5, "Saturday is the busiest day"


def test_promo_uplift_matches_the_elasticity_parameter(big_world):
    params = DemandParams(promo_weekly_probability=0.3)
    world = build_world(12, n_stores=8, n_products=60, n_customers=200, demand=params)
    results = simulate_days(world, initial_state(world, START), 56)
    baseline = np.concatenate([demand_of_day(world, r.day).baseline for r in results])
    truth = pd.concat([r.ground_truth for r in results], ignore_index=True)
    elasticity = np.tile(world.product_elasticity, world.n_stores)
    truth["elasticity"] = np.tile(elasticity, len(results))
    truth["baseline"] = baseline
    promo = truth[truth["on_promotion"] == 1]
    assert promo["discount"].nunique() == len(params.promo_discounts)
    for discount, rows in promo.groupby("discount"):
        measured = rows["true_demand"].sum() / rows["baseline"].sum()
        weights = rows["baseline"] / rows["baseline"].sum()
        promised = float((promo_uplift(discount, rows["elasticity"]) * weights).sum())
        assert measured == pytest.approx(promised, rel=0.1), f"discount {discount}"
    regular = truth[truth["on_promotion"] == 0]
    assert regular["true_demand"].sum() / regular["baseline"].sum() == pytest.approx(1.0, rel=0.05)
    assert promo_uplift(0.2, CATEGORIES[0].elasticity) == pytest.approx(0.8**-2.0)


def test_expected_demand_is_the_mean_and_noise_variance_its_variance(eight_weeks):
    truth, _, _ = eight_weeks
    residual = truth["true_demand"] - truth["expected_demand"]
    assert residual.mean() == pytest.approx(0.0, abs=0.05 * truth["expected_demand"].mean())
    assert (residual**2).mean() == pytest.approx(truth["noise_variance"].mean(), rel=0.1)


def test_stockouts_censor_sales(eight_weeks):
    truth, sales, _ = eight_weeks
    out = truth[truth["stockout"] == 1]
    assert len(out) > 20, "the default policy should run out of stock now and then"
    assert (truth["sales_units"] <= truth["true_demand"]).all()
    assert (truth["lost_sales"] == truth["true_demand"] - truth["sales_units"]).all()
    assert (out["sales_units"] == out["opening_stock"] + out["receipts"]).all()
    assert (out["lost_sales"] > 0).all()
    assert (truth.loc[truth["stockout"] == 0, "lost_sales"] == 0).all()
    sold = sales.assign(date=pd.to_datetime(sales["event_time_ms"], unit="ms").dt.date)
    sold = sold.groupby(["date", "store_id", "product_id"])["quantity"].sum()
    keyed = truth.set_index(["date", "store_id", "product_id"])["sales_units"]
    assert_series = keyed[keyed > 0].sort_index()
    pd.testing.assert_series_equal(
        sold.sort_index(), assert_series, check_names=False, check_dtype=False
    )


def test_inventory_balance_holds_for_every_store_product_day(eight_weeks, big_world):
    truth, _, _ = eight_weeks
    balance = (
        truth["opening_stock"]
        - truth["sales_units"]
        + truth["receipts"]
        - truth["shrinkage"]
        + truth["adjustments"]
    )
    assert (truth["closing_stock"] == balance).all()
    assert (truth["closing_stock"] >= 0).all()
    ordered = truth.sort_values(["store_id", "product_id", "date"])
    same_pair = ordered[["store_id", "product_id"]].eq(ordered[["store_id", "product_id"]].shift())
    follows = same_pair.all(axis=1)
    assert (
        ordered["opening_stock"][follows].to_numpy()
        == ordered["closing_stock"].shift()[follows].to_numpy()
    ).all()
    assert truth["receipts"].gt(0).sum() > 50 and truth["shrinkage"].gt(0).any()
    assert truth["adjustments"].ne(0).any()


def test_inventory_events_reconstruct_the_ground_truth(eight_weeks):
    truth, _, inventory = eight_weeks
    events = inventory.assign(date=pd.to_datetime(inventory["event_time_ms"], unit="ms").dt.date)
    moves = events.pivot_table(
        index=["date", "store_id", "product_id"],
        columns="event_type",
        values="quantity_change",
        aggfunc="sum",
        fill_value=0,
    )
    keyed = truth.set_index(["date", "store_id", "product_id"]).sort_index()
    moves = moves.reindex(keyed.index, fill_value=0)
    assert (moves["restock"] == keyed["receipts"]).all()
    assert (moves["sale"] == -keyed["sales_units"]).all()
    assert (moves["shrinkage"] == -keyed["shrinkage"]).all()
    assert (moves["adjustment"] == keyed["adjustments"]).all()
    assert (moves["snapshot"] == 0).all()
    snapshots = events[events["event_type"] == "snapshot"].set_index(
        ["date", "store_id", "product_id"]
    )["stock_level"]
    assert (snapshots.reindex(keyed.index) == keyed["closing_stock"]).all()

    # Each event's stock level is the previous level plus its change, from the opening stock.
    chain = events.sort_values(["store_id", "product_id", "event_time_ms"], kind="stable")
    opening = keyed["opening_stock"].rename("opening")
    chain = chain.join(opening, on=["date", "store_id", "product_id"])
    first = ~chain[["date", "store_id", "product_id"]].eq(
        chain[["date", "store_id", "product_id"]].shift()
    ).all(axis=1)
    previous = chain["stock_level"].shift().where(~first, chain["opening"])
    assert (chain["stock_level"] == previous + chain["quantity_change"]).all()
    assert (chain["stock_level"] >= 0).all()


def test_sales_line_items_are_consistent(eight_weeks, big_world):
    _, sales, _ = eight_weeks
    assert (sales["quantity"] > 0).all()
    cent, half_up = Decimal("0.01"), ROUND_HALF_UP
    by_hand = [
        float((q * Decimal(str(p)) * (1 - Decimal(str(d)))).quantize(cent, half_up))
        for q, p, d in zip(sales["quantity"], sales["unit_price"], sales["discount"], strict=True)
    ]
    assert sales["total_amount"].tolist() == by_hand
    per_transaction = sales.groupby("transaction_id").agg(
        stores=("store_id", "nunique"), times=("event_time_ms", "nunique")
    )
    assert (per_transaction == 1).all().all(), "a transaction is one store at one moment"
    assert per_transaction.shape[0] < len(sales), "baskets hold several line items"
    hour = pd.to_datetime(sales["event_time_ms"], unit="ms").dt.hour
    assert hour.between(big_world.basket.open_hour, big_world.basket.close_hour - 1).all()
    assert sales["customer_id"].isna().mean() == pytest.approx(0.45, abs=0.05)
    assert set(sales["customer_id"].dropna()) <= set(big_world.customers["customer_id"])


def test_calendar_marks_holidays():
    assert easter_sunday(2025) == dt.date(2025, 4, 20)
    assert easter_sunday(2026) == dt.date(2026, 4, 5)
    calendar = calendar_frame(dt.date(2025, 11, 26), 3).set_index("date")
    assert calendar.loc[dt.date(2025, 11, 27), "holiday_name"] == "Thanksgiving"
    assert calendar.loc[dt.date(2025, 11, 28), "holiday_name"] == "Black Friday"
    assert calendar["is_holiday"].tolist() == [0, 1, 1]
    assert calendar["day_of_week"].tolist() == [3, 4, 5]


def test_the_docs_give_every_categorys_parameters():
    """docs/generator.md's category table is the one the generator draws from."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "generator.md").read_text()
    table = {}
    for line in docs.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and "–" in cells[1]:
            low, high = (float(x) for x in cells[1].split("–"))
            table[cells[0]] = (low, high, *(float(x) for x in cells[2:]))

    assert table == {
        c.name: (
            c.price_low,
            c.price_high,
            c.elasticity,
            c.yearly_amplitude,
            float(c.yearly_peak_doy),
        )
        for c in CATEGORIES
    }
