"""Hyperopt (TPE, default ``Trials`` on the driver) over a model's hyperparameters.

Each trial fits the pipeline on every rolling-origin fold and scores the pooled validation
predictions; it is logged as a nested MLflow run (params, RMSE, MAE, WAPE, bias, duration).
``SparkTrials`` is not used: it runs trials inside Spark tasks, where Spark ML cannot fit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hyperopt import STATUS_OK, fmin, space_eval, tpe
from hyperopt.fmin import generate_trials_to_calculate
from pyspark.sql import DataFrame

from training.models import (
    add_training_target,
    build_pipeline,
    model_spec,
    search_space,
    starting_point,
)
from training.validation import Plan, split_fold

log = logging.getLogger(__name__)

INTEGER_PARAMS = {"num_trees", "max_depth", "min_instances_per_node", "max_iter"}


@dataclass
class CrossValidation:
    """Pooled out-of-fold predictions of one parameter set."""

    params: dict[str, Any]
    actual: np.ndarray
    predicted: np.ndarray
    seconds: float

    @property
    def metrics(self) -> dict[str, float]:
        return forecast_metrics(self.actual, self.predicted)


@dataclass
class Tuning:
    best: CrossValidation
    trials: list[CrossValidation]


def forecast_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, WAPE (sum |error| / sum actual) and bias (mean of prediction - actual)."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    if actual.size == 0:
        raise ValueError("no rows to compute metrics on")
    error = predicted - actual
    total = float(np.abs(actual).sum())
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "wape": float(np.abs(error).sum() / total) if total else float("nan"),
        "bias": float(np.mean(error)),
    }


def cross_validate(
    name: str, frame: DataFrame, plan: Plan, params: dict[str, Any], seed: int
) -> CrossValidation:
    """Fit on each fold's past, predict its validation block; pool the predictions."""
    spec = model_spec(name)
    started = time.perf_counter()
    frame = add_training_target(frame, name)
    actual, predicted = [], []
    for fold in plan.folds:
        train, validation = split_fold(frame, fold, spec.label, spec.label_end_column)
        model = build_pipeline(name, params, seed).fit(train)
        scored = model.transform(validation).select(spec.label, "prediction").toPandas()
        actual.append(scored[spec.label].to_numpy())
        predicted.append(scored["prediction"].to_numpy())
    return CrossValidation(
        params, np.concatenate(actual), np.concatenate(predicted), time.perf_counter() - started
    )


def tune(
    name: str,
    frame: DataFrame,
    plan: Plan,
    max_evals: int,
    seed: int,
    max_trees: int,
    max_depth: int,
) -> Tuning:
    """Search ``max_evals`` parameter sets with TPE; each is a nested MLflow run of the active one.

    The first trial is :func:`starting_point`, so even a tiny budget tries a sound configuration.
    """
    import mlflow

    outcomes: list[CrossValidation] = []

    def objective(raw: dict[str, Any]) -> dict[str, Any]:
        params = _clean(raw)
        with mlflow.start_run(nested=True, run_name=f"{name}-trial-{len(outcomes) + 1}"):
            mlflow.set_tags({"model_name": name, "kind": "trial"})
            mlflow.log_params(params)
            outcome = cross_validate(name, frame, plan, params, seed)
            mlflow.log_metrics({**outcome.metrics, "duration_s": outcome.seconds})
        outcomes.append(outcome)
        log.info("%s trial %d: rmse %.4f", name, len(outcomes), outcome.metrics["rmse"])
        return {"loss": outcome.metrics["rmse"], "status": STATUS_OK}

    search(objective, name, max_evals, seed, max_trees, max_depth)
    best = min(outcomes, key=lambda o: o.metrics["rmse"])
    return Tuning(best=best, trials=outcomes)


def search(
    objective: Callable[[dict[str, Any]], Any],
    name: str,
    max_evals: int,
    seed: int,
    max_trees: int,
    max_depth: int,
) -> None:
    """Call ``objective`` on ``max_evals`` parameter sets of ``name``'s space: first
    :func:`starting_point`, then TPE's. (Hyperopt reads ``points_to_evaluate`` only without a
    ``trials`` object, and evaluates a queued trial on top of ``max_evals``.)"""
    space = search_space(name, max_trees=max_trees, max_depth=max_depth)
    first = starting_point(name, max_trees=max_trees, max_depth=max_depth)
    if max_evals == 1:
        objective(space_eval(space, first))
        return
    fmin(
        objective,
        space,
        algo=tpe.suggest,
        max_evals=max_evals - 1,
        trials=generate_trials_to_calculate([first]),
        rstate=np.random.default_rng(seed),
        show_progressbar=False,
    )


def _clean(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: int(v) if k in INTEGER_PARAMS else v for k, v in raw.items()}
