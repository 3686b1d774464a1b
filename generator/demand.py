"""The demand process: the mean of each store x product x day, and the negative-binomial draw.

mean = popularity x store size effect x weekday x yearly season x holiday x trend x promo uplift
demand ~ Poisson(Gamma(k, mean / k)), so variance = mean + mean**2 / k.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from generator.params import CATEGORIES, TREND_EPOCH, promo_uplift
from generator.world import World, holiday_name

PROMOTION_STREAM = 1


@dataclass(frozen=True)
class DemandDay:
    """One day's demand distribution per pair (store-major order)."""

    expected: np.ndarray  # mean of the demand distribution, the oracle forecast
    baseline: np.ndarray  # the same mean without the promotion uplift
    on_promotion: np.ndarray  # bool
    discount: np.ndarray  # fraction of the list price, 0 when not on promotion
    noise_variance: np.ndarray


def weekly_promotions(world: World, day: dt.date) -> tuple[np.ndarray, np.ndarray]:
    """Which products are on promotion in the Monday-Sunday week of ``day``, and at what discount.

    Drawn from its own random stream keyed by (seed, week), so any day of a week agrees.
    """
    params = world.demand
    monday = day - dt.timedelta(days=day.weekday())
    rng = np.random.default_rng([world.seed, PROMOTION_STREAM, monday.toordinal()])
    on = rng.random(world.n_products) < params.promo_weekly_probability
    weights = np.array(params.promo_discount_weights) / sum(params.promo_discount_weights)
    discount = rng.choice(np.array(params.promo_discounts), world.n_products, p=weights)
    return on, np.where(on, discount, 0.0)


def calendar_factor(world: World, day: dt.date) -> np.ndarray:
    """Per product: weekday x yearly season x holiday x trend on ``day``."""
    params = world.demand
    weekday = params.weekly_profile[day.weekday()]
    holiday = params.holiday_factors.get(holiday_name(day), 1.0)
    day_of_year = day.timetuple().tm_yday
    amplitude = np.array([CATEGORIES[i].yearly_amplitude for i in world.product_category_index])
    peak = np.array([CATEGORIES[i].yearly_peak_doy for i in world.product_category_index])
    yearly = 1.0 + amplitude * np.cos(2.0 * np.pi * (day_of_year - peak) / 365.25)
    years = (day - TREND_EPOCH).days / 365.25
    trend = np.power(1.0 + world.product_trend, years)
    return weekday * holiday * yearly * trend


def demand_of_day(world: World, day: dt.date) -> DemandDay:
    """The demand distribution of every pair on ``day``."""
    on, discount = weekly_promotions(world, day)
    per_product_base = calendar_factor(world, day)
    uplift = promo_uplift(discount, world.product_elasticity)
    product = world.pair_product
    baseline = world.pair_base_rate * per_product_base[product]
    expected = baseline * uplift[product]
    return DemandDay(
        expected=expected,
        baseline=baseline,
        on_promotion=on[product],
        discount=discount[product],
        noise_variance=expected + expected**2 / world.demand.dispersion,
    )


def sample_demand(expected: np.ndarray, dispersion: float, rng: np.random.Generator) -> np.ndarray:
    """Negative-binomial demand with mean ``expected`` and dispersion k (gamma-Poisson mixture)."""
    rate = rng.gamma(dispersion, expected / dispersion)
    return rng.poisson(rate).astype(np.int64)
