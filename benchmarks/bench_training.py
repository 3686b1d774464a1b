"""Training benchmark: time at three data sizes (growth exponent), and holdout accuracy of the
Spark RandomForest pipeline beside scikit-learn's HistGradientBoostingRegressor on the same
features and beside the generator's oracle, plus the coverage of the conformal 90% interval.

Each size is a fresh generated history in a store of its own. Time is the whole path from the
store to a fitted ``demand_forecaster`` (load, features, fit) with fixed parameters; no tuning,
so sizes compare like with like; the smallest size is trained once untimed first (warm-up). At
the quick sizes Spark's fixed cost per job dominates, so the exponent is well below 1. Accuracy is measured on the largest size: one rolling-origin
fold calibrates the interval, the model trained on the days before the holdout is judged on it.
"""

from __future__ import annotations

import datetime as dt
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PARAMS = {"num_trees": 40, "max_depth": 10, "min_instances_per_node": 5, "subsampling_rate": 0.8,
          "feature_subset_strategy": "onethird"}  # fmt: skip
QUICK_SIZES = [(2, 8), (3, 16), (4, 24)]  # stores x products
FULL_SIZES = [(5, 40), (10, 80), (20, 160)]
HORIZON = 14
RMSE_TO_ORACLE_TARGET = 1.10
COVERAGE_TARGET = 0.90
COVERAGE_TOLERANCE = 0.03
GROWTH_TARGET = 1.2
START_DATE = dt.date(2025, 3, 3)  # fixed, so that every run trains on the same data


def sizes(quick: bool) -> dict[str, Any]:
    """The data sizes of a run (they go in the table's header)."""
    return {
        "days": 90 if quick else 180,
        "stores x products": QUICK_SIZES if quick else FULL_SIZES,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Train at three sizes; compare accuracy on the largest. One row per figure."""
    from common.settings import get_settings, load_settings
    from common.spark import build_spark_session
    from common.store import migrate, open_store
    from generator.backfill import backfill

    size = sizes(quick)
    days, grid = size["days"], size["stores x products"]
    spark = build_spark_session("bench-training", get_settings())
    timings: list[tuple[int, float]] = []
    accuracy: dict[str, float] = {}
    for number, (stores, products) in enumerate(grid):
        with tempfile.TemporaryDirectory(prefix="bench-training-") as folder:
            store = open_store(load_settings(data_dir=Path(folder) / "data"))
            migrate(store)
            backfill(store, days, seed=5 + number, start_date=START_DATE, n_stores=stores,
                     n_products=products, n_customers=200 * stores)  # fmt: skip
            if number == 0:  # warm-up: JIT, class loading and caches, not training time
                _timed_training(spark, store)[2]["features"].unpersist()
            rows, seconds, trained = _timed_training(spark, store)
            timings.append((rows, seconds))
            if number < len(grid) - 1:
                trained["features"].unpersist()
            if number == len(grid) - 1:
                accuracy = _accuracy(spark, store, trained)
    return [*_timing_rows(timings), *_accuracy_rows(accuracy, grid[-1], days)]


def _timed_training(spark: Any, store: Any) -> tuple[int, float, dict[str, Any]]:
    """Load, build features and fit on the days before the holdout; (rows, seconds, state)."""
    from training.data import load_daily_history, resolve_window
    from training.features import add_demand_features
    from training.models import DEMAND_FORECASTER, add_training_target, build_pipeline, model_spec
    from training.validation import plan_folds, split_fold

    spec = model_spec(DEMAND_FORECASTER)
    started = time.perf_counter()
    window = resolve_window(store)
    plan = plan_folds(window.start, window.end, folds=1, horizon=HORIZON)
    features = add_training_target(
        add_demand_features(load_daily_history(spark, store, window)), DEMAND_FORECASTER
    ).cache()
    train, holdout = split_fold(features, plan.holdout, spec.label, spec.label_end_column)
    rows = train.count()
    model = build_pipeline(DEMAND_FORECASTER, PARAMS).fit(train)
    seconds = time.perf_counter() - started
    state = {"features": features, "plan": plan, "model": model, "train": train,
             "holdout": holdout, "window": window}  # fmt: skip
    return rows, seconds, state


def _accuracy(spark: Any, store: Any, state: dict[str, Any]) -> dict[str, float]:
    """Holdout RMSE of the Spark model, the peer and the oracle; interval coverage."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from training.conformal import residual_quantiles
    from training.data import load_oracle
    from training.features import CATEGORICAL_FEATURES
    from training.models import DEMAND_FORECASTER, model_spec
    from training.tune import cross_validate, forecast_metrics

    spec = model_spec(DEMAND_FORECASTER)
    calibration = cross_validate(DEMAND_FORECASTER, state["features"], state["plan"], PARAMS, 42)
    quantiles = residual_quantiles(calibration.actual, calibration.predicted)
    keys = ["store_id", "product_id", "date"]
    scored = (
        state["model"]
        .transform(state["holdout"])
        .select(*keys, spec.label, "prediction", *spec.input_columns)
        .toPandas()
    )
    train = state["train"].select(spec.label, *spec.input_columns).toPandas()
    peer = HistGradientBoostingRegressor(
        categorical_features=[spec.input_columns.index(c) for c in CATEGORICAL_FEATURES],
        random_state=42,
    )
    peer.fit(_as_matrix(train, spec.input_columns), train[spec.label])
    peer_prediction = peer.predict(_as_matrix(scored, spec.input_columns))
    actual = scored[spec.label].to_numpy()
    oracle = load_oracle(store, state["window"])
    expected = scored.merge(oracle, on=keys, how="left")["expected_demand"].to_numpy()
    known = ~np.isnan(expected)
    prediction = scored["prediction"].to_numpy()
    scale = np.sqrt(np.clip(prediction, 0, None) + 1)
    lower = np.maximum(prediction + quantiles["q0.05"] * scale, 0)
    upper = prediction + quantiles["q0.95"] * scale
    state["features"].unpersist()
    return {
        "spark_rmse": forecast_metrics(actual, prediction)["rmse"],
        "peer_rmse": forecast_metrics(actual, peer_prediction)["rmse"],
        "spark_rmse_known": forecast_metrics(actual[known], prediction[known])["rmse"],
        "oracle_rmse": forecast_metrics(actual[known], expected[known])["rmse"],
        "coverage": float(((actual >= lower) & (actual <= upper)).mean()),
        "rows": float(len(actual)),
    }


def _as_matrix(frame: Any, columns: list[str]) -> np.ndarray:
    """The model input columns as numbers; categories as their codes (the peer's categorical)."""
    matrix = frame[columns].copy()
    for column in matrix.columns:
        if matrix[column].dtype == object:
            matrix[column] = matrix[column].astype("category").cat.codes
    return matrix.to_numpy(dtype=float)


def _timing_rows(timings: list[tuple[int, float]]) -> list[dict[str, Any]]:
    rows_log = np.log([r for r, _ in timings])
    seconds_log = np.log([s for _, s in timings])
    exponent = float(np.polyfit(rows_log, seconds_log, 1)[0])
    smallest = timings[0][1]
    result = [
        {
            "name": f"demand_forecaster training time (load, features, fit), {rows:,} rows",
            "target": "",
            "value": seconds,
            "unit": "s",
            "peer": f"smallest size: {smallest:.1f} s",
            "ratio": seconds / smallest,
            "met": True,
        }
        for rows, seconds in timings
    ]
    result.append(
        {
            "name": "training time growth exponent k (time ~ rows^k, least squares over 3 sizes)",
            "target": f"<= {GROWTH_TARGET}",
            "value": exponent,
            "unit": "",
            "peer": "linear growth: k = 1",
            "ratio": exponent,
            "met": exponent <= GROWTH_TARGET,
        }
    )
    return result


def _accuracy_rows(
    accuracy: dict[str, float], size: tuple[int, int], days: int
) -> list[dict[str, Any]]:
    data = f"{size[0]} stores x {size[1]} products x {days} days, {HORIZON}-day holdout"
    to_oracle = accuracy["spark_rmse_known"] / accuracy["oracle_rmse"]
    to_peer = accuracy["spark_rmse"] / accuracy["peer_rmse"]
    miss = abs(accuracy["coverage"] - COVERAGE_TARGET)
    return [
        {
            "name": f"holdout RMSE, Spark RandomForest vs HistGradientBoosting ({data})",
            "target": "<= 1.0x peer",
            "value": accuracy["spark_rmse"],
            "unit": "units",
            "peer": f"scikit-learn HistGradientBoostingRegressor, same features: "
            f"{accuracy['peer_rmse']:.3f}",
            "ratio": to_peer,
            "met": to_peer <= 1.0,
        },
        {
            "name": f"holdout RMSE vs the generator's oracle ({data})",
            "target": f"<= {RMSE_TO_ORACLE_TARGET}x oracle",
            "value": accuracy["spark_rmse_known"],
            "unit": "units",
            "peer": f"oracle (expected demand): {accuracy['oracle_rmse']:.3f}",
            "ratio": to_oracle,
            "met": to_oracle <= RMSE_TO_ORACLE_TARGET,
        },
        {
            "name": f"90% conformal interval coverage on the holdout ({data})",
            "target": f"{COVERAGE_TARGET:.0%} +/- {COVERAGE_TOLERANCE * 100:.0f} points",
            "value": accuracy["coverage"],
            "unit": "share",
            "peer": f"nominal {COVERAGE_TARGET:.0%}",
            "ratio": accuracy["coverage"] / COVERAGE_TARGET,
            "met": not math.isnan(miss) and miss <= COVERAGE_TOLERANCE,
        },
    ]


def main() -> None:
    """Run this benchmark alone and print the table."""
    from rich.console import Console
    from rich.markdown import Markdown

    from benchmarks.harness import render_markdown, run_benchmarks

    Console().print(
        Markdown(render_markdown(run_benchmarks(quick=True, repeats=1, only=["training"])))
    )


if __name__ == "__main__":
    main()
