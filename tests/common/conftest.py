"""Fixtures for the local-stack tests: settings on their own DATA_DIR and free ports, so the real
services they start can run next to a user's stack (9092, 5000, 7077) and the session's own."""

from __future__ import annotations

import socket
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest

from common.settings import Settings, load_settings


def _free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that nobody listens on right now."""
    with ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _isolated_settings(data_dir: Path) -> Settings:
    """Settings whose every service port is free and whose DATA_DIR is `data_dir`."""
    kafka, controller, mlflow, master, master_ui, worker_ui = _free_ports(6)
    values: dict[str, object] = {
        "data_dir": data_dir,
        "kafka_bootstrap_servers": f"localhost:{kafka}",
        "kafka_controller_port": controller,
        "kafka_partitions": 3,
        "mlflow_port": mlflow,
        "mlflow_tracking_uri": f"http://127.0.0.1:{mlflow}",
        "spark_master": f"spark://127.0.0.1:{master}",
        "spark_master_port": master,
        "spark_master_ui_port": master_ui,
        "spark_worker_ui_port": worker_ui,
        "service_start_timeout_s": 180.0,
    }
    return load_settings(**values)


@pytest.fixture(scope="module")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for one module's own stack: a fresh DATA_DIR and free ports."""
    return _isolated_settings(tmp_path_factory.mktemp("stack") / "data")


@pytest.fixture
def isolated_settings(tmp_path: Path) -> Callable[[], Settings]:
    """A factory of settings on this test's tmp_path/data with fresh free ports."""
    return lambda: _isolated_settings(tmp_path / "data")
