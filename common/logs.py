"""Logging set-up with secret redaction: no configured password or token reaches a log line."""

from __future__ import annotations

import logging

from common.settings import Settings


class RedactSecrets(logging.Filter):
    """Replace every configured secret value in a record's message with ***."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = record.getMessage()
            for secret in self._secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def configure_logging(settings: Settings) -> None:
    """Root logging at LOG_LEVEL, one line per record, secrets redacted; quiet noisy libraries."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(settings.secrets()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("py4j", "kafka", "urllib3", "alembic", "mlflow.store", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
