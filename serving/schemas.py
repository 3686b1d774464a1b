"""The API's request enums and response bodies (they make the OpenAPI description)."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class Severity(StrEnum):
    CRITICAL = "CRITICAL"
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class StoreStatus(BaseModel):
    reachable: bool
    checked_at: dt.datetime | None = Field(None, description="last successful read")
    error: str | None = None
    table_errors: dict[str, str] = {}
    tables_read_at: dict[str, dt.datetime] = {}


class ChampionStatus(BaseModel):
    name: str
    alias: str
    status: str = Field(description="ok, no_champion, registry_unreachable or unchecked")
    version: str | None = None
    loaded_since: dt.datetime | None = None
    checked_at: dt.datetime | None = None


class Readiness(BaseModel):
    ready: bool
    started_at: dt.datetime
    store: StoreStatus
    registry_reachable: bool
    champions: list[ChampionStatus]
    forecast_rows_by_version: dict[str, int]
    forecast_origin: dt.date | None = Field(
        None, description="the first day of the newest stored forecasts (their horizon day 1)"
    )
    forecast_refresh: dict[str, str | int | dt.datetime | None] = {}


class ForecastPoint(BaseModel):
    date: dt.date
    horizon_day: int = Field(description="1 for the first day of the answer")
    predicted_units: float
    lower_90: float
    upper_90: float
    model_version: str
    source: Literal["precomputed", "on_demand"]
    created_at: dt.datetime | None = Field(None, description="when a precomputed row was written")


class ForecastAnswer(BaseModel):
    store_id: str
    product_id: str
    start: dt.date
    horizon: int
    model_name: str
    model_version: str = Field(
        description="the version that made every day; the champion's when the days are mixed"
    )
    champion_version: str | None
    up_to_date: bool = Field(description="every day comes from the current champion")
    data_as_of: dt.datetime | None
    forecasts: list[ForecastPoint]


class ReorderAdvice(BaseModel):
    store_id: str
    product_id: str
    source: Literal["stock_recommendations", "forecasts"]
    as_of: dt.datetime | None = Field(None, description="when the stock level was observed")
    stock_level: int | None
    lead_time_days: float
    service_level: float
    review_days: float | None = None
    lead_time_demand: float
    daily_demand: float
    safety_stock: float
    reorder_point: float
    order_up_to: float
    reorder_now: bool | None
    order_quantity: int | None
    days_of_cover: float | None
    eta_hours: float | None
    stockout_eta: dt.datetime | None
    demand_model_name: str | None
    demand_model_version: str | None
    stock_model_name: str | None = None
    stock_model_version: str | None = None
    data_as_of: dt.datetime | None


class Alert(BaseModel):
    alert_id: str
    store_id: str
    product_id: str
    alert_type: str
    severity: str
    peak_severity: str
    status: str
    opened_at: dt.datetime
    updated_at: dt.datetime
    reason: str
    stock_level: int
    reorder_point: float
    threshold: float
    eta_hours: float | None
    stockout_eta: dt.datetime | None
    model_name: str
    model_version: str


class Alerts(BaseModel):
    count: int
    data_as_of: dt.datetime | None
    alerts: list[Alert]


class AnomalySeverity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


class SalesAnomaly(BaseModel):
    window_start: dt.datetime
    window_end: dt.datetime
    store_id: str = Field(description="a store, or ALL for the overall row")
    metric: str = Field(description="revenue or units (a window), transactions (a silence)")
    observed: float
    expected: float
    score: float
    direction: str
    severity: str
    reason: str
    model_name: str | None
    model_version: str | None


class SalesAnomalies(BaseModel):
    count: int
    data_as_of: dt.datetime | None
    anomalies: list[SalesAnomaly]


class ModelInfo(BaseModel):
    name: str
    alias: str
    status: str
    version: str | None = None
    run_id: str | None = None
    created_at: dt.datetime | None = None
    promoted_at: dt.datetime | None = Field(
        None, description="when the alias last moved to this version (model_promotions)"
    )
    loaded_since: dt.datetime | None = None
    checked_at: dt.datetime | None = None
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}


class Problem(BaseModel):
    detail: str
