"""The REST API: forecasts, reorder advice, open alerts and model info from the champion models.

``create_app(settings)`` builds the FastAPI app; ``retail serve`` runs it with uvicorn. Answers
come from an in-memory snapshot of the store kept current by a background thread
(:mod:`serving.state`), so a request never waits for the store or the registry; days that were
not precomputed are scored on demand with the champion (:mod:`serving.scoring`).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.schemas import OVERALL
from common.settings import Settings, get_settings
from serving.advice import compute_reorder_advice
from serving.registry import ChampionInfo
from serving.schemas import (
    Alert,
    Alerts,
    AnomalySeverity,
    ChampionStatus,
    ForecastAnswer,
    ForecastPoint,
    Health,
    ModelInfo,
    Problem,
    Readiness,
    ReorderAdvice,
    SalesAnomalies,
    SalesAnomaly,
    Severity,
    StoreStatus,
)
from serving.scoring import ScoredDay
from serving.snapshot import ForecastDay, ServingData
from serving.state import ServingState

log = logging.getLogger(__name__)

MAX_DAYS_BACK = 366
SEVERITY_RANK = {s.value: rank for rank, s in enumerate(Severity)}
ANOMALY_SEVERITY_RANK = {s.value: rank for rank, s in enumerate(AnomalySeverity)}
MAX_ANOMALY_HOURS = 168
ERRORS = {404: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}}
_bearer = HTTPBearer(auto_error=False, description="API_TOKEN, when the server sets one")

StoreId = Annotated[str, Query(min_length=1, max_length=200, description="e.g. S001")]
ProductId = Annotated[str, Query(min_length=1, max_length=200, description="e.g. P0001")]


async def serving_state(request: Request) -> ServingState:
    return request.app.state.serving


State = Annotated[ServingState, Depends(serving_state)]


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """When API_TOKEN is set, the request must carry ``Authorization: Bearer <API_TOKEN>``."""
    expected = request.app.state.settings.api_token
    if expected is None or not expected.get_secret_value():
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise HTTPException(
            401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


def snapshot(state: ServingState) -> ServingData:
    """The current snapshot; 503 until the store has been read once."""
    if state.data.checked_at is None:
        raise HTTPException(503, "not ready: the store has not been read yet (see /ready)")
    return state.data


def check_ids(data: ServingData, store_id: str | None, product_id: str | None) -> None:
    """404 naming every unknown id."""
    unknown = []
    if store_id is not None and store_id not in data.known_stores:
        unknown.append(f"store_id {store_id!r}")
    if product_id is not None and product_id not in data.known_products:
        unknown.append(f"product_id {product_id!r}")
    if unknown:
        raise HTTPException(404, f"unknown {' and '.join(unknown)}")


def invalid(location: str, name: str, message: str, value: object) -> RequestValidationError:
    """A 422 shaped like FastAPI's own validation errors."""
    return RequestValidationError(
        [{"type": "value_error", "loc": (location, name), "msg": message, "input": str(value)}]
    )


public = APIRouter()
protected = APIRouter(dependencies=[Depends(require_token)], responses={401: {"model": Problem}})


@public.get("/health", response_model=Health, tags=["health"])
async def health() -> Health:
    """Liveness: the process answers. Never needs the token."""
    return Health()


@protected.get(
    "/ready", response_model=Readiness, tags=["health"], responses={503: {"model": Readiness}}
)
async def ready(state: State) -> JSONResponse:
    """Readiness: the store was read (and its last read worked), the registry answers, and which
    champion versions are loaded since when. 503 until the store has been read."""
    data = state.data
    champions = [
        ChampionStatus(
            name=w.name,
            alias=w.alias,
            status=w.status,
            version=w.info.version if w.info else None,
            loaded_since=w.info.loaded_since if w.info else None,
            checked_at=w.checked_at,
        )
        for w in state.watchers.values()
    ]
    body = Readiness(
        ready=state.ready,
        started_at=state.started_at,
        store=StoreStatus(
            reachable=data.checked_at is not None and state.store_error is None,
            checked_at=data.checked_at,
            error=state.store_error,
            table_errors=dict(data.table_errors),
            tables_read_at=dict(data.read_at),
        ),
        registry_reachable=all(c.status in ("ok", "no_champion") for c in champions),
        champions=champions,
        forecast_rows_by_version=data.forecast_versions,
        forecast_origin=data.forecast_origin,
        forecast_refresh=dict(state.forecast_refresh),
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if state.ready else 503)


@protected.get("/forecast", response_model=ForecastAnswer, tags=["forecasts"], responses=ERRORS)
async def forecast(
    state: State,
    store_id: StoreId,
    product_id: ProductId,
    horizon: Annotated[int, Query(ge=1, description="days; at most SERVING_MAX_HORIZON_DAYS")] = 7,
    start: Annotated[
        dt.date | None, Query(description="first day (YYYY-MM-DD); default: the forecast origin")
    ] = None,
) -> ForecastAnswer:
    """Daily demand forecasts with 90% intervals for ``horizon`` days from ``start``.

    Precomputed days come from the ``forecasts`` table (newest row per day); other days are
    scored on demand with the champion ``demand_forecaster``."""
    return await answer_forecast(state, store_id, product_id, horizon, start)


@protected.get(
    "/forecast/{store_id}/{product_id}",
    response_model=ForecastAnswer,
    tags=["forecasts"],
    responses=ERRORS,
)
async def forecast_by_path(
    state: State,
    store_id: Annotated[str, Path(min_length=1, max_length=200)],
    product_id: Annotated[str, Path(min_length=1, max_length=200)],
    horizon: Annotated[int, Query(ge=1)] = 7,
    start: dt.date | None = None,
) -> ForecastAnswer:
    """The same as ``GET /forecast``, with the ids in the path."""
    return await answer_forecast(state, store_id, product_id, horizon, start)


async def answer_forecast(
    state: ServingState, store_id: str, product_id: str, horizon: int, start: dt.date | None
) -> ForecastAnswer:
    settings = state.settings
    limit = settings.serving_max_horizon_days
    if horizon > limit:
        raise invalid("query", "horizon", f"Input should be less than or equal to {limit}", horizon)
    data = snapshot(state)
    check_ids(data, store_id, product_id)
    stored = data.forecasts.get((store_id, product_id), {})
    origin = _origin(stored) or data.forecast_origin or dt.datetime.now(dt.UTC).date()
    start = start or origin
    last_allowed = origin + dt.timedelta(days=limit - 1)
    if start < origin - dt.timedelta(days=MAX_DAYS_BACK):
        raise invalid(
            "query", "start",
            f"{start} is more than {MAX_DAYS_BACK} days before the forecast origin {origin}",
            start,
        )  # fmt: skip
    if (last_allowed - start).days < horizon - 1:  # not start + horizon: it may pass 9999-12-31
        raise invalid(
            "query", "start",
            f"{horizon} days from {start} go past {last_allowed}: forecasts reach at most "
            f"{limit} days from the forecast origin {origin}",
            start,
        )  # fmt: skip
    dates = [start + dt.timedelta(days=i) for i in range(horizon)]
    champion = state.champion(state.demand_model)
    missing = [d for d in dates if d not in stored]
    scored = {}
    if missing:
        if champion is None:
            raise HTTPException(
                503, f"{len(missing)} of the days asked are not precomputed and there is no "
                f"{state.demand_model}@champion to score them",
            )  # fmt: skip
        try:
            days = await run_in_threadpool(
                state.scorer.score, state.demand_model, champion.version, champion.quantiles,
                store_id, product_id, missing,
            )  # fmt: skip
        except Exception as exc:
            log.exception("on-demand scoring of %s/%s failed", store_id, product_id)
            raise HTTPException(503, f"on-demand scoring failed: {type(exc).__name__}") from exc
        scored = {d.date: d for d in days}
    points = [_point(i, d, stored.get(d), scored.get(d), champion) for i, d in enumerate(dates, 1)]
    versions = {p.model_version for p in points}
    champion_version = champion.version if champion else None
    return ForecastAnswer(
        store_id=store_id,
        product_id=product_id,
        start=start,
        horizon=horizon,
        model_name=state.demand_model,
        model_version=next(iter(versions)) if len(versions) == 1 else str(champion_version),
        champion_version=champion_version,
        up_to_date=versions == {champion_version},
        data_as_of=data.checked_at,
        forecasts=points,
    )


def _origin(stored: dict[dt.date, ForecastDay]) -> dt.date | None:
    firsts = [d for d, f in stored.items() if f.horizon_day == 1]
    return max(firsts) if firsts else (min(stored) if stored else None)


def _point(
    index: int,
    date: dt.date,
    stored: ForecastDay | None,
    scored: ScoredDay | None,
    champion: ChampionInfo | None,
) -> ForecastPoint:
    if stored is not None:
        return ForecastPoint(
            date=date, horizon_day=index, predicted_units=stored.predicted_units,
            lower_90=stored.lower_90, upper_90=stored.upper_90,
            model_version=stored.model_version, source="precomputed", created_at=stored.created_at,
        )  # fmt: skip
    return ForecastPoint(
        date=date, horizon_day=index, predicted_units=scored.predicted_units,
        lower_90=scored.lower_90, upper_90=scored.upper_90, model_version=champion.version,
        source="on_demand",
    )  # fmt: skip


@protected.get(
    "/reorder-advice", response_model=ReorderAdvice, tags=["inventory"], responses=ERRORS
)
async def reorder_advice(
    state: State,
    store_id: StoreId,
    product_id: ProductId,
    service_level: Annotated[
        float | None, Query(gt=0.5, lt=1, description="default INVENTORY_SERVICE_LEVEL")
    ] = None,
    review_days: Annotated[
        float | None, Query(gt=0, le=365, description="default INVENTORY_REVIEW_DAYS")
    ] = None,
) -> ReorderAdvice:
    """Reorder point, safety stock, order quantity and stockout ETA.

    From the inventory job's ``stock_recommendations`` row when there is one (and no other
    service level or review period is asked) and it is for the latest stock level (or nothing
    else can be computed); otherwise computed from the stored forecasts, the demand champion's
    conformal quantile, the stock level and the lead time (see docs/serving.md).
    """
    data = snapshot(state)
    check_ids(data, store_id, product_id)
    key = (store_id, product_id)
    row = data.recommendations.get(key)
    stock = data.stock_levels.get(key)
    # The level moved since the job scored it (scoring is off, failing, or has no champion).
    outdated = (
        row is not None
        and stock is not None
        and stock.as_of is not None
        and (row["as_of"] < stock.as_of)
    )
    if (
        row is not None
        and review_days is None
        and service_level in (None, row["service_level"])
        and not (outdated and data.forecasts.get(key))
    ):
        return advice_from_row(row, data)
    if row is not None and not data.forecasts.get(key):
        name, value = (
            ("review_days", review_days)
            if review_days is not None
            else ("service_level", service_level)
        )
        raise invalid(
            "query", name,
            f"the stored recommendation of this pair is sized at service level "
            f"{row['service_level']} over the inventory job's review period; another {name} needs "
            "the pair's forecasts, and none are stored: ask without it",
            value,
        )  # fmt: skip
    return advice_from_forecasts(state, data, store_id, product_id, service_level, review_days)


def advice_from_row(row: dict, data: ServingData) -> ReorderAdvice:
    """The inventory job's recommendation, as it stored it."""
    return ReorderAdvice(
        store_id=row["store_id"],
        product_id=row["product_id"],
        source="stock_recommendations",
        as_of=row["as_of"],
        stock_level=row["stock_level"],
        lead_time_days=row["lead_time_days"],
        service_level=row["service_level"],
        lead_time_demand=row["lead_time_demand"],
        daily_demand=row["daily_demand"],
        safety_stock=row["safety_stock"],
        reorder_point=row["reorder_point"],
        order_up_to=row["order_up_to"],
        reorder_now=bool(row["reorder_now"]),
        order_quantity=row["order_quantity"],
        days_of_cover=row["days_of_cover"],
        eta_hours=row["eta_hours"],
        stockout_eta=row["stockout_eta"],
        demand_model_name=row["demand_model_name"] or None,
        demand_model_version=row["demand_model_version"] or None,
        stock_model_name=row["stock_model_name"] or None,
        stock_model_version=row["stock_model_version"] or None,
        data_as_of=data.checked_at,
    )


def advice_from_forecasts(
    state: ServingState,
    data: ServingData,
    store_id: str,
    product_id: str,
    service_level: float | None,
    review_days: float | None,
) -> ReorderAdvice:
    settings = state.settings
    stored = data.forecasts.get((store_id, product_id))
    if not stored:
        raise HTTPException(
            404, f"no stock recommendation and no forecasts for store_id {store_id!r}, "
            f"product_id {product_id!r}",
        )  # fmt: skip
    champion = state.champion(state.demand_model)
    if champion is None or not champion.quantiles:
        raise HTTPException(
            503,
            f"no {state.demand_model}@champion with conformal quantiles to size the safety stock",
        )
    level = service_level if service_level is not None else settings.inventory_service_level
    review = review_days if review_days is not None else settings.inventory_review_days
    logged = sorted(float(k[1:]) for k in champion.quantiles if float(k[1:]) > 0.5)
    if not any(abs(level - q) < 1e-9 for q in logged):
        raise invalid(
            "query", "service_level",
            f"no conformal quantile for {level}: choose one of {', '.join(map(str, logged))}",
            level,
        )  # fmt: skip
    level = next(q for q in logged if abs(level - q) < 1e-9)
    stock = data.stock_levels.get((store_id, product_id))
    product = data.products.get(product_id)
    lead_time = product.lead_time_days if product else (stock.lead_time_days if stock else None)
    if not lead_time or lead_time <= 0:
        raise HTTPException(404, f"no lead time known for product_id {product_id!r}")
    # From the newest forecast run's first day (older runs' days stay stored), or the day of the
    # stock level if that is later.
    today = max(_origin(stored), stock.as_of.date() if stock and stock.as_of else dt.date.min)
    ahead = [f for d, f in sorted(stored.items()) if d >= today]
    if not ahead:
        raise HTTPException(
            503, f"the stored forecasts of this pair end on {max(stored)}, before the stock "
            f"level's day {today}: they are out of date until the API rolls them forward",
        )  # fmt: skip
    advice = compute_reorder_advice(
        [f.predicted_units for f in ahead],
        champion.quantiles,
        level,
        lead_time,
        review,
        product.case_pack if product else 1,
        stock.stock_level if stock else None,
    )
    eta = None
    if advice.eta_hours is not None and stock and stock.as_of:
        # The demand walk starts on the first forecast day: a level observed before it (no event
        # since) still held then.
        walk_starts = dt.datetime.combine(ahead[0].date, dt.time(), tzinfo=dt.UTC)
        eta = max(stock.as_of, walk_starts) + dt.timedelta(hours=advice.eta_hours)
    return ReorderAdvice(
        store_id=store_id,
        product_id=product_id,
        source="forecasts",
        as_of=stock.as_of if stock else None,
        stock_level=stock.stock_level if stock else None,
        lead_time_days=lead_time,
        service_level=level,
        review_days=review,
        lead_time_demand=advice.lead_time_demand,
        daily_demand=advice.daily_demand,
        safety_stock=advice.safety_stock,
        reorder_point=advice.reorder_point,
        order_up_to=advice.order_up_to,
        reorder_now=advice.reorder_now,
        order_quantity=advice.order_quantity,
        days_of_cover=advice.days_of_cover,
        eta_hours=advice.eta_hours,
        stockout_eta=eta,
        demand_model_name=state.demand_model,
        demand_model_version=ahead[0].model_version,
        data_as_of=data.checked_at,
    )


@protected.get("/alerts", response_model=Alerts, tags=["inventory"], responses=ERRORS)
async def alerts(
    state: State,
    store_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    product_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    severity: Severity | None = None,
) -> Alerts:
    """The open stock alerts, most severe first, filtered by store, product or severity."""
    data = snapshot(state)
    check_ids(data, store_id, product_id)
    chosen = [
        a
        for a in data.open_alerts
        if (store_id is None or a["store_id"] == store_id)
        and (product_id is None or a["product_id"] == product_id)
        and (severity is None or a["severity"] == severity.value)
    ]
    chosen.sort(
        key=lambda a: (
            SEVERITY_RANK.get(a["severity"], len(SEVERITY_RANK)),
            -a["updated_at"].timestamp(),
        )
    )
    return Alerts(
        count=len(chosen), data_as_of=data.checked_at, alerts=[Alert(**a) for a in chosen]
    )


@protected.get("/sales-anomalies", response_model=SalesAnomalies, tags=["sales"], responses=ERRORS)
async def sales_anomalies(
    state: State,
    store_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    severity: AnomalySeverity | None = None,
    hours: Annotated[int, Query(ge=1, le=MAX_ANOMALY_HOURS)] = 24,
) -> SalesAnomalies:
    """The sales job's anomalies (windows and silences) that ended in the last ``hours``,
    critical first, newest first within a severity, filtered by store (``ALL``: the overall
    row) or severity."""
    data = snapshot(state)
    if (
        store_id is not None
        and store_id != OVERALL
        and all(a["store_id"] != store_id for a in data.recent_anomalies)
    ):
        check_ids(data, store_id, None)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    chosen = [
        a
        for a in data.recent_anomalies
        if a["window_end"] >= since
        and (store_id is None or a["store_id"] == store_id)
        and (severity is None or a["severity"] == severity.value)
    ]
    chosen.sort(
        key=lambda a: (
            ANOMALY_SEVERITY_RANK.get(a["severity"], len(ANOMALY_SEVERITY_RANK)),
            -a["window_end"].timestamp(),
        )
    )
    return SalesAnomalies(
        count=len(chosen),
        data_as_of=data.checked_at,
        anomalies=[SalesAnomaly(**a) for a in chosen],
    )


@protected.get("/models", response_model=list[ModelInfo], tags=["models"])
async def models(state: State) -> list[ModelInfo]:
    """The served models: champion version, metrics and when it was promoted."""
    return [model_info(state, name) for name in state.watchers]


@protected.get("/models/{name}", response_model=ModelInfo, tags=["models"], responses=ERRORS)
async def model(state: State, name: Annotated[str, Path(max_length=200)]) -> ModelInfo:
    """One served model."""
    if name not in state.watchers:
        raise HTTPException(
            404, f"unknown model {name!r}: this API serves {', '.join(state.watchers)}"
        )
    return model_info(state, name)


def model_info(state: ServingState, name: str) -> ModelInfo:
    watcher = state.watchers[name]
    info = watcher.info
    if info is None:
        return ModelInfo(
            name=name, alias=watcher.alias, status=watcher.status, checked_at=watcher.checked_at
        )
    return ModelInfo(
        name=name,
        alias=info.alias,
        status=watcher.status,
        version=info.version,
        run_id=info.run_id,
        created_at=info.created_at,
        promoted_at=state.data.promoted_at.get((name, info.version)),
        loaded_since=info.loaded_since,
        checked_at=watcher.checked_at,
        metrics=info.metrics,
        tags=info.tags,
    )


def create_app(settings: Settings | None = None, state: ServingState | None = None) -> FastAPI:
    """The API on ``settings`` (default: the environment's); ``state`` for a prepared one."""
    settings = settings or get_settings()
    state = state or ServingState(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(
        title="Retail forecasting API",
        version="1.0",
        description="Demand forecasts, reorder advice, open stock alerts and model info from the "
        "champion models. With API_TOKEN set, send `Authorization: Bearer <token>`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.serving = state
    app.include_router(public)
    app.include_router(protected)
    return app
