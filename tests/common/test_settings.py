"""Settings: working defaults, and bad values that fail fast with the variable's name."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.broker import check_broker
from common.logs import RedactingFormatter
from common.settings import Settings, SettingsError, load_settings, redact_url


def test_defaults_are_the_local_stack(monkeypatch):
    for name in (
        "SPARK_MASTER",
        "KAFKA_BOOTSTRAP_SERVERS",
        "CLICKHOUSE_URL",
        "DATA_DIR",
        "CHECKPOINT_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.spark_master == "local[*]"
    assert settings.kafka_bootstrap_servers == "localhost:9092"
    assert settings.uses_embedded_store
    assert settings.sales_topic == "sales_events" and settings.inventory_topic == "inventory_events"
    assert settings.checkpoint_root == (settings.data_root / "checkpoints")


def test_an_empty_variable_is_an_unset_one(monkeypatch):
    for name in ("CHECKPOINT_DIR", "DATA_DIR", "CLICKHOUSE_URL", "SPARK_MASTER"):
        monkeypatch.setenv(name, "")
    settings = Settings()
    assert settings.data_dir == Path("data") and settings.spark_master == "local[*]"
    assert settings.checkpoint_root == Path("data", "checkpoints").resolve()  # not the cwd
    assert settings.uses_embedded_store


def test_a_folder_under_the_home_folder_is_expanded(monkeypatch):
    """An env file passes `~/retail` as it is: no shell expanded it."""
    monkeypatch.setenv("DATA_DIR", "~/retail")
    monkeypatch.setenv("CHECKPOINT_DIR", "~/retail-checkpoints")
    settings = Settings()
    assert settings.data_root == Path.home() / "retail"
    assert settings.checkpoint_root == Path.home() / "retail-checkpoints"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SPARK_MASTER", "mesos://host:5050"),
        ("SPARK_MASTER", "spark://nohost"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost"),
        ("CLICKHOUSE_URL", "clickhouse//localhost:8123"),
        ("CLICKHOUSE_URL", "http://localhost:port"),
        ("KAFKA_PARTITIONS", "zero"),
        ("MAX_OFFSETS_PER_TRIGGER", "2000000"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost:99999"),
        ("MLFLOW_TRACKING_URI", "localhost:5000"),
        ("STARTING_OFFSETS", '{"sales_events": {"0": 5}'),
    ],
)
def test_a_bad_value_names_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_a_secret_never_appears_in_the_error(monkeypatch):
    monkeypatch.setenv("API_TOKEN", "s3cr3t-token")
    monkeypatch.setenv("SPARK_MASTER", "bogus")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "s3cr3t-token" not in str(error.value)


def test_the_cli_fails_fast_on_a_bad_master(monkeypatch):
    monkeypatch.setenv("SPARK_MASTER", "mesos://x:1")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "common.cli", "status"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "SPARK_MASTER" in result.stdout + result.stderr
    assert time.monotonic() - started < 30


def test_an_unreachable_broker_fails_within_seconds(settings):
    unreachable = settings.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})
    started = time.monotonic()
    with pytest.raises(SettingsError, match="KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1"):
        check_broker(unreachable, timeout_s=3)
    assert time.monotonic() - started < 10


def test_log_lines_are_redacted_tracebacks_too():
    try:
        raise RuntimeError("auth with hunter2 failed")
    except RuntimeError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "password is %s", ("hunter2",), sys.exc_info()
        )
    line = RedactingFormatter("%(message)s", ["hunter2"]).format(record)
    assert "password is ***" in line and "auth with *** failed" in line
    assert "hunter2" not in line


def test_a_password_in_a_url_is_a_secret_and_never_shown(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ops:S3cr%2Ft@mlflow.example:443")
    settings = load_settings()
    assert {"S3cr%2Ft", "S3cr/t"} <= set(settings.secrets())
    assert redact_url(settings.mlflow_tracking_uri) == "https://ops:***@mlflow.example:443"
    with pytest.raises(SettingsError, match="CLICKHOUSE_USER") as refused:
        load_settings(clickhouse_url="http://admin:pa55@clickhouse:8123/retail")
    assert "pa55" not in str(refused.value)
