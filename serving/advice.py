"""Reorder advice from the demand forecasts, for a store x product the inventory job has not scored.

With ``f_1, f_2, ...`` the daily forecasts from today, ``L`` the lead time in days, ``R`` the
review period in days, ``q`` the demand model's conformal quantile of the scaled residual
``(y - f) / sqrt(f + 1)`` at the service level, ``s`` the stock on hand and ``c`` the case pack:

- lead-time demand ``D(L) = f_1 + ... + f_floor(L) + frac(L) * f_ceil(L)``;
- safety stock ``SS = q * sqrt(V(L))`` with ``V(L)`` the same sum over ``f_d + 1``: daily
  residuals are independent with variance proportional to ``f_d + 1``, so variances add up;
- reorder point ``ROP = D(L) + SS``; order-up-to level ``S = D(L + R) + SS``;
- reorder now when ``s <= ROP``; order quantity ``ceil((S - s) / c) * c`` then, else 0;
- stockout ETA: the hours until the cumulative forecast reaches ``s`` (within a day, demand is
  spread evenly); days of cover ``s / mean(f)``.

Days past the last forecast day are taken at the mean of the forecast days (flat extrapolation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from training.conformal import quantile_key


class AdviceError(ValueError):
    """Advice cannot be computed from what is known; the message says what is missing."""


@dataclass(frozen=True)
class ComputedAdvice:
    lead_time_demand: float
    daily_demand: float
    safety_stock: float
    reorder_point: float
    order_up_to: float
    reorder_now: bool | None
    order_quantity: int | None
    days_of_cover: float | None
    eta_hours: float | None


def demand_over(daily: Sequence[float], days: float) -> float:
    """``f_1 + ... + f_floor(days) + frac(days) * f_ceil(days)``, flat past the last day."""
    total, remaining, day = 0.0, max(days, 0.0), 0
    while remaining > 0:
        share = min(remaining, 1.0)
        total += share * forecast_on(daily, day)
        remaining -= share
        day += 1
    return total


def forecast_on(daily: Sequence[float], day: int) -> float:
    """The forecast of day ``day`` (0 = the first), the mean past the last forecast day."""
    if not daily:
        raise AdviceError("no daily forecasts")
    if day < len(daily):
        return max(float(daily[day]), 0.0)
    return max(sum(daily) / len(daily), 0.0)


def stockout_eta_hours(daily: Sequence[float], stock: float, max_days: int = 366) -> float | None:
    """Hours until the cumulative forecast uses up ``stock``; None if it lasts past ``max_days``."""
    if stock <= 0:
        return 0.0
    left = float(stock)
    for day in range(max_days):
        demand = forecast_on(daily, day)
        if demand >= left:
            return 24.0 * (day + left / demand)
        left -= demand
    return None


def compute_reorder_advice(
    daily: Sequence[float],
    quantiles: dict[str, float],
    service_level: float,
    lead_time_days: float,
    review_days: float,
    case_pack: int,
    stock_level: int | None,
) -> ComputedAdvice:
    """The advice of the module docstring's formula; without a stock level, only the levels."""
    key = quantile_key(service_level)
    if key not in quantiles:
        raise AdviceError(f"the demand model logged no conformal quantile for {service_level}")
    if lead_time_days <= 0:
        raise AdviceError(f"the lead time must be positive, got {lead_time_days}")
    lead_demand = demand_over(daily, lead_time_days)
    variance = demand_over([f + 1.0 for f in daily], lead_time_days)
    safety = max(0.0, quantiles[key] * math.sqrt(variance))
    reorder_point = lead_demand + safety
    order_up_to = demand_over(daily, lead_time_days + review_days) + safety
    mean_daily = max(sum(daily) / len(daily), 0.0)
    if stock_level is None:
        return ComputedAdvice(lead_demand, mean_daily, safety, reorder_point, order_up_to,
                              None, None, None, None)  # fmt: skip
    reorder_now = stock_level <= reorder_point
    pack = max(case_pack, 1)
    quantity = math.ceil(max(order_up_to - stock_level, 0.0) / pack) * pack if reorder_now else 0
    cover = stock_level / mean_daily if mean_daily > 0 else None
    return ComputedAdvice(
        lead_time_demand=lead_demand,
        daily_demand=mean_daily,
        safety_stock=safety,
        reorder_point=reorder_point,
        order_up_to=order_up_to,
        reorder_now=reorder_now,
        order_quantity=int(quantity),
        days_of_cover=cover,
        eta_hours=stockout_eta_hours(daily, stock_level),
    )
