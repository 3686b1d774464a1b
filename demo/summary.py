"""The demo's closing summary: what flowed, what the jobs found, which models run, where to look."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from common.settings import Settings
from common.store import open_store
from training.cli import MODEL_CHOICES

BASELINES = ("seasonal_naive", "moving_average")  # the first one a model logged is shown


def stored_stream_events(settings: Settings) -> dict[str, int]:
    """Live events the streaming jobs have written to the store (deduplicated by event_id), and
    the dead letters."""
    store = open_store(settings)
    with store.session():
        sales = store.scalar("SELECT count() FROM sales_events FINAL WHERE source = 'stream'")
        inventory = store.scalar(
            "SELECT count() FROM inventory_events FINAL WHERE source = 'stream'"
        )
        dead = store.scalar("SELECT count() FROM dead_letters FINAL")
    return {
        "sales": int(sales or 0),
        "inventory": int(inventory or 0),
        "dead_letters": int(dead or 0),
    }


def _store_figures(settings: Settings) -> dict[str, Any]:
    store = open_store(settings)
    with store.session():
        return {
            "throughput": store.query_df(
                "SELECT query_name, round(avg(processed_rows_per_second)) AS rows_per_s, "
                "sum(input_rows) AS rows, quantile(0.5)(batch_duration_ms) / 1000 AS batch_s "
                "FROM stream_progress FINAL WHERE input_rows > 0 "
                "GROUP BY query_name ORDER BY query_name"
            ),
            "alerts": store.query_df(
                "SELECT severity, countIf(status = 'open') AS open, count() AS total "
                "FROM stock_alerts FINAL GROUP BY severity ORDER BY severity"
            ),
            "anomalies": int(store.scalar("SELECT count() FROM sales_anomalies FINAL") or 0),
            "scores": store.query_df(
                "SELECT 'demand_scores' AS scored, model_version, count() AS n FROM demand_scores "
                "GROUP BY model_version UNION ALL SELECT 'stock_recommendations', "
                "toString(stock_model_version), count() FROM stock_recommendations "
                "GROUP BY stock_model_version"
            ),
            "report": store.scalar("SELECT max(toString(date)) FROM daily_kpis"),
        }


def _champions(settings: Settings) -> list[tuple[str, str | None, dict[str, float]]]:
    from mlflow import MlflowClient

    from training.registry import alias_version

    client = MlflowClient(settings.mlflow_tracking_uri)
    rows = []
    for name in MODEL_CHOICES:
        version = alias_version(client, name, "champion")
        if version is None:  # not registered: it failed its quality gate
            rows.append((name, None, {}))
            continue
        run_id = client.get_model_version(name, version).run_id
        metrics = client.get_run(run_id).data.metrics if run_id else {}
        wanted = {k.split("/", 1)[-1]: v for k, v in metrics.items() if k.startswith(f"{name}/")}
        rows.append((name, version, wanted))
    return rows


def print_summary(settings: Settings, timings: dict[str, float], produced: dict[str, Any]) -> None:
    """Print the demo's summary with the figures read back from the store and the registry."""
    console = Console()
    figures = _store_figures(settings)
    stored = stored_stream_events(settings)
    before = produced.get("stored_before", dict.fromkeys(stored, 0))
    stored = {name: stored[name] - before[name] for name in stored}  # this demo's own

    flow = Table("events", "produced", "processed into the store", title="live events")
    flow.add_row("sales", f"{produced['sales_events']:,}", f"{stored['sales']:,}")
    flow.add_row("inventory", f"{produced['inventory_events']:,}", f"{stored['inventory']:,}")
    flow.add_row("dead letters", "", f"{stored['dead_letters']:,}")
    console.print(flow)

    speed = Table(
        "query",
        "mean processed rows/s",
        "rows",
        "median batch s",
        title="throughput (stream_progress)",
    )
    for row in figures["throughput"].itertuples(index=False):
        speed.add_row(
            row.query_name, f"{row.rows_per_s:,.0f}", f"{row.rows:,}", f"{row.batch_s:.1f}"
        )
    console.print(speed)

    alerts = Table(
        "severity", "open", "total", title=f"stock alerts; sales anomalies: {figures['anomalies']}"
    )
    for row in figures["alerts"].itertuples(index=False):
        alerts.add_row(row.severity, str(row.open), str(row.total))
    console.print(alerts)

    models = Table(
        "model", "champion", "holdout RMSE", "baseline RMSE", "oracle RMSE", title="models"
    )
    for name, version, metrics in _champions(settings):
        baseline = next((b for b in BASELINES if f"{b}_rmse" in metrics), None)
        models.add_row(
            name,
            f"v{version}" if version else "none: not registered",
            f"{metrics.get('holdout_rmse', float('nan')):.3f}",
            f"{metrics[f'{baseline}_rmse']:.3f} ({baseline.replace('_', ' ')})" if baseline else "",
            f"{metrics.get('oracle_rmse', float('nan')):.3f}",
        )
    console.print(models)
    scored = Table("table", "model version", "rows", title="in-stream scoring")
    for row in figures["scores"].itertuples(index=False):
        scored.add_row(row.scored, str(row.model_version), f"{row.n:,}")
    console.print(scored)

    day = figures["report"]
    places = Table("what", "where", title="where to look")
    places.add_row("daily report", str(settings.data_root / "reports" / str(day) / "report.html"))
    places.add_row(
        "Data Docs",
        str(settings.data_root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"),
    )
    places.add_row("MLflow UI", f"http://localhost:{settings.mlflow_port}")
    places.add_row("Spark UI (streaming jobs)", "http://localhost:4040 and http://localhost:4041")
    places.add_row("API", f"http://localhost:{settings.api_port}/docs")
    places.add_row("store", 'retail sql "SELECT * FROM stock_alerts FINAL LIMIT 10"')
    places.add_row("streaming queries", "retail stream status (last batch, events, lag)")
    console.print(places)

    steps = Table("step", "seconds", title="timings")
    for step, seconds in timings.items():
        steps.add_row(step, f"{seconds:.0f}")
    console.print(steps)
    console.print(
        "The stack, both streaming jobs and the API keep running: `make down` stops them all. "
        "Promote another version in the MLflow UI and the streams switch to it within one micro-batch."
    )
