"""Precompute the champion's forecasts into the ``forecasts`` table (read by serving).

The demand model predicts one day ahead from the days before, so a horizon of ``h`` days is
forecast recursively: day 1 from the stored history, day 2 with day 1's prediction standing in for
its unknown sales, and so on. Every day is scored through :func:`score_rows_with_history`, the same
feature path as training. The 90% interval uses the conformal quantiles logged with the model
(one-day-ahead residuals, applied to each horizon day).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from common.models import load_spark_model, model_uri
from common.store import Store
from training.conformal import INTERVAL_90, bound
from training.data import (
    DAILY_COLUMNS,
    HistoryWindow,
    load_catalog_rows,
    load_daily_history,
    resolve_window,
)
from training.features import FEATURE_HISTORY_DAYS, score_rows_with_history
from training.models import DEMAND_FORECASTER
from training.registry import CHAMPION, alias_version, model_metadata

log = logging.getLogger(__name__)


def refresh_forecasts(
    spark: SparkSession,
    store: Store,
    model_name: str = DEMAND_FORECASTER,
    horizon: int = 14,
    as_of: dt.date | None = None,
    client: Any = None,
) -> int:
    """Forecast every active series for ``horizon`` days from ``as_of`` (default: the day after
    the last stored event) with ``model_name@champion``; write them; return the rows written."""
    import mlflow

    if model_name != DEMAND_FORECASTER:
        raise ValueError(f"forecasts are precomputed by {DEMAND_FORECASTER}, not {model_name}")
    if horizon < 1:
        raise ValueError("horizon must be at least 1 day")
    client = client or mlflow.MlflowClient()
    version = alias_version(client, model_name, CHAMPION)
    if version is None:
        log.warning("no %s@%s yet: no forecasts written", model_name, CHAMPION)
        return 0
    uri = model_uri(model_name, version)
    model = load_spark_model(uri)
    quantiles = model_metadata(uri)["conformal_quantiles"]
    first_day = as_of or resolve_window(store).end + dt.timedelta(days=1)
    history = load_daily_history(
        spark,
        store,
        HistoryWindow(
            first_day - dt.timedelta(days=FEATURE_HISTORY_DAYS), first_day - dt.timedelta(days=1)
        ),
    )
    days = [first_day + dt.timedelta(days=h) for h in range(horizon)]
    upcoming = load_catalog_rows(
        spark, store, history.select("store_id", "product_id").distinct(), days
    ).toPandas()
    known = history.toPandas()
    forecasts = []
    for step, day in enumerate(days, start=1):
        rows = upcoming[upcoming["date"] == day]
        scored = model.transform(
            score_rows_with_history(
                spark.createDataFrame(known[DAILY_COLUMNS], schema=history.schema),
                spark.createDataFrame(rows[DAILY_COLUMNS], schema=history.schema),
            )
        )
        prediction = F.greatest(F.col("prediction"), F.lit(0.0))
        result = scored.select(
            "store_id",
            "product_id",
            F.col("date").alias("forecast_date"),
            F.lit(step).alias("horizon_day"),
            prediction.alias("predicted_units"),
            bound(prediction, quantiles, INTERVAL_90[0]).alias("lower_90"),
            bound(prediction, quantiles, INTERVAL_90[1]).alias("upper_90"),
        ).toPandas()
        forecasts.append(result)
        filled = rows.merge(
            result[["store_id", "product_id", "predicted_units"]], on=["store_id", "product_id"]
        )
        filled["units_sold"] = filled.pop("predicted_units")
        known = pd.concat([known, filled[DAILY_COLUMNS]], ignore_index=True)
    table = pd.concat(forecasts, ignore_index=True)
    table["horizon_day"] = table["horizon_day"].astype("uint16")
    table["model_name"] = model_name
    table["model_version"] = version
    written = store.insert_df("forecasts", table)
    log.info("wrote %d forecasts from %s version %s for %s..%s", written, model_name, version,
             days[0], days[-1])  # fmt: skip
    return written
