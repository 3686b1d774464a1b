"""Split-conformal intervals from out-of-sample residuals, scaled for count data.

A residual ``y - yhat`` of a unit count grows with the level, roughly like a Poisson standard
deviation, so the nonconformity score is ``(y - yhat) / sqrt(yhat + 1)``. Its empirical quantiles
over the rolling-origin validation blocks (rows the model never trained on) give an interval
``yhat + q(level) * sqrt(yhat + 1)`` with that marginal coverage, and, for the stock model, the
safety stock over the lead time for a service level: ``q(service_level) * sqrt(yhat + 1)``.
"""

from __future__ import annotations

import math

import numpy as np
from pyspark.sql import Column
from pyspark.sql import functions as F

QUANTILE_LEVELS = (0.05, 0.1, 0.5, 0.8, 0.9, 0.95, 0.975, 0.99)
INTERVAL_90 = (0.05, 0.95)


def scaled_residuals(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The nonconformity scores ``(y - yhat) / sqrt(max(yhat, 0) + 1)``."""
    predicted = np.asarray(predicted, dtype=float)
    return (np.asarray(actual, dtype=float) - predicted) / np.sqrt(np.clip(predicted, 0, None) + 1)


def residual_quantiles(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """The score quantiles at QUANTILE_LEVELS, keyed ``q0.05`` .. ``q0.99``.

    Uses the finite-sample conformal rank ``ceil((n + 1) * level)``, so coverage holds for n rows.
    """
    scores = np.sort(scaled_residuals(actual, predicted))
    if scores.size == 0:
        raise ValueError("no residuals to calibrate the intervals on")
    n = scores.size
    quantiles = {}
    for level in QUANTILE_LEVELS:
        rank = math.ceil((n + 1) * level) if level >= 0.5 else math.floor((n + 1) * level)
        quantiles[quantile_key(level)] = float(scores[min(max(rank, 1), n) - 1])
    return quantiles


def quantile_key(level: float) -> str:
    return f"q{level:g}"


def bound(prediction: Column, quantiles: dict[str, float], level: float) -> Column:
    """``prediction + q(level) * sqrt(prediction + 1)``, never below zero units."""
    scale = F.sqrt(F.greatest(prediction, F.lit(0.0)) + F.lit(1.0))
    return F.greatest(prediction + F.lit(quantiles[quantile_key(level)]) * scale, F.lit(0.0))


def safety_stock(
    lead_time_demand: float, quantiles: dict[str, float], service_level: float
) -> float:
    """Units to hold above the expected lead-time demand for ``service_level`` (a logged level)."""
    return max(
        0.0, quantiles[quantile_key(service_level)] * math.sqrt(max(lead_time_demand, 0) + 1)
    )
