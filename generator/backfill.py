"""History straight into the store: catalog, calendar, ground truth and raw events, in bulk."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from common.store import Store
from generator.simulate import DayResult, Simulator, initial_state
from generator.state import save_state
from generator.world import World, build_world, calendar_frame

log = logging.getLogger(__name__)

FLUSH_ROWS = 400_000


def sales_rows(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """A day's sales line items as rows of the ``sales_events`` table."""
    rows = frame.drop(columns="event_time_ms")
    rows.insert(1, "event_time", pd.to_datetime(frame["event_time_ms"], unit="ms", utc=True))
    rows["on_promotion"] = frame["on_promotion"].astype(np.uint8)
    rows["source"] = source
    return rows


def inventory_rows(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """A day's stock movements as rows of the ``inventory_events`` table."""
    rows = frame.drop(columns="event_time_ms")
    rows.insert(1, "event_time", pd.to_datetime(frame["event_time_ms"], unit="ms", utc=True))
    rows["source"] = source
    return rows


def write_catalog(store: Store, world: World, start: dt.date, days: int) -> None:
    """Insert the stores, products, customers and the calendar of the simulated days."""
    token = f"catalog-{world.key}"
    store.insert_df("stores", world.stores, dedup_token=f"{token}-stores")
    store.insert_df("products", world.products, dedup_token=f"{token}-products")
    store.insert_df("customers", world.customers, dedup_token=f"{token}-customers")
    store.insert_df(
        "calendar",
        calendar_frame(start, days),
        dedup_token=f"calendar-{start.isoformat()}-{days}",
    )


class _Buffer:
    """Collects days of frames and inserts them in large blocks, each with a stable token."""

    def __init__(self, store: Store, world: World, source: str) -> None:
        self.store, self.world, self.source = store, world, source
        self.days: list[DayResult] = []
        self.rows = 0

    def add(self, result: DayResult) -> None:
        self.days.append(result)
        self.rows += len(result.sales) + len(result.inventory)
        if self.rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.days:
            return
        first, last = self.days[0].day.isoformat(), self.days[-1].day.isoformat()
        token = f"{self.source}-{self.world.key}-{first}-{last}"
        self.store.insert_df(
            "ground_truth",
            pd.concat([d.ground_truth for d in self.days], ignore_index=True),
            dedup_token=f"{token}-truth",
        )
        self.store.insert_df(
            "sales_events",
            sales_rows(pd.concat([d.sales for d in self.days], ignore_index=True), self.source),
            dedup_token=f"{token}-sales",
        )
        self.store.insert_df(
            "inventory_events",
            inventory_rows(
                pd.concat([d.inventory for d in self.days], ignore_index=True), self.source
            ),
            dedup_token=f"{token}-inventory",
        )
        self.days, self.rows = [], 0


def backfill(
    store: Store,
    days: int,
    seed: int,
    scale: float = 1.0,
    start_date: dt.date | None = None,
    *,
    n_stores: int | None = None,
    n_products: int | None = None,
    n_customers: int | None = None,
    prefix: str = "",
    on_day: Callable[[DayResult], None] | None = None,
) -> dict[str, Any]:
    """Simulate ``days`` days from ``start_date`` (default: ``days`` days before today, UTC) and
    write catalog, calendar, ground truth, raw events (``source='backfill'``) and the final state.

    The store must be migrated. Re-running with the same arguments rewrites identical rows.
    ``on_day`` is called after each simulated day (a progress bar hooks in there).
    Returns counts: days, sales_events, inventory_events, ground_truth_rows, transactions, seconds.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    began = time.perf_counter()
    world = build_world(
        seed,
        scale,
        n_stores=n_stores,
        n_products=n_products,
        n_customers=n_customers,
        prefix=prefix,
    )
    start = start_date or (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days))
    simulator = Simulator(world)
    state = initial_state(world, start)
    counts = {"sales_events": 0, "inventory_events": 0, "ground_truth_rows": 0, "transactions": 0}
    with store.session():
        write_catalog(store, world, start, days)
        buffer = _Buffer(store, world, "backfill")
        for _ in range(days):
            result = simulator.run_day(state)
            state = result.state
            counts["sales_events"] += len(result.sales)
            counts["inventory_events"] += len(result.inventory)
            counts["ground_truth_rows"] += len(result.ground_truth)
            counts["transactions"] += result.sales["transaction_id"].nunique()
            buffer.add(result)
            if on_day is not None:
                on_day(result)
        buffer.flush()
        save_state(store, world, state, mode="backfill")
    seconds = time.perf_counter() - began
    log.info(
        "backfill of %d days (%s .. %s) for %s: %d line items in %.1f s",
        days,
        start,
        state.next_date - dt.timedelta(days=1),
        world.key,
        counts["sales_events"],
        seconds,
    )
    return {
        "days": days,
        **counts,
        "seconds": round(seconds, 3),
        "line_items_per_minute": round(counts["sales_events"] / seconds * 60.0, 1),
        "start_date": start.isoformat(),
        "next_date": state.next_date.isoformat(),
        "world": world.key,
    }
