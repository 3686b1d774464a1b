"""`retail batch`: the daily KPIs, rankings, report and data-quality gate."""

from __future__ import annotations

from datetime import date

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"expected YYYY-MM-DD, got {value!r}", param_hint=option) from None


def register(app: typer.Typer) -> None:
    """Add `retail batch` to the CLI."""

    @app.command("batch")
    def batch_command(
        day: str | None = typer.Option(None, "--date", help="one day, YYYY-MM-DD"),
        date_from: str | None = typer.Option(None, "--from", help="first day of a range"),
        date_to: str | None = typer.Option(None, "--to", help="last day of a range"),
    ) -> None:
        """Check a day's data (Great Expectations), then publish its KPIs, rankings and report.

        Default: yesterday (UTC). Exit code 1 when a day failed a critical check and was not
        published, 2 when the batch could not run.
        """
        from batch.job import PUBLISHED, BatchError, resolve_days, run_batch
        from common.settings import get_settings

        try:
            first, last = resolve_days(
                _day(day, "--date"), _day(date_from, "--from"), _day(date_to, "--to")
            )
            results = run_batch(get_settings(), first, last)
        except BatchError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
        table = Table("date", "status", "critical", "warnings", "quarantined", "source", "report")
        for result in results:
            colour = "green" if result.status == PUBLISHED else "red"
            table.add_row(
                result.day.isoformat(),
                f"[{colour}]{result.status}[/{colour}]",
                "\n".join(result.critical),
                str(len(result.warnings)),
                str(result.quarantined_rows),
                result.kpi_source,
                str(result.report_path or ""),
            )
        console.print(table)
        if any(r.status != PUBLISHED for r in results):
            raise typer.Exit(1)
