"""One training run: load history, tune each model on rolling-origin folds, judge it on the
holdout beside baselines and the oracle, log everything to MLflow and register the challengers.

The parent MLflow run holds the data snapshot description, each model's best parameters, holdout
metrics, baseline and oracle metrics, conformal quantiles and plots; each Hyperopt trial is a
nested run. A model that does not beat its naive forecast on the holdout (seasonal naive for
demand, the 28-day mean over the lead time for stock) is not registered and the run fails loudly (:class:`ModelQualityError`), so no useless model reaches the registry.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.promotions import record_change
from common.store import Store
from training.conformal import INTERVAL_90, quantile_key, residual_quantiles
from training.data import (
    HistoryWindow,
    TrainingDataError,
    load_daily_history,
    load_oracle,
    resolve_window,
)
from training.features import FEATURE_HISTORY_DAYS, add_demand_features
from training.models import (
    DEMAND_FORECASTER,
    MODEL_NAMES,
    add_training_target,
    build_pipeline,
    feature_names,
    learner_stage,
    model_spec,
)
from training.plots import feature_importance_figure, forecast_vs_actual_figure, residuals_figure
from training.registry import (
    CHALLENGER,
    RegisteredVersion,
    alias_version,
    code_version,
    register_version,
)
from training.tune import forecast_metrics, tune
from training.validation import Plan, plan_folds, split_fold

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "retail-forecasting"
BASELINES = {
    DEMAND_FORECASTER: {"seasonal_naive": "units_lag_7", "moving_average": "units_mean_28d"},
    "stock_optimizer": {"moving_average": "naive_lead_time_demand"},
}

GATE_BASELINE = {DEMAND_FORECASTER: "seasonal_naive", "stock_optimizer": "moving_average"}


class ModelQualityError(RuntimeError):
    """A trained model failed its quality gate and was not registered."""


@dataclass(frozen=True)
class TrainingConfig:
    """What to train on and how hard to search."""

    start: dt.date | None = None
    end: dt.date | None = None
    folds: int = 3
    horizon: int = 14
    max_evals: int = 10
    models: tuple[str, ...] = MODEL_NAMES
    max_trees: int = 100
    max_depth: int = 12
    seed: int = 42
    experiment: str = DEFAULT_EXPERIMENT
    register: bool = True


@dataclass
class ModelReport:
    name: str
    best_params: dict[str, Any]
    holdout: dict[str, float]
    baselines: dict[str, float]
    oracle_rmse: float | None
    quantiles: dict[str, float]
    coverage_90: float
    registered: RegisteredVersion | None = None
    gate_failure: str | None = None


@dataclass
class TrainingReport:
    run_id: str
    window: HistoryWindow
    plan: Plan
    snapshot: dict[str, Any]
    models: dict[str, ModelReport] = field(default_factory=dict)


def train_models(spark: SparkSession, store: Store, config: TrainingConfig) -> TrainingReport:
    """Run the whole training workflow under one parent MLflow run (or the one `mlflow run` made)."""
    import mlflow
    from mlflow.environment_variables import MLFLOW_RUN_ID

    for name in config.models:
        model_spec(name)
    window = resolve_window(store, config.start, config.end)
    plan = plan_folds(window.start, window.end, config.folds, config.horizon)
    started = time.perf_counter()
    features = add_demand_features(load_daily_history(spark, store, window)).cache()
    snapshot = describe_snapshot(features, window, plan)
    log.info(
        "history %s..%s: %d rows, %d series, features in %.1f s",
        window.start, window.end, snapshot["rows"], snapshot["series"],
        time.perf_counter() - started,
    )  # fmt: skip
    check_trainable(snapshot)
    oracle = load_oracle(store, window)

    if not MLFLOW_RUN_ID.get():
        mlflow.set_experiment(config.experiment)
    with mlflow.start_run(run_name="train") as parent:
        mlflow.set_tags({"kind": "training", "code_version": code_version()})
        logged = mlflow.get_run(parent.info.run_id).data.params  # `mlflow run` logs its own
        mlflow.log_params({k: v for k, v in _config_params(config).items() if k not in logged})
        mlflow.log_dict(snapshot, "data_snapshot.json")
        report = TrainingReport(parent.info.run_id, window, plan, snapshot)
        for name in config.models:
            report.models[name] = _train_one(name, store, features, plan, window, oracle, config)
    features.unpersist()
    failures = [m.gate_failure for m in report.models.values() if m.gate_failure]
    if failures:
        raise ModelQualityError("; ".join(failures))
    return report


def describe_snapshot(features: DataFrame, window: HistoryWindow, plan: Plan) -> dict[str, Any]:
    """What the run trained on: sizes, censoring, silent products, short series, windows."""
    totals = features.agg(
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct("store_id").alias("stores"),
        F.countDistinct("product_id").alias("products"),
        F.countDistinct("store_id", "product_id").alias("series"),
        F.sum("stockout").alias("stockout_days"),
        F.sum(F.when(F.col("units_sold") == 0, 1).otherwise(0)).alias("zero_sales_days"),
        F.sum("units_sold").alias("units_sold"),
        F.count("demand_label").alias("labelled_rows"),
    ).first()
    per_product = features.groupBy("product_id").agg(F.sum("units_sold").alias("units"))
    silent = sorted(r.product_id for r in per_product.where(F.col("units") == 0).collect())
    per_series = features.groupBy("store_id", "product_id").agg(F.count(F.lit(1)).alias("days"))
    short = per_series.where(F.col("days") < FEATURE_HISTORY_DAYS).orderBy("store_id", "product_id")
    return {
        "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
        "days": window.days,
        **{k: (int(v) if v is not None else 0) for k, v in totals.asDict().items()},
        "stockout_share": (totals["stockout_days"] or 0) / max(totals["rows"], 1),
        "products_never_sold": silent,
        "series_shorter_than_warmup": [f"{r.store_id}|{r.product_id}" for r in short.collect()],
        "folds": [_fold_dict(f) for f in plan.folds],
        "holdout": _fold_dict(plan.holdout),
        "censoring": "stockout days are excluded as labels and masked out of lags/rolling means",
    }


def check_trainable(snapshot: dict[str, Any]) -> None:
    """Refuse a history that cannot train anything useful, saying why."""
    if not snapshot["labelled_rows"]:
        raise TrainingDataError(
            "every day in the window is a stockout day, so no demand was observed to learn from"
        )
    if not snapshot["units_sold"]:
        raise TrainingDataError(
            f"no units were sold between {snapshot['window']['start']} and "
            f"{snapshot['window']['end']}: a model would only learn to predict zero"
        )
    if snapshot["products_never_sold"]:
        log.warning(
            "products that never sold in the window (the model forecasts ~0 for them): %s",
            ", ".join(snapshot["products_never_sold"]),
        )
    if snapshot["series_shorter_than_warmup"]:
        log.warning(
            "%d series have less than %d days of history; their lags fall back to product means",
            len(snapshot["series_shorter_than_warmup"]),
            FEATURE_HISTORY_DAYS,
        )


def _train_one(
    name: str,
    store: Store,
    features: DataFrame,
    plan: Plan,
    window: HistoryWindow,
    oracle: pd.DataFrame | None,
    config: TrainingConfig,
) -> ModelReport:
    import mlflow

    spec = model_spec(name)
    started = time.perf_counter()
    tuning = tune(
        name, features, plan, config.max_evals, config.seed, config.max_trees, config.max_depth
    )
    params = tuning.best.params
    train, holdout = split_fold(
        add_training_target(features, name), plan.holdout, spec.label, spec.label_end_column
    )
    model = build_pipeline(name, params, config.seed).fit(train)
    baseline_columns = BASELINES[name]
    scored = (
        model.transform(holdout)
        .select(
            "date", "store_id", "product_id", spec.label, "prediction", "lead_time_days",
            *[F.col(c).alias(b) for b, c in baseline_columns.items()],
        )
        .toPandas()
    )  # fmt: skip
    actual = scored[spec.label].to_numpy()
    metrics = forecast_metrics(actual, scored["prediction"].to_numpy())
    baselines = {
        b: forecast_metrics(actual, scored[b].to_numpy())["rmse"] for b in baseline_columns
    }
    oracle_rmse = _oracle_rmse(name, scored, oracle, spec.label)
    quantiles = residual_quantiles(tuning.best.actual, tuning.best.predicted)
    coverage = _coverage(actual, scored["prediction"].to_numpy(), quantiles)
    report = ModelReport(name, params, metrics, baselines, oracle_rmse, quantiles, coverage)
    log.info(
        "%s: tuned and fitted in %.1f s, holdout RMSE %.3f, baselines %s, oracle %s",
        name, time.perf_counter() - started, metrics["rmse"], baselines, oracle_rmse,
    )  # fmt: skip
    slots = feature_names(model.transform(holdout.limit(1)))
    _log_model_run(report, model, slots, scored, spec.label, tuning)
    report.gate_failure = _quality_gate(report)
    if report.gate_failure:
        mlflow.set_tag(f"{name}/registered", "false: " + report.gate_failure)
        log.error("%s not registered: %s", name, report.gate_failure)
    elif config.register:
        sample = model.transform(holdout.limit(5)).select(*spec.input_columns, "prediction")
        example = sample.toPandas()
        previous = alias_version(mlflow.MlflowClient(), name, CHALLENGER)
        report.registered = register_version(
            model,
            name,
            input_example=example[spec.input_columns],
            output_example=example["prediction"],
            tags=_version_tags(report, window, plan),
            metadata=_version_metadata(report, window, plan, spec.input_columns, spec.label),
        )
        record_change(
            store, name, CHALLENGER, previous, report.registered.version, "retail train",
            f"trained in run {report.registered.run_id}",
        )  # fmt: skip
    return report


def _oracle_rmse(
    name: str, scored: pd.DataFrame, oracle: pd.DataFrame | None, label: str
) -> float | None:
    """RMSE of the generator's expected demand on the same holdout rows (None without truth)."""
    if oracle is None:
        return None
    expected = oracle.set_index(["store_id", "product_id", "date"])["expected_demand"]
    keys = list(zip(scored["store_id"], scored["product_id"], scored["date"], strict=True))
    if name == DEMAND_FORECASTER:
        best_guess = expected.reindex(keys).to_numpy()
    else:
        lead = np.maximum(np.ceil(scored["lead_time_days"].fillna(1).to_numpy()), 1).astype(int)
        best_guess = np.array(
            [
                expected.reindex([(s, p, d + dt.timedelta(days=k)) for k in range(n)]).sum(
                    min_count=n
                )
                for (s, p, d), n in zip(keys, lead, strict=True)
            ]
        )
    known = ~np.isnan(best_guess)
    if not known.any():
        return None
    return forecast_metrics(scored[label].to_numpy()[known], best_guess[known])["rmse"]


def _coverage(actual: np.ndarray, predicted: np.ndarray, quantiles: dict[str, float]) -> float:
    """Share of holdout rows inside the conformal 90% interval."""
    scale = np.sqrt(np.clip(predicted, 0, None) + 1)
    low, high = (quantiles[quantile_key(level)] for level in INTERVAL_90)
    lower = np.maximum(predicted + low * scale, 0)
    upper = predicted + high * scale
    return float(((actual >= lower) & (actual <= upper)).mean())


def _quality_gate(report: ModelReport) -> str | None:
    """Why the model must not be registered (it does not beat its naive forecast), or None."""
    baseline = GATE_BASELINE[report.name]
    naive = report.baselines[baseline]
    if report.holdout["rmse"] < naive:
        return None
    return (
        f"{report.name} holdout RMSE {report.holdout['rmse']:.3f} does not beat the {baseline} "
        f"forecast ({naive:.3f}): not registered"
    )


def _log_model_run(
    report: ModelReport,
    model: Any,
    slots: list[str],
    scored: pd.DataFrame,
    label: str,
    tuning: Any,
) -> None:
    import mlflow

    name = report.name
    mlflow.log_params({f"{name}/{k}": v for k, v in report.best_params.items()})
    metrics = {f"{name}/holdout_{k}": v for k, v in report.holdout.items()}
    metrics.update({f"{name}/{b}_rmse": r for b, r in report.baselines.items()})
    metrics.update(
        {f"{name}/rmse_improvement_vs_{b}": 1 - report.holdout["rmse"] / r
         for b, r in report.baselines.items() if r}
    )  # fmt: skip
    if report.oracle_rmse is not None:
        metrics[f"{name}/oracle_rmse"] = report.oracle_rmse
        metrics[f"{name}/rmse_to_oracle"] = report.holdout["rmse"] / report.oracle_rmse
    metrics.update({f"{name}/conformal_{k}": v for k, v in report.quantiles.items()})
    metrics[f"{name}/coverage_90"] = report.coverage_90
    metrics[f"{name}/cv_rmse"] = tuning.best.metrics["rmse"]
    mlflow.log_metrics(metrics)
    mlflow.log_dict(report.quantiles, f"{name}/conformal_quantiles.json")
    importances = learner_stage(model).featureImportances.toArray()
    baseline_name = next(iter(report.baselines))  # the model's first (named) baseline
    figures = {
        "feature_importance.png": feature_importance_figure(slots, importances),
        "forecast_vs_actual.png": forecast_vs_actual_figure(
            scored.assign(baseline=scored[baseline_name]),
            label,
            name,
            baseline_name.replace("_", " "),
        ),
        "residuals.png": residuals_figure(scored[label], scored["prediction"], name),
    }
    for file_name, figure in figures.items():
        mlflow.log_figure(figure, f"{name}/{file_name}")
        figure.clear()


def _version_tags(report: ModelReport, window: HistoryWindow, plan: Plan) -> dict[str, str]:
    tags = {
        "data_start": window.start.isoformat(),
        "data_end": window.end.isoformat(),
        "train_end": (plan.holdout.validation_start - dt.timedelta(days=1)).isoformat(),
        "holdout_start": plan.holdout.validation_start.isoformat(),
        "holdout_end": plan.holdout.validation_end.isoformat(),
        "code_version": code_version(),
        "coverage_90": f"{report.coverage_90:.4f}",
    }
    tags.update({f"holdout_{k}": f"{v:.6g}" for k, v in report.holdout.items()})
    tags.update({f"{b}_rmse": f"{r:.6g}" for b, r in report.baselines.items()})
    if report.oracle_rmse is not None:
        tags["oracle_rmse"] = f"{report.oracle_rmse:.6g}"
    return tags


def _version_metadata(
    report: ModelReport, window: HistoryWindow, plan: Plan, columns: list[str], label: str
) -> dict[str, Any]:
    return {
        "conformal_quantiles": report.quantiles,
        "conformal_score": "(actual - predicted) / sqrt(predicted + 1)",
        "input_columns": columns,
        "label": label,
        "data_window": [window.start.isoformat(), window.end.isoformat()],
        "holdout_window": [
            plan.holdout.validation_start.isoformat(),
            plan.holdout.validation_end.isoformat(),
        ],
        "holdout_metrics": report.holdout,
    }


def _config_params(config: TrainingConfig) -> dict[str, Any]:
    params = asdict(config)
    params["models"] = ",".join(config.models)
    return {k: ("" if v is None else str(v)) for k, v in params.items()}


def _fold_dict(fold: Any) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in asdict(fold).items()}


def report_summary(report: TrainingReport) -> dict[str, Any]:
    """A JSON-friendly summary of a training run, for the CLI."""
    return json.loads(
        json.dumps(
            {
                "run_id": report.run_id,
                "window": [report.window.start.isoformat(), report.window.end.isoformat()],
                "models": {
                    name: {
                        "holdout": m.holdout,
                        "baselines_rmse": m.baselines,
                        "oracle_rmse": m.oracle_rmse,
                        "coverage_90": m.coverage_90,
                        "version": m.registered.version if m.registered else None,
                        "gate_failure": m.gate_failure,
                    }
                    for name, m in report.models.items()
                },
            }
        )
    )
