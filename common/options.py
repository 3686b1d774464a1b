"""Option values the commands share, parsed with a message that says what to fix."""

from __future__ import annotations

import datetime as dt

import typer


def optional_date(value: str, option: str) -> dt.date | None:
    """A YYYY-MM-DD option's day, or None when it is empty (MLproject passes "" for unset)."""
    if not value.strip():
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD)", param_hint=option
        ) from None
