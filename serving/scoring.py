"""On-demand scoring: forecasts for days that were not precomputed, with the champion model.

The features come from the training code path (:mod:`training.features`), so the model sees the
same numbers as in training. A day inside the stored history is scored one day ahead from the
days before it, exactly like the precomputation. A day past the stored history has no sales
between the last stored day and itself: its lags fall back to the rolling means of the days that
are stored (the documented fallbacks of ``add_demand_features``), a flat projection.

Spark starts on the first call only (``api_spark_session``: local, whatever ``SPARK_MASTER``
says), and calls take turns: one Spark job at a time, whatever the number of requests waiting.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from common.models import load_spark_model, model_uri
from common.settings import Settings
from common.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoredDay:
    date: dt.date
    predicted_units: float
    lower_90: float
    upper_90: float


def scoring_features(
    spark: Any, store: Store, store_id: str, product_id: str, dates: Sequence[dt.date]
) -> Any:
    """Feature rows of one store x product on ``dates`` (any days), from the stored history.

    A requested day with stored sales keeps them (later requested days see them as history); a
    day past the stored history gets no sales (null, not zero), so no lag learns a made-up zero.
    """
    from pyspark.sql import functions as F

    from training.data import (
        HistoryWindow,
        TrainingDataError,
        load_catalog_rows,
        load_daily_history,
        resolve_window,
    )
    from training.features import FEATURE_HISTORY_DAYS, materialize, score_rows_with_history

    keys = spark.createDataFrame([(store_id, product_id)], "store_id string, product_id string")
    catalog_rows = materialize(
        spark,
        load_catalog_rows(spark, store, keys, list(dates)).withColumn(
            "units_sold", F.lit(None).cast("double")
        ),
    )
    history = None
    try:
        last_stored = resolve_window(store).end
        window = HistoryWindow(
            min(dates) - dt.timedelta(days=FEATURE_HISTORY_DAYS),
            min(max(dates) - dt.timedelta(days=1), last_stored),
        )
        if window.end >= window.start:
            history = materialize(spark, load_daily_history(spark, store, window, [product_id]))
    except TrainingDataError:
        history = None
    if history is None:
        return score_rows_with_history(None, catalog_rows)
    key_columns = ["date", "store_id", "product_id"]
    wanted = spark.createDataFrame([(d,) for d in dates], "date date").crossJoin(keys)
    stored = history.join(wanted, key_columns, "left_semi")
    unstored = catalog_rows.join(stored.select(*key_columns), key_columns, "left_anti")
    earlier = history.join(wanted, key_columns, "left_anti")
    rows = stored.unionByName(unstored.select(*history.columns))
    return score_rows_with_history(earlier, rows)


def predict_days(model: Any, features: Any, quantiles: dict[str, float]) -> list[ScoredDay]:
    """The model's predictions (never below zero) with the conformal 90% interval."""
    from pyspark.sql import functions as F

    from training.conformal import INTERVAL_90, bound

    prediction = F.greatest(F.col("prediction"), F.lit(0.0))
    frame = (
        model.transform(features)
        .select(
            "date",
            prediction.alias("predicted_units"),
            bound(prediction, quantiles, INTERVAL_90[0]).alias("lower_90"),
            bound(prediction, quantiles, INTERVAL_90[1]).alias("upper_90"),
        )
        .toPandas()
    )
    return [
        ScoredDay(
            pd.Timestamp(r.date).date(),
            float(r.predicted_units),
            float(r.lower_90),
            float(r.upper_90),
        )  # fmt: skip
        for r in frame.sort_values("date").itertuples(index=False)
    ]


class OnDemandScorer:
    """Scores days with a pinned model version; Spark and the model load on first use."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        spark_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._spark_factory = spark_factory or self._build_spark
        self._spark: Any = None
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def score(
        self,
        model_name: str,
        version: str,
        quantiles: dict[str, float],
        store_id: str,
        product_id: str,
        dates: Sequence[dt.date],
    ) -> list[ScoredDay]:
        """Forecasts of ``dates`` for one store x product by ``model_name`` version ``version``."""
        with self._lock:
            if self._spark is None:
                self._spark = self._spark_factory()
            uri = model_uri(model_name, version)
            if uri not in self._models:
                self._models = {uri: load_spark_model(uri, self.settings)}
                log.info("loaded %s for on-demand scoring", uri)
            features = scoring_features(self._spark, self.store, store_id, product_id, dates)
            return predict_days(self._models[uri], features, quantiles)

    def _build_spark(self) -> Any:
        return api_spark_session(self.settings)


API_SPARK_MASTER = "local[*]"


def api_spark_session(settings: Settings) -> Any:
    """The API's SparkSession (on-demand scoring, forecast refreshes), in its own process
    whatever ``SPARK_MASTER`` says: its jobs are small, and on a cluster the streaming jobs may
    hold every core, so that they would wait for good."""
    from common.spark import build_spark_session

    return build_spark_session("retail-serve", api_settings(settings))


def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"spark_master": API_SPARK_MASTER})
