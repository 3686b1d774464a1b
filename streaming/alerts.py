"""Stock alerts: which conditions hold for a stock level, and the lifecycle of each alert.

Pure Python (no Spark): the inventory job calls it from its per-key state function, once per
applied event, in event-time order, so the result does not depend on how events fall into
micro-batches.

Alert types and severities:

``low_stock``
    CRITICAL when the shelf is empty (stock level <= 0); HIGH when, at the current demand rate, the
    stock runs out within the replenishment lead time; MEDIUM when the level is at or below the
    reorder point. A slow decline therefore escalates one alert MEDIUM -> HIGH -> CRITICAL.
``overstock``
    LOW when the level exceeds ``overstock_factor`` times the reorder point.
``slow_mover``
    LOW when there is stock but no sale for ``slow_mover_hours``.

Lifecycle: at most one open alert per store x product x type. A condition that appears opens an
alert; while it holds, a change of severity escalates or de-escalates the same alert and any other
change updates it (no new alert: no storms); when it no longer holds the alert is resolved. Every
open, escalation, de-escalation and resolution is also reported as an :class:`AlertChange`.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, replace
from enum import IntEnum
from typing import Any

LOW_STOCK = "low_stock"
OVERSTOCK = "overstock"
SLOW_MOVER = "slow_mover"
ALERT_TYPES = (LOW_STOCK, OVERSTOCK, SLOW_MOVER)
MAX_ETA_HOURS = 366 * 24.0  # a stockout further ahead is no estimate (as in serving's advice)

OPEN = "open"
RESOLVED = "resolved"

OPENED = "opened"
ESCALATED = "escalated"
DEESCALATED = "deescalated"
RESOLVED_CHANGE = "resolved"

_ALERT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "retail-forecasting/stock-alerts")
_MS_PER_HOUR = 3_600_000


class Severity(IntEnum):
    """Alert severities, ordered: a higher value is more urgent."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4


@dataclass(frozen=True)
class AlertRules:
    """The thresholds of the alert conditions that do not come from the model or the event."""

    overstock_factor: float = 4.0
    slow_mover_hours: float = 24.0

    def __post_init__(self) -> None:
        if self.overstock_factor <= 1:
            raise ValueError("overstock_factor must be > 1 (a multiple of the reorder point)")
        if self.slow_mover_hours <= 0:
            raise ValueError("slow_mover_hours must be > 0")


@dataclass(frozen=True)
class StockSnapshot:
    """What the alert conditions look at, right after one event of a store x product."""

    stock_level: int
    reorder_point: float
    lead_time_days: float
    demand_per_hour: float | None  # None: no demand estimate yet
    hours_without_sale: float  # since the last sale, or since the job first saw the product


@dataclass(frozen=True)
class Condition:
    """A condition that holds now: the alert it calls for."""

    alert_type: str
    severity: Severity
    reason: str
    threshold: float
    eta_hours: float | None


def stockout_eta_hours(stock_level: int, demand_per_hour: float | None) -> float | None:
    """Hours until the stock runs out at ``demand_per_hour``; 0 when out; None without demand or
    beyond ``MAX_ETA_HOURS`` (a dead stock's ETA would pass the year 2262, where timestamps end)."""
    if stock_level <= 0:
        return 0.0
    if demand_per_hour is None or demand_per_hour <= 0:
        return None
    eta = stock_level / demand_per_hour
    return eta if eta <= MAX_ETA_HOURS else None


def evaluate_conditions(snapshot: StockSnapshot, rules: AlertRules) -> dict[str, Condition]:
    """The alert conditions that hold for ``snapshot``: at most one per alert type."""
    level = snapshot.stock_level
    reorder_point = snapshot.reorder_point
    lead_time_hours = snapshot.lead_time_days * 24
    eta = stockout_eta_hours(level, snapshot.demand_per_hour)
    held: dict[str, Condition] = {}
    if level <= 0:
        held[LOW_STOCK] = Condition(
            LOW_STOCK, Severity.CRITICAL, "out of stock", reorder_point, eta
        )
    elif eta is not None and eta <= lead_time_hours:
        reason = (
            f"stockout expected in {eta:.1f} h at {snapshot.demand_per_hour:.2f} units/h, "
            f"within the lead time of {lead_time_hours:.1f} h ({level} on hand)"
        )
        held[LOW_STOCK] = Condition(LOW_STOCK, Severity.HIGH, reason, lead_time_hours, eta)
    elif level <= reorder_point:
        reason = f"{level} on hand, at or below the reorder point {reorder_point:g}"
        held[LOW_STOCK] = Condition(LOW_STOCK, Severity.MEDIUM, reason, reorder_point, eta)
    overstock_level = rules.overstock_factor * reorder_point
    if reorder_point > 0 and level > overstock_level:
        reason = (
            f"{level} on hand, above {rules.overstock_factor:g} x the reorder point "
            f"{reorder_point:g} ({overstock_level:g})"
        )
        held[OVERSTOCK] = Condition(OVERSTOCK, Severity.LOW, reason, overstock_level, eta)
    if level > 0 and snapshot.hours_without_sale >= rules.slow_mover_hours:
        reason = f"no sale for {snapshot.hours_without_sale:.1f} h with {level} on hand"
        held[SLOW_MOVER] = Condition(SLOW_MOVER, Severity.LOW, reason, rules.slow_mover_hours, eta)
    return held


@dataclass(frozen=True)
class Alert:
    """One alert's current version (times in epoch milliseconds, UTC)."""

    alert_id: str
    store_id: str
    product_id: str
    alert_type: str
    severity: Severity
    peak_severity: Severity
    status: str
    opened_at: int
    updated_at: int
    resolved_at: int | None
    reason: str
    stock_level: int
    reorder_point: float
    threshold: float
    eta_hours: float | None
    model_name: str
    model_version: str
    opened_event_id: str
    last_event_id: str
    revision: int

    @property
    def stockout_eta(self) -> int | None:
        """When the stock is expected to run out (epoch ms), if there is an estimate."""
        if self.eta_hours is None:
            return None
        return self.updated_at + round(self.eta_hours * _MS_PER_HOUR)

    def to_state(self) -> dict[str, Any]:
        """A JSON-ready dict, for the streaming state."""
        return {
            **asdict(self),
            "severity": int(self.severity),
            "peak_severity": int(self.peak_severity),
        }

    @classmethod
    def from_state(cls, value: dict[str, Any]) -> Alert:
        return cls(
            **{
                **value,
                "severity": Severity(value["severity"]),
                "peak_severity": Severity(value["peak_severity"]),
            }
        )


@dataclass(frozen=True)
class AlertChange:
    """An alert opened, escalated, de-escalated or resolved by one event."""

    alert_id: str
    store_id: str
    product_id: str
    alert_type: str
    change: str
    from_severity: Severity | None  # None when the alert opens
    to_severity: Severity | None  # None when it resolves
    event_id: str
    event_time: int
    stock_level: int
    reorder_point: float
    eta_hours: float | None
    model_name: str
    model_version: str
    reason: str


def alert_id_for(store_id: str, product_id: str, alert_type: str, opening_event_id: str) -> str:
    """A stable alert id: the same events always open the same alert, also after a replay."""
    return str(
        uuid.uuid5(_ALERT_NAMESPACE, f"{store_id}|{product_id}|{alert_type}|{opening_event_id}")
    )


@dataclass(frozen=True)
class EventContext:
    """The event that moves the alerts of one store x product."""

    store_id: str
    product_id: str
    event_id: str
    event_time: int
    stock_level: int
    reorder_point: float
    model_name: str  # whose thresholds judged the event; "" = the event's own reorder point
    model_version: str


def advance_alerts(
    open_alerts: dict[str, Alert], conditions: dict[str, Condition], event: EventContext
) -> tuple[dict[str, Alert], list[Alert], list[AlertChange]]:
    """Move the open alerts of one store x product to what ``conditions`` call for.

    Returns the open alerts after the event, every alert version this event produced (resolved
    ones included) and the lifecycle changes (opened, escalated, de-escalated, resolved).
    """
    still_open: dict[str, Alert] = {}
    versions: list[Alert] = []
    changes: list[AlertChange] = []
    for alert_type in ALERT_TYPES:
        current = open_alerts.get(alert_type)
        wanted = conditions.get(alert_type)
        if current is None and wanted is None:
            continue
        if current is None:
            alert = _open(wanted, event)
            changes.append(_change(alert, OPENED, None, event))
        elif wanted is None:
            alert = replace(
                current,
                status=RESOLVED,
                updated_at=event.event_time,
                resolved_at=event.event_time,
                reason=f"resolved: {event.stock_level} on hand ({current.reason})",
                stock_level=event.stock_level,
                reorder_point=event.reorder_point,
                eta_hours=None,
                last_event_id=event.event_id,
                revision=current.revision + 1,
            )
            changes.append(_change(alert, RESOLVED_CHANGE, current.severity, event))
        else:
            alert = replace(
                current,
                severity=wanted.severity,
                peak_severity=max(current.peak_severity, wanted.severity),
                updated_at=event.event_time,
                reason=wanted.reason,
                stock_level=event.stock_level,
                reorder_point=event.reorder_point,
                threshold=wanted.threshold,
                eta_hours=wanted.eta_hours,
                model_name=event.model_name,
                model_version=event.model_version,
                last_event_id=event.event_id,
                revision=current.revision + 1,
            )
            if wanted.severity != current.severity:
                change = ESCALATED if wanted.severity > current.severity else DEESCALATED
                changes.append(_change(alert, change, current.severity, event))
        versions.append(alert)
        if alert.status == OPEN:
            still_open[alert_type] = alert
    return still_open, versions, changes


def _open(condition: Condition, event: EventContext) -> Alert:
    return Alert(
        alert_id=alert_id_for(
            event.store_id, event.product_id, condition.alert_type, event.event_id
        ),
        store_id=event.store_id,
        product_id=event.product_id,
        alert_type=condition.alert_type,
        severity=condition.severity,
        peak_severity=condition.severity,
        status=OPEN,
        opened_at=event.event_time,
        updated_at=event.event_time,
        resolved_at=None,
        reason=condition.reason,
        stock_level=event.stock_level,
        reorder_point=event.reorder_point,
        threshold=condition.threshold,
        eta_hours=condition.eta_hours,
        model_name=event.model_name,
        model_version=event.model_version,
        opened_event_id=event.event_id,
        last_event_id=event.event_id,
        revision=1,
    )


def _change(
    alert: Alert, change: str, from_severity: Severity | None, event: EventContext
) -> AlertChange:
    return AlertChange(
        alert_id=alert.alert_id,
        store_id=alert.store_id,
        product_id=alert.product_id,
        alert_type=alert.alert_type,
        change=change,
        from_severity=from_severity,
        to_severity=None if change == RESOLVED_CHANGE else alert.severity,
        event_id=event.event_id,
        event_time=event.event_time,
        stock_level=event.stock_level,
        reorder_point=event.reorder_point,
        eta_hours=alert.eta_hours,
        model_name=event.model_name,
        model_version=event.model_version,
        reason=alert.reason,
    )
