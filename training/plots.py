"""Figures logged with a training run: feature importance, forecast vs actual, residuals."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def feature_importance_figure(names: list[str], importances: np.ndarray, top: int = 20) -> Figure:
    """Horizontal bars of the ``top`` most important features."""
    order = np.argsort(importances)[::-1][:top][::-1]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(order) + 1.5))
    axis.barh([names[i] for i in order], np.asarray(importances)[order], color="#3b75af")
    axis.set_xlabel("importance (impurity decrease, normalised)")
    axis.set_title("Feature importance")
    figure.tight_layout()
    return figure


def forecast_vs_actual_figure(
    holdout: pd.DataFrame, label: str, title: str, baseline: str = "seasonal naive"
) -> Figure:
    """Daily totals over the holdout (actual, model, and the ``baseline`` column, named in the
    legend) and a per-row scatter."""
    daily = holdout.groupby("date")[[label, "prediction", "baseline"]].sum()
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    left.plot(daily.index, daily[label], marker="o", label="actual")
    left.plot(daily.index, daily["prediction"], marker="o", label="model")
    left.plot(daily.index, daily["baseline"], linestyle="--", label=baseline)
    left.set_title(f"{title}: daily total over the holdout")
    left.legend()
    left.tick_params(axis="x", rotation=45)
    top = float(max(holdout[label].max(), holdout["prediction"].max(), 1.0))
    right.scatter(holdout[label], holdout["prediction"], s=8, alpha=0.5)
    right.plot([0, top], [0, top], color="grey", linewidth=1)
    right.set_xlabel("actual")
    right.set_ylabel("predicted")
    right.set_title("per store x product x day")
    figure.tight_layout()
    return figure


def residuals_figure(actual: np.ndarray, predicted: np.ndarray, title: str) -> Figure:
    """Residual histogram and residuals against the prediction."""
    residual = np.asarray(actual, dtype=float) - np.asarray(predicted, dtype=float)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    left.hist(residual, bins=40, color="#3b75af")
    left.set_title(f"{title}: residuals (actual - predicted)")
    right.scatter(predicted, residual, s=8, alpha=0.5)
    right.axhline(0, color="grey", linewidth=1)
    right.set_xlabel("predicted")
    right.set_ylabel("residual")
    figure.tight_layout()
    return figure
