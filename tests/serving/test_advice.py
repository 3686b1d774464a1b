"""The reorder-advice formula, on numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from serving.advice import (
    AdviceError,
    compute_reorder_advice,
    demand_over,
    stockout_eta_hours,
)

DAILY = [float(d) for d in range(1, 15)]  # 1, 2, ..., 14 units
QUANTILES = {"q0.5": 0.0, "q0.9": 1.1, "q0.95": 1.5}


def test_demand_over_counts_the_last_day_by_its_fraction_and_extrapolates_flat():
    assert demand_over(DAILY, 2.5) == pytest.approx(1 + 2 + 0.5 * 3)
    assert demand_over(DAILY, 0) == 0
    assert demand_over([2.0, 4.0], 4) == pytest.approx(2 + 4 + 3 + 3)


def test_stockout_eta_walks_the_cumulative_forecast():
    assert stockout_eta_hours(DAILY, 10) == pytest.approx(96.0)  # 1+2+3 = 6, then 4 of day 4
    assert stockout_eta_hours(DAILY, 7) == pytest.approx(24 * (3 + 1 / 4))
    assert stockout_eta_hours(DAILY, 0) == 0.0
    assert stockout_eta_hours([0.0], 5) is None


def test_advice_at_a_stock_above_the_reorder_point_orders_nothing():
    advice = compute_reorder_advice(DAILY, QUANTILES, 0.95, 2.5, 7, 6, 10)
    safety = 1.5 * math.sqrt(2 + 3 + 0.5 * 4)
    assert advice.lead_time_demand == pytest.approx(4.5)
    assert advice.safety_stock == pytest.approx(safety)
    assert advice.reorder_point == pytest.approx(4.5 + safety)
    assert advice.order_up_to == pytest.approx(sum(range(1, 10)) + 0.5 * 10 + safety)
    assert advice.reorder_now is False
    assert advice.order_quantity == 0
    assert advice.eta_hours == pytest.approx(96.0)
    assert advice.days_of_cover == pytest.approx(10 / 7.5)


def test_advice_at_a_low_stock_orders_whole_cases_up_to_the_order_up_to_level():
    advice = compute_reorder_advice(DAILY, QUANTILES, 0.95, 2.5, 7, 6, 5)
    order_up_to = 50 + 1.5 * math.sqrt(7)
    assert advice.reorder_now is True
    assert advice.order_quantity == math.ceil((order_up_to - 5) / 6) * 6 == 54


def test_advice_without_a_stock_level_gives_the_levels_only():
    advice = compute_reorder_advice(DAILY, QUANTILES, 0.9, 1, 7, 6, None)
    assert advice.reorder_point == pytest.approx(1 + 1.1 * math.sqrt(2))
    assert (advice.reorder_now, advice.order_quantity, advice.eta_hours) == (None, None, None)


def test_advice_needs_a_logged_quantile_and_a_positive_lead_time():
    with pytest.raises(AdviceError, match="0.99"):
        compute_reorder_advice(DAILY, QUANTILES, 0.99, 2, 7, 1, 3)
    with pytest.raises(AdviceError, match="lead time"):
        compute_reorder_advice(DAILY, QUANTILES, 0.95, 0, 7, 1, 3)
