"""Chaos scenarios: crashes, outages and bad data, each reconciled against what was produced.

Every scenario is a function ``(stack, sizes) -> ChaosResult`` that the reliability tests call
with tiny sizes and ``python -m benchmarks.chaos`` (``make chaos``) calls with larger ones; the
runner prints one table: scenario, faults injected, events, lost, duplicated, negative control.

Each scenario runs on a store, checkpoints and topics of its own (``scenario_settings``), so the
reconciliation counts exactly its own rows. "Produced" is what the broker holds, read back with a
plain consumer; "lost" is a produced ``event_id`` missing from the store, "duplicated" is a row
beyond the first per ``event_id`` in ``sales_events`` (read without ``FINAL``) plus any line item
counted twice in the ``sales_panes`` partials (a plain MergeTree: a replayed batch would add twice).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import pandas as pd

from common.settings import Settings

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PAYLOAD_FAULTS = (
    "malformed_json",
    "wrong_types",
    "missing_fields",
    "impossible_values",
    "non_utf8",
)
STREAM_JOB = "sales-stream"


@dataclass
class ChaosResult:
    """One row of the chaos table."""

    scenario: str
    faults: str
    events: int
    lost: int
    duplicated: int
    control: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stack:
    """What every scenario runs against: the settings of the running services, a SparkSession
    for in-process drains, and a folder for the scenarios' own stores and logs."""

    settings: Settings
    spark: Any
    root: Path


@dataclass(frozen=True)
class Sizes:
    """How hard each scenario pushes (the tests use ``Sizes.tiny()``)."""

    kill_rounds: int = 10
    rate: float = 200.0
    round_seconds: float = 4.0
    broker_seconds: float = 20.0
    poison_seconds: float = 30.0
    outage_seconds: float = 10.0
    batch_timeout_s: float = 300.0

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(
            kill_rounds=3,
            rate=100.0,
            round_seconds=2.0,
            broker_seconds=10.0,
            poison_seconds=4.0,
            outage_seconds=10.0,
        )


def scenario_settings(stack: Stack, name: str, **overrides: Any) -> Settings:
    """Settings with a store, checkpoints and topics of the scenario's own; topics and store ready."""
    from common import stack as services
    from common.store import migrate, open_store

    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    folder = stack.root / tag
    settings = stack.settings.model_copy(
        update={
            "data_dir": folder,
            "checkpoint_dir": folder / "checkpoints",
            "sales_topic": f"chaos-{tag}-sales",
            "inventory_topic": f"chaos-{tag}-inventory",
            **overrides,
        }
    )
    services.ensure_topics(settings)
    migrate(open_store(settings))
    return settings


def jvm_temp_environment(folder: Path) -> dict[str, str]:
    """Environment variables that put a JVM's temporary folders (Spark's local dirs and
    ``java.io.tmpdir``) in ``folder``: a killed JVM cannot remove them (about 20 MB each)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {"SPARK_LOCAL_DIRS": str(folder), "JAVA_TOOL_OPTIONS": f"-Djava.io.tmpdir={folder}"}


def job_environment(settings: Settings) -> dict[str, str]:
    """The environment of a job subprocess that runs with ``settings`` (its JVM's temporary
    folders in the data folder, which the run removes)."""
    environment = {
        **os.environ,
        **jvm_temp_environment(settings.data_root / "jvm-tmp"),
        "DATA_DIR": str(settings.data_root),
        "CHECKPOINT_DIR": str(settings.checkpoint_root),
        "SALES_TOPIC": settings.sales_topic,
        "INVENTORY_TOPIC": settings.inventory_topic,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "SPARK_MASTER": settings.spark_master,
        "STORE_LOCK_TIMEOUT_S": str(settings.store_lock_timeout_s),
        "PYTHONUNBUFFERED": "1",
    }
    if settings.api_token is not None:
        environment["API_TOKEN"] = settings.api_token.get_secret_value()
    if settings.clickhouse_password.get_secret_value():
        environment["CLICKHOUSE_PASSWORD"] = settings.clickhouse_password.get_secret_value()
    return environment


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
    """Poll ``condition`` until it is truthy; raise TimeoutError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


class StreamJob:
    """The sales streaming job as a subprocess (``python -m streaming sales``), its output in a log.
    Jobs a failed scenario leaves running are killed by ``stop_leftover_jobs`` (and at exit)."""

    running: ClassVar[set[StreamJob]] = set()

    def __init__(self, settings: Settings, log_file: Path, available_now: bool = False) -> None:
        self.settings = settings
        self.log_file = log_file
        self.argv = [sys.executable, "-m", "streaming", "sales"]
        if available_now:
            self.argv.append("--available-now")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("a") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=PROJECT_ROOT,
                env=job_environment(self.settings),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        StreamJob.running.add(self)

    def output(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait_started(self, timeout_s: float = 180.0) -> None:
        """Until the job says its queries started (or it died)."""

        def started() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the job exited early:\n{self.output()[-3000:]}")
            return self.output().count("started query") >= 1

        wait_for(started, timeout_s, "the streaming job's queries to start")

    def signal(self, signum: int) -> None:
        """SIGTERM to the driver (graceful path) or SIGKILL to its whole process group (crash)."""
        assert self.process is not None
        if signum == signal.SIGKILL:
            os.killpg(self.process.pid, signal.SIGKILL)
        else:
            self.process.send_signal(signum)

    def wait(self, timeout_s: float = 120.0) -> int:
        """The exit code; the group is killed if it does not end in time."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=30)
        finally:
            StreamJob.running.discard(self)

    def run(self, timeout_s: float = 300.0) -> int:
        self.start()
        return self.wait(timeout_s)


@atexit.register
def stop_leftover_jobs() -> None:
    """Kill the process group of every job still running (a scenario that failed half-way)."""
    for job in list(StreamJob.running):
        if job.process is not None and job.process.poll() is None:
            log.warning("killing the leftover job process group %d", job.process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.process.pid, signal.SIGKILL)
            job.process.wait(timeout=30)
        StreamJob.running.discard(job)


def topic_records(settings: Settings, topic: str) -> list[tuple[int, int, bytes | None]]:
    """Every record of ``topic`` as (partition, offset, value), read from the start to the end."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        enable_auto_commit=False,
        client_id="chaos-reconcile",
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[tuple[int, int, bytes | None]] = []
        deadline = time.monotonic() + 120
        while any(consumer.position(p) < ends[p] for p in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend((r.partition, r.offset, r.value) for r in batch)
        return records
    finally:
        consumer.close()


def produced_sales(settings: Settings, skip: set[tuple[int, int]] = frozenset()) -> set[str]:
    """The distinct ``event_id`` of the sales records on the topic (minus the ``skip`` positions)."""
    ids = set()
    for partition, offset, value in topic_records(settings, settings.sales_topic):
        if (partition, offset) not in skip:
            ids.add(json.loads(value)["event_id"])
    return ids


def reconcile_sales(settings: Settings, expected: set[str]) -> dict[str, int]:
    """Compare the store's sales rows and pane partials with the produced event ids."""
    from common.store import open_store

    store = open_store(settings)
    with store.session():
        copies = store.query_df(
            "SELECT event_id, count() AS copies FROM sales_events GROUP BY event_id"
        )
        line_items = int(
            store.scalar("SELECT sum(line_items) FROM sales_panes WHERE store_id != 'ALL'") or 0
        )
    stored = set(copies["event_id"])
    extra_rows = int((copies["copies"] - 1).sum()) if not copies.empty else 0
    unexpected = len(stored - expected)
    pane_extra = max(line_items - len(stored), 0)
    return {
        "produced": len(expected),
        "stored_rows": int(copies["copies"].sum()) if not copies.empty else 0,
        "stored_ids": len(stored),
        "pane_line_items": line_items,
        "lost": len(expected - stored),
        "duplicated": extra_rows + unexpected + pane_extra,
    }


def _failure_kind(error: Exception) -> str | None:
    message = str(error)
    if "stayed locked" in message:
        return "store busy"
    if "KafkaMicroBatchStream" in message or 'of "scala.Option.get()" is null' in message:
        return "Kafka source metrics NPE (SPARK-55271)"
    return None


def drain_in_process(
    stack: Stack, settings: Settings, job: str = STREAM_JOB, attempts: int = 6
) -> list[str]:
    """Run the sales job's queries in this process until the topic is drained (AvailableNow),
    restarting them from the checkpoint, as a supervisor would, after a known transient failure
    (the store stayed locked; Spark 4.1.1's Kafka source failing after it replayed an uncommitted
    batch). Returns the failures it restarted after."""
    from streaming.runtime import run_queries
    from streaming.sales import build_queries

    failures: list[str] = []
    while True:
        try:
            queries = build_queries(stack.spark, settings, job=job, available_now=True)
            run_queries(stack.spark, queries, job=job, settings=settings)
            return failures
        except Exception as exc:
            kind = _failure_kind(exc)
            if kind is None or len(failures) + 1 >= attempts:
                raise
            log.warning("drain of %s failed (%s); restarting from the checkpoint", job, kind)
            failures.append(kind)
            for query in stack.spark.streams.active:
                query.stop()


def produce_world(
    settings: Settings, seed: int, rate: float, seconds: float, **kwargs: Any
) -> dict:
    """A tiny world of its own (2 stores x 4 products) streamed at ``rate`` for ``seconds``."""
    from generator.stream import produce

    return produce(
        settings,
        rate=rate,
        seconds=seconds,
        seed=seed,
        n_stores=2,
        n_products=4,
        n_customers=20,
        prefix=f"w{seed}-",
        **kwargs,
    )


def stored_sales_rows(settings: Settings) -> int:
    """Rows in ``sales_events`` now (without FINAL)."""
    from common.store import open_store

    return int(open_store(settings).scalar("SELECT count() FROM sales_events") or 0)


def _wrote_or_ended(job: StreamJob, settings: Settings, rows_before: int) -> bool:
    return job.process.poll() is not None or stored_sales_rows(settings) > rows_before


def stored_but_uncommitted(settings: Settings) -> bool:
    """Whether the sales job's last planned batch stored its events without committing its
    offsets: the moment a SIGKILL makes Spark replay a batch whose events are already stored."""
    from common.store import open_store
    from streaming.sales import JOB, query_names

    query = query_names(JOB)["events"]
    checkpoint = settings.checkpoint_root / JOB / query
    planned = [int(p.name) for p in (checkpoint / "offsets").glob("[0-9]*")]
    if not planned or (checkpoint / "commits" / str(max(planned))).exists():
        return False
    stored = open_store(settings).scalar(
        "SELECT count() FROM sales_events WHERE startsWith(ingest_token, {q:String}) "
        "AND endsWith(ingest_token, {b:String})",
        {"q": f"{query}.", "b": f"-{max(planned)}"},
    )
    return int(stored or 0) > 0


def kill_restart(stack: Stack, sizes: Sizes, seed: int = 11) -> ChaosResult:
    """Rounds of: start the job, produce, SIGKILL or SIGTERM it; then drain and reconcile.

    Even rounds SIGKILL the job right after a batch reached the store (between the store write
    and the checkpoint commit: the replay must not add it twice); odd rounds SIGKILL or SIGTERM it
    at a random moment after the queries started (often mid-batch, before the write)."""
    settings = scenario_settings(stack, "kill")
    rng = random.Random(seed)
    job = StreamJob(settings, settings.data_root / "logs" / "kill-restart.log")
    kills: list[str] = []
    for round_index in range(sizes.kill_rounds):
        rows_before = stored_sales_rows(settings)
        job.start()
        job.wait_started()
        producer = threading.Thread(
            target=produce_world,
            args=(settings, seed * 100 + round_index, sizes.rate, sizes.round_seconds),
        )
        producer.start()
        moment = "random"
        if round_index % 2 == 0:
            try:
                wait_for(
                    partial(_wrote_or_ended, job, settings, rows_before),
                    sizes.batch_timeout_s,
                    "a batch to reach the store",
                )
                moment = "after write" if job.process.poll() is None else "after the job ended"
            except TimeoutError:
                moment = "no write yet"
            time.sleep(rng.uniform(0.0, 0.3))
            signum = signal.SIGKILL
        else:
            time.sleep(rng.uniform(0.5, sizes.round_seconds + 3.0))
            signum = rng.choice([signal.SIGKILL, signal.SIGTERM])
        job.signal(signum)
        code = job.wait()
        if signum == signal.SIGKILL and stored_but_uncommitted(settings):
            moment += ", before its commit"  # the replay finds its own events stored
        kills.append(f"{signal.Signals(signum).name} {moment} -> exit {code}")
        producer.join()
    drain_in_process(stack, settings)
    result = reconcile_sales(settings, produced_sales(settings))
    return ChaosResult(
        scenario="kill/restart",
        faults=f"{len(kills)} kills ({sum('SIGKILL' in k for k in kills)} SIGKILL)",
        events=result["produced"],
        lost=result["lost"],
        duplicated=result["duplicated"],
        control="see store outage (same check)",
        details={**result, "kills": kills},
    )


class _CountRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:200])


@contextmanager
def captured_warnings(logger_name: str) -> Iterator[_CountRecords]:
    """Collect the WARNING+ records of ``logger_name`` (what a library surfaces) while inside."""
    handler = _CountRecords()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def broker_restart(stack: Stack, sizes: Sizes, seed: int = 21) -> ChaosResult:
    """Restart the broker while the generator sends and the job consumes; then drain and reconcile."""
    from common import stack as services

    settings = scenario_settings(stack, "broker")
    job = StreamJob(settings, settings.data_root / "logs" / "broker-restart.log")
    job.start()
    job.wait_started()
    counts: dict[str, Any] = {}

    def send() -> None:
        counts.update(produce_world(settings, seed, sizes.rate, sizes.broker_seconds))

    with captured_warnings("generator.stream") as surfaced:  # librdkafka errors, logged there
        producer = threading.Thread(target=send)
        producer.start()
        time.sleep(sizes.broker_seconds / 4)
        started = time.monotonic()
        services.stop_kafka(stack.settings)
        time.sleep(2.0)
        services.start_kafka(stack.settings)
        outage_s = time.monotonic() - started
        producer.join()
    job_died = job.process.poll() is not None
    if not job_died:
        job.signal(signal.SIGTERM)
    job_code = job.wait()
    drain_in_process(stack, settings)
    produced = produced_sales(settings)
    result = reconcile_sales(settings, produced)
    unacknowledged = counts.get("send_errors", 0)
    return ChaosResult(
        scenario="broker restart",
        faults=f"broker down {outage_s:.0f} s",
        events=counts.get("sales_events", 0),
        lost=result["lost"] + max(counts.get("sales_events", 0) - len(produced), 0),
        duplicated=result["duplicated"],
        control=f"producer surfaced {len(surfaced.messages)} warnings",
        details={
            **result,
            "send_errors": unacknowledged,
            "job_died_during_outage": job_died,
            "job_exit_code": job_code,
            "first_warnings": surfaced.messages[:3],
        },
    )


def hold_store(store_dir: Path, release: Path, max_seconds: float) -> subprocess.Popen:
    """Another process takes the store and works in it in one session until ``release`` exists (or
    ``max_seconds`` pass); returns once it holds the store."""
    code = (
        "import pathlib, sys, time\n"
        "from common.store.embedded import EmbeddedStore\n"
        "release, deadline = pathlib.Path(sys.argv[2]), time.monotonic() + float(sys.argv[3])\n"
        "with EmbeddedStore(sys.argv[1], lock_timeout_s=600).session():\n"
        "    print('held', flush=True)\n"
        "    while not release.exists() and time.monotonic() < deadline:\n"
        "        time.sleep(0.1)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(store_dir), str(release), str(max_seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    if holder.stdout.readline().strip() != "held":
        holder.kill()
        raise RuntimeError(f"the store holder exited with {holder.wait()} before holding the store")
    return holder


def _batch_files(folder: Path) -> dict[int, Path]:
    return {int(p.name): p for p in folder.iterdir() if p.name.isdigit()}


def uncommit_last_batch(settings: Settings, job: str = STREAM_JOB) -> int:
    """Make Spark run the events query's last batch that read data again, with the same batch id:
    its commit (and any later empty batch) is removed from the checkpoint, which is the state a
    crash between the store write and the checkpoint commit leaves behind."""
    from streaming.runtime import checkpoint_location

    location = checkpoint_location(settings, job, f"{job}-events")
    offsets = _batch_files(location / "offsets")
    ends = {batch: path.read_text().splitlines()[2:] for batch, path in offsets.items()}
    last = max(b for b in ends if b == min(ends) or ends[b] != ends.get(b - 1))
    for folder in ("commits", "offsets"):
        for batch, path in _batch_files(location / folder).items():
            if batch > last or (folder == "commits" and batch == last):
                path.unlink()
                (path.parent / f".{batch}.crc").unlink(missing_ok=True)
    return last


def store_outage(stack: Stack, sizes: Sizes, seed: int = 31) -> ChaosResult:
    """Another process holds the store when the job starts draining, until a batch that could not
    write failed; it runs again with the same token. Then replay the last batch (its commit deleted): once
    with the token (nothing added), once with the token off (the job's event-id check alone adds
    nothing) and, as the negative control, with both off (duplicates appear)."""
    from streaming.sales import SalesBatchWriter

    settings = scenario_settings(stack, "outage", store_lock_timeout_s=3.0)
    counts = produce_world(settings, seed, sizes.rate, sizes.outage_seconds)
    release = settings.data_root / "release-the-store"
    holder = hold_store(settings.store_dir, release, max_seconds=300)
    held_from = time.monotonic()
    with captured_warnings(log.name) as surfaced:  # the drain logs each failure it restarts after

        def release_after_a_failed_batch() -> None:
            wait_for(lambda: any("store busy" in m for m in surfaced.messages), 300, "a failure")
            release.touch()

        releaser = threading.Thread(target=release_after_a_failed_batch, daemon=True)
        releaser.start()
        failures = drain_in_process(stack, settings)
    release.touch()
    held = holder.wait(timeout=600) == 0
    held_s = time.monotonic() - held_from
    produced = produced_sales(settings)
    after_outage = reconcile_sales(settings, produced)
    replayed = uncommit_last_batch(settings)
    failures += drain_in_process(stack, settings)
    after_replay = reconcile_sales(settings, produced)
    fresh_tokens = (f"no-token-{uuid.uuid4().hex}" for _ in iter(int, 1))
    token_off = mock.patch(
        "streaming.sales.stream_token", lambda spark, query, batch: next(fresh_tokens)
    )
    uncommit_last_batch(settings)
    with token_off:
        failures += drain_in_process(stack, settings)
    only_event_ids = reconcile_sales(settings, produced)
    uncommit_last_batch(settings)
    every_event_new = mock.patch.object(SalesBatchWriter, "_new_events", lambda _, raw, token: raw)
    with token_off, every_event_new:
        failures += drain_in_process(stack, settings)
    control = reconcile_sales(settings, produced)
    busy = failures.count("store busy")
    return ChaosResult(
        scenario="store outage",
        faults=f"store held {held_s:.0f} s: {busy} failed attempts; batch replayed",
        events=counts["sales_events"],
        lost=after_replay["lost"],
        duplicated=after_outage["duplicated"] + after_replay["duplicated"],
        control=(
            f"token off: {only_event_ids['duplicated']} duplicated; "
            f"token and event-id check off: {control['duplicated']} duplicated (caught)"
        ),
        details={
            "after_outage": after_outage,
            "after_replay": after_replay,
            "replayed_batch": replayed,
            "token_off": only_event_ids,
            "negative_control": control,
            "failures": failures,
            "lock_held": held,
        },
    )


def poison(stack: Stack, sizes: Sizes, seed: int = 41, rate_per_kind: float = 0.01) -> ChaosResult:
    """5 % poison (1 % of each payload fault) for a sustained run: every poison record is a dead
    letter at its manifest position, every clean one is stored once; throughput against clean,
    both measured after a warm-up drain (a process's first drain also pays the JVM's warm-up)."""
    from common.store import open_store
    from generator.faults import FaultRates, read_manifest

    warm_up = scenario_settings(stack, "warm-up")
    produce_world(warm_up, seed, sizes.rate, 1.0)
    drain_in_process(stack, warm_up)
    clean = scenario_settings(stack, "clean")
    produce_world(clean, seed, sizes.rate, sizes.poison_seconds)
    clean_records = len(topic_records(clean, clean.sales_topic))
    started = time.monotonic()
    drain_in_process(stack, clean)
    clean_rate = clean_records / (time.monotonic() - started)

    settings = scenario_settings(stack, "poison")
    manifest_path = settings.data_root / "manifest.jsonl"
    faults = FaultRates(**dict.fromkeys(PAYLOAD_FAULTS, rate_per_kind))
    produce_world(
        settings, seed, sizes.rate, sizes.poison_seconds, faults=faults, manifest_path=manifest_path
    )
    records = len(topic_records(settings, settings.sales_topic))
    started = time.monotonic()
    drain_in_process(stack, settings)
    poison_rate = records / (time.monotonic() - started)

    injected = {
        (e["partition"], e["offset"]): e["kind"]
        for e in read_manifest(manifest_path)
        if e["topic"] == settings.sales_topic and e["kind"] in PAYLOAD_FAULTS
    }
    dead = open_store(settings).query_df(
        "SELECT kafka_partition, kafka_offset, count() AS copies FROM dead_letters "
        "WHERE topic = {topic:String} GROUP BY kafka_partition, kafka_offset",
        {"topic": settings.sales_topic},
    )
    dead_positions = set(zip(dead["kafka_partition"], dead["kafka_offset"], strict=True))
    result = reconcile_sales(settings, produced_sales(settings, skip=set(injected)))
    missed = sorted(injected[p] for p in set(injected) - dead_positions)
    missed_poison = len(missed)
    wrongly_dead = len(dead_positions - set(injected))
    drop = 1.0 - poison_rate / clean_rate
    return ChaosResult(
        scenario="sustained poison",
        faults=f"{len(injected)} poison of {records} ({len(injected) / max(records, 1):.1%})",
        events=records,
        lost=result["lost"] + missed_poison + wrongly_dead,
        duplicated=result["duplicated"] + int((dead["copies"] - 1).sum()),
        control=f"throughput {poison_rate:.0f}/s vs clean {clean_rate:.0f}/s ({drop:+.0%} drop)",
        details={
            **result,
            "poison": len(injected),
            "dead_letters": len(dead_positions),
            "missed_poison": missed,
            "wrongly_dead": wrongly_dead,
            "throughput_drop": drop,
        },
    )


def _toy_pipeline(spark: Any, slope: float, feature: str = "signal") -> Any:
    """A fitted Spark ML pipeline predicting ``slope * feature``."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import LinearRegression

    data = spark.createDataFrame(
        [(x, slope * x) for x in (1.0, 2.0, 3.0, 4.0)], f"{feature} double, label double"
    )
    stages = [VectorAssembler(inputCols=[feature], outputCol="features"), LinearRegression()]
    return Pipeline(stages=stages).fit(data)


def _register(name: str, model: Any = None) -> tuple[str, str, str]:
    """Log ``model`` (a Spark model, or a constant pyfunc when None) and register it under
    ``name``; its version and the logged model's id."""
    import mlflow
    import mlflow.pyfunc
    import mlflow.spark

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: pd.DataFrame) -> list[float]:
            return [0.0] * len(model_input)

    with mlflow.start_run():
        if model is None:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=Constant(),
                registered_model_name=name,
                pip_requirements=[],
            )
        else:
            info = mlflow.spark.log_model(
                model, "model", registered_model_name=name, pip_requirements=[]
            )
    return str(info.registered_model_version), info.model_id, info.run_id


def _delete_model_files(settings: Settings, model_id: str, run_id: str) -> int:
    """Delete a logged model's files (and its run's copy) from the local MLflow server's store."""
    import shutil

    artifacts = settings.data_root / "mlflow" / "artifacts"
    folders = [*artifacts.glob(f"*/models/{model_id}"), *artifacts.glob(f"*/{run_id}")]
    for folder in folders:
        shutil.rmtree(folder)
    return len(folders)


def broken_model(stack: Stack, sizes: Sizes) -> ChaosResult:
    """Move the champion alias to broken versions (files deleted, wrong input column, not a Spark
    model) between micro-batches: every batch is still scored by the last good version, and each
    broken version leaves a ``load_failed`` row in ``model_events``. Negative control: loading the
    alias directly, as a naive job would, fails."""
    import mlflow
    import mlflow.spark
    from mlflow import MlflowClient

    from common.models import ChampionModel, check_transform
    from common.store import open_store

    settings = scenario_settings(stack, "model")
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    name = f"chaos_model_{uuid.uuid4().hex[:8]}"
    client = MlflowClient(settings.mlflow_tracking_uri)
    batch = stack.spark.createDataFrame([(1.0,), (2.0,)], "signal double")
    good, *_ = _register(name, _toy_pipeline(stack.spark, 2.0))
    files_gone, gone_model, gone_run = _register(name, _toy_pipeline(stack.spark, 5.0))
    deleted = _delete_model_files(stack.settings, gone_model, gone_run)
    wrong_inputs, *_ = _register(name, _toy_pipeline(stack.spark, 3.0, feature="other"))
    not_spark, *_ = _register(name)
    store = open_store(settings)
    champion = ChampionModel(
        name, job="chaos", store=store, settings=settings, probe=check_transform(batch.limit(0))
    )
    client.set_registered_model_alias(name, "champion", good)
    scored: list[tuple[str, list[float]]] = []

    def score_batch() -> None:
        loaded = champion.current()
        predictions = [round(r.prediction, 6) for r in loaded.model.transform(batch).collect()]
        scored.append((loaded.version, predictions))

    score_batch()
    naive_failures = 0
    for broken in (files_gone, wrong_inputs, not_spark):
        client.set_registered_model_alias(name, "champion", broken)
        score_batch()
        score_batch()
        try:
            mlflow.spark.load_model(f"models:/{name}@champion").transform(batch).collect()
        except Exception:  # what a job without the keep-last-good rule would hit
            naive_failures += 1
    alerts = store.query_df(
        "SELECT model_version, event_type FROM model_events WHERE model_name = {n:String}",
        {"n": name},
    )
    failed = set(alerts.loc[alerts["event_type"] == "load_failed", "model_version"])
    expected_scores = [2.0, 4.0]
    wrong = sum(version != good or p != expected_scores for version, p in scored)
    return ChaosResult(
        scenario="broken model",
        faults="alias -> files deleted, wrong inputs, not Spark",
        events=len(scored),
        lost=wrong,
        duplicated=0,
        control=f"naive alias load failed {naive_failures}/3",
        details={
            "scored": scored,
            "load_failed": sorted(failed),
            "broken": [files_gone, wrong_inputs, not_spark],
            "deleted_folders": deleted,
            "naive_failures": naive_failures,
        },
    )


def quality_failure(stack: Stack, sizes: Sizes, seed: int = 61) -> ChaosResult:
    """A day with 90 % of its sales missing fails the critical volume expectation and publishes
    nothing; the next (clean) day of the same run is published (the control)."""
    import datetime as dt

    from batch.job import PUBLISHED, run_batch
    from common.store import open_store
    from generator.backfill import backfill

    # the tiny world's last sale of a day can be hours before midnight: a looser freshness rule
    settings = scenario_settings(stack, "quality", batch_freshness_hours=12.0)
    store = open_store(settings)
    backfill(store, days=21, seed=seed, n_stores=2, n_products=6, n_customers=30, prefix="q-")
    good_day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    bad_day = good_day - dt.timedelta(days=1)
    store.execute(
        "DELETE FROM sales_events WHERE toDate(event_time) = {day:Date} "
        "AND cityHash64(event_id) % 10 != 0",
        {"day": bad_day},
    )
    results = {r.day: r for r in run_batch(settings, bad_day, good_day)}
    published = {
        day: {
            table: int(
                store.scalar(
                    f"SELECT count() FROM {table} WHERE date = {{day:Date}}",  # noqa: S608
                    {"day": day},
                )
            )
            for table in ("daily_kpis", "product_rankings", "store_rankings")
        }
        for day in (bad_day, good_day)
    }
    leaked = sum(published[bad_day].values())
    return ChaosResult(
        scenario="data-quality failure",
        faults=f"{bad_day}: 90% of sales removed",
        events=sum(published[good_day].values()),
        lost=0 if results[good_day].status == PUBLISHED else 1,
        duplicated=leaked,
        control=f"clean day {results[good_day].status}; bad day {results[bad_day].status}",
        details={
            "bad_status": results[bad_day].status,
            "bad_critical": results[bad_day].critical,
            "good_status": results[good_day].status,
            "published_rows": {str(k): v for k, v in published.items()},
        },
    )


INJECTIONS = (
    "'; DROP TABLE sales_events; --",
    "x' OR '1'='1",
    "{id:String}",
    "\\'); DELETE FROM dead_letters WHERE 1=1; --",
    "Robert'); TRUNCATE TABLE stores;--",
    '" UNION SELECT name FROM system.users --',
    "`sales_events`; OPTIMIZE TABLE sales_events FINAL",
)
STRING_FIELDS = (
    "transaction_id",
    "store_id",
    "customer_id",
    "product_id",
    "category",
    "payment_method",
    "channel",
)


def hostile_sales_events(tag: str) -> list[dict[str, Any]]:
    """One valid sales event per injection string, the string in every string field."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    events = []
    for index, text in enumerate(INJECTIONS):
        event: dict[str, Any] = {name: f"{text}{tag}{index}" for name in STRING_FIELDS}
        event.update(
            event_id=f"{text}-{uuid.uuid4()}",
            event_time=now,
            quantity=2,
            unit_price=1.5,
            discount=0.0,
            total_amount=3.0,
        )
        events.append(event)
    return events


# Engines whose merges fold rows: counted with FINAL, the rows a query reads.
_FOLDING_ENGINES = (
    "ReplacingMergeTree",
    "AggregatingMergeTree",
    "SummingMergeTree",
    "CollapsingMergeTree",
)


def table_rows(store: Any) -> dict[str, int]:
    """Every table of the store with the rows a query reads from it (``FINAL`` where merges fold
    rows: the raw row count drops whenever a background merge folds earlier writes, which is no
    row lost). A materialized view holds no rows of its own."""
    from common.store import check_table

    tables = store.query_df(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
    )
    rows = {}
    for table, engine in zip(tables["name"], tables["engine"], strict=True):
        if engine == "MaterializedView":
            rows[table] = 0
            continue
        final = " FINAL" if engine.endswith(_FOLDING_ENGINES) else ""
        rows[table] = int(store.scalar(f"SELECT count() FROM {check_table(table)}{final}"))  # noqa: S608 - allow-listed names
    return rows


def find_secrets(
    roots: list[Path], secrets: list[str], texts: dict[str, str] | None = None
) -> list[str]:
    """Where any of ``secrets`` appears: files under ``roots`` (below 64 MiB) and ``texts``."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and path.stat().st_size < 64 * 1024 * 1024:
                content = path.read_bytes()
                found += [f"{path}" for secret in secrets if secret.encode() in content]
    for name, text in (texts or {}).items():
        found += [name for secret in secrets if secret in text]
    return found


def hostile_input(stack: Stack, sizes: Sizes) -> ChaosResult:
    """SQL injection in every string field, through Kafka, Spark and the store: stored verbatim,
    every table intact. Negative control: the same values formatted into SQL instead of bound
    break the query or find the wrong rows. Also scans every file the run wrote for the secrets."""
    from kafka import KafkaProducer

    from common.store import open_store

    settings = scenario_settings(stack, "injection")
    store = open_store(settings)
    before = table_rows(store)
    events = hostile_sales_events("|")
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers.split(","))
    for event in events:
        producer.send(settings.sales_topic, json.dumps(event).encode(), key=b"hostile")
    producer.flush()
    producer.close()
    drain_in_process(stack, settings)
    columns = ("event_id", *STRING_FIELDS)
    stored = store.query_df(
        f"SELECT {', '.join(columns)} FROM sales_events FINAL"  # noqa: S608 - constant names
    )
    stored_rows = {tuple(row) for row in stored.itertuples(index=False)}
    sent_rows = {tuple(event[c] for c in columns) for event in events}
    bound_hits = [
        store.scalar(
            "SELECT count() FROM sales_events WHERE store_id = {s:String} AND event_id = {e:String}",
            {"s": event["store_id"], "e": event["event_id"]},
        )
        for event in events
    ]
    after = table_rows(store)
    intact = set(after) == set(before) and all(after[t] >= before[t] for t in before)
    broken_unbound = 0  # on this scenario's own store, after the checks above
    for event in events:
        unbound = f"SELECT count() FROM sales_events WHERE store_id = '{event['store_id']}'"  # noqa: S608 - the negative control: what binding prevents
        try:
            broken_unbound += int(store.scalar(unbound) != 1)
        except Exception:  # the formatted value broke the statement
            broken_unbound += 1
    leaks = find_secrets([stack.root, stack.settings.data_root], stack.settings.secrets())
    return ChaosResult(
        scenario="hostile input",
        faults=f"{len(INJECTIONS)} injection strings x {len(columns)} fields; secrets scan",
        events=len(events),
        lost=len(sent_rows - stored_rows) + sum(hit != 1 for hit in bound_hits) + (not intact),
        duplicated=len(stored) - len(events) + len(leaks),
        control=f"unbound SQL broke {broken_unbound}/{len(events)} lookups",
        details={
            "verbatim": stored_rows == sent_rows,
            "bound_hits": bound_hits,
            "tables_intact": intact,
            "dead_letters": after.get("dead_letters", 0),
            "broken_unbound": broken_unbound,
            "secret_leaks": leaks,
            "secrets_checked": len(stack.settings.secrets()),
        },
    )


SCENARIOS: dict[str, Callable[[Stack, Sizes], ChaosResult]] = {
    "kill_restart": kill_restart,
    "broker_restart": broker_restart,
    "store_outage": store_outage,
    "poison": poison,
    "broken_model": broken_model,
    "quality_failure": quality_failure,
    "hostile_input": hostile_input,
}


def render_table(results: list[ChaosResult]) -> str:
    """The chaos table as Markdown."""
    header = "| scenario | faults injected | events | lost | duplicated | negative control |"
    lines = [header, "|---|---|---:|---:|---:|---|"]
    lines += [
        f"| {r.scenario} | {r.faults} | {r.events} | {r.lost} | {r.duplicated} | {r.control} |"
        for r in results
    ]
    return "\n".join(lines)


def isolated_settings(root: Path) -> Settings:
    """The current settings on a DATA_DIR under ``root`` and free ports: the chaos run starts (and
    restarts) a broker and an MLflow server of its own, never the ones the user runs."""
    import socket

    from common.settings import get_settings, load_settings

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    current = get_settings()
    mlflow_port = free_port()
    return load_settings(
        **{
            **current.model_dump(),
            "data_dir": root,
            "checkpoint_dir": root / "checkpoints",
            "kafka_bootstrap_servers": f"localhost:{free_port()}",
            "kafka_controller_port": free_port(),
            "mlflow_port": mlflow_port,
            "mlflow_tracking_uri": f"http://127.0.0.1:{mlflow_port}",
            "spark_master": "local[2]",
        }
    )


def main(argv: list[str] | None = None) -> int:
    """Run every scenario against a broker and an MLflow server of its own and print the table;
    exit 1 when any row lost or duplicated an event."""
    import argparse
    import tempfile

    from benchmarks.harness import remove_run_folder
    from common import stack as services
    from common.logs import configure_logging
    from common.spark import build_spark_session

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=sorted(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=Sizes().kill_rounds)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="retail-chaos-"))
    settings = isolated_settings(root / "data")
    configure_logging(settings)
    services.up(settings)
    spark = build_spark_session("retail-chaos", settings, {"spark.sql.shuffle.partitions": "2"})
    sizes = Sizes(kill_rounds=args.rounds)
    results = []
    try:
        for name in [n for n in SCENARIOS if n in args.only]:
            log.info("chaos scenario %s", name)
            results.append(SCENARIOS[name](Stack(settings, spark, root / "scenarios"), sizes))
            log.info("%s: %s", name, results[-1].details)
    finally:
        spark.stop()
        services.down(settings)
    print(render_table(results))  # noqa: T201 - the command's output
    if all(r.lost == 0 and r.duplicated == 0 for r in results):
        remove_run_folder(root)
        return 0
    log.warning("the scenarios' data and job logs are kept in %s", root)
    return 1


if __name__ == "__main__":
    sys.exit(main())
