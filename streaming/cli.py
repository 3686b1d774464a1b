"""`retail stream sales|inventory`: run a streaming job (until stopped, or drain with --available-now)."""

from __future__ import annotations

from collections.abc import Callable

import typer
from rich.console import Console

from common.settings import SettingsError, get_settings

stream_app = typer.Typer(
    help="Run the streaming jobs (Kafka -> Spark -> store).", no_args_is_help=True
)

AVAILABLE_NOW = typer.Option(
    False,
    "--available-now",
    help="process what the topic holds now, then exit (Trigger.AvailableNow)",
)
CONSOLE = typer.Option(False, "--console", help="print results to the console instead of the store")


@stream_app.command("sales")
def sales(available_now: bool = AVAILABLE_NOW, console: bool = CONSOLE) -> None:
    """Sales: raw events, 5-minute window metrics, demand scores, anomalies."""
    from streaming.sales import main

    _run(main, available_now=available_now, console=console)


@stream_app.command("inventory")
def inventory(available_now: bool = AVAILABLE_NOW, console: bool = CONSOLE) -> None:
    """Inventory: stock levels, window metrics, stock recommendations, alerts."""
    from streaming.inventory import main

    _run(main, available_now=available_now, console=console)


@stream_app.command("status")
def status() -> None:
    """What the streaming queries did lately: last batch, last events, lag, watermark."""
    import datetime as dt

    from rich.table import Table

    from common.store import StoreError, open_store
    from streaming.activity import query_activity

    try:
        activity = query_activity(open_store(get_settings()), dt.datetime.now(dt.UTC))
    except StoreError as exc:
        Console(stderr=True).print(f"[red]cannot read stream_progress: {exc}[/red]")
        raise typer.Exit(1) from None
    if activity.empty:
        Console().print("no streaming query has recorded a batch in the last day")
        return
    columns = ["job", "query", "last batch", "last events", "events, last 5 min", "lag"]
    table = Table(*columns, "watermark", "note", title="streaming queries (UTC)")
    for row in activity.itertuples(index=False):
        table.add_row(
            row.job,
            row.query_name,
            _moment(row.last_batch),
            _moment(row.last_events),
            f"{row.recent_events:,}",
            f"{row.lag_messages:,}",
            _moment(row.watermark),
            row.note,
        )
    Console().print(table)


def _moment(value: object) -> str:
    import pandas as pd

    return "" if value is None or pd.isna(value) else f"{pd.Timestamp(value):%Y-%m-%d %H:%M:%S}"


def _run(main: Callable[..., None], **flags: bool) -> None:
    """Run a job's ``main``; a setting that does not work (no broker) is a message, not a trace."""
    try:
        main(get_settings(), **flags)
    except SettingsError as exc:
        Console(stderr=True).print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add `retail stream ...` to the CLI."""
    app.add_typer(stream_app, name="stream")
