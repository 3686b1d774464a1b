"""`retail bench`: run the benchmarks and print one table."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add `retail bench` to the CLI."""

    @app.command()
    def bench(
        full: bool = typer.Option(
            False, "--full", help="the full sizes (slower) instead of the quick ones"
        ),
        repeats: int = typer.Option(
            3, min=1, help="runs of each benchmark; the table shows the median"
        ),
        only: list[str] = typer.Option(
            None, help="areas to run, e.g. --only generator --only batch"
        ),
        keep_data: bool = typer.Option(
            False,
            "--keep-data",
            help="keep the run's folder (store, broker and job logs, checkpoints) afterwards",
        ),
    ) -> None:
        """Measure the platform beside its peers; write benchmarks/results/<date>.md and .json."""
        from rich.console import Console
        from rich.markdown import Markdown

        from benchmarks.harness import render_markdown, run_benchmarks, write_results

        result = run_benchmarks(quick=not full, repeats=repeats, only=only, keep_data=keep_data)
        path = write_results(result)
        Console().print(Markdown(render_markdown(result)))
        typer.echo(f"results written to {path} and {path.with_suffix('.json')}")
