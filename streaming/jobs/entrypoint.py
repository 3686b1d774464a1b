"""What the job files run: parse the job's flags, configure logging, start the job's ``main``."""

from __future__ import annotations

import argparse
import importlib
import sys


def run(job: str, argv: list[str]) -> None:
    """Run ``streaming.<job>.main`` with the settings from the environment."""
    parser = argparse.ArgumentParser(description=f"The {job} streaming job")
    parser.add_argument("--available-now", action="store_true", help="drain the topic, then exit")
    parser.add_argument("--console", action="store_true", help="print instead of writing the store")
    args = parser.parse_args(argv)

    from common.logs import configure_logging
    from common.settings import SettingsError, get_settings

    settings = get_settings()
    configure_logging(settings)
    main = importlib.import_module(f"streaming.{job}").main
    try:
        main(settings, available_now=args.available_now, console=args.console)
    except SettingsError as exc:
        sys.exit(f"{job} job: {exc}")  # exit status 1, the message on stderr
