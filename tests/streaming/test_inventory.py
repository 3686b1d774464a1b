"""The inventory job: hand-computed window metrics and alerts on static frames, then the real thing
on the real broker and store: alerts, late events, duplicates, poison records, exactly once across
a SIGKILL, and stock scoring that follows the champion alias."""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf
from pyspark.testing import assertDataFrameEqual

from common.schemas import INVENTORY_EVENT_SCHEMA, event_key
from common.settings import Settings
from common.store import Store
from streaming.inventory import (
    CHANGES_SCHEMA,
    JOB,
    InventoryRules,
    StockPolicy,
    StockState,
    ThresholdsFile,
    alert_change_rows,
    alert_rows,
    batch_tables,
    build_queries,
    event_rows,
    inventory_panes,
    parse_inventory,
    recommend_stock,
    stock_level_rows,
    track_bucket,
    track_inventory,
    track_movements,
    unpacked_movements,
    windowed_inventory_metrics,
)
from streaming.runtime import run_queries, stop_gracefully

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAY = dt.date(2026, 3, 2)
EVENT_COLUMNS = (
    "event_id string, event_time timestamp, store_id string, product_id string, "
    "event_type string, quantity_change int, stock_level int, reorder_point int, "
    "lead_time_days double, unit_cost double"
)
METRIC_COLUMNS = (
    "window_start timestamp, window_end timestamp, store_id string, product_id string, "
    "units_sold long, units_received long, units_shrinkage long, units_adjusted long, "
    "events long, products long, avg_on_hand double, turnover double, days_of_cover double"
)


def at(clock: str, day: dt.date = DAY) -> dt.datetime:
    """A naive UTC moment on ``day`` from 'HH:MM[:SS]'."""
    return dt.datetime.combine(day, dt.time.fromisoformat(clock))


def movement(
    event_id: str,
    clock: str,
    store_id: str,
    product_id: str,
    event_type: str,
    change: int,
    level: int,
    reorder_point: int = 10,
    lead_time_days: float = 1.0,
) -> dict:
    """One inventory event as the generator would send it (event_time as ISO-8601 UTC)."""
    return {
        "event_id": event_id,
        "event_time": at(clock).isoformat() + "Z",
        "store_id": store_id,
        "product_id": product_id,
        "event_type": event_type,
        "quantity_change": change,
        "stock_level": level,
        "reorder_point": reorder_point,
        "lead_time_days": lead_time_days,
        "unit_cost": 2.0,
    }


def events_frame(spark: SparkSession, events: list[dict]) -> DataFrame:
    rows = [
        {**e, "event_time": dt.datetime.fromisoformat(e["event_time"].removesuffix("Z"))}
        for e in events
    ]
    return spark.createDataFrame(pd.DataFrame(rows), EVENT_COLUMNS)


def metric_events(store: str) -> list[dict]:
    """Two products of one store; the windows below are worked out by hand from these.

    Reorder points 20 and 10 and a 0.02-day lead time keep every level clear of any alert.
    """
    lead = 0.02
    return [
        movement("m1", "10:00:30", store, "P1", "snapshot", 0, 50, 20, lead),
        movement("m2", "10:01:00", store, "P1", "sale", -5, 45, 20, lead),
        movement("m3", "10:03:00", store, "P1", "sale", -10, 35, 20, lead),
        movement("m4", "10:03:30", store, "P1", "restock", 20, 55, 20, lead),
        movement("m5", "10:05:00", store, "P1", "shrinkage", -5, 50, 20, lead),
        movement("m6", "10:02:00", store, "P2", "sale", -4, 16, 10, lead),
    ]


def hand_windows(store: str) -> list[tuple]:
    """10-minute windows sliding by 2 minutes (panes 10:00, 10:02, 10:04 of P1; 10:02 of P2).

    P1 panes: 10:00 sold 5, levels 50+45; 10:02 sold 10, received 20, levels 35+55;
    10:04 shrinkage 5, level 50. P2 pane 10:02: sold 4, level 16. avg_on_hand = mean level,
    turnover = sold / avg_on_hand, days_of_cover = avg_on_hand / (sold x 144 windows a day);
    a store's avg_on_hand is the sum over its products.
    """
    rows = [
        # start, product, sold, received, shrinkage, events, products, avg on hand
        ("09:52", "P1", 5, 0, 0, 2, 1, 95 / 2),
        ("09:54", "P1", 15, 20, 0, 4, 1, 185 / 4),
        ("09:56", "P1", 15, 20, 5, 5, 1, 235 / 5),
        ("09:58", "P1", 15, 20, 5, 5, 1, 235 / 5),
        ("10:00", "P1", 15, 20, 5, 5, 1, 235 / 5),
        ("10:02", "P1", 10, 20, 5, 3, 1, 140 / 3),
        ("10:04", "P1", 0, 0, 5, 1, 1, 50.0),
        *[(start, "P2", 4, 0, 0, 1, 1, 16.0) for start in ("09:54", "09:56", "09:58", "10:00")],
        ("10:02", "P2", 4, 0, 0, 1, 1, 16.0),
        ("09:52", "ALL", 5, 0, 0, 2, 1, 95 / 2),
        ("09:54", "ALL", 19, 20, 0, 5, 2, 185 / 4 + 16),
        ("09:56", "ALL", 19, 20, 5, 6, 2, 47 + 16),
        ("09:58", "ALL", 19, 20, 5, 6, 2, 47 + 16),
        ("10:00", "ALL", 19, 20, 5, 6, 2, 47 + 16),
        ("10:02", "ALL", 14, 20, 5, 4, 2, 140 / 3 + 16),
        ("10:04", "ALL", 0, 0, 5, 1, 1, 50.0),
    ]
    result = []
    for start, product, sold, received, shrinkage, events, products, mean_level in rows:
        on_hand = float(mean_level)
        window_start = at(start)
        result.append(
            (
                window_start,
                window_start + dt.timedelta(minutes=10),
                store,
                product,
                sold,
                received,
                shrinkage,
                0,
                events,
                products,
                on_hand,
                sold / on_hand,
                on_hand / (sold * 144) if sold else None,
            )
        )
    return result


@pytest.mark.spark
def test_window_metrics_equal_hand_computed(spark: SparkSession) -> None:
    events = events_frame(spark, metric_events("M1"))
    expected = spark.createDataFrame(hand_windows("M1"), METRIC_COLUMNS)
    assertDataFrameEqual(windowed_inventory_metrics(events, InventoryRules()), expected)
    # Spot checks of the two ratios the issue names, written out:
    turnover = {(r[0].strftime("%H:%M"), r[3]): (r[11], r[12]) for r in hand_windows("M1")}
    assert turnover[("10:00", "P1")] == pytest.approx((15 / 47, 47 / 2160))
    assert turnover[("10:04", "P1")] == (0.0, None)


def drain_events(store: str) -> list[dict]:
    """Drained to zero at 10:05, restocked at 10:20 (lead time 0.02 d = 0.48 h)."""
    return [
        movement("d1", "10:00:00", store, "P1", "snapshot", 0, 30, lead_time_days=0.02),
        movement("d2", "10:05:00", store, "P1", "sale", -30, 0, lead_time_days=0.02),
        movement("d3", "10:20:00", store, "P1", "restock", 40, 40, lead_time_days=0.02),
    ]


@pytest.mark.spark
def test_static_tracking_gives_one_critical_alert_and_the_latest_level(spark: SparkSession) -> None:
    events = events_frame(spark, drain_events("D1") + metric_events("D2"))
    changes = track_inventory(events, InventoryRules()).persist()
    alerts = alert_rows(changes).select(
        "store_id",
        "product_id",
        "alert_type",
        "severity",
        "peak_severity",
        "status",
        "opened_at",
        "resolved_at",
    )
    expected = spark.createDataFrame(
        [("D1", "P1", "low_stock", "CRITICAL", "CRITICAL", "resolved", at("10:05"), at("10:20"))],
        "store_id string, product_id string, alert_type string, severity string, "
        "peak_severity string, status string, opened_at timestamp, resolved_at timestamp",
    )
    assertDataFrameEqual(alerts, expected)  # the metric events of D2 stay clear of alerts
    levels = stock_level_rows(changes).select(
        "store_id", "product_id", "stock_level", "last_event_id"
    )
    assertDataFrameEqual(
        levels,
        spark.createDataFrame(
            [("D1", "P1", 40, "d3"), ("D2", "P1", 50, "m5"), ("D2", "P2", 16, "m6")],
            "store_id string, product_id string, stock_level int, last_event_id string",
        ),
    )
    assert event_rows(changes).count() == 9
    changes.unpersist()


@pytest.mark.spark
def test_the_jobs_tables_from_a_collected_batch_equal_the_spark_transforms(
    spark: SparkSession,
) -> None:
    events = events_frame(spark, drain_events("C1") + metric_events("C2"))
    changes = track_inventory(events, InventoryRules()).persist()
    tables = batch_tables(changes.toArrow(), InventoryRules().slide_minutes)
    spark_events = event_rows(changes)
    expected = {
        "inventory_events": spark_events.select(
            *[f.name for f in INVENTORY_EVENT_SCHEMA.fields], sf.lit("stream").alias("source")
        ),
        "inventory_panes": inventory_panes(spark_events, InventoryRules().slide_minutes),
        "stock_levels": stock_level_rows(changes),
        "stock_alerts": alert_rows(changes),
        "stock_alert_changes": alert_change_rows(changes),
    }
    assert {table: len(rows) for table, rows in tables.items()} == {
        "inventory_events": 9,
        "inventory_panes": 7,  # C1's 10:00, 10:04, 10:20; C2's P1 10:00-10:04 and P2 10:02
        "stock_levels": 3,
        "stock_alerts": 1,
        "stock_alert_changes": 2,  # opened at 10:05, resolved at 10:20
    }
    for table, frame in expected.items():
        pd.testing.assert_frame_equal(sorted_rows(tables[table]), sorted_rows(frame.toPandas()))
    changes.unpersist()


def packed_movement(
    key: tuple[str, str],
    offset: int,
    kind: str,
    change: int,
    level: int,
    *,
    event_id: str | None = None,
    clock: str | None = None,
) -> dict:
    """One event as the state function receives it: its key and its ``movement`` JSON. By default
    the ``offset``-th record of its partition is stamped ``offset`` minutes after 10:00."""
    moment = at(clock) if clock else at("10:00") + dt.timedelta(minutes=offset)
    movement = {
        "event_id": event_id or f"{key[0]}-{key[1]}-{offset}",
        "event_time": int(moment.replace(tzinfo=dt.UTC).timestamp() * 1000),
        "event_type": kind,
        "quantity_change": change,
        "stock_level": level,
        "reorder_point": 10,
        "lead_time_days": 2.0,
        "unit_cost": 1.5,
        "kafka_partition": 0,
        "kafka_offset": offset,
    }
    return {"store_id": key[0], "product_id": key[1], "movement": json.dumps(movement)}


def bucket_events() -> list[dict]:
    """Three keys interleaved: one drained to zero and restocked, one slowly declining, one
    steady."""
    drained, declining, steady = ("B1", "P1"), ("B1", "P2"), ("B2", "P1")
    steps = [
        (drained, "sale", -20, 30),
        (declining, "sale", -5, 25),
        (steady, "snapshot", 0, 60),
        (drained, "sale", -30, 0),
        (declining, "sale", -10, 15),
        (drained, "restock", 50, 50),
        (declining, "sale", -10, 5),
        (steady, "sale", -1, 59),
        (declining, "sale", -5, 0),
    ]
    return [packed_movement(key, n, *step) for n, (key, *step) in enumerate(steps)]


def sorted_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.sort_values(list(rows.columns)).reset_index(drop=True)


def test_a_bucket_tracks_each_key_as_if_it_were_alone_across_batches() -> None:
    rules = InventoryRules(state_buckets=4)
    events = bucket_events()
    cuts = [(0, 4), (4, 9)]
    saved, bucket_rows = None, []
    for start, end in cuts:
        batch = pd.DataFrame(events[start:end])
        saved, rows = track_bucket([batch.iloc[:2], batch.iloc[2:]], saved, rules, 1_000)
        bucket_rows.append(rows)
    per_key_rows = []
    for key in sorted({(e["store_id"], e["product_id"]) for e in events}):
        state = None
        for start, end in cuts:
            payloads = [
                e["movement"] for e in events[start:end] if (e["store_id"], e["product_id"]) == key
            ]
            if not payloads:
                continue
            movements = unpacked_movements(*key, payloads)
            state, rows = track_movements(*key, state, movements, rules, 1_000)
            state = StockState.from_json(state.to_json())
            per_key_rows.extend(rows)
    expected = pd.DataFrame(per_key_rows, columns=bucket_rows[0].columns, dtype=object)
    got = pd.concat(bucket_rows, ignore_index=True)
    pd.testing.assert_frame_equal(sorted_rows(got), sorted_rows(expected))
    changes = got[got["kind"] == "alert_change"]
    severities = {
        (row.store_id, row.product_id, json.loads(row.payload)["to_severity"])
        for row in changes.itertuples()
    }
    assert ("B1", "P1", "CRITICAL") in severities  # the drained key, whose state spans both batches
    assert {(store, product) for store, product, _ in severities} == {
        ("B1", "P1"),
        ("B1", "P2"),
        ("B2", "P1"),
    }
    assert saved[0] == 4
    assert set(json.loads(saved[1])) == {'["B1","P1"]', '["B1","P2"]', '["B2","P1"]'}


CHANGES_ARROW = pa.schema([(f.name, pa.string()) for f in CHANGES_SCHEMA.fields])


def resent_stream() -> list[dict]:
    """One key's records as a flaky producer and a slow till send them: repeats within and beyond
    the key's 60-minute horizon, a late sale within it and a stale one beyond it."""
    records = [
        ("e0", "10:00", "snapshot", 0, 50),
        ("e1", "10:05", "sale", -5, 45),
        ("e1", "10:05", "sale", -5, 45),  # a repeat the state remembers
        ("e3", "12:30", "sale", -10, 35),  # the horizon is now 11:30
        ("e0", "10:00", "snapshot", 0, 50),  # a stale repeat
        ("e5", "10:40", "sale", -3, 47),  # stale, and new
        ("e5", "10:40", "sale", -3, 47),  # a stale repeat of a stale event
        ("e7", "12:10", "sale", -2, 37),  # late within the horizon
        ("e7", "12:10", "sale", -2, 37),  # a repeat the state remembers
    ]
    return [
        packed_movement(("B1", "P1"), n, *rest, event_id=event_id, clock=clock)
        for n, (event_id, clock, *rest) in enumerate(records)
    ]


def held_by(stored_ids: set[str], stale: pd.DataFrame) -> np.ndarray:
    """The store of a test: which stale events it holds already."""
    return stale["event_id"].isin(stored_ids).to_numpy()


def test_repeats_and_stale_events_count_once_however_the_records_fall_into_batches() -> None:
    """Every way of cutting the stream into micro-batches stores the same events, panes and level:
    the state skips the repeats it remembers, and a stale event counts unless the store (here a
    set of the ids earlier batches stored) or its own batch already holds it."""
    rules, records = InventoryRules(), resent_stream()
    outcomes = set()
    for cuts in itertools.product((False, True), repeat=len(records) - 1):
        ends = [n + 1 for n, cut in enumerate(cuts) if cut] + [len(records)]
        saved, start, stored_ids, tables = None, 0, set(), []
        for end in ends:
            saved, rows = track_bucket([pd.DataFrame(records[start:end])], saved, rules, 1_000)
            batch = batch_tables(
                pa.Table.from_pandas(rows, schema=CHANGES_ARROW),
                rules.slide_minutes,
                functools.partial(held_by, stored_ids),
            )
            stored_ids.update(batch["inventory_events"]["event_id"])
            tables.append(batch)
            start = end
        events = pd.concat([t["inventory_events"] for t in tables])
        panes = pd.concat([t["inventory_panes"] for t in tables])
        level = pd.concat([t["stock_levels"] for t in tables]).iloc[-1]
        sold = panes.groupby("pane_start")["units_sold"].sum()
        outcomes.add(
            (
                tuple(sorted(events["event_id"])),
                tuple(sold[sold > 0].items()),
                (level["stock_level"], level["last_event_id"]),
            )
        )
    assert outcomes == {
        (
            ("e0", "e1", "e3", "e5", "e7"),
            ((at("10:04"), 5), (at("10:40"), 3), (at("12:10"), 2), (at("12:30"), 10)),
            (35, "e3"),
        )
    }


def test_a_state_saved_before_it_remembered_ids_sends_its_repeats_to_the_store() -> None:
    """A key state from a checkpoint of before 930a3e5 (2026-12-07) knows no ids: a repeat of its
    last event is stale (the writer looks its id up in the store), never applied a second time."""
    rules, records = InventoryRules(), resent_stream()
    saved, _ = track_bucket([pd.DataFrame(records[:2])], None, rules, 1_000)
    states = json.loads(saved[1])
    old = {name: json.loads(state) for name, state in states.items()}
    for state in old.values():
        del state["seen_ids"], state["ids_since"]
    saved = (saved[0], json.dumps({name: json.dumps(state) for name, state in old.items()}))
    _, rows = track_bucket([pd.DataFrame(records[2:4])], saved, rules, 2_000)
    dispositions = [
        (json.loads(row.payload)["event_id"], json.loads(row.payload)["disposition"])
        for row in rows.itertuples()
        if row.kind == "event"
    ]
    assert dispositions == [("e1", "stale"), ("e3", "applied")]


def test_a_state_finds_an_id_digest_only_where_a_digest_starts() -> None:
    state = StockState.from_json(track_bucket_state(resent_stream()[:1]))
    ones, twos = "1" * 8, "2" * 8
    state.seen_ids = {5: "0" * 8 + ones + twos + "3" * 8 + ones + twos}
    assert state.seen(5, ones + twos)  # at 32, after a match across two digests at 8
    assert state.seen(5, twos + "3" * 8)
    assert not state.seen(5, ones + "0" * 8)
    assert not state.seen(5, "3" * 8 + ones)  # only across two digests, at 24
    assert not state.seen(6, ones + twos)


def track_bucket_state(records: list[dict]) -> str:
    """The one key's state after ``records``, as its bucket keeps it."""
    saved, _ = track_bucket([pd.DataFrame(records)], None, InventoryRules(), 1_000)
    return next(iter(json.loads(saved[1]).values()))


def test_a_checkpoint_with_another_bucket_count_is_refused_with_what_to_do() -> None:
    events = pd.DataFrame(bucket_events()[:2])
    saved, _ = track_bucket([events], None, InventoryRules(state_buckets=4), 1_000)
    with pytest.raises(ValueError, match="INVENTORY_STATE_BUCKETS is 8: set it back to 4"):
        track_bucket([events], saved, InventoryRules(state_buckets=8), 2_000)


def test_a_bucket_judges_each_key_with_its_model_threshold() -> None:
    events = pd.DataFrame(bucket_events())
    thresholds = {("B1", "P2"): (45.0, 12.0, "stock", "7")}
    _, rows = track_bucket([events], None, InventoryRules(), 1_000, thresholds)
    levels = {
        (row.store_id, row.product_id): json.loads(row.payload)
        for row in rows[rows["kind"] == "level"].itertuples()
    }
    modelled = levels[("B1", "P2")]
    assert (modelled["threshold_source"], modelled["model_version"]) == ("model", "7")
    assert modelled["effective_reorder_point"] == 45.0
    assert modelled["demand_per_hour"] == 0.5
    assert levels[("B1", "P1")]["threshold_source"] == "event"
    assert levels[("B1", "P1")]["effective_reorder_point"] == 10


def recommendation(store_id: str, reorder_point: float, version: str, scored_at: str) -> dict:
    return {
        "store_id": store_id,
        "product_id": "P1",
        "as_of": pd.Timestamp("2026-03-02 10:00", tz="UTC"),
        "forecast_date": DAY,
        "stock_level": 30,
        "lead_time_days": 2.0,
        "lead_time_demand": 8.0,
        "daily_demand": 4.0,
        "safety_stock": 3.0,
        "reorder_point": reorder_point,
        "order_up_to": 40.0,
        "order_quantity": 10,
        "reorder_now": 0,
        "days_of_cover": 7.5,
        "eta_hours": 180.0,
        "stockout_eta": None,
        "service_level": 0.95,
        "stock_model_name": "stock",
        "stock_model_version": version,
        "demand_model_name": "",
        "demand_model_version": "",
        "query_name": "test",
        "batch_id": 0,
        "scored_at": pd.Timestamp(scored_at, tz="UTC"),
    }


def test_the_thresholds_file_follows_the_store_is_replaced_only_on_change_and_kept_for_a_replay(
    store: Store, tmp_path: Path
) -> None:
    store_id = f"TH{uuid.uuid4().hex[:6]}"
    thresholds = ThresholdsFile(str(tmp_path / "job" / "thresholds.arrow"))
    assert thresholds.load() == {}  # nothing published yet: every event's own reorder point
    store.insert_df(
        "stock_recommendations", pd.DataFrame([recommendation(store_id, 20.0, "1", "10:00")])
    )
    thresholds.refresh(store, "q.s-0")
    assert thresholds.load()[(store_id, "P1")] == (20.0, 4.0, "stock", "1")
    first = os.stat(thresholds.path).st_ino
    thresholds.refresh(store, "q.s-1")
    assert os.stat(thresholds.path).st_ino == first  # unchanged: not rewritten, not reloaded
    store.insert_df(
        "stock_recommendations", pd.DataFrame([recommendation(store_id, 30.0, "2", "10:05")])
    )
    thresholds.refresh(store, "q.s-1")  # batch 1 replayed: what its first attempt ran with
    assert thresholds.load()[(store_id, "P1")] == (20.0, 4.0, "stock", "1")
    thresholds.refresh(store, "q.s-2")
    assert thresholds.load()[(store_id, "P1")] == (30.0, 4.0, "stock", "2")
    thresholds.refresh(store, "q.s-3", with_model=False)  # the champion alias was removed
    assert thresholds.load() == {}


def test_recommendations_follow_the_documented_formulas() -> None:
    frame = pd.DataFrame(
        {
            "store_id": ["S1", "S1"],
            "product_id": ["P1", "P2"],
            "as_of": [pd.Timestamp("2026-03-02 10:00")] * 2,
            "forecast_date": [DAY] * 2,
            "stock_level": [20, 100],
            "lead_time_days": [2.0, 2.0],
            "lead_time_demand": [24.0, 24.0],
            "daily_demand": [float("nan"), 10.0],
            "safety_factor": [2.0, 2.0],
            "stock_model_name": ["stock_optimizer"] * 2,
            "stock_model_version": ["3"] * 2,
            "demand_model_name": [None, "demand_forecaster"],
            "demand_model_version": [None, "5"],
        }
    )
    advice = recommend_stock(frame, StockPolicy(service_level=0.95, review_days=7)).set_index(
        "product_id"
    )
    # safety stock 2 x sqrt(25) = 10, reorder point 34. P1: daily 24 / 2 = 12 (no demand model),
    # order up to 34 + 84 = 118, order 98; cover 20 / 12 d = 40 h. P2: daily 10 from the model,
    # level 100 > 34: no order; cover 10 d.
    p1, p2 = advice.loc["P1"], advice.loc["P2"]
    assert (p1.safety_stock, p1.reorder_point, p1.daily_demand, p1.order_up_to) == (10, 34, 12, 118)
    assert (p1.order_quantity, p1.reorder_now, p1.eta_hours) == (98, 1, pytest.approx(40.0))
    assert p1.stockout_eta == pd.Timestamp("2026-03-04 02:00")
    assert (p2.order_quantity, p2.reorder_now, p2.days_of_cover) == (0, 0, 10.0)
    assert (p2.demand_model_version, p1.demand_model_version) == ("5", "")


def test_dead_stock_has_no_stockout_eta_instead_of_one_past_the_year_2262() -> None:
    frame = pd.DataFrame(
        {
            "store_id": ["S1"],
            "product_id": ["P1"],
            "as_of": [pd.Timestamp("2026-03-02 10:00")],
            "forecast_date": [DAY],
            "stock_level": [500],
            "lead_time_days": [2.0],
            "lead_time_demand": [0.008],
            "daily_demand": [float("nan")],  # 0.004 a day: 125,000 days of cover
            "safety_factor": [2.0],
            "stock_model_name": ["stock_optimizer"],
            "stock_model_version": ["3"],
            "demand_model_name": [None],
            "demand_model_version": [None],
        }
    )
    advice = recommend_stock(frame, StockPolicy(service_level=0.95, review_days=7)).iloc[0]
    assert advice.days_of_cover == pytest.approx(125_000)
    assert pd.isna(advice.eta_hours) and pd.isna(advice.stockout_eta)


def test_orders_come_in_whole_case_packs() -> None:
    frame = pd.DataFrame(
        {
            "store_id": ["S1"] * 3,
            "product_id": ["P1", "P2", "P3"],
            "as_of": [pd.Timestamp("2026-03-02 10:00")] * 3,
            "forecast_date": [DAY] * 3,
            "stock_level": [20, 20, 20],
            "lead_time_days": [2.0] * 3,
            "lead_time_demand": [24.0] * 3,
            "daily_demand": [float("nan")] * 3,
            "safety_factor": [2.0] * 3,
            "stock_model_name": ["stock_optimizer"] * 3,
            "stock_model_version": ["3"] * 3,
            "demand_model_name": [None] * 3,
            "demand_model_version": [None] * 3,
            "case_pack": [12, 7, float("nan")],  # P3: a product the catalogue does not know
        }
    )
    advice = recommend_stock(frame, StockPolicy(service_level=0.95, review_days=7))
    # 98 units short (see above): 9 packs of 12, 14 of 7, and 98 single units.
    assert advice["order_quantity"].tolist() == [108, 98, 98]
    assert advice["order_quantity"].dtype == "int64"


# ---------------------------------------------------------------- the real broker and store


@pytest.fixture
def job_settings(settings: Settings, kafka: str, tmp_path: Path) -> Settings:
    """The session's settings with a topic and checkpoints of this test's own."""
    from common.stack import ensure_topics

    topic = f"inventory-{uuid.uuid4().hex[:10]}"
    ensure_topics(settings.model_copy(update={"inventory_topic": topic, "sales_topic": topic}))
    return settings.model_copy(
        update={"inventory_topic": topic, "checkpoint_dir": tmp_path / "checkpoints"}
    )


def encode(event: dict) -> tuple[bytes, bytes]:
    return event_key(event["store_id"], event["product_id"]), json.dumps(event).encode()


def produce(settings: Settings, records: list[tuple[bytes | None, bytes]]) -> list[tuple[int, int]]:
    """Send the records in order (acks=all); their (partition, offset)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    try:
        futures = [producer.send(settings.inventory_topic, key=k, value=v) for k, v in records]
        producer.flush()
        metadata = [f.get(timeout=60) for f in futures]
    finally:
        producer.close()
    return [(m.partition, m.offset) for m in metadata]


def run_available_now(spark: SparkSession, settings: Settings, name: str, **kwargs: Any) -> None:
    """Run the job on what the topic holds now, then stop (Trigger.AvailableNow)."""
    queries = build_queries(
        spark,
        settings,
        rules=InventoryRules(),
        policy=StockPolicy(),
        available_now=True,
        query_names=(f"{name}_changes", f"{name}_dead"),
        **kwargs,
    )
    run_queries(spark, queries, job=JOB, settings=settings)


def rows_of(store: Store, sql: str, prefix: str, stores: list[str] | None = None) -> pd.DataFrame:
    """The rows of the stores whose id starts with ``prefix`` (optionally only ``stores``)."""
    frame = store.query_df(sql, {"prefix": prefix})
    return frame if stores is None else frame[frame.store_id.isin(stores)].reset_index(drop=True)


def decline_events(store: str) -> list[dict]:
    """Reorder point 20, lead time 0.5 h; 4 units sold every 10 minutes from 40 (see
    test_alerts for the hand-worked rates): MEDIUM at 09:50, HIGH at 10:10, CRITICAL at 10:40."""
    lead = 1 / 48
    events = [movement("s0", "09:00", store, "P1", "snapshot", 0, 40, 20, lead)]
    clocks = ["09:10", "09:20", "09:30", "09:40", "09:50", "10:00", "10:10", "10:20", "10:30"]
    for i, clock in enumerate([*clocks, "10:40"], start=1):
        events.append(movement(f"s{i}", clock, store, "P1", "sale", -4, 40 - 4 * i, 20, lead))
    return events


def poison_records(store: str) -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, expected error fragment) for every kind of bad record."""
    good = movement("bad", "10:00", store, "P9", "sale", -1, 5)
    missing = {k: v for k, v in good.items() if k != "reorder_point"}
    return [
        (None, b'{"event_id": "x1", "store_id": ', "malformed JSON"),
        (None, json.dumps({**good, "stock_level": "unknown"}).encode(), "wrong type"),
        (None, json.dumps(missing).encode(), "missing required field(s): reorder_point"),
        (None, b'{"event_id": "\xff\xfe"}', "not valid UTF-8"),
        (None, json.dumps({**good, "stock_level": -3}).encode(), "stock_level must be >= 0"),
        (None, json.dumps({**good, "quantity_change": 5}).encode(), "quantity_change must be"),
        (
            None,
            json.dumps({**good, "event_time": "2099-01-01T10:00:00Z"}).encode(),
            "minutes ahead",
        ),
    ]


ALERTS_SQL = """
SELECT store_id, alert_type, severity, peak_severity, status, opened_at, resolved_at
FROM stock_alerts FINAL WHERE startsWith(store_id, {prefix:String}) ORDER BY store_id, opened_at
"""
CHANGES_SQL = """
SELECT store_id, change, from_severity, to_severity, toString(event_time) AS at, stock_level
FROM stock_alert_changes WHERE startsWith(store_id, {prefix:String})
ORDER BY store_id, event_time, change
"""
LEVELS_SQL = """
SELECT store_id, product_id, stock_level, last_event_id, threshold_source, model_version
FROM stock_levels FINAL WHERE startsWith(store_id, {prefix:String}) ORDER BY store_id, product_id
"""
METRICS_SQL = """
SELECT * EXCEPT computed_at FROM inventory_metrics FINAL
WHERE startsWith(store_id, {prefix:String}) ORDER BY window_start, store_id, product_id
"""


def as_naive(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for column in columns:
        frame[column] = pd.to_datetime(frame[column], utc=True).dt.tz_localize(None)
    return frame


def assert_metrics_equal(actual: pd.DataFrame, expected: list[tuple]) -> None:
    names = [c.split()[0] for c in METRIC_COLUMNS.split(", ")]
    wanted = pd.DataFrame(expected, columns=names).sort_values(
        ["window_start", "store_id", "product_id"], ignore_index=True
    )
    got = as_naive(actual[names].copy(), ["window_start", "window_end"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, wanted, check_dtype=False, rtol=1e-9)


@pytest.mark.services
@pytest.mark.spark
def test_stream_alerts_late_events_duplicates_and_poison(
    spark: SparkSession, store: Store, job_settings: Settings
) -> None:
    run = uuid.uuid4().hex[:6]
    names = ("a-drain", "b-decline", "c-late", "d-metrics")  # sorted: the order of the checks
    drain, falling, late, metrics = (f"{run}-{k}" for k in names)
    ooo = [
        movement("o1", "10:00", late, "P1", "snapshot", 0, 20, 5, 0.02),
        movement("o2", "10:10", late, "P1", "sale", -2, 18, 5, 0.02),
    ]
    first = drain_events(drain) + decline_events(falling) + ooo + metric_events(metrics)
    first = [{**e, "event_id": f"{e['event_id']}-{e['store_id']}"} for e in first]
    duplicates = [first[0], first[-1]]  # a producer retry re-sends the same event ids
    poison = poison_records(late)
    offsets = produce(job_settings, [encode(e) for e in first + duplicates])
    poison_offsets = produce(job_settings, [(k, v) for k, v, _ in poison])

    run_available_now(spark, job_settings, f"inv_{run}")

    # One batch held the drain to zero and the restock: the CRITICAL alert opened and resolved.
    alerts = rows_of(store, ALERTS_SQL, run)
    assert alerts[["store_id", "alert_type", "severity", "status"]].values.tolist() == [
        [drain, "low_stock", "CRITICAL", "resolved"],
        [falling, "low_stock", "CRITICAL", "open"],
    ]
    changes = rows_of(store, CHANGES_SQL, run)
    assert changes.drop(columns="at").values.tolist() == [
        [drain, "opened", "", "CRITICAL", 0],
        [drain, "resolved", "CRITICAL", "", 40],
        [falling, "opened", "", "MEDIUM", 20],
        [falling, "escalated", "MEDIUM", "HIGH", 12],
        [falling, "escalated", "HIGH", "CRITICAL", 0],
    ]
    assert_metrics_equal(rows_of(store, METRICS_SQL, metrics), hand_windows(metrics))
    dead = store.query_df(
        "SELECT kafka_partition, kafka_offset, error FROM dead_letters "
        "WHERE topic = {topic:String} ORDER BY kafka_partition, kafka_offset",
        {"topic": job_settings.inventory_topic},
    )
    assert sorted(zip(dead.kafka_partition, dead.kafka_offset, strict=True)) == sorted(
        poison_offsets
    )
    for (_, _, fragment), (partition, offset) in zip(poison, poison_offsets, strict=True):
        error = dead[(dead.kafka_partition == partition) & (dead.kafka_offset == offset)].error
        assert fragment in error.iloc[0]
    raw = store.scalar(
        "SELECT count() FROM inventory_events FINAL WHERE startsWith(store_id, {prefix:String})",
        {"prefix": run},
    )
    assert raw == len(first) and raw + len(duplicates) + len(dead) == len(offsets) + len(poison)

    # Second run, same checkpoint, one record per micro-batch: the restock resolves the open alert
    # (state survived the restart); a late sale that would empty the shelf arrives after a newer
    # level and does not flip it; a third copy of a duplicate still counts once. After the
    # restock, 09:00 is beyond the falling key's 60-minute horizon: its first snapshot sent again
    # is a repeat the store holds, and a stale sale sent twice counts once.
    second = [
        movement("r1", "11:00", falling, "P1", "restock", 40, 40, 20, 1 / 48),
        movement("o3", "10:05", late, "P1", "sale", -20, 0, 5, 0.02),
        movement("o4", "10:20", late, "P1", "sale", -1, 17, 5, 0.02),
        movement("x1", "09:05", falling, "P1", "sale", -3, 37, 20, 1 / 48),
    ]
    second = [{**e, "event_id": f"{e['event_id']}-{e['store_id']}"} for e in second]
    stale_repeats = [first[len(drain_events(drain))], second[-1]]  # falling's 09:00 snapshot, x1
    assert stale_repeats[0]["event_id"] == f"s0-{falling}"
    produce(job_settings, [encode(e) for e in [*second, first[-1], *stale_repeats]])
    one_by_one = job_settings.model_copy(update={"max_offsets_per_trigger": 1})
    run_available_now(spark, one_by_one, f"inv_{run}")  # same checkpoint

    alerts = rows_of(store, ALERTS_SQL, run)
    assert alerts[["store_id", "severity", "peak_severity", "status"]].values.tolist() == [
        [drain, "CRITICAL", "CRITICAL", "resolved"],
        [falling, "CRITICAL", "CRITICAL", "resolved"],
    ]
    changes = rows_of(store, CHANGES_SQL, run, [falling, late])
    assert changes[["change", "at"]].values.tolist()[-1] == ["resolved", f"{DAY} 11:00:00.000"]
    levels = rows_of(store, LEVELS_SQL, run, [falling, late])
    assert levels[["stock_level", "last_event_id", "threshold_source"]].values.tolist() == [
        [40, f"r1-{falling}", "event"],
        [17, f"o4-{late}", "event"],
    ]
    assert_metrics_equal(rows_of(store, METRICS_SQL, metrics), hand_windows(metrics))
    late_sales = store.scalar(
        "SELECT sum(units_sold) FROM inventory_metrics FINAL "
        "WHERE store_id = {s:String} AND product_id = 'P1' AND window_start = {w:DateTime('UTC')}",
        {"s": late, "w": at("10:02")},
    )
    assert late_sales == 20 + 2  # window 10:02-10:12: the late sale o3 (10:05) and o2 (10:10)
    stored = store.query_df(
        "SELECT count() AS events, uniqExact(event_id) AS ids FROM inventory_events "
        "WHERE startsWith(store_id, {prefix:String})",
        {"prefix": run},
    )
    assert stored.values.tolist() == [[len(first) + len(second)] * 2]  # no repeat stored at all
    stale_window = store.scalar(
        "SELECT units_sold FROM inventory_metrics FINAL WHERE store_id = {s:String} "
        "AND product_id = 'P1' AND window_start = {w:DateTime('UTC')}",
        {"s": falling, "w": at("09:04")},
    )
    assert stale_window == 3 + 4  # window 09:04-09:14: the stale sale x1 once and s1 (09:10)


def crash_events(run: str) -> list[dict]:
    """12 series (3 stores x 4 products) drained in steps, restocked, sold again: 204 events,
    interleaved in time as a real stream would send them."""
    events = []
    for s in range(3):
        for p in range(4):
            store, product, step = f"{run}-k{s}", f"P{p}", 2 + (s + p) % 3
            level, clock = 30, dt.datetime.combine(DAY, dt.time(9, 0)) + dt.timedelta(seconds=7 * p)
            events.append((clock, store, product, "snapshot", 0, level))
            for i in range(16):
                clock += dt.timedelta(minutes=2)
                if i == 10:
                    events.append((clock, store, product, "restock", 40, level + 40))
                    level += 40
                else:
                    sold = min(step, level) or 1
                    level = max(level - sold, 0)
                    events.append((clock, store, product, "sale", -sold, level))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return [
        {
            "event_id": f"{store}-{product}-{n}",
            "event_time": clock.isoformat() + "Z",
            "store_id": store,
            "product_id": product,
            "event_type": kind,
            "quantity_change": change,
            "stock_level": level,
            "reorder_point": 10,
            "lead_time_days": 0.02,
            "unit_cost": 2.0,
        }
        for n, (clock, store, product, kind, change, level) in enumerate(events)
    ]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.mark.spark
def test_a_product_named_like_a_stores_overall_rows_is_a_dead_letter(spark: SparkSession) -> None:
    records = [
        movement("own", "10:00:00", "S1", "P1", "snapshot", 0, 5),
        movement("overall", "10:00:00", "S1", "ALL", "snapshot", 0, 5),
    ]
    raw = spark.createDataFrame(
        [("t", 0, n, json.dumps(r).encode(), at("10:01:00")) for n, r in enumerate(records)],
        "topic string, partition int, offset long, value binary, timestamp timestamp",
    )
    valid, dead = parse_inventory(raw)
    assert [r.event_id for r in valid.collect()] == ["own"]
    assert [r.error for r in dead.collect()] == ["product_id 'ALL' names a store's overall rows"]


def static_expectation(spark: SparkSession, settings: Settings) -> DataFrame:
    """The whole topic as one static batch through the same transforms (the batch recomputation)."""
    raw = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", settings.inventory_topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    valid, _ = parse_inventory(raw)
    return track_inventory(valid, InventoryRules())


def frames_equal(actual: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> None:
    for frame in (actual, expected):
        for column in frame.columns:
            if pd.api.types.is_datetime64_any_dtype(frame[column]):
                frame[column] = pd.to_datetime(frame[column], utc=True).dt.tz_localize(None)
    pd.testing.assert_frame_equal(
        actual.sort_values(keys, ignore_index=True),
        expected[actual.columns].sort_values(keys, ignore_index=True),
        check_dtype=False,
    )


@pytest.mark.services
@pytest.mark.spark
def test_a_checkpoint_with_sparks_deduplication_state_resumes_with_its_stock_states(
    spark: SparkSession, store: Store, job_settings: Settings
) -> None:
    """Before 930a3e5 (2026-12-07) the query deduplicated with Spark's state (a second stateful
    operator), which Spark refuses to resume without; the job moves that state aside and goes on."""
    from streaming.inventory import CHANGES_QUERY, InventoryBatchWriter
    from streaming.runtime import checkpoint_location, read_topic, start_query

    shop = f"U-{uuid.uuid4().hex[:6]}"
    events = [
        movement(f"u{i}-{shop}", f"10:0{i}", shop, "P1", "sale", -1, 20 - i) for i in range(6)
    ]
    produce(job_settings, [encode(e) for e in events[:3]])
    valid, _ = parse_inventory(read_topic(spark, job_settings, job_settings.inventory_topic, JOB))
    deduplicated = valid.withWatermark("event_time", "60 minutes").dropDuplicatesWithinWatermark(
        ["event_id"]
    )
    rules = InventoryRules()
    writer = InventoryBatchWriter(spark, job_settings, rules=rules, policy=StockPolicy())
    old = start_query(
        track_inventory(deduplicated, rules),
        job=JOB,
        query_name=CHANGES_QUERY,
        settings=job_settings,
        sink=writer,
        available_now=True,
    )
    old.awaitTermination()
    produce(job_settings, [encode(e) for e in [events[2], *events[3:]]])  # one record again

    run_available_now(spark, job_settings, CHANGES_QUERY.removesuffix("_changes"))

    location = checkpoint_location(job_settings, JOB, CHANGES_QUERY)
    assert not (location / "state" / "1").exists()
    assert len(list(location.parent.glob(f"{CHANGES_QUERY}.deduplication-*"))) == 1
    levels = rows_of(store, LEVELS_SQL, shop)
    assert levels[["stock_level", "last_event_id"]].values.tolist() == [[15, f"u5-{shop}"]]
    stored = store.query_df(
        "SELECT count() AS events, uniqExact(event_id) AS ids FROM inventory_events "
        "WHERE store_id = {s:String}",
        {"s": shop},
    )
    assert stored.values.tolist() == [[6, 6]]


@pytest.mark.services
@pytest.mark.spark
@pytest.mark.timeout(900)  # two job processes, each starting its own JVM and Python workers
def test_exactly_once_across_a_sigkill_and_restart(
    spark: SparkSession,
    store: Store,
    job_settings: Settings,
    tmp_path: Path,
    killed_job_env: dict[str, str],
) -> None:
    run = uuid.uuid4().hex[:6]
    events = crash_events(run)
    produce(job_settings, [encode(e) for e in events])
    env = {
        **os.environ,
        **killed_job_env,
        "INVENTORY_TOPIC": job_settings.inventory_topic,
        "CHECKPOINT_DIR": str(job_settings.checkpoint_root),
        "MAX_OFFSETS_PER_TRIGGER": "80",
        # No registry for this job: it runs without scoring (heuristic thresholds), quickly.
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    command = [sys.executable, "-m", "streaming", "inventory"]
    count_sql = "SELECT count() FROM inventory_events WHERE startsWith(store_id, {prefix:String})"
    with (tmp_path / "first.log").open("w") as log_file:
        job = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(
                lambda: (store.scalar(count_sql, {"prefix": run}) or 0) >= 1,
                600,
                "the first micro-batch of the job",
            )
        finally:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=60)
    assert store.scalar(count_sql, {"prefix": run}) < len(events), "killed too late to matter"

    restarted = subprocess.run(
        [*command, "--available-now"], cwd=PROJECT_ROOT, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]

    raw = store.query_df(
        "SELECT count() AS n, uniqExact(event_id) AS ids FROM inventory_events FINAL "
        "WHERE startsWith(store_id, {prefix:String})",
        {"prefix": run},
    )
    assert (raw.n[0], raw.ids[0]) == (len(events), len(events))

    expected = static_expectation(spark, job_settings).persist()
    levels = store.query_df(
        "SELECT store_id, product_id, stock_level, event_time, last_event_id "
        "FROM stock_levels FINAL WHERE startsWith(store_id, {prefix:String})",
        {"prefix": run},
    )
    frames_equal(levels, stock_level_rows(expected).toPandas(), ["store_id", "product_id"])
    alerts = store.query_df(
        "SELECT alert_id, alert_type, severity, peak_severity, status, opened_at, updated_at, "
        "resolved_at, revision FROM stock_alerts FINAL WHERE startsWith(store_id, {prefix:String})",
        {"prefix": run},
    )
    assert len(alerts) > 0
    frames_equal(alerts, alert_rows(expected).toPandas(), ["alert_id"])
    changes = store.query_df(
        "SELECT alert_id, change, event_id FROM stock_alert_changes "
        "WHERE startsWith(store_id, {prefix:String})",
        {"prefix": run},
    )
    expected_changes = alert_change_rows(expected).select("alert_id", "change", "event_id")
    expected_changes = expected_changes.toPandas()
    frames_equal(changes, expected_changes, ["alert_id", "event_id", "change"])
    metrics = store.query_df(
        "SELECT * EXCEPT computed_at FROM inventory_metrics FINAL "
        "WHERE startsWith(store_id, {prefix:String})",
        {"prefix": run},
    )
    recomputed = windowed_inventory_metrics(event_rows(expected), InventoryRules()).toPandas()
    frames_equal(metrics, recomputed, ["window_start", "store_id", "product_id"])
    expected.unpersist()


def register_tiny_model(
    spark: SparkSession,
    name: str,
    slope: float,
    feature: str = "lead_time_days",
    wrap: Callable[[Any], Any] | None = None,
) -> str:
    """A Spark ML pipeline predicting ``slope x feature``, registered as a new version (logged
    without a signature); ``wrap`` changes the fitted pipeline first."""
    import mlflow
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import LinearRegression

    train = spark.createDataFrame(
        [(float(x), slope * x) for x in range(1, 6)], f"{feature} double, label double"
    )
    model = Pipeline(
        stages=[
            VectorAssembler(inputCols=[feature], outputCol="features"),
            LinearRegression(labelCol="label", regParam=0.0, maxIter=5),
        ]
    ).fit(train)
    if wrap is not None:
        model = wrap(model)
    with mlflow.start_run():
        info = mlflow.spark.log_model(model, "model", registered_model_name=name)
    return str(info.registered_model_version)


def register_broken_version(name: str) -> str:
    """A version whose artifacts are not a Spark model: loading it fails."""
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_text("not a model", "notamodel/readme.txt")
    version = mlflow.MlflowClient().create_model_version(
        name, f"runs:/{run.info.run_id}/notamodel", run.info.run_id
    )
    return str(version.version)


def fake_features(spark: SparkSession, store: Store, keys: DataFrame, day: dt.date) -> DataFrame:
    """Two-day lead time for every key: the tiny models predict 2 x slope units."""
    return keys.select(
        "store_id", "product_id", sf.lit(day).alias("date"), sf.lit(2.0).alias("lead_time_days")
    )


RECOMMENDATION_SQL = """
SELECT stock_model_version, lead_time_demand, reorder_point, order_quantity
FROM stock_recommendations FINAL WHERE store_id = {store:String}
  AND as_of = {as_of:DateTime64(3, 'UTC')}
"""


@pytest.mark.services
@pytest.mark.spark
def test_stock_scoring_follows_the_champion_alias(
    spark: SparkSession, store: Store, services: Settings, job_settings: Settings, failing_on_rows
) -> None:
    import mlflow

    from common.models import ChampionModel
    from streaming.runtime import model_probes

    run = uuid.uuid4().hex[:6]
    name, shop = f"stock_optimizer_test_{run}", f"w-{run}"
    mlflow.set_tracking_uri(services.mlflow_tracking_uri)
    client = mlflow.MlflowClient()
    v1 = register_tiny_model(spark, name, 10.0)
    v2 = register_tiny_model(spark, name, 20.0)
    client.set_registered_model_alias(name, "champion", v1)
    probes = model_probes(spark, store, fake_features, name)  # as the job builds its champions
    champion = ChampionModel(
        name, job=JOB, settings=job_settings, probe=probes, registry_timeout_s=60
    )
    queries = build_queries(
        spark,
        job_settings,
        rules=InventoryRules(),
        policy=StockPolicy(service_level=0.95, review_days=7),
        stock_champion=champion,
        feature_builder=fake_features,
        query_names=(f"inv_{run}_changes", f"inv_{run}_dead"),
    )

    product = f"P-{run}"
    store.insert_df(
        "products",
        pd.DataFrame(
            [{"product_id": product, "name": "test", "category": "test", "unit_price": 2.0,
              "unit_cost": 1.0, "lead_time_days": 2.0, "case_pack": 12, "popularity": 1.0}]
        ),
    )  # fmt: skip

    def send_and_wait(clock: str, level: int) -> pd.DataFrame:
        event = movement(f"e{clock}", clock, shop, product, "sale", -1, level, 10, 2.0)
        produce(job_settings, [encode(event)])
        params = {"store": shop, "as_of": at(clock)}
        wait_for(lambda: not store.query_df(RECOMMENDATION_SQL, params).empty, 240, clock)
        return store.query_df(RECOMMENDATION_SQL, params)

    def refusal(version: str) -> str:
        """The detail of the ``load_failed`` row that refused ``version``."""
        return store.scalar(
            "SELECT detail FROM model_events WHERE model_name = {name:String} "
            "AND model_version = {version:String} AND event_type = 'load_failed'",
            {"name": name, "version": version},
        )

    try:
        first = send_and_wait("10:00", 30)
        # v1: lead-time demand 10 x 2 = 20; safety stock 1.645 x sqrt(21) (no logged quantiles).
        assert first.stock_model_version.tolist() == [v1]
        assert first.lead_time_demand[0] == pytest.approx(20.0, abs=1e-6)
        assert first.reorder_point[0] == pytest.approx(20 + 1.6448536 * 21**0.5, rel=1e-6)

        client.set_registered_model_alias(name, "champion", v2)
        second = send_and_wait("10:01", 29)  # the next batch already scores with v2
        assert second.stock_model_version.tolist() == [v2]
        assert second.lead_time_demand[0] == pytest.approx(40.0, abs=1e-6)
        # Level 29 under the reorder point 40 + 1.645 x sqrt(41): order up to it plus 7 days of
        # 40 / 2 units, 161.5 short, in whole packs of 12.
        assert first.order_quantity[0] == 0 and second.order_quantity[0] == 14 * 12

        broken = register_broken_version(name)
        client.set_registered_model_alias(name, "champion", broken)
        third = send_and_wait("10:02", 28)  # the broken version does not load: v2 goes on
        assert third.stock_model_version.tolist() == [v2]
        failed = store.query_df(
            "SELECT event_type FROM model_events WHERE model_name = {name:String} "
            "AND model_version = {version:String}",
            {"name": name, "version": broken},
        )
        assert "load_failed" in failed.event_type.tolist()

        # A version that loads but cannot score the features the job makes: v2 goes on too.
        unscoring = register_tiny_model(spark, name, 30.0, feature="missing_feature")
        client.set_registered_model_alias(name, "champion", unscoring)
        fourth = send_and_wait("10:03", 27)
        assert fourth.stock_model_version.tolist() == [v2]
        assert "missing_feature" in refusal(unscoring)

        # A version that passes the probes and fails on the job's rows: rejected, v2 scores.
        failing = register_tiny_model(
            spark, name, 40.0, wrap=lambda fitted: failing_on_rows(fitted, "lead_time_days")
        )
        client.set_registered_model_alias(name, "champion", failing)
        fifth = send_and_wait("10:04", 26)
        assert fifth.stock_model_version.tolist() == [v2]
        assert "failed on the job's rows" in refusal(failing)
    finally:
        for query in queries:
            stop_gracefully(query)
        champion.close()

    # Each event was judged with the thresholds written by the batches before it.
    levels = store.query_df(
        "SELECT stock_level, threshold_source, model_version, effective_reorder_point "
        "FROM stock_levels FINAL WHERE store_id = {store:String}",
        {"store": shop},
    )
    assert levels.values.tolist()[0][:3] == [26, "model", v2]
