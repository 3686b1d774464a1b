"""Session-wide fixtures: one settings object on a temporary DATA_DIR with free ports, one
SparkSession, one embedded store, and (on request) one real Kafka broker and MLflow server."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="retail-tests-"))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pytest_configure(config: pytest.Config) -> None:
    """Point every setting at the test session's own folder and ports, before anything reads them."""
    os.environ.update(
        {
            "DATA_DIR": str(_SESSION_DIR / "data"),
            "CHECKPOINT_DIR": str(_SESSION_DIR / "checkpoints"),
            "SPARK_MASTER": "local[2]",
            "KAFKA_BOOTSTRAP_SERVERS": f"localhost:{free_port()}",
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "MLFLOW_PORT": str(port := free_port()),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
            "SPARK_MASTER_PORT": str(free_port()),
            "SPARK_MASTER_UI_PORT": str(free_port()),
            "SPARK_WORKER_UI_PORT": str(free_port()),
            "API_PORT": str(free_port()),
            "STORE_LOCK_TIMEOUT_S": "60",
        }
    )
    os.environ.pop("CLICKHOUSE_URL", None) if os.environ.get("CLICKHOUSE_URL") == "" else None
    from common.settings import get_settings

    get_settings.cache_clear()


@pytest.fixture(scope="session")
def settings():
    """The test session's settings (temporary DATA_DIR, free ports)."""
    from common.settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def store(settings):
    """The configured store (embedded chDB unless CLICKHOUSE_URL is set), migrated."""
    from common.store import migrate, open_store

    the_store = open_store(settings)
    migrate(the_store)
    return the_store


@pytest.fixture(scope="session")
def spark(settings):
    """The one SparkSession of the test run, on local[2]."""
    from common.spark import build_spark_session

    session = build_spark_session("retail-tests", settings, {"spark.sql.shuffle.partitions": "2"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def services(settings) -> Iterator[object]:
    """The real Kafka broker (with topics) and MLflow server, started once for the whole run."""
    from common import stack

    stack.up(settings)
    yield settings
    stack.down(settings)


@pytest.fixture(scope="session")
def kafka(settings) -> Iterator[str]:
    """Only the real Kafka broker (with topics); yields the bootstrap servers."""
    from common import stack

    stack.start_kafka(settings)
    stack.ensure_topics(settings)
    yield settings.kafka_bootstrap_servers
    stack.stop_kafka(settings)
