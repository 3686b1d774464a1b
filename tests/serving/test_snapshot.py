"""Reading the serving tables into memory: only what changed, newest row per day, fallbacks."""

from __future__ import annotations

import datetime as dt
import uuid

import pandas as pd
from serving_world import FORECAST_DAYS, ORIGIN, forecast_rows

from serving.snapshot import ServingData, read_changed_tables


def test_a_first_read_holds_the_stored_forecasts_and_the_catalog(serving_store, world):
    data = read_changed_tables(serving_store, ServingData(), world.demand_model)

    days = data.forecasts[(world.store_id, world.product_id)]
    expected = forecast_rows(world, "1", 1.0)
    assert [d.date for d in days.values()] == [
        ORIGIN + dt.timedelta(days=i) for i in range(FORECAST_DAYS)
    ]
    assert [d.predicted_units for d in days.values()] == list(expected["predicted_units"])
    assert [d.upper_90 for d in days.values()] == list(expected["upper_90"])
    assert {d.model_version for d in days.values()} == {"1"}
    assert {world.store_id, world.other_store_id} <= data.known_stores
    assert data.products[world.product_id].case_pack == 6
    assert data.forecast_origin == ORIGIN
    assert data.table_errors == {}


def test_a_later_read_rereads_only_the_changed_tables_and_the_newest_row_wins(
    serving_store, world, monkeypatch
):
    monkeypatch.setattr(
        "serving.snapshot.EVENT_LEVELS_EVERY_S", 1e12
    )  # no clock tick between reads
    first = read_changed_tables(serving_store, ServingData(), world.demand_model)
    unchanged = read_changed_tables(serving_store, first, world.demand_model)
    assert unchanged.read_at == first.read_at
    assert unchanged.forecasts is first.forecasts

    other_model = f"other_{uuid.uuid4().hex[:6]}"
    newer = forecast_rows(world, "7", 5.0).assign(model_name=other_model)
    serving_store.insert_df("forecasts", newer)
    changed = read_changed_tables(serving_store, unchanged, other_model)

    assert changed.read_at["forecasts"] > unchanged.read_at["forecasts"]
    assert changed.read_at["products"] == unchanged.read_at["products"]
    days = changed.forecasts[(world.store_id, world.product_id)]
    assert [d.predicted_units for d in days.values()] == list(newer["predicted_units"])
    assert changed.forecast_versions == {"7": FORECAST_DAYS}
    # The other model's newer rows replaced this model's (one row per key and day, FINAL).
    assert (world.store_id, world.product_id) not in read_changed_tables(
        serving_store, ServingData(), world.demand_model
    ).forecasts
    serving_store.insert_df("forecasts", forecast_rows(world, "1", 1.0))


def test_a_merge_of_parts_is_no_change_and_an_insert_or_a_delete_is(
    serving_store, world, monkeypatch
):
    """The store merges a table's parts in the background whenever it likes: that must not make
    serving read the table again (the read above would depend on when merges run), while new
    rows and deleted ones must."""
    monkeypatch.setattr(
        "serving.snapshot.EVENT_LEVELS_EVERY_S", 1e12
    )  # no clock tick between reads
    first = read_changed_tables(serving_store, ServingData(), world.demand_model)
    tag = uuid.uuid4().hex[:6]
    other_model, other_store = f"merged_{tag}", f"SM{tag}"  # rows of their own: none replaced
    for version in ("1", "2"):
        rows = forecast_rows(world, version, 1.0).assign(model_name=other_model)
        serving_store.insert_df("forecasts", rows.assign(store_id=other_store))
    inserted = read_changed_tables(serving_store, first, world.demand_model)
    assert inserted.read_at["forecasts"] > first.read_at["forecasts"]

    serving_store.execute("OPTIMIZE TABLE forecasts FINAL")
    merged = read_changed_tables(serving_store, inserted, world.demand_model)
    assert merged.read_at == inserted.read_at

    serving_store.execute(
        "DELETE FROM forecasts WHERE model_name = {model:String}", {"model": other_model}
    )
    deleted = read_changed_tables(serving_store, merged, world.demand_model)
    assert deleted.read_at["forecasts"] > merged.read_at["forecasts"]
    assert deleted.read_at["products"] == merged.read_at["products"]


def test_pairs_the_inventory_job_has_not_seen_keep_their_latest_inventory_event(
    serving_settings, world
):
    from common.settings import load_settings
    from common.store import migrate, open_store

    store_id = f"SI{uuid.uuid4().hex[:6]}"
    settings = load_settings(data_dir=serving_settings.data_root / f"fallback-{store_id}")
    store = open_store(settings)
    migrate(store)
    events = pd.DataFrame(
        [
            {
                "event_id": f"{store_id}-{i}",
                "event_time": pd.Timestamp("2025-03-10 08:00") + pd.Timedelta(hours=i),
                "store_id": store_id,
                "product_id": world.product_id,
                "event_type": "sale",
                "quantity_change": -1,
                "stock_level": level,
                "reorder_point": 4,
                "lead_time_days": 3.0,
                "unit_cost": 1.0,
            }  # fmt: skip
            for i, level in enumerate([9, 8, 7])
        ]
    )
    store.insert_df("inventory_events", events)

    data = read_changed_tables(store, ServingData(), world.demand_model)

    level = data.stock_levels[(store_id, world.product_id)]
    assert level.stock_level == 7
    assert level.as_of == dt.datetime(2025, 3, 10, 10, tzinfo=dt.UTC)
    assert level.lead_time_days == 3.0
    assert store_id in data.known_stores

    # The inventory job starts and writes the level of another pair: the backfilled pair keeps
    # its level from the events, the job's pair has the job's.
    streamed = {
        "store_id": store_id,
        "product_id": "P-streamed",
        "stock_level": 40,
        "event_time": pd.Timestamp("2025-03-11 09:00"),
        "reorder_point": 4,
        "lead_time_days": 2.0,
        "unit_cost": 1.0,
        "effective_reorder_point": 4.0,
        "threshold_source": "static",
        "model_name": "",
        "model_version": "",
        "last_event_id": f"{store_id}-streamed",
        "last_event_type": "restock",
        "updated_at": pd.Timestamp("2025-03-11 09:00"),
    }
    store.insert_df("stock_levels", pd.DataFrame([streamed]))
    later = read_changed_tables(store, data, world.demand_model)

    assert later.stock_levels[(store_id, world.product_id)].stock_level == 7
    assert later.stock_levels[(store_id, "P-streamed")].stock_level == 40
    assert later.stock_levels[(store_id, "P-streamed")].lead_time_days == 2.0
