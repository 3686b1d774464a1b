"""Small helpers around the Kafka broker named by KAFKA_BOOTSTRAP_SERVERS."""

from __future__ import annotations

from collections.abc import Iterable

from kafka.admin import KafkaAdminClient

from common.settings import Settings, SettingsError


def check_broker(
    settings: Settings, timeout_s: float = 5.0, topics: Iterable[str] = ()
) -> list[str]:
    """Fail within ``timeout_s`` with a message naming the variable when no broker answers;
    return which of ``topics`` the broker does not have."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            bootstrap_timeout_ms=int(timeout_s * 1000),
            request_timeout_ms=int(timeout_s * 1000),
            client_id="retail-check",
        )
    except Exception as exc:
        raise SettingsError(
            f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}: no Kafka broker answered "
            f"within {timeout_s:.0f} s ({type(exc).__name__}). Start one with `make up` or point "
            "the variable at a running cluster."
        ) from None
    try:
        wanted = list(topics)
        existing = set(admin.list_topics()) if wanted else set()
        return [topic for topic in wanted if topic not in existing]
    finally:
        admin.close()
