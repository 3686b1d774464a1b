"""Every parameter of the simulated world, with its default. docs/generator.md explains each one."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Category:
    """A product category: price range, price elasticity and yearly seasonality."""

    name: str
    price_low: float
    price_high: float
    elasticity: float  # demand multiplier of a discount d is (1 - d) ** -elasticity
    yearly_amplitude: float  # relative swing of the yearly cosine
    yearly_peak_doy: int  # day of year where the yearly cosine peaks
    items: tuple[str, ...]


CATEGORIES: tuple[Category, ...] = (
    Category("Beverages", 0.9, 6.0, 2.0, 0.25, 196, ("Cola", "Lemonade", "Iced Tea", "Water")),
    Category("Snacks", 1.2, 7.0, 2.2, 0.10, 330, ("Crisps", "Pretzels", "Nuts", "Cookies")),
    Category("Dairy", 0.8, 5.0, 1.2, 0.05, 20, ("Milk", "Yogurt", "Butter", "Cheese")),
    Category("Produce", 0.5, 5.0, 1.5, 0.15, 180, ("Apples", "Tomatoes", "Berries", "Lettuce")),
    Category("Bakery", 1.0, 8.0, 1.3, 0.05, 350, ("Bread", "Bagels", "Muffins", "Croissants")),
    Category("Household", 2.0, 20.0, 1.8, 0.05, 90, ("Detergent", "Sponges", "Foil", "Towels")),
    Category("Personal Care", 2.0, 25.0, 1.6, 0.05, 160, ("Shampoo", "Soap", "Lotion", "Razor")),
    Category("Frozen", 2.0, 12.0, 1.7, 0.20, 200, ("Ice Cream", "Pizza", "Peas", "Fries")),
    Category("Toys", 5.0, 60.0, 2.5, 0.60, 350, ("Puzzle", "Blocks", "Doll", "Kite")),
    Category("Garden", 3.0, 40.0, 2.0, 0.50, 140, ("Seeds", "Hose", "Gloves", "Planter")),
)

REGIONS = ("North", "South", "East", "West", "Central")


@dataclass(frozen=True)
class WorldSize:
    """How big the world is at scale 1; ``--scale`` multiplies each count."""

    stores: int = 5
    products: int = 40
    customers: int = 2500


@dataclass(frozen=True)
class DemandParams:
    """The demand process: mean = popularity x store x weekday x yearly x holiday x trend x promo."""

    # Product popularity (units per day in a median-size store on an average day): lognormal.
    popularity_log_mean: float = 0.9
    popularity_log_sigma: float = 1.0
    slow_mover_share: float = 0.2  # share of products that are intermittent slow movers
    slow_mover_low: float = 0.05
    slow_mover_high: float = 0.4
    # Store size effect: (size_sqm / median size) ** elasticity.
    store_size_median_sqm: float = 1500.0
    store_size_log_sigma: float = 0.45
    store_size_elasticity: float = 0.7
    # Monday .. Sunday multipliers (mean 1).
    weekly_profile: tuple[float, ...] = (0.85, 0.80, 0.88, 0.95, 1.15, 1.35, 1.02)
    # Trend: yearly growth per product, normal, clipped; applied from TREND_EPOCH.
    trend_mean: float = 0.03
    trend_sigma: float = 0.08
    trend_clip: float = 0.3
    # Promotions: chain-wide, a product is on promotion for a whole Monday-Sunday week.
    promo_weekly_probability: float = 0.1
    promo_discounts: tuple[float, ...] = (0.1, 0.2, 0.3)
    promo_discount_weights: tuple[float, ...] = (0.5, 0.35, 0.15)
    # Noise: negative binomial (gamma-Poisson) with this dispersion k: var = mu + mu**2 / k.
    dispersion: float = 5.0
    holiday_factors: dict[str, float] = field(
        default_factory=lambda: {
            "New Year's Day": 0.6,
            "Easter Saturday": 1.4,
            "Easter Sunday": 0.6,
            "Independence Day": 1.3,
            "Thanksgiving": 0.5,
            "Black Friday": 1.8,
            "Christmas Eve": 1.6,
            "Christmas Day": 0.3,
            "Boxing Day": 1.3,
            "New Year's Eve": 1.3,
        }
    )


TREND_EPOCH = dt.date(2024, 1, 1)


@dataclass(frozen=True)
class InventoryParams:
    """The (s, Q) reorder policy, lead times, shrinkage and adjustments."""

    safety_z: float = 1.0  # reorder point = demand over (lead time + 1 day) + z * its std dev
    cover_days: float = 7.0  # order quantity covers this many days, rounded up to case packs
    lead_time_low: float = 1.5  # a product's mean lead time in days, uniform in [low, high]
    lead_time_high: float = 6.0
    lead_time_shape: float = 4.0  # each order's lead time is gamma(shape, mean / shape), >= 1 day
    max_lead_days: int = 30
    shrinkage_rate: float = 0.002  # each unit left on the shelf at night is lost with this chance
    adjustment_probability: float = 0.02  # chance per store x product x day of a count correction
    adjustment_max_units: int = 3


@dataclass(frozen=True)
class BasketParams:
    """How a day's sales become line items, transactions and customers."""

    new_line_probability: float = 0.6  # each further unit starts a new line item with this chance
    mean_lines_per_transaction: float = 2.5
    known_customer_share: float = 0.55  # the rest are anonymous (customer_id null)
    open_hour: int = 8
    close_hour: int = 21
    hourly_profile: tuple[float, ...] = (
        0.5,
        0.7,
        0.9,
        1.2,
        1.3,
        1.0,
        0.9,
        1.0,
        1.2,
        1.4,
        1.3,
        1.0,
        0.6,
    )  # 08:00 .. 20:00
    payment_methods: tuple[str, ...] = ("card", "cash", "mobile", "gift_card")
    payment_weights: tuple[float, ...] = (0.55, 0.2, 0.2, 0.05)
    channels: tuple[str, ...] = ("store", "online", "click_and_collect")
    channel_weights: tuple[float, ...] = (0.8, 0.12, 0.08)
    customer_segments: tuple[str, ...] = ("loyal", "regular", "occasional", "business")
    segment_weights: tuple[float, ...] = (0.2, 0.45, 0.3, 0.05)


def promo_uplift(discount: np.ndarray | float, elasticity: np.ndarray | float) -> np.ndarray:
    """Demand multiplier of a price cut: (1 - discount) ** -elasticity (1 when no discount)."""
    return np.power(1.0 - np.asarray(discount, dtype=float), -np.asarray(elasticity, dtype=float))
