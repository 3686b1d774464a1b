"""The real local stack: a KRaft broker, the MLflow server and a Spark standalone cluster, started
by `common.stack` on a temporary DATA_DIR and free ports.

The tests of the running stack share one `up` (module scope) and run in file order: the last one
stops it, and the fixture's teardown stops it again (a no-op) should any test fail before.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from spark_submit import spark_submit

from common import stack
from common.settings import Settings

pytestmark = pytest.mark.services


def _rows(settings: Settings) -> dict[str, dict]:
    return {row["name"]: row for row in stack.status(settings)}


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def running(stack_settings: Settings) -> Iterator[Settings]:
    """Kafka with its topics, MLflow and the Spark cluster, up once for this module."""
    stack.up(stack_settings, cluster=True)
    yield stack_settings
    stack.down(stack_settings)


def test_a_message_round_trips_through_the_broker(running: Settings) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    key, value = b"store-007|product-0042", json.dumps({"event_id": "e-1", "quantity": 3}).encode()
    producer = KafkaProducer(bootstrap_servers=running.kafka_bootstrap_servers, acks="all")
    try:
        sent = producer.send(running.sales_topic, key=key, value=value).get(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        running.sales_topic,
        bootstrap_servers=running.kafka_bootstrap_servers,
        group_id="stack-test-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    received = []
    try:
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                received += [(r.partition, r.offset, r.key, r.value) for r in records]
    finally:
        consumer.close()

    assert received == [(sent.partition, sent.offset, key, value)]


def test_topics_exist_with_the_configured_partitions(running: Settings) -> None:
    from kafka.admin import KafkaAdminClient

    stack.ensure_topics(running)  # a second call is a no-op
    admin = KafkaAdminClient(bootstrap_servers=running.kafka_bootstrap_servers)
    try:
        topics = {
            t["name"]: t
            for t in admin.describe_topics([running.sales_topic, running.inventory_topic])
        }
    finally:
        admin.close()

    assert running.kafka_partitions == 3  # not the default, so the setting is what took effect
    for name in (running.sales_topic, running.inventory_topic):
        assert topics[name]["error_code"] == 0
        partitions = topics[name]["partitions"]
        assert sorted(p["partition_index"] for p in partitions) == [0, 1, 2]
        assert all(p["replica_nodes"] == [1] for p in partitions)


def test_the_mlflow_server_records_a_run_and_its_artifact(running: Settings) -> None:
    from mlflow.tracking import MlflowClient

    with urllib.request.urlopen(
        f"http://127.0.0.1:{running.mlflow_port}/health", timeout=5
    ) as response:
        assert response.read() == b"OK"

    client = MlflowClient(tracking_uri=running.mlflow_tracking_uri)
    experiment_id = client.create_experiment("stack-test")
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "max_depth", "7")
    client.log_metric(run.info.run_id, "rmse", 1.25)
    client.log_text(run.info.run_id, "proxied upload", "notes/hello.txt")
    client.set_terminated(run.info.run_id)

    stored = client.get_run(run.info.run_id)
    assert stored.data.params == {"max_depth": "7"}
    assert stored.data.metrics == {"rmse": 1.25}
    assert stored.info.status == "FINISHED"
    assert stored.info.artifact_uri.startswith("mlflow-artifacts:")
    uploaded = list((running.data_root / "mlflow" / "artifacts").rglob("hello.txt"))
    assert [path.read_text() for path in uploaded] == ["proxied upload"]


def test_status_reports_every_service_running(running: Settings) -> None:
    rows = _rows(running)

    assert list(rows) == ["kafka", "mlflow", "spark-master", "spark-worker"]
    assert all(row["running"] and isinstance(row["pid"], int) for row in rows.values())
    assert rows["kafka"]["address"] == running.kafka_bootstrap_servers
    assert rows["mlflow"]["address"] == f"http://127.0.0.1:{running.mlflow_port}"
    assert rows["spark-master"]["address"] == f"spark://127.0.0.1:{running.spark_master_port}"
    assert "1 broker(s)" in rows["kafka"]["detail"]
    assert rows["mlflow"]["detail"].startswith("healthy")
    assert "1 worker(s) alive" in rows["spark-master"]["detail"]
    assert rows["spark-worker"]["detail"].startswith("ALIVE")


def test_a_second_up_changes_nothing(running: Settings) -> None:
    before = {name: row["pid"] for name, row in _rows(running).items()}
    started = time.monotonic()

    stack.up(running, cluster=True)

    assert time.monotonic() - started < 15
    assert {name: row["pid"] for name, row in _rows(running).items()} == before


def test_spark_submit_runs_a_job_on_the_standalone_cluster(
    running: Settings, tmp_path: Path
) -> None:
    job, result = tmp_path / "sum_job.py", tmp_path / "result.json"
    job.write_text(
        textwrap.dedent(
            """
            import json
            import sys
            import urllib.request

            from pyspark.sql import SparkSession

            spark = SparkSession.builder.appName("stack-test-sum").getOrCreate()
            context = spark.sparkContext
            total = context.parallelize(range(1000), 4).map(lambda x: x).sum()
            with open(sys.argv[1], "w") as out:
                app = context.applicationId
                with urllib.request.urlopen(sys.argv[2], timeout=5) as response:  # the master
                    running = {a["id"]: a for a in json.load(response)["activeapps"]}
                cores = running[app]["cores"]  # what the cluster granted this application
                json.dump({"total": total, "master": context.master, "app": app, "cores": cores}, out)
            spark.stop()
            """
        )
    )
    master = f"spark://127.0.0.1:{running.spark_master_port}"
    memory = {"spark.executor.memory": "512m", "spark.driver.memory": "512m"}
    ui = f"http://127.0.0.1:{running.spark_master_ui_port}/json/"
    completed = spark_submit(master, job, str(result), ui, conf=memory, SPARK_LOCAL_IP="127.0.0.1")

    assert completed.returncode == 0, completed.stderr[-3000:]
    outcome = json.loads(result.read_text())
    assert outcome["total"] == sum(range(1000)) == 499500
    assert outcome["master"] == master
    assert outcome["cores"] == 1  # of the worker's 2: a second application gets the other
    url = f"http://127.0.0.1:{running.spark_master_ui_port}/json/"
    with urllib.request.urlopen(url, timeout=5) as response:
        state = json.load(response)
    apps = {app["id"]: app for app in state["activeapps"] + state["completedapps"]}
    assert apps[outcome["app"]]["name"] == "stack-test-sum"


def test_down_stops_every_service(running: Settings) -> None:
    pids = [row["pid"] for row in stack.status(running)]

    stack.down(running)
    stack.down(running)  # idempotent

    rows = stack.status(running)
    assert [row["running"] for row in rows] == [False] * 4
    assert all(row["detail"] == "stopped" for row in rows)
    assert not any(stack._is_alive(pid) for pid in pids)
    ports = [
        running.kafka_port,
        running.kafka_controller_port,
        running.mlflow_port,
        running.spark_master_port,
        running.spark_master_ui_port,
        running.spark_worker_ui_port,
    ]
    assert not any(_listening(port) for port in ports)
    assert not list(running.data_root.rglob("*.pid"))


@pytest.mark.parametrize(
    ("start", "port_of"),
    [
        (stack.start_kafka, lambda s: s.kafka_port),
        (stack.start_kafka, lambda s: s.kafka_controller_port),
        (stack.start_mlflow, lambda s: s.mlflow_port),
        (stack.start_spark_cluster, lambda s: s.spark_master_ui_port),
    ],
    ids=["kafka", "kafka-controller", "mlflow", "spark-master-ui"],
)
def test_start_fails_fast_naming_a_port_that_is_taken(
    tmp_path: Path,
    isolated_settings: Callable[[], Settings],
    start: Callable[[Settings], None],
    port_of: Callable[[Settings], int],
) -> None:
    settings = isolated_settings()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port_of(settings)))
        squatter.listen()
        started = time.monotonic()

        with pytest.raises(stack.StackError, match=rf"port {port_of(settings)} is already in use"):
            start(settings)

        assert time.monotonic() - started < 5
    assert not list(tmp_path.rglob("*.pid"))
    assert not any(row["running"] for row in stack.status(settings))


def test_stale_or_foreign_pid_files_are_not_mistaken_for_a_service(
    tmp_path: Path, isolated_settings: Callable[[], Settings]
) -> None:
    settings = isolated_settings()
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    (settings.data_root / "kafka").mkdir(parents=True)
    (settings.data_root / "mlflow").mkdir(parents=True)
    (settings.data_root / "kafka" / "kafka.pid").write_text(f"{exited.pid}\n")
    (settings.data_root / "mlflow" / "mlflow.pid").write_text(
        f"{os.getpid()}\n"
    )  # alive, not mlflow

    rows = _rows(settings)
    stack.down(settings)

    assert not rows["kafka"]["running"] and not rows["mlflow"]["running"]
    assert not list(tmp_path.rglob("*.pid"))  # cleared, and this process is still here to check


def test_start_kafka_without_java_says_so(
    isolated_settings: Callable[[], Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(stack.StackError, match=r"Java 17\+ is required"):
        stack.start_kafka(isolated_settings())


def test_start_kafka_without_the_jars_says_to_run_setup(
    isolated_settings: Callable[[], Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(stack, "KAFKA_JARS_DIR", tmp_path / "no-jars")

    with pytest.raises(stack.StackError, match=r"Kafka jars are missing .* run `make setup`"):
        stack.start_kafka(isolated_settings())


def test_a_broker_that_dies_at_start_up_is_reported_with_its_log(
    isolated_settings: Callable[[], Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = isolated_settings()
    monkeypatch.setattr(stack, "_KAFKA_JVM_OPTIONS", ("-XX:+NoSuchJvmOption",))

    with pytest.raises(
        stack.StackError, match=r"(?s)kafka exited during start-up.*NoSuchJvmOption"
    ):
        stack.start_kafka(settings)

    assert not stack.status(settings)[0]["running"]
    assert not (settings.data_root / "kafka" / "kafka.pid").exists()
