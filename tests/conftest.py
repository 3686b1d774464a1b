"""Session-wide fixtures: one settings object on a temporary DATA_DIR with free ports, one
SparkSession, one embedded store, and (on request) one real Kafka broker and MLflow server."""

from __future__ import annotations

import faulthandler
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="retail-tests-"))
_HANG_DIR = Path(__file__).resolve().parents[1] / "test-artifacts" / "hangs"
_HANG_DUMP_AFTER_S = 240.0
_hang_dumps: list[Path] = []
_PLUMBING = re.compile(r"/_pytest/|/pluggy/|<frozen |/threading\.py")


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


@pytest.fixture
def killed_job_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a job process the test SIGKILLs: its JVM's temporary folders go to the
    test's own folder, not /tmp (``benchmarks.chaos.jvm_temp_environment``)."""
    from benchmarks.chaos import jvm_temp_environment

    return jvm_temp_environment(tmp_path / "jvm-tmp")


def _dump_hang(nodeid: str) -> None:
    """Write every Python thread's stack and the Spark driver's JVM threads for a test that still
    runs after _HANG_DUMP_AFTER_S, so a hang in CI leaves evidence even if the run is killed."""
    _HANG_DIR.mkdir(parents=True, exist_ok=True)
    path = _HANG_DIR / (re.sub(r"[^\w.-]+", "_", nodeid)[-150:] + ".txt")
    with path.open("w") as out:
        out.write(f"{nodeid} still running after {_HANG_DUMP_AFTER_S:.0f} s\n\n")
        out.flush()
        faulthandler.dump_traceback(out, all_threads=True)
        from pyspark import SparkContext

        gateway = SparkContext._gateway
        process = getattr(gateway, "proc", None) if gateway is not None else None
        if process is not None and process.poll() is None:
            out.write(f"\n--- jstack {process.pid} (Spark driver)\n")
            out.flush()
            subprocess.run(["jstack", str(process.pid)], stdout=out, stderr=out, timeout=60)
    _hang_dumps.append(path)
    print(f"\n[hang] {nodeid} still running: thread dumps in {path}", file=sys.__stderr__)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Arm the hang dump for the test's setup, call and teardown."""
    timer = threading.Timer(_HANG_DUMP_AFTER_S, _dump_hang, args=(item.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.fixture(scope="session")
def failing_on_rows():
    """``failing_on_rows(fitted, feature="signal")``: ``fitted`` behind a stage that fails on any
    row (``feature`` >= 0) but plans on an empty frame, a version that passes the jobs' probes
    and cannot score."""

    def wrap(fitted, feature: str = "signal"):
        from pyspark.ml import PipelineModel
        from pyspark.ml.feature import SQLTransformer

        check = f"SELECT * FROM __THIS__ WHERE assert_true({feature} < 0) IS NULL"  # noqa: S608
        return PipelineModel(stages=[SQLTransformer(statement=check), *fitted.stages])

    return wrap


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the session's folder (store, broker and MLflow data, checkpoints) after a green run;
    keep it, and say where, after a red one."""
    if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        print(f"\nthe test session's data and logs are kept in {_SESSION_DIR}", file=sys.__stderr__)
        return
    from common.store.embedded import remove_data_folder

    if not remove_data_folder(_SESSION_DIR):
        print(f"\ncould not remove all of {_SESSION_DIR}", file=sys.__stderr__)


def pytest_terminal_summary(terminalreporter) -> None:
    """At the very end of the output: each hang dump's Python stacks and the JVM's stream threads."""
    for dump in _hang_dumps:
        python, _, jvm = dump.read_text().partition("\n--- jstack")
        streams = [block for block in jvm.split("\n\n") if "stream execution thread" in block]
        terminalreporter.write_sep("-", f"hang dump {dump.name}")
        frames = [line for line in python.splitlines() if not _PLUMBING.search(line)]
        terminalreporter.write_line("\n".join(frames[:100]))
        for block in streams:
            terminalreporter.write_line("\n".join(block.splitlines()[:30]))
