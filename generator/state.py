"""Save and load where the simulated world stands, so the stream continues the backfill's world."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from common.store import Store
from generator.simulate import SimState
from generator.world import World


def save_state(store: Store, world: World, state: SimState, mode: str) -> None:
    """Record ``state`` as the latest state of ``world`` (generator_state, one row per world)."""
    orders = np.stack([state.order_due, state.order_pair, state.order_quantity], axis=1)
    row = pd.DataFrame(
        {
            "world_key": [world.key],
            "seed": np.array([world.seed], dtype=np.uint64),
            "scale": [float(world.scale)],
            "n_stores": np.array([world.n_stores], dtype=np.uint32),
            "n_products": np.array([world.n_products], dtype=np.uint32),
            "n_customers": np.array([len(world.customers)], dtype=np.uint32),
            "next_date": [state.next_date],
            "stock_json": [json.dumps(state.stock.tolist(), separators=(",", ":"))],
            "orders_json": [json.dumps(orders.tolist(), separators=(",", ":"))],
            "mode": [mode],
            "saved_at": [pd.Timestamp.now(tz="UTC")],
        }
    )
    store.insert_df("generator_state", row)


def load_state(store: Store, world: World) -> SimState | None:
    """The latest saved state of ``world``, or None when it was never simulated in this store."""
    frame = store.query_df(
        "SELECT next_date, stock_json, orders_json FROM generator_state FINAL "
        "WHERE world_key = {key:String} ORDER BY saved_at DESC LIMIT 1",
        {"key": world.key},
    )
    if frame.empty:
        return None
    row = frame.iloc[0]
    stock = np.array(json.loads(row["stock_json"]), dtype=np.int64)
    if len(stock) != world.n_pairs:
        raise ValueError(
            f"generator_state for {world.key} holds {len(stock)} pairs, the world has "
            f"{world.n_pairs}: the catalog changed; backfill again"
        )
    orders = np.array(json.loads(row["orders_json"]), dtype=np.int64).reshape(-1, 3)
    return SimState(
        next_date=pd.Timestamp(row["next_date"]).date(),
        stock=stock,
        order_due=orders[:, 0].copy(),
        order_pair=orders[:, 1].copy(),
        order_quantity=orders[:, 2].copy(),
    )
