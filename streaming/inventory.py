"""The inventory streaming job: current stock per store x product as streaming state, sliding window
metrics, stock recommendations from the champion models, and alerts with a lifecycle, exactly once
into the store.

Pure transforms (static or streaming frames): ``parse_inventory``,
``track_inventory`` (the stateful step), ``event_rows``, ``stock_level_rows``, ``alert_rows``,
``alert_change_rows``, ``inventory_panes``, ``windows_from_panes``,
``windowed_inventory_metrics`` (a batch recomputation), ``predict_lead_time_demand``,
``predict_daily_demand``; on a collected micro-batch (Arrow, pandas): ``batch_tables`` (the same
table rows), ``panes_of_events`` and ``recommend_stock``. ``InventoryBatchWriter`` is the
``foreachBatch`` wiring and ``main()`` starts the queries.

One micro-batch, end to end:

1. Kafka records are parsed against the contract (bad ones go to ``dead_letters`` by a second
   query). Nothing valid is dropped: each key's state deduplicates its events (below).
2. Before Spark runs the batch, the writer refreshes the latest stock recommendation of every
   store x product from the store (``ThresholdsFile``): the state function judges a key's events
   with the model's reorder point and daily demand when a champion scored the key; without one
   with the event's own reorder point and the in-stream demand rate.
3. ``track_inventory`` runs each key's events (packed in one JSON column) through its state
   (``applyInPandasWithState``, keys grouped in hash buckets) in the order they arrived on the
   key's partition. A key remembers the ids of its events within its horizon
   (``INVENTORY_LATE_MINUTES`` and the demand window) of its newest one, and skips a repeat of
   them. An event older than one already applied for the key is *late*: it counts in the window
   metrics but never overwrites a newer level nor moves an alert; one older than the horizon is
   *stale*, and the writer counts it unless the store already holds its id. Applied events move
   the level, the demand rate and the alerts (``streaming.alerts``) one at a time, so a drain to
   zero and a restock in one batch still open and resolve the CRITICAL alert. Since every key's
   result depends only on the order its events arrived, the results do not depend on how events
   fall into micro-batches.
4. The writer collects the state function's rows as Arrow with one Spark job, shapes them into
   raw events, pane partials, stock levels, alert versions and alert changes in Python
   (``batch_tables``), inserts them with the batch's
   deduplication token, recomputes the windows the batch touched from their panes,
   and scores the keys that moved with ``stock_optimizer@champion`` and ``demand_forecaster@champion``
   into ``stock_recommendations`` (hot-swapped when an alias moves).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import feather
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as sf
from pyspark.sql.streaming.state import GroupState, GroupStateTimeout
from pyspark.sql.types import (
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from common.models import ChampionModel, LoadedModel, model_info, use_tracking_server
from common.schemas import INVENTORY_EVENT_SCHEMA, INVENTORY_EVENT_TYPES
from common.settings import Settings, get_settings
from common.store import Store, open_store
from streaming.alerts import (
    MAX_ETA_HOURS,
    Alert,
    AlertChange,
    AlertRules,
    EventContext,
    StockSnapshot,
    advance_alerts,
    evaluate_conditions,
    stockout_eta_hours,
)
from streaming.runtime import (
    CONSOLE,
    ByDay,
    Check,
    FeatureBuilder,
    ModelTransformError,
    StepTimer,
    check_source,
    checkpoint_location,
    default_feature_builder,
    model_probes,
    parse_events,
    read_topic,
    repeated_events,
    run_queries,
    scored_by,
    start_query,
    store_dead_letters,
    stream_token,
    to_arrow,
    to_pandas,
)

log = logging.getLogger(__name__)

JOB = "inventory-stream"
CHANGES_QUERY = "inventory_changes"
DEAD_LETTERS_QUERY = "inventory_dead_letters"
# The dead-letter query reads the same records again: a slow trigger keeps it from taking a core
# away from the stateful query with a micro-batch every few hundred milliseconds.
DEAD_LETTERS_TRIGGER = "10 seconds"
STOCK_MODEL = "stock_optimizer"
DEMAND_MODEL = "demand_forecaster"
PREDICTED_DAYS_KEPT = 2  # days whose model predictions per key a job remembers
ALL_PRODUCTS = "ALL"
MINUTES_PER_DAY = 24 * 60
MS_PER_MINUTE = 60_000
MS_PER_HOUR = 3_600_000

APPLIED = "applied"
LATE = "late"
# Older than its key's deduplication horizon (see ``InventoryRules.horizon_minutes``): the state
# no longer remembers the ids of that time, so the writer keeps the event only if the store does
# not hold its id yet.
STALE = "stale"
ID_DIGEST_CHARS = 16  # hex characters of an event id's digest in a key's state

KIND_EVENT = "event"
KIND_LEVEL = "level"
KIND_ALERT = "alert"
KIND_CHANGE = "alert_change"

MODEL_THRESHOLDS = "model"
EVENT_THRESHOLDS = "event"


# The state function emits one row per event, level, alert version or alert change: its kind, key
# and the record's fields as JSON (times in epoch milliseconds). Four columns keep the Arrow
# round trip per key cheap; each kind is parsed with its own schema below (``batch_tables`` in the
# job, ``_records`` in a batch recomputation).
CHANGES_SCHEMA = StructType(
    [
        StructField("kind", StringType(), False),
        StructField("store_id", StringType(), False),
        StructField("product_id", StringType(), False),
        StructField("payload", StringType(), False),
    ]
)
# The stock states are grouped in hash buckets of store x product: Spark's Python round trip costs
# about a millisecond per group, so one group per key cost seconds per micro-batch once a batch
# touched a few thousand keys. A bucket's state is its bucket count and a JSON object of each key's
# state (``StockState.to_json``), keyed by ``state_key``.
STATE_SCHEMA = StructType(
    [
        StructField("buckets", IntegerType(), False),
        StructField("states_json", StringType(), False),
    ]
)


def _fields(*fields: tuple[str, Any]) -> StructType:
    return StructType([StructField(name, kind, True) for name, kind in fields])


_TEXT, _INT, _LONG, _REAL = StringType(), IntegerType(), LongType(), DoubleType()
_TIME_FIELDS = frozenset(
    {"event_time", "detected_at", "updated_at", "opened_at", "resolved_at", "stockout_eta"}
)
EVENT_FIELDS = _fields(
    ("event_id", _TEXT),
    ("event_time", _LONG),
    ("event_type", _TEXT),
    ("quantity_change", _INT),
    ("stock_level", _INT),
    ("reorder_point", _INT),
    ("lead_time_days", _REAL),
    ("unit_cost", _REAL),
    ("disposition", _TEXT),
    ("detected_at", _LONG),
)
LEVEL_FIELDS = _fields(
    ("stock_level", _INT),
    ("event_time", _LONG),
    ("reorder_point", _INT),
    ("lead_time_days", _REAL),
    ("unit_cost", _REAL),
    ("effective_reorder_point", _REAL),
    ("demand_per_hour", _REAL),
    ("eta_hours", _REAL),
    ("threshold_source", _TEXT),
    ("model_name", _TEXT),
    ("model_version", _TEXT),
    ("last_event_id", _TEXT),
    ("last_event_type", _TEXT),
    ("updated_at", _LONG),
)
ALERT_FIELDS = _fields(
    ("alert_id", _TEXT),
    ("alert_type", _TEXT),
    ("severity", _TEXT),
    ("peak_severity", _TEXT),
    ("status", _TEXT),
    ("opened_at", _LONG),
    ("updated_at", _LONG),
    ("resolved_at", _LONG),
    ("reason", _TEXT),
    ("stock_level", _INT),
    ("reorder_point", _REAL),
    ("threshold", _REAL),
    ("eta_hours", _REAL),
    ("stockout_eta", _LONG),
    ("model_name", _TEXT),
    ("model_version", _TEXT),
    ("opened_event_id", _TEXT),
    ("last_event_id", _TEXT),
    ("revision", _INT),
    ("detected_at", _LONG),
)
CHANGE_FIELDS = _fields(
    ("alert_id", _TEXT),
    ("alert_type", _TEXT),
    ("change", _TEXT),
    ("from_severity", _TEXT),
    ("to_severity", _TEXT),
    ("event_id", _TEXT),
    ("event_time", _LONG),
    ("stock_level", _INT),
    ("reorder_point", _REAL),
    ("eta_hours", _REAL),
    ("model_name", _TEXT),
    ("model_version", _TEXT),
    ("reason", _TEXT),
    ("detected_at", _LONG),
)

_INPUT_COLUMNS = (
    *[f.name for f in INVENTORY_EVENT_SCHEMA.fields],
    "kafka_partition",
    "kafka_offset",
)


@dataclass(frozen=True)
class InventoryRules:
    """Windows, lateness, the demand rate without a model, the alert thresholds, and the hash
    buckets the stock states are kept in (fixed for a checkpoint's life)."""

    window_minutes: int = 10
    slide_minutes: int = 2
    late_minutes: int = 60
    demand_window_minutes: int = 60
    alerts: AlertRules = field(default_factory=AlertRules)
    state_buckets: int = 16

    def __post_init__(self) -> None:
        if self.slide_minutes <= 0 or self.window_minutes % self.slide_minutes != 0:
            raise ValueError(
                f"the window ({self.window_minutes} min) must be a whole number of slides "
                f"({self.slide_minutes} min)"
            )
        if self.late_minutes <= 0 or self.demand_window_minutes <= 0:
            raise ValueError("late_minutes and demand_window_minutes must be > 0")
        if self.state_buckets <= 0:
            raise ValueError("state_buckets must be > 0")

    @property
    def panes_per_window(self) -> int:
        return self.window_minutes // self.slide_minutes

    @property
    def horizon_minutes(self) -> int:
        """How far behind its key's newest applied event (in whole minutes) an event's id is
        still remembered; an older event is ``STALE``. It spans the demand window, so a stale
        event can never count twice in the demand rate."""
        return max(self.late_minutes, self.demand_window_minutes)

    @classmethod
    def from_settings(cls, settings: Settings) -> InventoryRules:
        return cls(
            window_minutes=settings.inventory_window_minutes,
            slide_minutes=settings.inventory_slide_minutes,
            late_minutes=settings.inventory_late_minutes,
            demand_window_minutes=settings.inventory_demand_window_minutes,
            alerts=AlertRules(
                overstock_factor=settings.inventory_overstock_factor,
                slow_mover_hours=settings.inventory_slow_mover_hours,
            ),
            state_buckets=settings.inventory_state_buckets,
        )


@dataclass(frozen=True)
class StockPolicy:
    """How the model's demand becomes stock advice."""

    service_level: float = 0.95
    review_days: float = 7.0

    @classmethod
    def from_settings(cls, settings: Settings) -> StockPolicy:
        return cls(settings.inventory_service_level, settings.inventory_review_days)


def _ids_present(*names: str) -> Column:
    condition = sf.lit(True)
    for name in names:
        condition = condition & (sf.length(sf.trim(sf.col(name))) > 0)
    return condition


def inventory_checks() -> tuple[Check, ...]:
    """The rules a parsed inventory event must satisfy (else it becomes a dead letter)."""
    event_type = sf.col("event_type")
    change = sf.col("quantity_change")
    return (
        Check(
            f"event_type must be one of {', '.join(INVENTORY_EVENT_TYPES)}",
            event_type.isin(*INVENTORY_EVENT_TYPES),
        ),
        Check("stock_level must be >= 0", sf.col("stock_level") >= 0),
        Check(
            "quantity_change must be < 0 for a sale or shrinkage, > 0 for a restock, "
            "0 for a snapshot",
            sf.when(event_type.isin("sale", "shrinkage"), change < 0)
            .when(event_type == "restock", change > 0)
            .when(event_type == "snapshot", change == 0)
            .otherwise(sf.lit(True)),
        ),
        Check("reorder_point must be >= 0", sf.col("reorder_point") >= 0),
        Check("lead_time_days must be between 0 and 365", sf.col("lead_time_days").between(0, 365)),
        Check("unit_cost must be between 0 and 1e6", sf.col("unit_cost").between(0, 1e6)),
        Check(
            "event_id, store_id and product_id must not be blank",
            _ids_present("event_id", "store_id", "product_id"),
        ),
        Check(
            f"product_id '{ALL_PRODUCTS}' names a store's overall rows",
            sf.col("product_id") != ALL_PRODUCTS,
        ),
    )


def parse_inventory(
    raw: DataFrame, job: str = JOB, max_lead_minutes: int | None = None
) -> tuple[DataFrame, DataFrame]:
    """Raw Kafka records -> (valid inventory events, dead letters) (``max_lead_minutes``: see
    ``classify_events``)."""
    return parse_events(
        raw, INVENTORY_EVENT_SCHEMA, inventory_checks(), job=job, max_lead_minutes=max_lead_minutes
    )


# ---------------------------------------------------------------- thresholds from the store

THRESHOLDS_SQL = """
SELECT store_id, product_id, reorder_point AS model_reorder_point,
    daily_demand AS model_daily_demand, stock_model_name AS model_name,
    stock_model_version AS model_version
FROM stock_recommendations FINAL
WHERE {with_model:Bool}
ORDER BY store_id, product_id
"""
THRESHOLD_FIELDS = ("model_reorder_point", "model_daily_demand", "model_name", "model_version")
CASE_PACKS_SQL = "SELECT product_id, case_pack FROM products FINAL"  # orders come in whole packs
NO_THRESHOLD = (None, None, None, None)

# Thresholds already read by this Python process, by file: (the file's identity, the thresholds).
_LOADED_THRESHOLDS: dict[str, tuple[tuple[int, int, int], dict[tuple[str, str], tuple]]] = {}


@dataclass(frozen=True)
class ThresholdsFile:
    """The latest stock recommendation of every store x product, where the state function reads
    them: a small Arrow file beside the job's checkpoint.

    The writer refreshes it from ``stock_recommendations`` at the start of every micro-batch,
    before Spark runs the batch, so each batch sees the recommendations the batches before it
    wrote (and those of a hot-swapped model); with no stock champion it holds none. The state
    function reloads it only when it was replaced. (A Spark data source over the store, joined to
    the events, did the same for about half a second per micro-batch.)
    """

    path: str

    def refresh(self, store: Store, batch: str, with_model: bool = True) -> None:
        """The thresholds for the micro-batch whose token is ``batch``: the store's current ones,
        or none without a model, the file replaced (atomically) only when they changed. A
        replayed batch (same token) keeps those its first attempt ran with: its recommendations
        may be in the store already, and the replay must take the same path through the state."""
        marker = Path(f"{self.path}.batch")
        if marker.exists() and marker.read_text() == batch:
            return
        frame = store.query_df(THRESHOLDS_SQL, {"with_model": with_model})
        table = pa.Table.from_pandas(frame, preserve_index=False)
        target = Path(self.path)
        if not (target.exists() and feather.read_table(target).equals(table)):
            _write_atomically(target, lambda staged: feather.write_feather(table, staged))
        _write_atomically(marker, lambda staged: staged.write_text(batch))

    def load(self) -> dict[tuple[str, str], tuple]:
        """The thresholds by (store_id, product_id): THRESHOLD_FIELDS values."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return {}
        identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        loaded = _LOADED_THRESHOLDS.get(self.path)
        if loaded is None or loaded[0] != identity:
            columns = feather.read_table(self.path).to_pydict()
            keys = zip(columns["store_id"], columns["product_id"], strict=True)
            values = zip(*(columns[name] for name in THRESHOLD_FIELDS), strict=True)
            loaded = (identity, dict(zip(keys, values, strict=True)))
            _LOADED_THRESHOLDS[self.path] = loaded
        return loaded[1]


def _write_atomically(target: Path, write: Callable[[Path], Any]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    write(staged)
    staged.replace(target)


# ---------------------------------------------------------------- per-key state


@dataclass
class StockState:
    """What the job remembers about one store x product between micro-batches."""

    stock_level: int
    event_time: int  # epoch ms of the latest applied event
    event_id: str
    event_type: str
    reorder_point: int
    lead_time_days: float
    unit_cost: float
    first_seen: int
    last_sale: int | None
    sold_by_minute: dict[int, int]  # epoch minute -> units sold, within the demand window
    effective_reorder_point: float
    demand_per_hour: float | None
    threshold_source: str
    model_name: str
    model_version: str
    alerts: dict[str, Alert]
    # epoch minute -> the digests of the ids of its events, end to end, within the horizon
    seen_ids: dict[int, str] = field(default_factory=dict)
    ids_since: int = 0  # epoch ms: the state knows no ids of earlier events (see ``from_json``)

    def to_json(self) -> str:
        value = dict(vars(self))
        value["alerts"] = {k: a.to_state() for k, a in self.alerts.items()}
        value["sold_by_minute"] = {str(k): v for k, v in self.sold_by_minute.items()}
        value["seen_ids"] = {str(k): v for k, v in self.seen_ids.items()}
        return json.dumps(value, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> StockState:
        value = json.loads(text)
        value["alerts"] = {k: Alert.from_state(a) for k, a in value["alerts"].items()}
        value["sold_by_minute"] = {int(k): v for k, v in value["sold_by_minute"].items()}
        if "seen_ids" not in value:  # saved before 930a3e5, when Spark deduplicated the events
            value["seen_ids"], value["ids_since"] = {}, value["event_time"] + 1
        value["seen_ids"] = {int(k): ids for k, ids in value["seen_ids"].items()}
        return cls(**value)

    def stale(self, time_ms: int, rules: InventoryRules) -> bool:
        """Whether an event is older than the ids this state remembers."""
        horizon = self.event_time // MS_PER_MINUTE - rules.horizon_minutes
        return time_ms // MS_PER_MINUTE < horizon or time_ms < self.ids_since

    def seen(self, minute: int, digest: str) -> bool:
        ids = self.seen_ids.get(minute, "")
        at = ids.find(digest)
        while at > 0 and at % ID_DIGEST_CHARS:  # a match across two digests is none
            at = ids.find(digest, at + 1)
        return at >= 0

    def remember(self, minute: int, digest: str) -> None:
        self.seen_ids[minute] = self.seen_ids.get(minute, "") + digest


def id_digest(event_id: str) -> str:
    """A fixed-size digest of an event id, as a key's state remembers it."""
    return hashlib.blake2b(event_id.encode(), digest_size=ID_DIGEST_CHARS // 2).hexdigest()


def units_sold(event_type: str, quantity_change: int) -> int:
    """Units a movement sold (sales carry a negative change)."""
    return -quantity_change if event_type == "sale" else 0


def demand_per_hour(sold_by_minute: dict[int, int], now_ms: int, window_minutes: int) -> float:
    """Units sold in the ``window_minutes`` whole minutes up to ``now_ms``, per hour."""
    last = now_ms // MS_PER_MINUTE
    first = last - window_minutes + 1
    units = sum(u for minute, u in sold_by_minute.items() if first <= minute <= last)
    return units * 60 / window_minutes


def _ms(value: pd.Timestamp) -> int:
    return value.value // 1_000_000


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


class Movement(NamedTuple):
    """One inventory event as the state function sees it (``event_time`` in epoch ms)."""

    event_id: str
    event_time: int
    store_id: str
    product_id: str
    event_type: str
    quantity_change: int
    stock_level: int
    reorder_point: int
    lead_time_days: float
    unit_cost: float
    kafka_partition: Any
    kafka_offset: Any
    model_reorder_point: Any
    model_daily_demand: Any
    model_name: Any
    model_version: Any


# Movement fields packed into one JSON column per event for the state function: one Arrow
# column per key instead of one per field keeps the per-key conversion cheap.
_PACKED_FIELDS = tuple(
    f for f in Movement._fields if f not in ("store_id", "product_id", *THRESHOLD_FIELDS)
)
_REAL_FIELDS = ("lead_time_days", "unit_cost")


def arrival_order(events: pd.DataFrame) -> list[Movement]:
    """A key's events as tuples in the order they arrived (partition, offset); by event time
    when the frame has no Kafka coordinates."""
    columns = [
        [_ms(t) for t in events[name]] if name == "event_time" else events[name].tolist()
        for name in Movement._fields
    ]
    return _in_arrival_order([Movement(*values) for values in zip(*columns, strict=True)])


def unpacked_movements(
    store_id: str, product_id: str, payloads: Iterable[str], threshold: tuple = NO_THRESHOLD
) -> list[Movement]:
    """A key's events from their ``movement`` JSON (see ``track_inventory``), in arrival order,
    with the key's model ``threshold`` (THRESHOLD_FIELDS values; none by default)."""
    thresholds = dict(zip(THRESHOLD_FIELDS, threshold, strict=True))
    movements = []
    for payload in payloads:
        value = json.loads(payload)
        for name in _REAL_FIELDS:  # NaN arrives as a string; an absent field is null
            if value.get(name) is not None:
                value[name] = float(value[name])
        movements.append(
            Movement(
                store_id=store_id,
                product_id=product_id,
                **{name: value.get(name) for name in _PACKED_FIELDS},
                **thresholds,
            )
        )
    return _in_arrival_order(movements)


def _in_arrival_order(movements: list[Movement]) -> list[Movement]:
    if all(pd.notna(m.kafka_offset) for m in movements):
        movements.sort(key=lambda m: (m.kafka_partition, m.kafka_offset))
    else:
        movements.sort(key=lambda m: (m.event_time, m.event_id))
    return movements


def track_key(
    store_id: str,
    product_id: str,
    state: StockState | None,
    events: pd.DataFrame,
    rules: InventoryRules,
    detected_at: int,
) -> tuple[StockState | None, pd.DataFrame]:
    """Run one key's events (one micro-batch) through its state; the new state and output rows.

    Output rows (CHANGES_SCHEMA, ``detected_at`` = epoch ms of the call): one ``event`` row per
    event (disposition applied, late or stale; none for a repeat of an id the key remembers, see
    ``InventoryRules.horizon_minutes``), one ``level`` row with the latest level when an event
    was applied, the latest version of every alert an event touched (``alert``) and every alert
    lifecycle change (``alert_change``).
    """
    movements = arrival_order(events)
    state, rows = track_movements(store_id, product_id, state, movements, rules, detected_at)
    return state, _changes_frame(rows)


def track_movements(
    store_id: str,
    product_id: str,
    state: StockState | None,
    movements: list[Movement],
    rules: InventoryRules,
    detected_at: int,
) -> tuple[StockState | None, list[tuple]]:
    """``track_key`` on a key's events already in arrival order; the rows as tuples."""
    rows: list[tuple] = []
    versions: dict[str, Alert] = {}
    applied = False
    for event in movements:
        time_ms = event.event_time
        minute, digest = time_ms // MS_PER_MINUTE, id_digest(event.event_id)
        sold = units_sold(event.event_type, int(event.quantity_change))
        if state is not None:
            if state.stale(time_ms, rules):
                _note_late_sale(state, time_ms, sold)  # a repeat leaves the state as it was
                rows.append(_event_row(event, STALE, detected_at))
                continue
            if state.seen(minute, digest):  # a repeat: it counted the first time
                continue
            if time_ms < state.event_time:
                _remember_sale(state, time_ms, sold, rules)
                _note_late_sale(state, time_ms, sold)
                state.remember(minute, digest)
                rows.append(_event_row(event, LATE, detected_at))
                continue
        state = _apply(state, event, time_ms, sold, rules)
        state.remember(minute, digest)
        applied = True
        rows.append(_event_row(event, APPLIED, detected_at))
        snapshot = StockSnapshot(
            stock_level=state.stock_level,
            reorder_point=state.effective_reorder_point,
            lead_time_days=state.lead_time_days,
            demand_per_hour=state.demand_per_hour,
            hours_without_sale=(time_ms - (state.last_sale or state.first_seen)) / MS_PER_HOUR,
        )
        context = EventContext(
            store_id=store_id,
            product_id=product_id,
            event_id=event.event_id,
            event_time=time_ms,
            stock_level=state.stock_level,
            reorder_point=state.effective_reorder_point,
            model_name=state.model_name,
            model_version=state.model_version,
        )
        state.alerts, touched, changes = advance_alerts(
            state.alerts, evaluate_conditions(snapshot, rules.alerts), context
        )
        versions.update((a.alert_id, a) for a in touched)
        rows.extend(_change_row(c, detected_at) for c in changes)
    if state is not None:
        _forget_old_sales(state, rules)
    if applied:
        rows.append(_level_row(store_id, product_id, state, detected_at))
    rows.extend(_alert_row(a, detected_at) for a in versions.values())
    return state, rows


def _apply(
    state: StockState | None, event: Any, time_ms: int, sold: int, rules: InventoryRules
) -> StockState:
    if state is None:
        state = StockState(
            stock_level=0,
            event_time=time_ms,
            event_id="",
            event_type="",
            reorder_point=0,
            lead_time_days=0.0,
            unit_cost=0.0,
            first_seen=time_ms,
            last_sale=None,
            sold_by_minute={},
            effective_reorder_point=0.0,
            demand_per_hour=None,
            threshold_source=EVENT_THRESHOLDS,
            model_name="",
            model_version="",
            alerts={},
        )
    state.stock_level = int(event.stock_level)
    state.event_time = time_ms
    state.event_id = event.event_id
    state.event_type = event.event_type
    state.reorder_point = int(event.reorder_point)
    state.lead_time_days = float(event.lead_time_days)
    state.unit_cost = float(event.unit_cost)
    if sold > 0:
        state.last_sale = time_ms
    _remember_sale(state, time_ms, sold, rules)
    if pd.notna(event.model_reorder_point):
        state.effective_reorder_point = float(event.model_reorder_point)
        state.demand_per_hour = max(float(event.model_daily_demand), 0.0) / 24
        state.threshold_source = MODEL_THRESHOLDS
        state.model_name = _text(event.model_name)
        state.model_version = _text(event.model_version)
    else:
        state.effective_reorder_point = float(event.reorder_point)
        state.demand_per_hour = demand_per_hour(
            state.sold_by_minute, time_ms, rules.demand_window_minutes
        )
        state.threshold_source = EVENT_THRESHOLDS
        state.model_name = ""
        state.model_version = ""
    return state


def _remember_sale(state: StockState, time_ms: int, sold: int, rules: InventoryRules) -> None:
    if sold <= 0:
        return
    minute = time_ms // MS_PER_MINUTE
    if minute > state.event_time // MS_PER_MINUTE - rules.demand_window_minutes:
        state.sold_by_minute[minute] = state.sold_by_minute.get(minute, 0) + sold


def _note_late_sale(state: StockState, time_ms: int, sold: int) -> None:
    """A sale older than the key's newest event is still its last sale if none came after it."""
    if sold > 0:
        state.last_sale = max(state.last_sale or time_ms, time_ms)


def _forget_old_sales(state: StockState, rules: InventoryRules) -> None:
    """Drop the sales before the demand window and the ids before the horizon."""
    newest = state.event_time // MS_PER_MINUTE
    first = newest - rules.demand_window_minutes + 1
    state.sold_by_minute = {m: u for m, u in state.sold_by_minute.items() if m >= first}
    kept = newest - rules.horizon_minutes
    state.seen_ids = {m: ids for m, ids in state.seen_ids.items() if m >= kept}


def _record(kind: str, store_id: str, product_id: str, fields: dict[str, Any]) -> tuple:
    return kind, store_id, product_id, json.dumps(fields, separators=(",", ":"))


def _event_row(event: Movement, disposition: str, detected_at: int) -> tuple:
    return _record(
        KIND_EVENT,
        event.store_id,
        event.product_id,
        {
            "event_id": event.event_id,
            "event_time": event.event_time,
            "event_type": event.event_type,
            "quantity_change": int(event.quantity_change),
            "stock_level": int(event.stock_level),
            "reorder_point": int(event.reorder_point),
            "lead_time_days": float(event.lead_time_days),
            "unit_cost": float(event.unit_cost),
            "disposition": disposition,
            "detected_at": detected_at,
        },
    )


def _level_row(store_id: str, product_id: str, state: StockState, detected_at: int) -> tuple:
    return _record(
        KIND_LEVEL,
        store_id,
        product_id,
        {
            "stock_level": state.stock_level,
            "event_time": state.event_time,
            "reorder_point": state.reorder_point,
            "lead_time_days": state.lead_time_days,
            "unit_cost": state.unit_cost,
            "effective_reorder_point": state.effective_reorder_point,
            "demand_per_hour": state.demand_per_hour,
            "eta_hours": stockout_eta_hours(state.stock_level, state.demand_per_hour),
            "threshold_source": state.threshold_source,
            "model_name": state.model_name,
            "model_version": state.model_version,
            "last_event_id": state.event_id,
            "last_event_type": state.event_type,
            "updated_at": detected_at,
        },
    )


def _alert_row(alert: Alert, detected_at: int) -> tuple:
    return _record(
        KIND_ALERT,
        alert.store_id,
        alert.product_id,
        {
            "alert_id": alert.alert_id,
            "alert_type": alert.alert_type,
            "severity": alert.severity.name,
            "peak_severity": alert.peak_severity.name,
            "status": alert.status,
            "opened_at": alert.opened_at,
            "updated_at": alert.updated_at,
            "resolved_at": alert.resolved_at,
            "reason": alert.reason,
            "stock_level": alert.stock_level,
            "reorder_point": alert.reorder_point,
            "threshold": alert.threshold,
            "eta_hours": alert.eta_hours,
            "stockout_eta": alert.stockout_eta,
            "model_name": alert.model_name,
            "model_version": alert.model_version,
            "opened_event_id": alert.opened_event_id,
            "last_event_id": alert.last_event_id,
            "revision": alert.revision,
            "detected_at": detected_at,
        },
    )


def _change_row(change: AlertChange, detected_at: int) -> tuple:
    return _record(
        KIND_CHANGE,
        change.store_id,
        change.product_id,
        {
            "alert_id": change.alert_id,
            "alert_type": change.alert_type,
            "change": change.change,
            "from_severity": change.from_severity.name if change.from_severity else "",
            "to_severity": change.to_severity.name if change.to_severity else "",
            "event_id": change.event_id,
            "event_time": change.event_time,
            "stock_level": change.stock_level,
            "reorder_point": change.reorder_point,
            "eta_hours": change.eta_hours,
            "model_name": change.model_name,
            "model_version": change.model_version,
            "reason": change.reason,
            "detected_at": detected_at,
        },
    )


def _changes_frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[f.name for f in CHANGES_SCHEMA.fields], dtype=object)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _static_tracker(
    rules: InventoryRules, thresholds: ThresholdsFile | None
) -> Callable[[tuple, pd.DataFrame], pd.DataFrame]:
    def track(key: tuple, events: pd.DataFrame) -> pd.DataFrame:
        threshold = (thresholds.load() if thresholds else {}).get(key, NO_THRESHOLD)
        movements = unpacked_movements(key[0], key[1], events["movement"], threshold)
        _, rows = track_movements(key[0], key[1], None, movements, rules, _now_ms())
        return _changes_frame(rows)

    return track


def state_key(store_id: str, product_id: str) -> str:
    """The name of a store x product's state within its bucket."""
    return json.dumps([store_id, product_id], separators=(",", ":"))


def track_bucket(
    chunks: Iterable[pd.DataFrame],
    saved: tuple[int, str] | None,
    rules: InventoryRules,
    detected_at: int,
    thresholds: dict[tuple[str, str], tuple] | None = None,
) -> tuple[tuple[int, str], pd.DataFrame]:
    """Run one hash bucket's events (columns ``store_id``, ``product_id``, ``movement``, one
    micro-batch) through the states of their keys, each key as ``track_movements`` does.

    ``saved`` is the bucket's state (see ``STATE_SCHEMA``; None for a new bucket);
    ``thresholds`` the model thresholds by key (see ``ThresholdsFile``). Returns the new state and
    the output rows of every key.
    """
    thresholds = thresholds or {}
    payloads: dict[tuple[str, str], list[str]] = {}
    for chunk in chunks:
        for store_id, product_id, movement in zip(
            chunk["store_id"], chunk["product_id"], chunk["movement"], strict=True
        ):
            payloads.setdefault((store_id, product_id), []).append(movement)
    states: dict[str, str] = {}
    if saved is not None:
        saved_buckets, states_json = saved
        if saved_buckets != rules.state_buckets:
            raise ValueError(
                f"the checkpoint keeps the stock states in {saved_buckets} buckets, but "
                f"INVENTORY_STATE_BUCKETS is {rules.state_buckets}: set it back to "
                f"{saved_buckets}, or start the inventory job from a new checkpoint"
            )
        states = json.loads(states_json)
    rows: list[tuple] = []
    for (store_id, product_id), movements in payloads.items():
        name = state_key(store_id, product_id)
        previous = StockState.from_json(states[name]) if name in states else None
        current, key_rows = track_movements(
            store_id,
            product_id,
            previous,
            unpacked_movements(
                store_id,
                product_id,
                movements,
                thresholds.get((store_id, product_id), NO_THRESHOLD),
            ),
            rules,
            detected_at,
        )
        if current is not None:
            states[name] = current.to_json()
        rows.extend(key_rows)
    bucket_state = (rules.state_buckets, json.dumps(states, separators=(",", ":")))
    return bucket_state, _changes_frame(rows)


def _streaming_tracker(
    rules: InventoryRules, thresholds: ThresholdsFile | None
) -> Callable[[tuple, Iterator[pd.DataFrame], GroupState], Iterator[pd.DataFrame]]:
    def track(
        bucket: tuple, chunks: Iterator[pd.DataFrame], state: GroupState
    ) -> Iterator[pd.DataFrame]:
        saved = state.get if state.exists else None
        known = thresholds.load() if thresholds else {}
        bucket_state, rows = track_bucket(chunks, saved, rules, _now_ms(), known)
        state.update(bucket_state)
        yield rows

    return track


def track_inventory(
    events: DataFrame, rules: InventoryRules, thresholds: ThresholdsFile | None = None
) -> DataFrame:
    """Run every store x product's events through its stock state (see ``track_key``), judged
    with the model thresholds of ``thresholds`` (none: each event's own reorder point).

    Streaming frames keep the state across micro-batches (``applyInPandasWithState``, the keys
    grouped in ``rules.state_buckets`` hash buckets, see ``STATE_SCHEMA``); a static frame is one
    batch from an empty state. Missing Kafka columns read as null.
    Each event reaches the state function as one JSON column, ``movement`` (event time in epoch
    ms).
    """
    present = set(events.columns)
    optional = {"kafka_partition": IntegerType(), "kafka_offset": LongType()}
    columns = [
        sf.col(name) if name in present else sf.lit(None).cast(optional[name]).alias(name)
        for name in _INPUT_COLUMNS
    ]
    packed = sf.to_json(
        sf.struct(
            *[
                (sf.unix_millis(name) if name == "event_time" else sf.col(name)).alias(name)
                for name in _PACKED_FIELDS
            ]
        )
    )
    packed_events = events.select(*columns).select(
        "store_id", "product_id", packed.alias("movement")
    )
    if events.isStreaming:
        bucket = sf.pmod(sf.hash("store_id", "product_id"), sf.lit(rules.state_buckets))
        bucketed = packed_events.withColumn("state_bucket", bucket)
        return bucketed.groupBy("state_bucket").applyInPandasWithState(
            _streaming_tracker(rules, thresholds),
            CHANGES_SCHEMA,
            STATE_SCHEMA,
            "Append",
            GroupStateTimeout.NoTimeout,
        )
    return packed_events.groupBy("store_id", "product_id").applyInPandas(
        _static_tracker(rules, thresholds), CHANGES_SCHEMA
    )


# ---------------------------------------------------------------- shaping the changes for tables


def _records(changes: DataFrame, kind: str, fields: StructType) -> DataFrame:
    """The ``kind`` rows of the changes with their JSON fields as typed columns."""
    parsed = changes.where(sf.col("kind") == kind).select(
        "store_id", "product_id", sf.from_json("payload", fields).alias("record")
    )
    return parsed.select(
        "store_id",
        "product_id",
        *[
            (
                sf.timestamp_millis(f"record.{f.name}")
                if f.name in _TIME_FIELDS
                else sf.col(f"record.{f.name}")
            ).alias(f.name)
            for f in fields.fields
        ],
    )


def event_rows(changes: DataFrame) -> DataFrame:
    """The events that passed deduplication (applied or late): they count in every metric."""
    return _records(changes, KIND_EVENT, EVENT_FIELDS)


def stock_level_rows(changes: DataFrame) -> DataFrame:
    """The latest level of every key a batch moved, shaped like ``stock_levels``."""
    return _records(changes, KIND_LEVEL, LEVEL_FIELDS)


def alert_rows(changes: DataFrame) -> DataFrame:
    """The latest version of every alert a batch touched, shaped like ``stock_alerts``."""
    records = _records(changes, KIND_ALERT, ALERT_FIELDS)
    return records.select("alert_id", *[c for c in records.columns if c != "alert_id"])


def alert_change_rows(changes: DataFrame) -> DataFrame:
    """Alert lifecycle changes, shaped like ``stock_alert_changes``."""
    records = _records(changes, KIND_CHANGE, CHANGE_FIELDS)
    return records.select("alert_id", *[c for c in records.columns if c != "alert_id"])


_ARROW_TYPES = {_TEXT: pa.string(), _INT: pa.int32(), _LONG: pa.int64(), _REAL: pa.float64()}


def collected_records(changes: pa.Table, kind: str, fields: StructType) -> pd.DataFrame:
    """``_records`` on a micro-batch's collected changes (``CHANGES_SCHEMA`` as Arrow): the
    ``kind`` rows with their JSON fields as columns, typed as collecting ``_records`` would give."""
    rows = changes.filter(pc.equal(changes["kind"], kind))
    payloads = [json.loads(payload) for payload in rows["payload"].to_pylist()]
    columns = {"store_id": rows["store_id"], "product_id": rows["product_id"]}
    for f in fields.fields:
        values = pa.array([p.get(f.name) for p in payloads], type=_ARROW_TYPES[f.dataType])
        columns[f.name] = values.cast(pa.timestamp("ms")) if f.name in _TIME_FIELDS else values
    return pa.table(columns).to_pandas(coerce_temporal_nanoseconds=True)


def panes_of_events(events: pd.DataFrame, slide_minutes: int) -> pd.DataFrame:
    """``inventory_panes`` of the events a micro-batch already collected (pandas, same columns)."""
    change = events["quantity_change"].astype("int64")
    kind = events["event_type"]
    partials = pd.DataFrame(
        {
            "pane_start": events["event_time"].dt.floor(f"{slide_minutes}min"),
            "store_id": events["store_id"],
            "product_id": events["product_id"],
            "units_sold": -change.where(kind == "sale", 0),
            "units_received": change.where(kind == "restock", 0),
            "units_shrinkage": -change.where(kind == "shrinkage", 0),
            "units_adjusted": change.where(kind == "adjustment", 0),
            "stock_level_sum": events["stock_level"].astype("int64"),
            "events": np.ones(len(events), dtype="int64"),
        }
    )
    return partials.groupby(["pane_start", "store_id", "product_id"], as_index=False).sum()


def counted_events(
    events: pd.DataFrame, stored: Callable[[pd.DataFrame], np.ndarray] | None = None
) -> pd.DataFrame:
    """A micro-batch's event rows without the repeats the key states could not catch: a ``STALE``
    event the batch holds twice, or one that ``stored`` (the batch's stale events -> a mask of the
    ones the store already holds) finds, counts once."""
    stale = (events["disposition"] == STALE).to_numpy()
    if not stale.any():
        return events
    repeat = stale & events["event_id"].duplicated().to_numpy()
    if stored is not None:
        candidates = stale & ~repeat
        repeat[candidates] = stored(events[candidates])
    return events[~repeat].reset_index(drop=True)


def batch_tables(
    changes: pa.Table,
    slide_minutes: int,
    stored: Callable[[pd.DataFrame], np.ndarray] | None = None,
) -> dict[str, pd.DataFrame]:
    """The rows a micro-batch writes into each table, by table name, from its collected changes:
    what ``event_rows``, ``inventory_panes``, ``stock_level_rows``, ``alert_rows`` and
    ``alert_change_rows`` give in Spark, without a Spark job per table or a plan to build. The
    events are the ``counted_events`` (``stored`` as there)."""
    events = counted_events(collected_records(changes, KIND_EVENT, EVENT_FIELDS), stored)

    def alert_id_first(records: pd.DataFrame) -> pd.DataFrame:
        return records[["alert_id", *[c for c in records.columns if c != "alert_id"]]]

    return {
        "inventory_events": events[[f.name for f in INVENTORY_EVENT_SCHEMA.fields]].assign(
            source="stream"
        ),
        "inventory_panes": panes_of_events(events, slide_minutes),
        "stock_levels": collected_records(changes, KIND_LEVEL, LEVEL_FIELDS),
        "stock_alerts": alert_id_first(collected_records(changes, KIND_ALERT, ALERT_FIELDS)),
        "stock_alert_changes": alert_id_first(
            collected_records(changes, KIND_CHANGE, CHANGE_FIELDS)
        ),
    }


# ---------------------------------------------------------------- window metrics


def inventory_panes(events: DataFrame, slide_minutes: int) -> DataFrame:
    """Pane partials (one pane = one slide) per store x product.

    Columns: pane_start, store_id, product_id, units_sold, units_received, units_shrinkage,
    units_adjusted (net), stock_level_sum (of the level after each event), events.
    """
    change = sf.col("quantity_change").cast("long")

    def units(event_type: str, sign: int) -> Column:
        return sf.sum(sf.when(sf.col("event_type") == event_type, change * sign).otherwise(0))

    pane = sf.window("event_time", f"{slide_minutes} minutes")
    return (
        events.groupBy(pane.alias("pane"), "store_id", "product_id")
        .agg(
            units("sale", -1).alias("units_sold"),
            units("restock", 1).alias("units_received"),
            units("shrinkage", -1).alias("units_shrinkage"),
            units("adjustment", 1).alias("units_adjusted"),
            sf.sum(sf.col("stock_level").cast("long")).alias("stock_level_sum"),
            sf.count(sf.lit(1)).alias("events"),
        )
        .select(
            sf.col("pane.start").alias("pane_start"),
            "store_id",
            "product_id",
            "units_sold",
            "units_received",
            "units_shrinkage",
            "units_adjusted",
            "stock_level_sum",
            "events",
        )
    )


def _window_ratios(frame: DataFrame, window_minutes: int) -> DataFrame:
    per_day = MINUTES_PER_DAY / window_minutes
    return frame.select(
        "window_start",
        (sf.col("window_start") + sf.make_dt_interval(mins=sf.lit(window_minutes))).alias(
            "window_end"
        ),
        "store_id",
        "product_id",
        "units_sold",
        "units_received",
        "units_shrinkage",
        "units_adjusted",
        "events",
        sf.col("products").cast("long").alias("products"),
        "avg_on_hand",
        sf.when(sf.col("avg_on_hand") > 0, sf.col("units_sold") / sf.col("avg_on_hand")).alias(
            "turnover"
        ),
        sf.when(
            sf.col("units_sold") > 0, sf.col("avg_on_hand") / (sf.col("units_sold") * per_day)
        ).alias("days_of_cover"),
    )


def windows_from_panes(panes: DataFrame, window_minutes: int, slide_minutes: int) -> DataFrame:
    """Combine panes into windows sliding by one pane, per store x product and per store ('ALL').

    avg_on_hand is the mean level after each event in the window (a store's is the sum over its
    products that moved), turnover = units_sold / avg_on_hand, days_of_cover = avg_on_hand over the
    units sold per day at the window's rate. Output columns are those of ``inventory_metrics``.
    """
    count = window_minutes // slide_minutes
    spread = panes.select("*", sf.explode(sf.sequence(sf.lit(0), sf.lit(count - 1))).alias("k"))
    spread = spread.withColumn(
        "window_start",
        sf.col("pane_start") - sf.make_dt_interval(mins=sf.col("k") * sf.lit(slide_minutes)),
    )
    sums = [
        sf.sum(c).alias(c)
        for c in ("units_sold", "units_received", "units_shrinkage", "units_adjusted", "events")
    ]
    products = spread.groupBy("window_start", "store_id", "product_id").agg(
        *sums,
        (sf.sum("stock_level_sum") / sf.sum("events")).alias("avg_on_hand"),
        sf.lit(1).alias("products"),
    )
    stores = products.groupBy("window_start", "store_id").agg(
        *sums,
        sf.sum("avg_on_hand").alias("avg_on_hand"),
        sf.count(sf.lit(1)).alias("products"),
        sf.lit(ALL_PRODUCTS).alias("product_id"),
    )
    return _window_ratios(products.unionByName(stores), window_minutes)


def windowed_inventory_metrics(events: DataFrame, rules: InventoryRules) -> DataFrame:
    """Sliding window metrics of a set of counted events (the ``inventory_metrics`` rows)."""
    return windows_from_panes(
        inventory_panes(events, rules.slide_minutes), rules.window_minutes, rules.slide_minutes
    )


REFRESH_PRODUCT_WINDOWS_SQL = """
INSERT INTO inventory_metrics (window_start, window_end, store_id, product_id, units_sold,
    units_received, units_shrinkage, units_adjusted, events, products, avg_on_hand, turnover,
    days_of_cover)
SELECT w_start, w_start + toIntervalMinute({window_minutes:UInt32}), store_id, product_id,
    w_sold, w_received, w_shrinkage, w_adjusted, w_events, 1, w_on_hand,
    if(w_on_hand > 0, w_sold / w_on_hand, NULL),
    if(w_sold > 0, w_on_hand / (w_sold * {per_day:Float64}), NULL)
FROM (
    SELECT w_start, store_id, product_id, sum(units_sold) AS w_sold,
        sum(units_received) AS w_received, sum(units_shrinkage) AS w_shrinkage,
        sum(units_adjusted) AS w_adjusted, sum(events) AS w_events,
        sum(stock_level_sum) / w_events AS w_on_hand
    FROM inventory_panes
    ARRAY JOIN arrayMap(
        k -> pane_start - toIntervalMinute(k * {slide_minutes:UInt32}), range({panes:UInt32})
    ) AS w_start
    WHERE pane_start >= {first_window:DateTime('UTC')}
      AND pane_start < {last_pane:DateTime('UTC')} + toIntervalMinute({window_minutes:UInt32})
      AND w_start >= {first_window:DateTime('UTC')}
      AND w_start <= {last_pane:DateTime('UTC')}
    GROUP BY w_start, store_id, product_id
)
"""

REFRESH_STORE_WINDOWS_SQL = """
INSERT INTO inventory_metrics (window_start, window_end, store_id, product_id, units_sold,
    units_received, units_shrinkage, units_adjusted, events, products, avg_on_hand, turnover,
    days_of_cover)
SELECT window_start, any(window_end), store_id, 'ALL', sum(units_sold) AS s_sold,
    sum(units_received), sum(units_shrinkage), sum(units_adjusted), sum(events), count(),
    sum(avg_on_hand) AS s_on_hand,
    if(s_on_hand > 0, s_sold / s_on_hand, NULL),
    if(s_sold > 0, s_on_hand / (s_sold * {per_day:Float64}), NULL)
FROM inventory_metrics FINAL
WHERE window_start >= {first_window:DateTime('UTC')}
  AND window_start <= {last_pane:DateTime('UTC')}
  AND product_id != 'ALL'
GROUP BY window_start, store_id
"""


def pane_spans(
    pane_starts: pd.Series, window_minutes: int
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The batch's panes as runs (first, last) no window spans two of: a stale event from days ago
    and the newest ones refresh their own windows, not every window between them."""
    starts = sorted(pd.unique(pane_starts))
    spans, first = [], starts[0]
    for previous, current in itertools.pairwise(starts):
        if current - previous >= pd.Timedelta(minutes=window_minutes):
            spans.append((first, previous))
            first = current
    spans.append((first, starts[-1]))
    return [(pd.Timestamp(a).to_pydatetime(), pd.Timestamp(b).to_pydatetime()) for a, b in spans]


def refresh_windows(
    store: Store, rules: InventoryRules, first_pane: dt.datetime, last_pane: dt.datetime
) -> None:
    """Recompute every window that contains a pane in [first_pane, last_pane] from its panes."""
    params = {
        "window_minutes": rules.window_minutes,
        "slide_minutes": rules.slide_minutes,
        "panes": rules.panes_per_window,
        "per_day": MINUTES_PER_DAY / rules.window_minutes,
        "first_window": first_pane
        - dt.timedelta(minutes=rules.window_minutes - rules.slide_minutes),
        "last_pane": last_pane,
    }
    store.execute(REFRESH_PRODUCT_WINDOWS_SQL, params)
    store.execute(REFRESH_STORE_WINDOWS_SQL, params)


# ---------------------------------------------------------------- stock recommendations


def predict_lead_time_demand(features: DataFrame, loaded: LoadedModel) -> DataFrame:
    """Units expected over the lead time per store x product and day, from one pinned version.

    Output: store_id, product_id, forecast_date, lead_time_demand (never negative),
    stock_model_name, stock_model_version.
    """
    return loaded.model.transform(features).select(
        "store_id",
        "product_id",
        sf.col("date").cast("date").alias("forecast_date"),
        sf.greatest(sf.col("prediction").cast("double"), sf.lit(0.0)).alias("lead_time_demand"),
        sf.lit(loaded.name).alias("stock_model_name"),
        sf.lit(loaded.version).alias("stock_model_version"),
    )


def predict_daily_demand(features: DataFrame, loaded: LoadedModel) -> DataFrame:
    """Units expected per day per store x product, from one pinned version.

    Output: store_id, product_id, forecast_date, daily_demand (never negative),
    demand_model_name, demand_model_version.
    """
    return loaded.model.transform(features).select(
        "store_id",
        "product_id",
        sf.col("date").cast("date").alias("forecast_date"),
        sf.greatest(sf.col("prediction").cast("double"), sf.lit(0.0)).alias("daily_demand"),
        sf.lit(loaded.name).alias("demand_model_name"),
        sf.lit(loaded.version).alias("demand_model_version"),
    )


def recommend_stock(frame: pd.DataFrame, policy: StockPolicy) -> pd.DataFrame:
    """Stock advice from the predicted demand at each key's current level (pandas, per batch).

    ``frame``: store_id, product_id, as_of, stock_level, lead_time_days, lead_time_demand,
    daily_demand (NaN without a demand model), safety_factor, the model name/version columns and
    optionally case_pack (the product's; missing or NaN: 1).

    safety_stock = safety_factor x sqrt(lead_time_demand + 1) (the model's residual quantile at the
    service level, scaled like its count residuals); reorder_point = lead_time_demand +
    safety_stock; daily demand = the demand model's, else lead_time_demand / lead_time_days;
    order_up_to = reorder_point + daily demand x review_days; order_quantity = order_up_to - level,
    rounded up to whole case packs, when the level is at or below the reorder point (else 0);
    days_of_cover = level / daily demand; stockout ETA = as_of + 24 x days_of_cover hours, none
    beyond ``MAX_ETA_HOURS``.
    """
    lead_time_demand = frame["lead_time_demand"].clip(lower=0.0)
    safety_stock = frame["safety_factor"].clip(lower=0.0) * np.sqrt(lead_time_demand + 1)
    reorder_point = lead_time_demand + safety_stock
    per_lead_day = lead_time_demand / frame["lead_time_days"].clip(lower=1 / 24)
    daily = frame["daily_demand"].where(frame["daily_demand"].notna(), per_lead_day).clip(lower=0)
    order_up_to = reorder_point + daily * policy.review_days
    level = frame["stock_level"].astype(float)
    reorder_now = level <= reorder_point
    pack = frame["case_pack"].fillna(1).clip(lower=1) if "case_pack" in frame else 1
    cases = np.ceil((order_up_to - level).clip(lower=0) / pack)
    order_quantity = np.where(reorder_now, cases * pack, 0)
    days_of_cover = (level / daily).where(daily > 0)
    eta_hours = (days_of_cover * 24).where(days_of_cover * 24 <= MAX_ETA_HOURS)
    as_of = pd.to_datetime(frame["as_of"])
    return pd.DataFrame(
        {
            "store_id": frame["store_id"],
            "product_id": frame["product_id"],
            "as_of": as_of,
            "forecast_date": frame["forecast_date"],
            "stock_level": frame["stock_level"].astype("int32"),
            "lead_time_days": frame["lead_time_days"].astype(float),
            "lead_time_demand": lead_time_demand,
            "daily_demand": daily,
            "safety_stock": safety_stock,
            "reorder_point": reorder_point,
            "order_up_to": order_up_to,
            "order_quantity": order_quantity.astype("int64"),
            "reorder_now": reorder_now.astype("uint8"),
            "days_of_cover": days_of_cover,
            "eta_hours": eta_hours,
            "stockout_eta": as_of + pd.to_timedelta(eta_hours, unit="h"),
            "service_level": policy.service_level,
            "stock_model_name": frame["stock_model_name"],
            "stock_model_version": frame["stock_model_version"],
            "demand_model_name": frame["demand_model_name"].fillna(""),
            "demand_model_version": frame["demand_model_version"].fillna(""),
        }
    )


def safety_factor(loaded: LoadedModel, service_level: float) -> float:
    """The model's conformal residual quantile at ``service_level`` (its MLflow metadata), else the
    normal quantile: the number of residual scales the safety stock holds."""
    key = f"q{service_level:g}"
    try:
        metadata = model_info(loaded.uri).metadata or {}
    except Exception:  # a model without readable metadata still gets the textbook factor
        log.warning(
            "%s v%s: metadata unreadable; normal safety factor", loaded.name, loaded.version
        )
        metadata = {}
    for name in ("conformal_quantiles", "residual_quantiles", "quantiles"):
        quantiles = metadata.get(name)
        if isinstance(quantiles, str):
            quantiles = json.loads(quantiles)
        if isinstance(quantiles, dict) and key in quantiles:
            return float(quantiles[key])
    return NormalDist().inv_cdf(service_level)


# ---------------------------------------------------------------- the foreachBatch writer


class InventoryBatchWriter:
    """The ``foreachBatch`` function of the inventory job: one micro-batch into every table."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        *,
        rules: InventoryRules,
        policy: StockPolicy,
        query_name: str = CHANGES_QUERY,
        stock_champion: ChampionModel | None = None,
        demand_champion: ChampionModel | None = None,
        feature_builder: FeatureBuilder | None = None,
        thresholds: ThresholdsFile | None = None,
    ) -> None:
        self.spark = spark
        self.settings = settings
        self.store = open_store(settings)
        self.thresholds = thresholds
        self.rules = rules
        self.policy = policy
        self.query_name = query_name
        self.stock_champion = stock_champion
        self.demand_champion = demand_champion
        self.feature_builder = feature_builder
        # (store, product, stock version, demand version) -> (lead-time demand, daily demand)
        self._predictions: ByDay[tuple[str, str, str, str], tuple[float, float]] = ByDay()
        self._safety_factors: dict[str, float] = {}
        self._scored_versions: set[tuple[str, str]] = set()  # (model, version) that have scored
        self._scoring_note = ""

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        token = stream_token(self.spark, self.query_name, batch_id)
        steps = StepTimer()
        stock = self._stock_champion()  # pinned: the whole batch uses one version, or none
        if self.thresholds is not None:  # before Spark runs the batch's state function
            with self.store.session():
                self.thresholds.refresh(self.store, token, with_model=stock is not None)
            steps.lap("thresholds")
        changes = to_arrow(batch)  # one Spark job
        steps.lap("state and collect")

        def stored(stale: pd.DataFrame) -> np.ndarray:
            events = pa.Table.from_pandas(stale[["event_id", "event_time"]], preserve_index=False)
            repeats = repeated_events(self.store, "inventory_events", events, token)
            return repeats.to_numpy(zero_copy_only=False)

        with self.store.session():
            rows = batch_tables(changes, self.rules.slide_minutes, stored)
            if rows["inventory_events"].empty:
                return
            events, panes = rows["inventory_events"], rows["inventory_panes"]
            self.store.insert_df(
                "inventory_events", events.assign(ingest_token=token), dedup_token=token
            )
            self.store.insert_df("inventory_panes", panes, dedup_token=token)
            for first, last in pane_spans(panes["pane_start"], self.rules.window_minutes):
                refresh_windows(self.store, self.rules, first, last)
            for table in ("stock_levels", "stock_alerts", "stock_alert_changes"):
                self.store.insert_df(table, rows[table], dedup_token=token)
        steps.lap("store")
        levels = rows["stock_levels"]
        self._recommend(levels, batch_id, token, stock)
        steps.lap("scoring")
        log.info(
            "%s batch %d: %d events; %s",
            self.query_name,
            batch_id,
            len(rows["inventory_events"]),
            steps,
        )

    def _stock_champion(self) -> LoadedModel | None:
        """The stock champion to score with, or None (scoring off, or no champion)."""
        if self.stock_champion is None or self.feature_builder is None:
            return None
        stock = self.stock_champion.current()
        if stock is None:
            self._note(
                "no stock_optimizer@champion: no stock scoring; alerts use each event's reorder "
                "point and the in-stream demand rate"
            )
        return stock

    def _recommend(
        self, levels: pd.DataFrame, batch_id: int, token: str, stock: LoadedModel | None
    ) -> None:
        if levels.empty or stock is None:
            return
        demand = self.demand_champion.current() if self.demand_champion else None
        frame = levels.assign(
            as_of=pd.to_datetime(levels["event_time"]),
            forecast_date=pd.to_datetime(levels["event_time"]).dt.date,
        )
        while True:
            try:
                predicted = self._predicted(frame, stock, demand)
                break
            except ModelTransformError as exc:
                stock, demand = self._reject(exc, stock, demand)
                if stock is None:
                    self._note(f"stock scoring failed for batch {batch_id} ({exc})")
                    return
            except Exception as exc:
                self._note(
                    f"stock scoring failed for batch {batch_id} ({type(exc).__name__}: {exc})"
                )
                return
        self._scoring_note = ""
        self._scored_versions.add((stock.name, stock.version))
        if demand is not None:
            self._scored_versions.add((demand.name, demand.version))
        scored = predicted.dropna(subset=["lead_time_demand"])
        scored = scored.merge(self.store.query_df(CASE_PACKS_SQL), on="product_id", how="left")
        recommendations = recommend_stock(scored, self.policy).assign(
            query_name=self.query_name, batch_id=batch_id
        )
        self.store.insert_df("stock_recommendations", recommendations, dedup_token=token)

    def _reject(
        self, failure: ModelTransformError, stock: LoadedModel, demand: LoadedModel | None
    ) -> tuple[LoadedModel | None, LoadedModel | None]:
        """The models to score the batch with after ``failure``: a version new to this job that
        failed on its rows is rejected (``ChampionModel.reject``) for the one its champion falls
        back to; a version that has scored here before is not, and the batch gets no advice (no
        stock model: no scoring)."""
        failed = failure.loaded
        champion = self.stock_champion if failed is stock else self.demand_champion
        if champion is None or (failed.name, failed.version) in self._scored_versions:
            return None, demand
        replacement = champion.reject(failed.version, failure.cause)
        if replacement is not None and replacement.version == failed.version:
            replacement = None  # never the same version twice in one batch
        return (replacement, demand) if failed is stock else (stock, replacement)

    def _predicted(
        self, frame: pd.DataFrame, stock: LoadedModel, demand: LoadedModel | None
    ) -> pd.DataFrame:
        versions = (stock.version, demand.version if demand else "")
        keys = list(
            zip(frame["store_id"], frame["product_id"], frame["forecast_date"], strict=True)
        )
        todo = sorted(
            {k for k in keys if self._predictions.get(k[2], (k[0], k[1], *versions)) is None}
        )
        for day in sorted({k[2] for k in todo}):
            pairs = [(k[0], k[1]) for k in todo if k[2] == day]
            self._predict_day(pairs, day, stock, demand, versions)
        if stock.version not in self._safety_factors:
            self._safety_factors[stock.version] = safety_factor(stock, self.policy.service_level)
        values = [self._predictions.get(k[2], (k[0], k[1], *versions)) for k in keys]
        # A late event of an older day is predicted again.
        self._predictions.keep_newest(PREDICTED_DAYS_KEPT)
        return frame.assign(
            lead_time_demand=[v[0] for v in values],
            daily_demand=[v[1] for v in values],
            safety_factor=self._safety_factors[stock.version],
            stock_model_name=stock.name,
            stock_model_version=stock.version,
            demand_model_name=demand.name if demand else "",
            demand_model_version=demand.version if demand else "",
        )

    def _predict_day(
        self,
        pairs: list[tuple[str, str]],
        day: dt.date,
        stock: LoadedModel,
        demand: LoadedModel | None,
        versions: tuple[str, str],
    ) -> None:
        keys = self.spark.createDataFrame(pairs, "store_id string, product_id string")
        features = self.feature_builder(self.spark, self.store, keys, day).persist()
        try:
            lead = scored_by(stock, lambda: to_pandas(predict_lead_time_demand(features, stock)))
            daily = (
                scored_by(demand, lambda: to_pandas(predict_daily_demand(features, demand)))
                if demand
                else None
            )
        finally:
            features.unpersist()
        daily_of = {}
        if daily is not None:
            for row in daily.itertuples(index=False):
                daily_of[(row.store_id, row.product_id)] = float(row.daily_demand)
        for row in lead.itertuples(index=False):
            value = daily_of.get((row.store_id, row.product_id), math.nan)
            self._predictions.put(
                day,
                (row.store_id, row.product_id, *versions),
                (float(row.lead_time_demand), float(value)),
            )
        for store_id, product_id in pairs:  # keys the features could not cover: no advice
            self._predictions.setdefault(
                day, (store_id, product_id, *versions), (math.nan, math.nan)
            )

    def _note(self, message: str) -> None:
        if message != self._scoring_note:
            log.warning("%s: %s", JOB, message)
            self._scoring_note = message


class DeadLetterWriter:
    """The ``foreachBatch`` function of the dead-letter query (token unique to its checkpoint)."""

    def __init__(self, spark: SparkSession, settings: Settings, query_name: str) -> None:
        self.spark = spark
        self.store = open_store(settings)
        self.query_name = query_name

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        token = stream_token(self.spark, self.query_name, batch_id)
        store_dead_letters(self.store, to_arrow(batch), token)


# ---------------------------------------------------------------- wiring


def console_view(changes: DataFrame) -> DataFrame:
    """The levels and alert changes, for the console sink."""
    return changes.where(sf.col("kind").isin(KIND_LEVEL, KIND_CHANGE)).select(
        "kind", "store_id", "product_id", "payload"
    )


def retire_deduplication_state(location: Path) -> None:
    """Move aside the state of Spark's deduplication from a checkpoint written before 930a3e5
    (2026-12-07; operator 1, below the stock states of operator 0): Spark refuses a checkpoint
    holding an operator its query no longer has, and the keys' states now deduplicate the events."""
    state = location / "state" / "1"
    if not state.is_dir():
        return
    retired = location.with_name(f"{location.name}.deduplication-{int(time.time())}")
    state.rename(retired)
    log.warning(
        "the checkpoint %s held Spark's deduplication state of an earlier release: moved to %s; "
        "the stock states go on from the checkpoint",
        location,
        retired,
    )


def build_queries(
    spark: SparkSession,
    settings: Settings,
    *,
    rules: InventoryRules,
    policy: StockPolicy,
    available_now: bool = False,
    console: bool = False,
    stock_champion: ChampionModel | None = None,
    demand_champion: ChampionModel | None = None,
    feature_builder: FeatureBuilder | None = None,
    query_names: tuple[str, str] = (CHANGES_QUERY, DEAD_LETTERS_QUERY),
) -> list[Any]:
    """Start the inventory job's queries: the stateful changes into the store, dead letters."""
    changes_query, dead_query = query_names
    raw = read_topic(spark, settings, settings.inventory_topic, JOB)
    events, dead = parse_inventory(raw, max_lead_minutes=settings.event_max_lead_minutes)
    common = {"job": JOB, "settings": settings, "available_now": available_now}
    if console:
        changes = track_inventory(events, rules)
        return [
            start_query(console_view(changes), query_name=changes_query, sink=CONSOLE, **common),
            start_query(dead, query_name=dead_query, sink=CONSOLE, **common),
        ]
    checkpoint = checkpoint_location(settings, JOB, changes_query)
    retire_deduplication_state(checkpoint)
    thresholds = ThresholdsFile(str(checkpoint.with_name(f"{checkpoint.name}.thresholds.arrow")))
    changes = track_inventory(events, rules, thresholds)
    writer = InventoryBatchWriter(
        spark,
        settings,
        rules=rules,
        policy=policy,
        query_name=changes_query,
        stock_champion=stock_champion,
        demand_champion=demand_champion,
        feature_builder=feature_builder,
        thresholds=thresholds,
    )
    return [
        start_query(changes, query_name=changes_query, sink=writer, **common),
        start_query(
            dead,
            query_name=dead_query,
            sink=DeadLetterWriter(spark, settings, dead_query),
            trigger_interval=DEAD_LETTERS_TRIGGER,
            **common,
        ),
    ]


def main(
    settings: Settings | None = None, available_now: bool = False, console: bool = False
) -> None:
    """Run the inventory job until stopped (or, with ``available_now``, until the topic is drained)."""
    from common.spark import build_spark_session
    from common.store import migrate

    settings = settings or get_settings()
    check_source(settings, settings.inventory_topic, "INVENTORY_TOPIC")
    use_tracking_server(settings)
    spark = build_spark_session(JOB, settings)
    champions: list[ChampionModel] = []
    feature_builder = default_feature_builder()
    if feature_builder is None:
        log.warning("training.features is not installed: stock scoring is off")
    if not console:
        store = open_store(settings)
        migrate(store)
        champions = [
            ChampionModel(
                name,
                job=JOB,
                settings=settings,
                probe=model_probes(spark, store, feature_builder, name),
            )
            for name in (STOCK_MODEL, DEMAND_MODEL)
        ]
        for champion in champions:  # while the query starts and reads its first batch
            champion.warm_up()
    queries = build_queries(
        spark,
        settings,
        rules=InventoryRules.from_settings(settings),
        policy=StockPolicy.from_settings(settings),
        available_now=available_now,
        console=console,
        stock_champion=champions[0] if champions else None,
        demand_champion=champions[1] if champions else None,
        feature_builder=feature_builder,
    )
    try:
        run_queries(spark, queries, job=JOB, settings=settings, record_progress=not console)
    finally:
        for champion in champions:
            champion.close()
        spark.stop()  # the listener bus drains before Python exits (no late callback into a dying VM)


if __name__ == "__main__":  # `spark-submit streaming/inventory.py`, as jobs/inventory_job.py
    import sys

    from streaming.jobs.entrypoint import run

    run("inventory", sys.argv[1:])
