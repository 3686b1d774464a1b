"""The seeded world: stores, products and customers built with Faker, the calendar with holidays,
and the per store x product arrays (base demand, reorder policy) that the simulation runs on."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from faker import Faker

from generator.params import (
    CATEGORIES,
    REGIONS,
    BasketParams,
    DemandParams,
    InventoryParams,
    WorldSize,
)

_SEGMENT_VISIT_WEIGHT = {"loyal": 4.0, "regular": 2.0, "occasional": 0.5, "business": 1.5}


@dataclass(frozen=True)
class World:
    """The catalog plus every array the simulation needs, indexed by store x product pair.

    Pairs are store-major: pair ``i`` is store ``i // n_products`` and product ``i % n_products``.
    """

    seed: int
    scale: float
    prefix: str
    stores: pd.DataFrame
    products: pd.DataFrame
    customers: pd.DataFrame
    demand: DemandParams
    inventory: InventoryParams
    basket: BasketParams
    product_category_index: np.ndarray  # per product: index into CATEGORIES
    product_trend: np.ndarray  # per product: yearly growth rate
    store_factor: np.ndarray  # per store: size effect on demand
    customer_home_store: np.ndarray  # per customer: index of the store they shop at
    customer_weight: np.ndarray  # per customer: relative visit frequency
    reorder_point: np.ndarray = field(repr=False)  # per pair
    order_quantity: np.ndarray = field(repr=False)  # per pair
    initial_stock: np.ndarray = field(repr=False)  # per pair

    @property
    def n_stores(self) -> int:
        return len(self.stores)

    @property
    def n_products(self) -> int:
        return len(self.products)

    @property
    def n_pairs(self) -> int:
        return self.n_stores * self.n_products

    @property
    def key(self) -> str:
        """Names this world in generator_state and in its insert tokens: prefix, seed and sizes."""
        sizes = f"s{self.n_stores}-p{self.n_products}-c{len(self.customers)}"
        return f"{self.prefix}seed{self.seed}-{sizes}"

    @property
    def pair_store(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_stores), self.n_products)

    @property
    def pair_product(self) -> np.ndarray:
        return np.tile(np.arange(self.n_products), self.n_stores)

    @property
    def pair_base_rate(self) -> np.ndarray:
        """Units per day of each pair before calendar, trend and promotion effects."""
        popularity = self.products["popularity"].to_numpy()
        return popularity[self.pair_product] * self.store_factor[self.pair_store]

    @property
    def product_elasticity(self) -> np.ndarray:
        return np.array([CATEGORIES[i].elasticity for i in self.product_category_index])

    def pair_keys(self) -> list[bytes]:
        """The Kafka record key of every pair: ``store_id|product_id``."""
        store_ids = self.stores["store_id"].to_numpy()[self.pair_store]
        product_ids = self.products["product_id"].to_numpy()[self.pair_product]
        return [f"{s}|{p}".encode() for s, p in zip(store_ids, product_ids, strict=True)]


def build_world(
    seed: int,
    scale: float = 1.0,
    *,
    n_stores: int | None = None,
    n_products: int | None = None,
    n_customers: int | None = None,
    prefix: str = "",
    demand: DemandParams | None = None,
    inventory: InventoryParams | None = None,
    basket: BasketParams | None = None,
) -> World:
    """Build the catalog for ``seed``; ``scale`` multiplies the default sizes (5 x 40 x 2500).

    Explicit ``n_*`` counts override the scaled ones; ``prefix`` starts every store, product and
    customer id (so several worlds can share one store). The same arguments give the same world.
    """
    size = WorldSize()
    n_stores = n_stores or max(1, round(size.stores * scale))
    n_products = n_products or max(1, round(size.products * scale))
    n_customers = n_customers or max(1, round(size.customers * scale))
    demand = demand or DemandParams()
    inventory = inventory or InventoryParams()
    basket = basket or BasketParams()
    rng = np.random.default_rng([seed, 0])
    fake = Faker("en_US")
    fake.seed_instance(seed)

    stores = _build_stores(n_stores, prefix, demand, rng, fake)
    products, category_index, trend = _build_products(
        n_products, prefix, demand, inventory, rng, fake
    )
    customers, home_store, weight = _build_customers(n_customers, prefix, stores, basket, rng, fake)
    store_factor = (stores["size_sqm"].to_numpy() / demand.store_size_median_sqm) ** (
        demand.store_size_elasticity
    )
    reorder_point, order_quantity, initial_stock = _reorder_policy(
        products, store_factor, demand, inventory, rng
    )
    return World(
        seed=seed,
        scale=scale,
        prefix=prefix,
        stores=stores,
        products=products,
        customers=customers,
        demand=demand,
        inventory=inventory,
        basket=basket,
        product_category_index=category_index,
        product_trend=trend,
        store_factor=store_factor,
        customer_home_store=home_store,
        customer_weight=weight,
        reorder_point=reorder_point,
        order_quantity=order_quantity,
        initial_stock=initial_stock,
    )


def _build_stores(
    n: int, prefix: str, demand: DemandParams, rng: np.random.Generator, fake: Faker
) -> pd.DataFrame:
    size = np.round(
        demand.store_size_median_sqm * rng.lognormal(0.0, demand.store_size_log_sigma, n), 0
    )
    size_class = np.where(size < 1000, "small", np.where(size < 2500, "medium", "large"))
    formats = ("Market", "Grocer", "Superstore", "Express", "Foods")
    return pd.DataFrame(
        {
            "store_id": [f"{prefix}S{i + 1:03d}" for i in range(n)],
            "name": [f"{fake.last_name()} {formats[i % len(formats)]}" for i in range(n)],
            "city": [fake.city() for _ in range(n)],
            "region": [REGIONS[i] for i in rng.integers(0, len(REGIONS), n)],
            "size_sqm": size.astype(float),
            "size_class": size_class,
        }
    )


def _build_products(
    n: int,
    prefix: str,
    demand: DemandParams,
    inventory: InventoryParams,
    rng: np.random.Generator,
    fake: Faker,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    category_index = rng.integers(0, len(CATEGORIES), n)
    low = np.array([CATEGORIES[i].price_low for i in category_index])
    high = np.array([CATEGORIES[i].price_high for i in category_index])
    unit_price = np.round(np.exp(rng.uniform(np.log(low), np.log(high))), 2)
    unit_cost = np.round(unit_price * rng.uniform(0.45, 0.75, n), 2)
    popularity = rng.lognormal(demand.popularity_log_mean, demand.popularity_log_sigma, n)
    slow = rng.random(n) < demand.slow_mover_share
    popularity[slow] = rng.uniform(demand.slow_mover_low, demand.slow_mover_high, slow.sum())
    lead_time = np.round(rng.uniform(inventory.lead_time_low, inventory.lead_time_high, n), 1)
    case_pack = rng.choice(np.array([4, 6, 12, 24], dtype=np.int32), n)
    trend = np.clip(
        rng.normal(demand.trend_mean, demand.trend_sigma, n), -demand.trend_clip, demand.trend_clip
    )
    names = [
        f"{fake.color_name()} {CATEGORIES[c].items[int(rng.integers(0, 4))]}"
        for c in category_index
    ]
    products = pd.DataFrame(
        {
            "product_id": [f"{prefix}P{i + 1:05d}" for i in range(n)],
            "name": names,
            "category": [CATEGORIES[i].name for i in category_index],
            "unit_price": unit_price,
            "unit_cost": unit_cost,
            "lead_time_days": lead_time,
            "case_pack": case_pack,
            "popularity": np.round(popularity, 4),
        }
    )
    return products, category_index, trend


def _build_customers(
    n: int,
    prefix: str,
    stores: pd.DataFrame,
    basket: BasketParams,
    rng: np.random.Generator,
    fake: Faker,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    home_store = rng.permutation(np.arange(n) % len(stores))
    weights = np.array(basket.segment_weights) / sum(basket.segment_weights)
    segment = rng.choice(np.array(basket.customer_segments), n, p=weights)
    visit_weight = np.array([_SEGMENT_VISIT_WEIGHT.get(s, 1.0) for s in segment])
    customers = pd.DataFrame(
        {
            "customer_id": [f"{prefix}C{i + 1:07d}" for i in range(n)],
            "name": [fake.name() for _ in range(n)],
            "city": stores["city"].to_numpy()[home_store],
            "segment": segment,
        }
    )
    return customers, home_store, visit_weight * rng.lognormal(0.0, 0.5, n)


def _reorder_policy(
    products: pd.DataFrame,
    store_factor: np.ndarray,
    demand: DemandParams,
    inventory: InventoryParams,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_products = len(products)
    pair_store = np.repeat(np.arange(len(store_factor)), n_products)
    pair_product = np.tile(np.arange(n_products), len(store_factor))
    daily = products["popularity"].to_numpy()[pair_product] * store_factor[pair_store]
    horizon = products["lead_time_days"].to_numpy()[pair_product] + 1.0
    variance = horizon * (daily + daily**2 / demand.dispersion)
    reorder_point = np.ceil(daily * horizon + inventory.safety_z * np.sqrt(variance))
    case_pack = products["case_pack"].to_numpy()[pair_product]
    cases = np.maximum(1, np.ceil(daily * inventory.cover_days / case_pack))
    order_quantity = cases * case_pack
    initial = reorder_point + np.floor(order_quantity * rng.uniform(0.3, 1.0, len(daily)))
    return (
        reorder_point.astype(np.int64),
        order_quantity.astype(np.int64),
        initial.astype(np.int64),
    )


def easter_sunday(year: int) -> dt.date:
    """Easter Sunday in the Gregorian calendar (the anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    m = (32 + 2 * e + 2 * i - h - k) % 7
    n = (a + 11 * h + 22 * m) // 451
    month, day = divmod(h + m - 7 * n + 114, 31)
    return dt.date(year, month, day + 1)


@lru_cache(maxsize=64)
def holidays_of(year: int) -> dict[dt.date, str]:
    """The holidays the demand process knows, by date, for one year."""
    easter = easter_sunday(year)
    november_first = dt.date(year, 11, 1)
    thanksgiving = november_first + dt.timedelta(days=(3 - november_first.weekday()) % 7 + 21)
    return {
        dt.date(year, 1, 1): "New Year's Day",
        easter - dt.timedelta(days=1): "Easter Saturday",
        easter: "Easter Sunday",
        dt.date(year, 7, 4): "Independence Day",
        thanksgiving: "Thanksgiving",
        thanksgiving + dt.timedelta(days=1): "Black Friday",
        dt.date(year, 12, 24): "Christmas Eve",
        dt.date(year, 12, 25): "Christmas Day",
        dt.date(year, 12, 26): "Boxing Day",
        dt.date(year, 12, 31): "New Year's Eve",
    }


def holiday_name(day: dt.date) -> str:
    """The holiday on ``day``, or an empty string."""
    return holidays_of(day.year).get(day, "")


def calendar_frame(start: dt.date, days: int) -> pd.DataFrame:
    """The calendar table for ``days`` days from ``start``; day_of_week is 1 (Monday) .. 7."""
    dates = [start + dt.timedelta(days=i) for i in range(days)]
    names = [holiday_name(d) for d in dates]
    return pd.DataFrame(
        {
            "date": pd.to_datetime(dates).date,
            "is_holiday": np.array([1 if n else 0 for n in names], dtype=np.uint8),
            "holiday_name": names,
            "day_of_week": np.array([d.isoweekday() for d in dates], dtype=np.uint8),
        }
    )
