"""`retail generate backfill|stream`: history into the store, live events to Kafka."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from common.options import optional_date
from generator.faults import DELAY_DISTRIBUTIONS

console = Console()
generate_app = typer.Typer(
    help="Simulate the retail world: history into the store, live events to Kafka.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Mount ``retail generate``."""
    app.add_typer(generate_app, name="generate")


def _print_counts(title: str, counts: dict) -> None:
    table = Table("count", "value", title=title)
    for name, value in counts.items():
        shown = json.dumps(value) if isinstance(value, dict) else str(value)
        table.add_row(name, shown)
    console.print(table)


@generate_app.command()
def backfill(
    days: int = typer.Option(..., "--days", min=1, help="days of history to simulate"),
    seed: int = typer.Option(42, "--seed", min=0, help="the world's seed: same seed, same events"),
    scale: float = typer.Option(
        1.0, "--scale", min=0.01, help="multiplies 5 stores x 40 products x 2500 customers"
    ),
    start_date: str = typer.Option(
        "", "--start-date", help="first day, YYYY-MM-DD (default: DAYS days before today, UTC)"
    ),
    stores: int | None = typer.Option(
        None, "--stores", min=1, help="override the number of stores"
    ),
    products: int | None = typer.Option(
        None, "--products", min=1, help="override the number of products"
    ),
) -> None:
    """Write N days of history (catalog, calendar, ground truth, raw events) into the store."""
    from tqdm import tqdm

    from common.settings import get_settings
    from common.store import StoreError, migrate, open_store
    from generator.backfill import backfill as run_backfill

    store = open_store(get_settings())
    try:
        migrate(store)
        with tqdm(total=days, unit="day", desc="backfill") as bar:

            def advance(result: object) -> None:
                bar.update(1)
                bar.set_postfix(line_items=len(result.sales))  # type: ignore[attr-defined]

            counts = run_backfill(
                store,
                days,
                seed,
                scale,
                optional_date(start_date, "--start-date"),
                n_stores=stores,
                n_products=products,
                on_day=advance,
            )
    except StoreError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _print_counts("backfill", counts)


@generate_app.command()
def stream(
    rate: float = typer.Option(..., "--rate", min=0.001, help="records per second to send"),
    seconds: float = typer.Option(..., "--seconds", min=0.001, help="how long to stream"),
    seed: int = typer.Option(42, "--seed", min=0, help="the world's seed (continues its backfill)"),
    scale: float = typer.Option(1.0, "--scale", min=0.01, help="world size, as for backfill"),
    speedup: float | None = typer.Option(
        None,
        "--speedup",
        min=0.001,
        help="simulated seconds per wall second (event time follows the simulated clock; --rate becomes a cap)",
    ),
    malformed_json_rate: float = typer.Option(0.0, min=0, max=1, help="truncated JSON"),
    wrong_types_rate: float = typer.Option(0.0, min=0, max=1, help="a number field holds text"),
    missing_fields_rate: float = typer.Option(0.0, min=0, max=1, help="a required field is absent"),
    impossible_values_rate: float = typer.Option(
        0.0, min=0, max=1, help="negative quantity, zero price, negative stock"
    ),
    non_utf8_rate: float = typer.Option(0.0, min=0, max=1, help="invalid UTF-8 bytes in a string"),
    duplicate_rate: float = typer.Option(0.0, min=0, max=1, help="the same event_id sent twice"),
    late_rate: float = typer.Option(0.0, min=0, max=1, help="held back, sent out of order"),
    late_delay_distribution: str = typer.Option(
        "exponential", help=f"delay of late records: {', '.join(DELAY_DISTRIBUTIONS)}"
    ),
    late_delay_mean: float = typer.Option(2.0, min=0.001, help="mean delay of late records, s"),
    oversized_rate: float = typer.Option(0.0, min=0, max=1, help="padded far past a sane size"),
    oversized_bytes: int = typer.Option(256 * 1024, min=1, help="padding of oversized records"),
    manifest: Path | None = typer.Option(
        None, "--manifest", help="write every fault record here (JSONL)"
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="sender processes, each with its own producer and partitions"
    ),
    stores: int | None = typer.Option(
        None, "--stores", min=1, help="override the number of stores, as for backfill"
    ),
    products: int | None = typer.Option(
        None, "--products", min=1, help="override the number of products, as for backfill"
    ),
) -> None:
    """Send live sales and inventory events to Kafka, continuing the backfilled world (the same
    seed, scale and sizes name it)."""
    from tqdm import tqdm

    from common.settings import get_settings
    from common.store import StoreError, migrate, open_store
    from generator.faults import FaultRates
    from generator.stream import StreamError, produce

    try:
        faults = FaultRates(
            malformed_json=malformed_json_rate,
            wrong_types=wrong_types_rate,
            missing_fields=missing_fields_rate,
            impossible_values=impossible_values_rate,
            non_utf8=non_utf8_rate,
            duplicate=duplicate_rate,
            late=late_rate,
            oversized=oversized_rate,
            late_delay_distribution=late_delay_distribution,
            late_delay_mean_s=late_delay_mean,
            oversized_bytes=oversized_bytes,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = get_settings()
    store = open_store(settings)
    try:
        migrate(store)
        with tqdm(total=None if speedup else int(rate * seconds), unit="rec", desc="stream") as bar:
            counts = produce(
                settings,
                rate,
                seconds,
                seed,
                faults,
                speedup,
                scale=scale,
                n_stores=stores,
                n_products=products,
                workers=workers,
                manifest_path=manifest,
                store=store,
                on_progress=bar.update,
            )
    except (StreamError, StoreError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _print_counts("stream", counts)
    if counts["send_errors"]:
        console.print(f"[red]{counts['send_errors']} records were not delivered[/red]")
        raise typer.Exit(1)
