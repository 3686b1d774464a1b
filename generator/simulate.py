"""One simulated day: demand, inventory physics, line items in transactions, inventory events.

Everything is vectorised over store x product pairs and line items (numpy), so a day costs the
same few dozen array operations whatever its size. The random stream of a day is derived from
(seed, day), so a day simulated by the backfill or by the stream gives the same events.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from generator.demand import demand_of_day, sample_demand
from generator.world import World

DAY_STREAM = 2
_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 86_400_000
_UNIX_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


@dataclass(frozen=True)
class SimState:
    """Where the world stands at the start of ``next_date``."""

    next_date: dt.date
    stock: np.ndarray  # units on hand per pair
    order_due: np.ndarray  # ordinal day each open replenishment order arrives
    order_pair: np.ndarray
    order_quantity: np.ndarray

    def on_order(self, n_pairs: int) -> np.ndarray:
        """Units in transit per pair."""
        return np.bincount(self.order_pair, weights=self.order_quantity, minlength=n_pairs).astype(
            np.int64
        )


@dataclass(frozen=True)
class DayResult:
    """The ground truth and the raw events of one simulated day."""

    day: dt.date
    ground_truth: pd.DataFrame
    sales: pd.DataFrame  # event_time as int64 ms since the Unix epoch, column event_time_ms
    inventory: pd.DataFrame  # idem
    state: SimState  # the state after the day


def initial_state(world: World, start: dt.date) -> SimState:
    """The world's opening stock and no orders in transit, on ``start``."""
    empty = np.zeros(0, dtype=np.int64)
    return SimState(start, world.initial_stock.copy(), empty, empty, empty)


def day_start_ms(day: dt.date) -> int:
    """Midnight UTC of ``day`` in ms since the Unix epoch."""
    return (day.toordinal() - _UNIX_EPOCH_ORDINAL) * _MS_PER_DAY


def random_uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` version-4 UUID strings from the seeded generator (object array)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexed = np.frombuffer(raw.tobytes().hex().encode(), dtype="S1").reshape(n, 32)
    dash = np.full((n, 1), b"-", dtype="S1")
    parts = [hexed[:, :8], dash, hexed[:, 8:12], dash, hexed[:, 12:16], dash]
    parts += [hexed[:, 16:20], dash, hexed[:, 20:]]
    joined = np.ascontiguousarray(np.hstack(parts)).view("S36").ravel()
    return joined.astype("U36").astype(object)


def _group_starts(sorted_groups: np.ndarray) -> np.ndarray:
    """True where a new group begins in an array sorted by group."""
    starts = np.ones(len(sorted_groups), dtype=bool)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    return starts


class Simulator:
    """Runs days of one world; holds the per-pair lookup arrays built once from the catalog."""

    def __init__(self, world: World) -> None:
        self.world = world
        stores, products = world.stores, world.products
        self.pair_store = world.pair_store
        self.pair_product = world.pair_product
        self.store_ids = stores["store_id"].to_numpy(dtype=object)
        self.product_ids = products["product_id"].to_numpy(dtype=object)
        self.categories = products["category"].to_numpy(dtype=object)
        self.unit_price = products["unit_price"].to_numpy(dtype=float)
        self.unit_cost = products["unit_cost"].to_numpy(dtype=float)
        self.lead_time = products["lead_time_days"].to_numpy(dtype=float)
        self.pair_store_id = self.store_ids[self.pair_store]
        self.pair_product_id = self.product_ids[self.pair_product]
        basket = world.basket
        hours = np.array(basket.hourly_profile, dtype=float)
        self.hour_probability = hours / hours.sum()
        self.payment = np.array(basket.payment_methods, dtype=object)
        self.payment_p = np.array(basket.payment_weights) / sum(basket.payment_weights)
        self.channel = np.array(basket.channels, dtype=object)
        self.channel_p = np.array(basket.channel_weights) / sum(basket.channel_weights)
        self._build_customer_lookup()

    def _build_customer_lookup(self) -> None:
        home = self.world.customer_home_store
        order = np.argsort(home, kind="stable")
        weight = self.world.customer_weight[order]
        home_sorted = home[order]
        totals = np.bincount(home_sorted, weights=weight, minlength=self.world.n_stores)
        cumulative = np.cumsum(weight)
        store_offset = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
        within = (cumulative - store_offset[home_sorted]) / totals[home_sorted]
        self.customer_keys = home_sorted + np.minimum(within, 1.0)
        self.customer_order = order
        self.store_has_customers = totals > 0
        self.customer_ids = self.world.customers["customer_id"].to_numpy(dtype=object)

    def run_day(self, state: SimState) -> DayResult:
        """Simulate ``state.next_date``; return its truth, its events and the next state."""
        world, day = self.world, state.next_date
        rng = np.random.default_rng([world.seed, DAY_STREAM, day.toordinal()])
        inv = world.inventory
        n = world.n_pairs

        demand = demand_of_day(world, day)
        true_demand = sample_demand(demand.expected, world.demand.dispersion, rng)

        today = day.toordinal()
        arriving = state.order_due == today
        receipts = np.bincount(
            state.order_pair[arriving], weights=state.order_quantity[arriving], minlength=n
        ).astype(np.int64)
        opening = state.stock
        available = opening + receipts
        sales = np.minimum(true_demand, available)
        lost = true_demand - sales
        after_sales = available - sales
        shrinkage = rng.binomial(after_sales, inv.shrinkage_rate).astype(np.int64)
        adjusting = rng.random(n) < inv.adjustment_probability
        size = rng.integers(1, inv.adjustment_max_units + 1, n)
        sign = np.where(rng.random(n) < 0.5, -1, 1)
        adjustments = np.where(adjusting, size * sign, 0)
        adjustments = np.maximum(adjustments, -(after_sales - shrinkage)).astype(np.int64)
        closing = after_sales - shrinkage + adjustments

        keep = ~arriving
        order_due, order_pair, order_qty = (
            state.order_due[keep],
            state.order_pair[keep],
            state.order_quantity[keep],
        )
        on_order = np.bincount(order_pair, weights=order_qty, minlength=n).astype(np.int64)
        position = closing + on_order
        short = position <= world.reorder_point
        quantity = world.order_quantity
        cases = np.ceil((world.reorder_point + 1 - position) / quantity).astype(np.int64)
        new_pairs = np.flatnonzero(short)
        mean_lead = self.lead_time[self.pair_product[new_pairs]]
        lead = rng.gamma(inv.lead_time_shape, mean_lead / inv.lead_time_shape)
        lead_days = np.clip(np.round(lead), 1, inv.max_lead_days).astype(np.int64)
        next_state = SimState(
            next_date=day + dt.timedelta(days=1),
            stock=closing,
            order_due=np.concatenate([order_due, today + lead_days]),
            order_pair=np.concatenate([order_pair, new_pairs]),
            order_quantity=np.concatenate([order_qty, cases[new_pairs] * quantity[new_pairs]]),
        )

        truth = pd.DataFrame(
            {
                "date": np.full(n, day),
                "store_id": self.pair_store_id,
                "product_id": self.pair_product_id,
                "expected_demand": demand.expected,
                "true_demand": true_demand.astype(np.int32),
                "sales_units": sales.astype(np.int32),
                "lost_sales": lost.astype(np.int32),
                "noise_variance": demand.noise_variance,
                "on_promotion": demand.on_promotion.astype(np.uint8),
                "unit_price": self.unit_price[self.pair_product],
                "discount": demand.discount,
                "opening_stock": opening.astype(np.int32),
                "receipts": receipts.astype(np.int32),
                "shrinkage": shrinkage.astype(np.int32),
                "adjustments": adjustments.astype(np.int32),
                "closing_stock": closing.astype(np.int32),
                "stockout": (lost > 0).astype(np.uint8),
            }
        )
        sales_frame, sale_pairs, sale_times, sale_qty = self._line_items(
            rng, day, sales, demand.discount, demand.on_promotion
        )
        inventory = self._inventory_events(
            rng,
            day,
            available,
            receipts,
            after_sales,
            shrinkage,
            adjustments,
            closing,
            sale_pairs,
            sale_times,
            sale_qty,
        )
        return DayResult(day, truth, sales_frame, inventory, next_state)

    def _line_items(
        self,
        rng: np.random.Generator,
        day: dt.date,
        sales: np.ndarray,
        discount: np.ndarray,
        on_promotion: np.ndarray,
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
        """Split each pair's units into line items and group them into store transactions."""
        basket = self.world.basket
        units = int(sales.sum())
        unit_pair = np.repeat(np.arange(len(sales)), sales)
        starts_line = rng.random(units) < basket.new_line_probability
        starts_line |= _group_starts(unit_pair)
        line_of_unit = np.cumsum(starts_line) - 1
        quantity = np.bincount(line_of_unit).astype(np.int64) if units else np.zeros(0, np.int64)
        line_pair = unit_pair[starts_line]
        n_lines = len(line_pair)

        line_store = self.pair_store[line_pair]
        shuffle = np.lexsort((rng.random(n_lines), line_store))
        line_pair, quantity, line_store = line_pair[shuffle], quantity[shuffle], line_store[shuffle]
        starts_txn = rng.random(n_lines) < 1.0 / basket.mean_lines_per_transaction
        starts_txn |= _group_starts(line_store)
        txn_of_line = np.cumsum(starts_txn) - 1
        n_txn = int(starts_txn.sum())
        txn_store = line_store[starts_txn]

        hour = rng.choice(len(self.hour_probability), n_txn, p=self.hour_probability)
        offset_ms = (basket.open_hour + hour) * _MS_PER_HOUR + rng.integers(0, _MS_PER_HOUR, n_txn)
        txn_time = day_start_ms(day) + offset_ms
        txn_ids = random_uuids(rng, n_txn)
        known = (rng.random(n_txn) < basket.known_customer_share) & self.store_has_customers[
            txn_store
        ]
        pick = np.searchsorted(self.customer_keys, txn_store + rng.random(n_txn), side="right")
        pick = np.minimum(pick, len(self.customer_order) - 1)
        customer = np.where(known, self.customer_ids[self.customer_order[pick]], None)
        payment = rng.choice(self.payment, n_txn, p=self.payment_p)
        channel = rng.choice(self.channel, n_txn, p=self.channel_p)

        line_product = self.pair_product[line_pair]
        price = self.unit_price[line_product]
        line_discount = discount[line_pair]
        # In whole cents, half a cent rounding up: a float's round() can fall either way.
        price_cents = np.round(price * 100).astype(np.int64)
        percent_off = np.round(line_discount * 100).astype(np.int64)
        total_cents = (quantity * price_cents * (100 - percent_off) + 50) // 100
        frame = pd.DataFrame(
            {
                "event_id": random_uuids(rng, n_lines),
                "event_time_ms": txn_time[txn_of_line],
                "transaction_id": txn_ids[txn_of_line],
                "store_id": self.store_ids[line_store],
                "customer_id": customer[txn_of_line],
                "product_id": self.product_ids[line_product],
                "category": self.categories[line_product],
                "quantity": quantity.astype(np.int32),
                "unit_price": price,
                "discount": line_discount,
                "total_amount": total_cents / 100.0,
                "payment_method": payment[txn_of_line],
                "channel": channel[txn_of_line],
                "on_promotion": on_promotion[line_pair],
            }
        )
        order = np.lexsort((np.arange(n_lines), frame["event_time_ms"].to_numpy()))
        frame = frame.iloc[order].reset_index(drop=True)
        return frame, line_pair[order], frame["event_time_ms"].to_numpy(), quantity[order]

    def _inventory_events(
        self,
        rng: np.random.Generator,
        day: dt.date,
        available: np.ndarray,
        receipts: np.ndarray,
        after_sales: np.ndarray,
        shrinkage: np.ndarray,
        adjustments: np.ndarray,
        closing: np.ndarray,
        sale_pairs: np.ndarray,
        sale_times: np.ndarray,
        sale_qty: np.ndarray,
    ) -> pd.DataFrame:
        """Every stock movement of the day, each with the units on hand after it."""
        midnight = day_start_ms(day)
        n = len(available)
        restocked = np.flatnonzero(receipts > 0)
        shrunk = np.flatnonzero(shrinkage > 0)
        adjusted = np.flatnonzero(adjustments != 0)
        every = np.arange(n)

        by_pair = np.lexsort((np.arange(len(sale_pairs)), sale_times, sale_pairs))
        pairs_sorted = sale_pairs[by_pair]
        sold = np.cumsum(sale_qty[by_pair])
        group_start = _group_starts(pairs_sorted)
        before_group = np.where(group_start, sold - sale_qty[by_pair], 0)
        sold_within = sold - np.maximum.accumulate(before_group)
        sale_level = np.empty(len(sale_pairs), dtype=np.int64)
        sale_level[by_pair] = available[pairs_sorted] - sold_within

        minute = 60_000
        pieces = [
            (
                "restock",
                restocked,
                midnight + 6 * _MS_PER_HOUR + rng.integers(0, 60 * minute, len(restocked)),
                receipts[restocked],
                available[restocked],
            ),
            ("sale", sale_pairs, sale_times, -sale_qty, sale_level),
            (
                "shrinkage",
                shrunk,
                midnight
                + 21 * _MS_PER_HOUR
                + 30 * minute
                + rng.integers(0, 30 * minute, len(shrunk)),
                -shrinkage[shrunk],
                (after_sales - shrinkage)[shrunk],
            ),
            (
                "adjustment",
                adjusted,
                midnight + 22 * _MS_PER_HOUR + rng.integers(0, 60 * minute, len(adjusted)),
                adjustments[adjusted],
                closing[adjusted],
            ),
            (
                "snapshot",
                every,
                np.full(n, midnight + _MS_PER_DAY - 1000),
                np.zeros(n, dtype=np.int64),
                closing,
            ),
        ]
        kinds = np.concatenate([np.full(len(p[1]), p[0], dtype=object) for p in pieces])
        pairs = np.concatenate([p[1] for p in pieces]).astype(np.int64)
        times = np.concatenate([p[2] for p in pieces]).astype(np.int64)
        change = np.concatenate([p[3] for p in pieces]).astype(np.int32)
        level = np.concatenate([p[4] for p in pieces]).astype(np.int32)
        product = self.pair_product[pairs]
        frame = pd.DataFrame(
            {
                "event_id": random_uuids(rng, len(pairs)),
                "event_time_ms": times,
                "store_id": self.pair_store_id[pairs],
                "product_id": self.pair_product_id[pairs],
                "event_type": kinds,
                "quantity_change": change,
                "stock_level": level,
                "reorder_point": self.world.reorder_point[pairs].astype(np.int32),
                "lead_time_days": self.lead_time[product],
                "unit_cost": self.unit_cost[product],
            }
        )
        order = np.argsort(times, kind="stable")
        return frame.iloc[order].reset_index(drop=True)


def simulate_days(world: World, state: SimState, days: int) -> list[DayResult]:
    """Run ``days`` days from ``state`` (a convenience for tests and small callers)."""
    simulator = Simulator(world)
    results = []
    for _ in range(days):
        result = simulator.run_day(state)
        results.append(result)
        state = result.state
    return results
