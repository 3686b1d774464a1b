"""`retail`: the one command-line way into the platform.

Each package contributes its commands through ``<package>.cli.register(app)``; heavy libraries
(pyspark, mlflow) are imported inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from enum import StrEnum

import typer
from rich.console import Console
from rich.table import Table

from common.settings import SettingsError, get_settings

app = typer.Typer(
    help="Retail demand forecasting and inventory platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()

# (module, what it adds): a package that is not built yet shows as such in `retail --help`.
_PACKAGE_COMMANDS = [
    ("generator.cli", "generate"),
    ("streaming.cli", "stream"),
    ("training.cli", "train, promote"),
    ("batch.cli", "batch"),
    ("serving.cli", "serve"),
    ("benchmarks.cli", "bench"),
    ("demo.cli", "demo"),
]


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.callback()
def _startup() -> None:
    """Read and check the settings once, and set up logging."""
    from common.logs import configure_logging

    try:
        configure_logging(get_settings())
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command()
def up(
    cluster: bool = typer.Option(False, help="also start a Spark standalone master and worker"),
) -> None:
    """Start the local stack: Kafka (KRaft), topics, MLflow server; migrate the store."""
    from common import stack
    from common.store import migrate, open_store

    settings = get_settings()
    try:
        stack.up(settings, cluster=cluster)
    except stack.StackError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    version = migrate(open_store(settings))
    console.print(f"store schema version {version}")
    _print_status(stack.status(settings))


@app.command()
def down() -> None:
    """Stop every local service this project started."""
    from common import stack

    stack.down(get_settings())


@app.command()
def status() -> None:
    """Show which local services run, and where."""
    from common import stack

    _print_status(stack.status(get_settings()))


@app.command("migrate")
def migrate_command() -> None:
    """Create or update every table (idempotent) and print the schema version."""
    from common.store import migrate, open_store

    console.print(f"store schema version {migrate(open_store(get_settings()))}")


@app.command()
def sql(
    query: str = typer.Argument(..., help="one ClickHouse SQL statement"),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
) -> None:
    """Run a query against the configured store, like clickhouse-client."""
    from common.store import StoreError, open_store

    try:
        frame = open_store(get_settings()).query_df(query)
    except StoreError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if output is OutputFormat.csv:
        frame.to_csv(sys.stdout, index=False)
    elif output is OutputFormat.json:
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        table = Table(*[str(c) for c in frame.columns])
        for row in frame.itertuples(index=False):
            table.add_row(*[str(v) for v in row])
        console.print(table)


def _print_status(services: list[dict]) -> None:
    table = Table("service", "running", "pid", "address", "detail")
    for service in services:
        table.add_row(
            service["name"],
            "yes" if service["running"] else "no",
            str(service.get("pid") or ""),
            str(service.get("address") or ""),
            str(service.get("detail") or ""),
        )
    console.print(table)


def _mount_packages() -> None:
    for module_name, commands in _PACKAGE_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if not module_name.startswith(str(exc.name)):
                raise
            _add_not_built(commands)
            continue
        module.register(app)


def _add_not_built(commands: str) -> None:
    for name in commands.split(", "):

        def not_built(name: str = name) -> None:
            console.print(f"[yellow]`retail {name}` is not built yet[/yellow]")
            raise typer.Exit(2)

        app.command(name, help="(not built yet)", hidden=False)(not_built)


_mount_packages()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
