"""Logging set-up with secret redaction: no configured password or token reaches a log line."""

from __future__ import annotations

import logging

from common.settings import Settings


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class RedactingFormatter(logging.Formatter):
    """Format a record, then replace every configured secret value in the whole line (message,
    traceback and stack alike) with ***."""

    def __init__(self, fmt: str, secrets: list[str]) -> None:
        super().__init__(fmt)
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self._secrets)


def configure_logging(settings: Settings) -> None:
    """Root logging at LOG_LEVEL, one line per record, secrets redacted; quiet noisy libraries."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", settings.secrets())
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("py4j", "kafka", "urllib3", "alembic", "mlflow.store", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
