"""Alert conditions, the alert lifecycle and the per-key stock state, in pure Python (no Spark).

Every expectation here is worked out by hand in the comments next to it.
"""

from __future__ import annotations

import datetime as dt
import json
from itertools import combinations

import pandas as pd
import pytest

from streaming.alerts import (
    LOW_STOCK,
    OVERSTOCK,
    SLOW_MOVER,
    Alert,
    AlertRules,
    EventContext,
    Severity,
    StockSnapshot,
    advance_alerts,
    alert_id_for,
    evaluate_conditions,
    stockout_eta_hours,
)
from streaming.inventory import (
    APPLIED,
    KIND_ALERT,
    KIND_CHANGE,
    KIND_EVENT,
    KIND_LEVEL,
    LATE,
    InventoryRules,
    StockState,
    demand_per_hour,
    track_key,
)

RULES = AlertRules(overstock_factor=4.0, slow_mover_hours=24.0)
DAY = dt.date(2026, 3, 2)
DETECTED = 1_772_452_800_000  # epoch ms of 2026-03-02 12:00 UTC
TIME_FIELDS = ("event_time", "detected_at", "updated_at", "opened_at", "resolved_at")


def snapshot(level: int, reorder_point: float = 10, lead_days: float = 1.0, rate=None, idle=0.0):
    return StockSnapshot(level, reorder_point, lead_days, rate, idle)


def test_conditions_follow_the_severity_ladder() -> None:
    assert evaluate_conditions(snapshot(0), RULES)[LOW_STOCK].severity is Severity.CRITICAL
    # 12 on hand at 1 unit/h runs out in 12 h, within the 1-day lead time.
    high = evaluate_conditions(snapshot(12, rate=1.0), RULES)[LOW_STOCK]
    assert (high.severity, high.eta_hours, high.threshold) == (Severity.HIGH, 12.0, 24.0)
    # At 0.25 units/h the 12 units last 48 h: not HIGH, but still above the reorder point 10.
    assert evaluate_conditions(snapshot(12, rate=0.25), RULES) == {}
    medium = evaluate_conditions(snapshot(10, rate=0.25), RULES)[LOW_STOCK]
    assert (medium.severity, medium.eta_hours) == (Severity.MEDIUM, 40.0)
    assert set(evaluate_conditions(snapshot(41), RULES)) == {OVERSTOCK}  # 41 > 4 x 10
    assert evaluate_conditions(snapshot(40), RULES) == {}
    slow = evaluate_conditions(snapshot(20, idle=24.0), RULES)
    assert set(slow) == {SLOW_MOVER} and slow[SLOW_MOVER].severity is Severity.LOW
    assert evaluate_conditions(snapshot(0, idle=30.0), RULES).keys() == {LOW_STOCK}
    assert stockout_eta_hours(5, None) is None and stockout_eta_hours(0, None) == 0.0
    # Dead stock: 300 units at 0.002 a day would run out in 410 years, past pandas' timestamps.
    assert stockout_eta_hours(300, 0.002 / 24) is None
    assert stockout_eta_hours(366, 1 / 24) == 366 * 24.0  # a year ahead is still an estimate
    with pytest.raises(ValueError, match="overstock_factor"):
        AlertRules(overstock_factor=1.0)


def context(event_id: str, minute: int, level: int) -> EventContext:
    return EventContext("S1", "P1", event_id, minute * 60_000, level, 10.0, "", "")


def test_one_alert_escalates_deescalates_and_resolves() -> None:
    open_alerts, versions, changes = advance_alerts(
        {}, evaluate_conditions(snapshot(8), RULES), context("a", 0, 8)
    )
    alert = open_alerts[LOW_STOCK]
    assert alert.alert_id == alert_id_for("S1", "P1", LOW_STOCK, "a")
    assert [(c.change, c.from_severity, c.to_severity) for c in changes] == [
        ("opened", None, Severity.MEDIUM)
    ]
    # The same condition again: the same alert, updated (revision 2), no change row: no storm.
    open_alerts, versions, changes = advance_alerts(
        open_alerts, evaluate_conditions(snapshot(7), RULES), context("b", 1, 7)
    )
    assert changes == [] and versions[0].alert_id == alert.alert_id
    assert (versions[0].revision, versions[0].stock_level) == (2, 7)
    steps = [(0, "escalated", Severity.CRITICAL), (9, "deescalated", Severity.MEDIUM)]
    for minute, (level, change, severity) in enumerate(steps, start=2):
        open_alerts, versions, changes = advance_alerts(
            open_alerts,
            evaluate_conditions(snapshot(level), RULES),
            context(f"e{minute}", minute, level),
        )
        assert [(c.change, c.to_severity) for c in changes] == [(change, severity)]
    assert versions[0].peak_severity is Severity.CRITICAL
    open_alerts, versions, changes = advance_alerts(
        open_alerts, evaluate_conditions(snapshot(30), RULES), context("r", 9, 30)
    )
    assert open_alerts == {}
    resolved = versions[0]
    assert (resolved.alert_id, resolved.status, resolved.resolved_at) == (
        alert.alert_id,
        "resolved",
        9 * 60_000,
    )
    assert [(c.change, c.from_severity, c.to_severity) for c in changes] == [
        ("resolved", Severity.MEDIUM, None)
    ]
    # The state store keeps alerts as JSON: a resolved alert comes back from it unchanged.
    assert Alert.from_state(json.loads(json.dumps(resolved.to_state()))) == resolved


# ---------------------------------------------------------------- the per-key state machine


def movement(
    event_id: str,
    clock: str,
    event_type: str,
    change: int,
    level: int,
    reorder_point: int = 10,
    lead_time_days: float = 1.0,
    offset: int | None = None,
) -> dict:
    """One inventory event for S1/P1 (offset = its position on the partition)."""
    return {
        "event_id": event_id,
        "event_time": pd.Timestamp(f"{DAY} {clock}"),
        "store_id": "S1",
        "product_id": "P1",
        "event_type": event_type,
        "quantity_change": change,
        "stock_level": level,
        "reorder_point": reorder_point,
        "lead_time_days": lead_time_days,
        "unit_cost": 2.0,
        "kafka_partition": 0,
        "kafka_offset": offset,
        "model_reorder_point": float("nan"),
        "model_daily_demand": float("nan"),
        "model_name": None,
        "model_version": None,
    }


def frame(events: list[dict]) -> pd.DataFrame:
    rows = [
        {**e, "kafka_offset": e["kafka_offset"] if e["kafka_offset"] is not None else i}
        for i, e in enumerate(events)
    ]
    return pd.DataFrame(rows)


def run_in_batches(
    events: list[dict], cuts: tuple[int, ...], rules: InventoryRules
) -> pd.DataFrame:
    """Feed the events in micro-batches split at ``cuts``; all output rows, state carried over."""
    state = None
    outputs = []
    bounds = [0, *cuts, len(events)]
    numbered = frame(events)
    for start, end in zip(bounds, bounds[1:], strict=False):
        state, rows = track_key("S1", "P1", state, numbered.iloc[start:end], rules, DETECTED)
        state = StockState.from_json(state.to_json())  # as the state store would keep it
        outputs.append(rows)
    return pd.concat([o for o in outputs if not o.empty], ignore_index=True)


def records(rows: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The ``kind`` rows of the state function's output, their JSON fields as columns."""
    fields = [json.loads(p) for p in rows.loc[rows["kind"] == kind, "payload"]]
    frame = pd.DataFrame(fields)
    for column in TIME_FIELDS:
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], unit="ms")
    return frame


def changes_of(rows: pd.DataFrame) -> list[tuple]:
    picked = records(rows, KIND_CHANGE)
    return [
        (r.change, r.from_severity, r.to_severity, str(r.event_time.time()), r.stock_level)
        for r in picked.itertuples()
    ]


def final_alerts(rows: pd.DataFrame) -> dict[str, tuple]:
    """The last version of each alert (what stock_alerts FINAL shows)."""
    picked = records(rows, KIND_ALERT)
    if picked.empty:
        return {}
    picked = picked.sort_values("revision")
    return {
        r.alert_id: (
            r.alert_type,
            r.severity,
            r.peak_severity,
            r.status,
            r.opened_at,
            r.resolved_at,
        )
        for r in picked.itertuples()
    }


DRAIN = [  # lead time 0.02 d = 0.48 h
    movement("d1", "10:00:00", "snapshot", 0, 30, lead_time_days=0.02),
    movement("d2", "10:05:00", "sale", -30, 0, lead_time_days=0.02),
    movement("d3", "10:20:00", "restock", 40, 40, lead_time_days=0.02),
]


def test_drain_and_restock_in_one_batch_open_and_resolve_one_critical_alert() -> None:
    rules = InventoryRules()
    rows = run_in_batches(DRAIN, (), rules)
    # 10:05 empty shelf: CRITICAL. 10:20 restock to 40: 30 units sold in the last hour = 30/h,
    # 40 units last 1.33 h > 0.48 h lead time, 40 > reorder point 10, 40 is not > 4 x 10: resolved.
    assert changes_of(rows) == [
        ("opened", "", "CRITICAL", "10:05:00", 0),
        ("resolved", "CRITICAL", "", "10:20:00", 40),
    ]
    alerts = final_alerts(rows)
    assert list(alerts.values()) == [
        (
            LOW_STOCK,
            "CRITICAL",
            "CRITICAL",
            "resolved",
            pd.Timestamp(f"{DAY} 10:05:00"),
            pd.Timestamp(f"{DAY} 10:20:00"),
        )
    ]
    level = records(rows, KIND_LEVEL).iloc[-1]
    assert (level.stock_level, level.last_event_id, level.demand_per_hour) == (40, "d3", 30.0)


def decline() -> list[dict]:
    """Reorder point 20, lead time 0.5 h; 4 units sold every 10 minutes from 40, then a restock."""
    lead = 1 / 48
    events = [movement("s0", "09:00:00", "snapshot", 0, 40, 20, lead)]
    level = 40
    for i, clock in enumerate(
        ["09:10", "09:20", "09:30", "09:40", "09:50", "10:00", "10:10", "10:20", "10:30", "10:40"],
        start=1,
    ):
        level -= 4
        events.append(movement(f"s{i}", f"{clock}:00", "sale", -4, level, 20, lead))
    events.append(movement("r1", "11:00:00", "restock", 40, 40, 20, lead))
    return events


def test_a_slow_decline_escalates_medium_high_critical_then_resolves() -> None:
    rows = run_in_batches(decline(), (), InventoryRules(demand_window_minutes=60))
    # Rate = units sold in the 60 whole minutes up to the event, per hour.
    # 09:50: 20 left, 20/h -> 1.0 h > 0.5 h, but 20 <= reorder point 20: MEDIUM.
    # 10:10: 12 left, 24/h -> 0.5 h <= 0.5 h lead time: HIGH. 10:40: 0 left: CRITICAL.
    # 11:00: 40 after the restock, 16/h over 10:01-11:00 -> 2.5 h, above 20: resolved.
    assert changes_of(rows) == [
        ("opened", "", "MEDIUM", "09:50:00", 20),
        ("escalated", "MEDIUM", "HIGH", "10:10:00", 12),
        ("escalated", "HIGH", "CRITICAL", "10:40:00", 0),
        ("resolved", "CRITICAL", "", "11:00:00", 40),
    ]
    assert len(final_alerts(rows)) == 1
    changes = records(rows, KIND_CHANGE)
    high = changes[changes["to_severity"] == "HIGH"].iloc[0]
    assert high.eta_hours == pytest.approx(0.5)
    assert demand_per_hour({0: 4, 59: 4, 60: 4}, 60 * 60_000, 60) == 8.0  # minutes 1..60


def test_late_events_count_but_never_flip_the_state() -> None:
    events = [
        movement("o1", "10:00:00", "snapshot", 0, 20, reorder_point=5, lead_time_days=0.02),
        movement("o2", "10:10:00", "sale", -2, 18, reorder_point=5, lead_time_days=0.02),
        # Sent late: older than o2, it would empty the shelf.
        movement("o3", "10:05:00", "sale", -20, 0, reorder_point=5, lead_time_days=0.02),
        movement("o4", "10:20:00", "sale", -1, 17, reorder_point=5, lead_time_days=0.02),
    ]
    rows = run_in_batches(events, (), InventoryRules())
    dispositions = records(rows, KIND_EVENT).set_index("event_id")["disposition"]
    assert dispositions.to_dict() == {"o1": APPLIED, "o2": APPLIED, "o3": LATE, "o4": APPLIED}
    assert changes_of(rows) == [] and final_alerts(rows) == {}
    level = records(rows, KIND_LEVEL).iloc[-1]
    # The late sale is still demand: 2 + 20 + 1 = 23 units in the last hour.
    assert (level.stock_level, str(level.event_time.time()), level.demand_per_hour) == (
        17,
        "10:20:00",
        23.0,
    )
    # The same events in event-time order (o3 no longer late) do open and resolve an alert.
    ordered = [events[0], events[2], events[1], events[3]]
    assert [c[0] for c in changes_of(run_in_batches(ordered, (), InventoryRules()))] == [
        "opened",
        "resolved",
    ]


def test_a_late_sale_still_counts_as_the_products_last_sale() -> None:
    rules = InventoryRules(alerts=AlertRules(slow_mover_hours=1.0))
    events = [
        movement("s1", "10:00:00", "snapshot", 0, 50, reorder_point=5, lead_time_days=0.02),
        movement("s2", "11:15:00", "snapshot", 0, 50, reorder_point=5, lead_time_days=0.02),
        # Sent late: older than s2, it is a sale 25 minutes before s4.
        movement("s3", "11:05:00", "sale", -1, 49, reorder_point=5, lead_time_days=0.02),
        movement("s4", "11:30:00", "snapshot", 0, 49, reorder_point=5, lead_time_days=0.02),
    ]
    rows = run_in_batches(events, (), rules)
    dispositions = records(rows, KIND_EVENT).set_index("event_id")["disposition"]
    assert dispositions.to_dict() == {"s1": APPLIED, "s2": APPLIED, "s3": LATE, "s4": APPLIED}
    # No sale for 75 minutes at s2 opens the alert; the late sale resolves it at s4.
    changes = records(rows, KIND_CHANGE).query("alert_type == 'slow_mover'")
    assert list(
        zip(changes["change"], changes["event_time"].dt.strftime("%H:%M"), strict=True)
    ) == [
        ("opened", "11:15"),
        ("resolved", "11:30"),
    ]


@pytest.mark.parametrize("scenario", ["drain", "decline"])
def test_results_do_not_depend_on_how_events_fall_into_batches(scenario: str) -> None:
    events = DRAIN if scenario == "drain" else decline()
    rules = InventoryRules()
    whole = run_in_batches(events, (), rules)
    splits = [c for n in (1, 2, 3) for c in combinations(range(1, len(events)), n)]
    for cuts in splits:
        rows = run_in_batches(events, cuts, rules)
        assert changes_of(rows) == changes_of(whole), cuts
        assert final_alerts(rows) == final_alerts(whole), cuts
        last = records(rows, KIND_LEVEL).iloc[-1]
        assert last.stock_level == records(whole, KIND_LEVEL).iloc[-1].stock_level


def test_model_thresholds_replace_the_event_reorder_point() -> None:
    event = movement("m1", "10:00:00", "sale", -1, 30, reorder_point=10, lead_time_days=1.0)
    event.update(
        model_reorder_point=35.0,
        model_daily_demand=24.0,
        model_name="stock_optimizer",
        model_version="7",
    )
    rows = run_in_batches([event], (), InventoryRules())
    # 30 <= model reorder point 35: MEDIUM (the event's own 10 would not alert); 24/day = 1/h, so
    # 30 units last 30 h > 24 h lead time: not HIGH.
    alert = records(rows, KIND_ALERT).iloc[0]
    assert (alert.severity, alert.reorder_point, alert.model_version) == (
        "MEDIUM",
        35.0,
        "7",
    )
    assert alert.eta_hours == pytest.approx(30.0)
