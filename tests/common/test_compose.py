"""docker-compose.yml cannot start here (no Docker engine): check it against the settings instead."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from common.settings import Settings

COMPOSE = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _ports(service: str) -> set[int]:
    return {int(p.split(":")[0]) for p in SERVICES[service].get("ports", [])}


def test_the_seed_services_and_ports_are_there():
    assert _ports("kafka") == {9092}
    assert _ports("kafka-ui") == {8080}
    assert _ports("clickhouse") == {8123}
    assert _ports("spark-master") == {7077, 8082}
    assert _ports("mlflow") == {5000}
    assert _ports("api") == {8000}
    assert {"spark-worker", "generator", "sales-stream", "inventory-stream"} <= set(SERVICES)


def test_every_image_is_pinned():
    for name, service in SERVICES.items():
        image = service.get("image", "")
        assert re.search(r":[\w.\-]+$", image) and not image.endswith(":latest"), name


def test_platform_environment_is_valid_settings_that_match_the_services():
    env = SERVICES["sales-stream"]["environment"]
    assert set(env) >= {
        name.upper()
        for name in (
            "spark_master",
            "kafka_bootstrap_servers",
            "clickhouse_url",
            "mlflow_tracking_uri",
            "checkpoint_dir",
            "data_dir",
            "sales_topic",
            "inventory_topic",
        )
    }
    values = {k.lower(): str(v) for k, v in env.items() if "${" not in str(v)}
    settings = Settings(**values)
    host, port = settings.kafka_bootstrap_servers.split(":")
    assert host in SERVICES and int(port) in _ports(host)
    assert settings.spark_master == "spark://spark-master:7077"
    assert "clickhouse:8123" in settings.clickhouse_url
    assert settings.mlflow_tracking_uri.endswith(":5000")


def test_secrets_come_only_from_the_environment():
    text = (Path(__file__).parents[2] / "docker-compose.yml").read_text()
    for line in text.splitlines():
        if ("PASSWORD" in line or "TOKEN" in line) and not line.lstrip().startswith("#"):
            value = line.split(":", 1)[1].strip()
            assert value.startswith("${") or value.startswith("&") or value == "", line


def test_the_platform_commands_can_run_in_their_containers():
    """Each command parses as its CLI has it, the API listens beyond its container, and the
    Spark worker sees CHECKPOINT_DIR as the drivers do."""
    from typer.testing import CliRunner

    from common.cli import app

    for name in ("migrate", "generator", "api"):
        command = SERVICES[name]["command"]
        assert command[0] == "retail", name
        parsed = CliRunner().invoke(app, [*command[1:], "--help"])
        assert parsed.exit_code == 0, (name, parsed.output)
    generate = SERVICES["generator"]["command"]
    assert float(generate[generate.index("--seconds") + 1]) > 0
    serve = SERVICES["api"]["command"]
    assert serve[serve.index("--host") + 1] == "0.0.0.0"
    checkpoints = SERVICES["sales-stream"]["environment"]["CHECKPOINT_DIR"]
    worker_mounts = [v.split(":")[1] for v in SERVICES["spark-worker"]["volumes"]]
    assert any(checkpoints.startswith(mount) for mount in worker_mounts)
    assert (
        "spark.deploy.defaultCores=1"
        in SERVICES["spark-master"]["environment"]["SPARK_MASTER_OPTS"]
    )
