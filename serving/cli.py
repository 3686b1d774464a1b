"""`retail serve`: the REST API under uvicorn."""

from __future__ import annotations

import typer

from common.settings import get_settings


def register(app: typer.Typer) -> None:
    """Add the serving command to the `retail` app."""
    app.command("serve")(serve)


def serve(
    port: int = typer.Option(0, min=0, max=65535, help="TCP port; default API_PORT"),
    host: str = typer.Option("127.0.0.1", help="interface; 0.0.0.0 in a container"),
    access_log: bool = typer.Option(True, help="log one line per request"),
) -> None:
    """Serve forecasts, reorder advice, alerts and model info over HTTP (OpenAPI at /docs)."""
    import uvicorn

    from serving.app import create_app

    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port or settings.api_port,
        access_log=access_log,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
