"""`./submit_jobs.sh` runs the real job through spark-submit with the project shipped as a zip
(`--py-files`): the way the demo and a cluster run it, not the way the other tests import it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from common.schemas import event_key
from common.settings import Settings
from common.store import Store

pytestmark = [pytest.mark.services, pytest.mark.spark]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def sale(index: int, shop: str) -> dict:
    return {
        "event_id": f"{shop}-{index}",
        "event_time": f"2026-02-02T10:{index:02d}:00Z",
        "transaction_id": f"{shop}-t{index}",
        "store_id": shop,
        "customer_id": "c1",
        "product_id": f"P{index % 3}",
        "category": "grocery",
        "quantity": 2,
        "unit_price": 1.5,
        "discount": 0.0,
        "total_amount": 3.0,
        "payment_method": "card",
        "channel": "store",
        "on_promotion": False,
    }


def fill_topic(services: Settings, topic: str, records: list[dict | bytes]) -> None:
    """Create ``topic`` and send ``records``: events keyed by store|product, bytes as poison."""
    from kafka import KafkaProducer

    from common import stack

    stack.ensure_topics(services.model_copy(update={"sales_topic": topic}))
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap_servers, acks="all")
    for record in records:
        if isinstance(record, bytes):
            producer.send(topic, key=b"poison", value=record)
        else:
            key = event_key(record["store_id"], record["product_id"])
            producer.send(topic, key=key, value=json.dumps(record).encode())
    producer.flush()
    producer.close()


def submit_jobs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``./submit_jobs.sh <args>`` with ``env``, its output captured."""
    return subprocess.run(
        ["./submit_jobs.sh", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_sales_job_runs_through_spark_submit(
    services: Settings, store: Store, tmp_path: Path
) -> None:
    shop = f"submit-{uuid.uuid4().hex[:6]}"
    topic = f"sales-{shop}"
    fill_topic(
        services, topic, [*(sale(index, shop) for index in range(12)), b'{"event_id": "broken']
    )

    env = os.environ | {"SALES_TOPIC": topic, "CHECKPOINT_DIR": str(tmp_path / "checkpoints")}
    started = submit_jobs(env, "sales", "--available-now")  # in the background, its flag passed on

    assert started.returncode == 0, started.stderr[-4000:]
    wait_for_group_end(services, "sales", 300)
    log = (services.data_root / "logs" / "sales.log").read_text()
    assert "job sales-stream stopped" in log, log[-3000:]
    stored = store.query_df(
        "SELECT count() AS events, sum(total_amount) AS revenue FROM sales_events "
        "WHERE store_id = {s:String}",
        {"s": shop},
    )
    assert (int(stored.events[0]), float(stored.revenue[0])) == (12, 36.0)
    dead = store.scalar("SELECT count() FROM dead_letters WHERE topic = {t:String}", {"t": topic})
    assert dead == 1


def wait_for_group_end(services: Settings, job: str, timeout_s: float) -> None:
    """Wait until no process of the job's group (the pid file's) is left."""
    group = int((services.data_root / "run" / f"{job}.pid").read_text())
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"{job} still runs after {timeout_s:.0f} s"
        time.sleep(0.5)


def stop_with_the_verb(env: dict[str, str], services: Settings) -> None:
    stopped = submit_jobs(env, "stop")
    assert stopped.returncode == 0 and "sales stopped" in stopped.stdout, stopped.stderr


def stop_with_sigterm_to_the_pid_file(env: dict[str, str], services: Settings) -> None:
    """What an operator or a supervisor does: SIGTERM to the pid the script wrote."""
    os.kill(int((services.data_root / "run" / "sales.pid").read_text()), signal.SIGTERM)
    wait_for_group_end(services, "sales", 120)
    assert "sales: not running" in submit_jobs(env, "status").stdout


def test_a_stop_ends_a_job_between_micro_batches_and_the_restart_loses_nothing(
    services: Settings, store: Store, tmp_path: Path
) -> None:
    """SIGTERM to the job's pid, then (after a restart) `./submit_jobs.sh stop`, each in the
    middle of a backlog: every committed micro-batch is stored whole and no other one partly;
    the last start stores every event once."""
    shop = f"stop-{uuid.uuid4().hex[:6]}"
    topic = f"sales-{shop}"
    events = 6000
    fill_topic(
        services,
        topic,
        [sale(index % 60, shop) | {"event_id": f"{shop}-{index}"} for index in range(events)],
    )
    checkpoints = tmp_path / "checkpoints"
    env = os.environ | {
        "SALES_TOPIC": topic,
        "CHECKPOINT_DIR": str(checkpoints),
        "MAX_OFFSETS_PER_TRIGGER": "100",  # about 60 micro-batches
    }
    log = services.data_root / "logs" / "sales.log"
    query = checkpoints / "sales-stream" / "sales-stream-events"

    def stored() -> int:
        return int(
            store.scalar(
                "SELECT count() FROM sales_events WHERE store_id = {s:String}", {"s": shop}
            )
        )

    for stop_job in (stop_with_sigterm_to_the_pid_file, stop_with_the_verb):
        before = stored()
        assert submit_jobs(env, "sales").returncode == 0
        try:
            deadline = time.monotonic() + 300
            while stored() < before + 300:  # a few micro-batches in
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        finally:
            stop_job(env, services)

        last = max(int(p.name) for p in (query / "commits").glob("[0-9]*"))
        ends = json.loads((query / "offsets" / str(last)).read_text().splitlines()[2])[topic]
        assert stored() < events, f"the job drained the backlog before {stop_job.__name__}"
        assert stored() == sum(ends.values()), "what is stored is not what was committed"
        assert "job sales-stream stopped" in log.read_text(), stop_job.__name__

    restarted = submit_jobs(env, "--foreground", "stream", "sales", "--available-now")
    assert restarted.returncode == 0, restarted.stderr[-4000:]
    counts = store.query_df(
        "SELECT count() AS rows, uniqExact(event_id) AS ids FROM sales_events "
        "WHERE store_id = {s:String}",
        {"s": shop},
    )
    assert (int(counts.rows[0]), int(counts.ids[0])) == (events, events)


def test_clean_deletes_the_jobs_checkpoints_and_nothing_else(tmp_path) -> None:
    """CHECKPOINT_DIR may be a shared mount, DATA_DIR itself or a folder holding the project."""
    (tmp_path / "store").write_text("the embedded store lives in DATA_DIR")
    (tmp_path / "other-team").mkdir()
    (tmp_path / "other-team" / "file.txt").write_text("not ours")
    jobs = [tmp_path / job / "query" / "offsets" for job in ("sales-stream", "inventory-stream")]
    for folder in jobs:
        folder.mkdir(parents=True)
    env = {**os.environ, "DATA_DIR": str(tmp_path), "CHECKPOINT_DIR": str(tmp_path)}

    cleaned = submit_jobs(env, "clean")

    assert cleaned.returncode == 0, cleaned.stderr
    assert not (tmp_path / "sales-stream").exists() and not (tmp_path / "inventory-stream").exists()
    assert (tmp_path / "store").read_text() == "the embedded store lives in DATA_DIR"
    assert (tmp_path / "other-team" / "file.txt").read_text() == "not ours"
    assert "removed the checkpoints of sales-stream" in cleaned.stdout


@pytest.mark.parametrize("job", ["sales", "inventory"])
def test_the_job_modules_are_spark_submit_applications(job: str) -> None:
    """`spark-submit streaming/sales.py` runs the job's entry point; an import alone would run
    nothing and exit 0."""
    completed = subprocess.run(
        [sys.executable, f"streaming/{job}.py", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr[-2000:]
    assert f"The {job} streaming job" in completed.stdout
    assert "--available-now" in completed.stdout and "--console" in completed.stdout
