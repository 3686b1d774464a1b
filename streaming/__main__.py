"""``python -m streaming sales|inventory [--available-now] [--console]``: the `retail stream` commands."""

from __future__ import annotations

import typer

from common.logs import configure_logging
from common.settings import get_settings
from streaming.cli import stream_app

if __name__ == "__main__":
    configure_logging(get_settings())
    typer.main.get_command(stream_app)()
