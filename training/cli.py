"""`retail train`, `retail promote`, `retail rollback` and `retail promotions`."""

from __future__ import annotations

import json
import os

import typer
from rich.console import Console
from rich.table import Table

from common.options import optional_date
from common.settings import Settings, get_settings

console = Console()
MODEL_CHOICES = ("demand_forecaster", "stock_optimizer")

# `retail train` exits with this code when it trained but a model failed its quality gate (the
# others were registered): a script can go on without that model, as the demo does.
QUALITY_GATE_EXIT = 3


def register(app: typer.Typer) -> None:
    """Add the training commands to the `retail` app."""
    app.command("train")(train)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("promotions")(promotions)


def train(
    max_evals: int = typer.Option(10, min=1, help="Hyperopt trials per model"),
    folds: int = typer.Option(3, min=1, help="rolling-origin validation folds"),
    horizon: int = typer.Option(14, min=1, help="days in each validation block and the holdout"),
    start: str = typer.Option("", help="first day of history (YYYY-MM-DD); default: first event"),
    end: str = typer.Option("", help="last day of history (YYYY-MM-DD); default: last event"),
    model: list[str] = typer.Option(
        list(MODEL_CHOICES), "--model", "-m", help="model(s) to train (repeat the option)"
    ),
    max_trees: int = typer.Option(100, min=2, help="upper bound of trees / boosting rounds"),
    max_depth: int = typer.Option(12, min=2, help="upper bound of tree depth"),
    seed: int = typer.Option(42, help="seed for Hyperopt and the tree models"),
    experiment: str = typer.Option("retail-forecasting", help="MLflow experiment"),
) -> None:
    """Tune, validate and register demand_forecaster and stock_optimizer (as @challenger)."""
    import mlflow

    from common.spark import build_spark_session
    from common.store import open_store
    from training.data import TrainingDataError
    from training.promote import sync_promotions
    from training.train import ModelQualityError, TrainingConfig, report_summary, train_models

    settings = get_settings()
    warning = local_registry_warning(settings.mlflow_tracking_uri, os.environ)
    if warning:
        console.print(f"[yellow]{warning}[/yellow]")
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    config = TrainingConfig(
        start=optional_date(start, "--start"),
        end=optional_date(end, "--end"),
        folds=folds,
        horizon=horizon,
        max_evals=max_evals,
        models=tuple(_models(model)),
        max_trees=max_trees,
        max_depth=max_depth,
        seed=seed,
        experiment=experiment,
    )
    store = open_store(settings)
    spark = build_spark_session("retail-train", settings)
    try:
        sync_promotions(store, models=config.models)
        report = train_models(spark, store, config)
    except TrainingDataError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    except ModelQualityError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(QUALITY_GATE_EXIT) from None
    _print_training(report_summary(report))


def local_registry_warning(tracking_uri: str, environ: dict[str, str]) -> str | None:
    """What to say when `mlflow run` (it sets MLFLOW_RUN_ID) hands training a local store: without
    MLFLOW_TRACKING_URI in the caller's shell, MLflow uses sqlite:///mlflow.db in the folder."""
    if not environ.get("MLFLOW_RUN_ID") or tracking_uri.split(":", 1)[0] not in {"sqlite", "file"}:
        return None
    server = Settings.model_fields["mlflow_tracking_uri"].default
    return (
        f"MLflow tracking URI {tracking_uri}: the models are registered in this local store, not "
        f"on the tracking server that the streaming jobs, `retail promote` and the MLflow UI use "
        f"({server} by default). To register them there: "
        f"MLFLOW_TRACKING_URI={server} mlflow run . -e train"
    )


def promote(
    model: list[str] = typer.Option(list(MODEL_CHOICES), "--model", "-m", help="model(s)"),
    margin: float = typer.Option(0.02, min=0.0, max=0.9, help="required RMSE improvement"),
    force: bool = typer.Option(False, help="promote even if the margin is not met"),
    reason: str = typer.Option("", help="why (required with --force); recorded"),
    horizon: int = typer.Option(14, min=1, help="days of forecasts to refresh afterwards"),
) -> None:
    """Move @champion to @challenger if it beats the champion on the same holdout."""
    import mlflow

    from common.spark import build_spark_session
    from common.store import open_store
    from training.forecast import refresh_forecasts
    from training.models import DEMAND_FORECASTER
    from training.promote import PromotionError
    from training.promote import promote as promote_model

    settings = get_settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    store = open_store(settings)
    spark = build_spark_session("retail-promote", settings)
    failed = False
    for name in _models(model):
        try:
            decision = promote_model(spark, store, name, margin=margin, force=force, reason=reason)
        except PromotionError as exc:
            console.print(f"[red]{name}: {exc}[/red]")
            failed = True
            continue
        colour = "green" if decision.promoted else "yellow"
        console.print(f"[{colour}]{name}: {decision.reason}[/{colour}]")
        if decision.promoted and name == DEMAND_FORECASTER:
            written = refresh_forecasts(spark, store, name, horizon=horizon)
            console.print(f"{name}: {written} forecasts refreshed")
    if failed:
        raise typer.Exit(1)


def rollback(
    model: str = typer.Option("demand_forecaster", "--model", "-m", help="model to roll back"),
    reason: str = typer.Option("", help="why; recorded"),
    horizon: int = typer.Option(14, min=1, help="days of forecasts to refresh afterwards"),
) -> None:
    """Move @champion back to the version it replaced."""
    import mlflow

    from common.spark import build_spark_session
    from common.store import open_store
    from training.forecast import refresh_forecasts
    from training.models import DEMAND_FORECASTER
    from training.promote import PromotionError
    from training.promote import rollback as rollback_model

    settings = get_settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    store = open_store(settings)
    name = _models([model])[0]
    try:
        decision = rollback_model(store, name, reason=reason)
    except PromotionError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"[green]{name}: champion {decision.from_version} -> {decision.to_version}[/green]"
    )
    if name == DEMAND_FORECASTER:
        spark = build_spark_session("retail-rollback", settings)
        console.print(
            f"{refresh_forecasts(spark, store, name, horizon=horizon)} forecasts refreshed"
        )


def promotions() -> None:
    """Record alias changes made in the MLflow UI, then list every recorded change."""
    import mlflow

    from common.store import open_store
    from training.promote import sync_promotions

    settings = get_settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    store = open_store(settings)
    sync_promotions(store)
    frame = store.query_df(
        "SELECT changed_at, model_name, alias, from_version, to_version, actor, reason "
        "FROM model_promotions FINAL ORDER BY changed_at"
    )
    table = Table(*frame.columns)
    for row in frame.itertuples(index=False):
        table.add_row(*["" if v is None else str(v) for v in row])
    console.print(table)


def _models(names: list[str]) -> list[str]:
    chosen = [n.strip() for name in names for n in name.split(",") if n.strip()]
    unknown = sorted(set(chosen) - set(MODEL_CHOICES))
    if unknown or not chosen:
        raise typer.BadParameter(
            f"unknown model(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(MODEL_CHOICES)}",
            param_hint="--model",
        )
    return list(dict.fromkeys(chosen))


def _print_training(summary: dict) -> None:
    table = Table(
        "model", "version", "holdout RMSE", "baselines RMSE", "oracle RMSE", "90% coverage"
    )
    for name, result in summary["models"].items():
        oracle = result["oracle_rmse"]
        table.add_row(
            name,
            str(result["version"]),
            f"{result['holdout']['rmse']:.3f}",
            ", ".join(f"{k} {v:.3f}" for k, v in result["baselines_rmse"].items()),
            "-" if oracle is None else f"{oracle:.3f}",
            f"{result['coverage_90']:.1%}",
        )
    console.print(table)
    console.print(json.dumps({"run_id": summary["run_id"], "window": summary["window"]}))
