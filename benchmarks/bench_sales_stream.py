"""Sales job benchmark: sustained events/s of the job on local[2] (store sink, dead letters and
demand scoring on), beside Kafka's own ``ConsumerPerformance`` reading the same topic in the same
run; the event-to-store latency p50/p99 at a fixed input rate; and the cost of the window
computation by 1-minute panes beside Spark's sliding ``window()`` over the same events.

Scoring uses a small Spark ML pipeline registered to the run's MLflow server as the champion of a
benchmark model name, fed by a constant feature builder: it measures the job's scoring machinery
(alias check, pinning, transform, insert), not the training package's feature queries.

The drain runs in micro-batches of ``DRAIN_BATCH`` events (``MAX_OFFSETS_PER_TRIGGER``, the
seed's rate knob, raised for a backlog); each one after the first (but a small remainder) is a
sample of the sustained rate. The scored drain then reads two more micro-batches, the first with
scoring off: the scoring overhead is the mean of the micro-batches on each side of it (the later
micro-batches of a drain run slower) over it. Each run's drain reads a topic of its own, its
events within a day of its own: no drain recomputes another's windows, and only the first
micro-batch scores a day's catalogue, whatever the hour of the run. The latency run comes first,
so that the JVM's compilation of the job's hot paths is not in the measured drain.

``run(quick)`` returns the rows for ``retail bench``; ``python -m benchmarks.bench_sales_stream``
runs it alone on a fresh local stack and prints the table.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

THROUGHPUT_TARGET = 50_000.0  # events/s
SHARE_TARGET = 0.25  # of the raw consumer rate
LATENCY_P99_TARGET_S = 5.0
LATENCY_RATE = 5_000.0  # events/s for the latency target
WINDOW_METHOD_ROUNDS = 2
LATENCY_BLOCKS = 3  # the latency run is cut into this many consecutive samples
CONSUMER_PERF_RUNS = 3  # ConsumerPerformance runs per benchmark run, each one sample
DRAIN_BATCH = 200_000  # events per micro-batch of the drain (MAX_OFFSETS_PER_TRIGGER)
FILL_STEP = dt.timedelta(milliseconds=50)  # between the drain's events
WINDOW_METHOD_EVENTS = 100_000
_JARS = Path(__file__).resolve().parent.parent / ".jvm" / "kafka"
_CSV_HEADER = re.compile(r"nMsg\.sec")


_RECORD = (
    '{{"event_id": "{prefix}-{i}", "event_time": "{time}", "transaction_id": "{prefix}-t{basket}", '
    '"store_id": "{store}", "customer_id": {customer}, "product_id": "{product}", '
    '"category": "cat{category}", "quantity": {quantity}, "unit_price": {price!r}, '
    '"discount": 0.0, "total_amount": {total!r}, "payment_method": "card", "channel": "store", '
    '"on_promotion": false}}'
)


def sales_record(i: int, moment: dt.datetime, prefix: str) -> tuple[bytes, bytes]:
    """One line item (key, JSON value): 50 stores, 400 products, baskets of about 3 items.

    The JSON comes from a template, a third faster than ``json.dumps`` of a dict (the fills of a
    run send millions); ``prefix`` holds letters and digits only, so nothing needs escaping.
    """
    store, product, basket = f"{prefix}S{i % 50}", f"P{(i * 7) % 400}", i // 3
    quantity = 1 + i % 4
    price = round(0.5 + (i % 37) * 0.35, 2)
    value = _RECORD.format(
        prefix=prefix,
        i=i,
        time=moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        basket=basket,
        store=store,
        customer="null" if basket % 4 == 0 else f'"c{basket % 5000}"',
        product=product,
        category=(i * 7) % 400 % 12,
        quantity=quantity,
        price=price,
        total=round(quantity * price, 2),
    )
    return f"{store}|{product}".encode(), value.encode()


def _producer(bootstrap: str) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=262_144)


def fill_topic(bootstrap: str, topic: str, events: int, prefix: str, day: dt.date) -> None:
    """``events`` line items 50 ms apart from midnight (UTC) of ``day``, sent as fast as possible
    (librdkafka, uncompressed as in the latency run: the fill is set-up, not a measurement). The
    fill stays within its day, so that only the drain's first micro-batch holds a day's first
    sales (which score the day's catalogue), whatever the hour of the run. Fills with their own
    prefix and days never share a store window."""
    from confluent_kafka import Producer

    if events * FILL_STEP > dt.timedelta(days=1):
        raise ValueError(f"{events:,} events {FILL_STEP} apart do not fit in one day")

    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20, "batch.size": 262_144}
    )
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    for i in range(events):
        key, value = sales_record(i, start + i * FILL_STEP, prefix)
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
    if producer.flush(60):
        raise RuntimeError(f"the fill of {topic} did not reach the broker within 60 s")


def send_at_rate(bootstrap: str, topic: str, rate: float, seconds: float, prefix: str) -> int:
    """Send at ``rate`` events/s for ``seconds`` with event_time = send time; events sent."""
    producer = _producer(bootstrap)
    sent = 0
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            while sent < int(elapsed * rate):
                key, value = sales_record(sent, dt.datetime.now(dt.UTC), prefix)
                producer.send(topic, key=key, value=value)
                sent += 1
            time.sleep(0.002)
        producer.flush()
    finally:
        producer.close()
    return sent


def run_consumer_perf(bootstrap: str, topic: str, messages: int) -> float:
    """Kafka's ConsumerPerformance over the topic, once; its fetch rate (messages/s once the
    consumer has joined its group: the steady read rate, like the job's micro-batches after the
    first)."""
    command = [
        "java",
        "-Xmx512m",
        "-cp",
        f"{_JARS}/*",
        "org.apache.kafka.tools.ConsumerPerformance",
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--messages",
        str(messages),
        "--group",
        f"bench-consumer-perf-{uuid.uuid4().hex[:8]}",
        "--timeout",
        "60000",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)  # noqa: S603
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    header = next((i for i, line in enumerate(lines) if _CSV_HEADER.search(line)), None)
    if done.returncode != 0 or header is None or header + 1 >= len(lines):
        raise RuntimeError(f"ConsumerPerformance failed ({done.returncode}): {done.stderr[-800:]}")
    names = [c.strip() for c in lines[header].split(",")]
    values = [c.strip() for c in lines[header + 1].split(",")]
    return float(values[names.index("fetch.nMsg.sec")])


def consumer_rates(
    bootstrap: str, topic: str, messages: int, runs: int = CONSUMER_PERF_RUNS
) -> list[float]:
    """``runs`` runs of ConsumerPerformance over the topic, each one sample."""
    return [run_consumer_perf(bootstrap, topic, messages) for _ in range(runs)]


def shares(rates: list[float], peers: list[float], target: float) -> list[dict[str, Any]]:
    """One sample per pairing of a job rate with a consumer rate of the same run: the job's share
    of the raw consumer rate, its ratio to ``target`` and whether it meets it."""
    return [
        {"value": rate / peer, "ratio": rate / peer / target, "met": rate / peer >= target}
        for rate in rates
        for peer in peers
    ]


def register_bench_model(spark: Any, settings: Any, name: str) -> None:
    """A small Spark ML pipeline as ``name@champion`` on the run's MLflow server."""
    import mlflow
    import mlflow.spark
    from mlflow import MlflowClient
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import LinearRegression

    data = spark.createDataFrame(
        [(x, 2.0 * x + 1.0) for x in (1.0, 2.0, 3.0, 4.0)], "signal double, label double"
    )
    model = Pipeline(
        stages=[VectorAssembler(inputCols=["signal"], outputCol="features"), LinearRegression()]
    ).fit(data)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    with mlflow.start_run(run_name="bench-sales-stream"):
        info = mlflow.spark.log_model(
            model, "model", registered_model_name=name, pip_requirements=[]
        )
    MlflowClient(settings.mlflow_tracking_uri).set_registered_model_alias(
        name, "champion", str(info.registered_model_version)
    )


def constant_features(spark: Any, store: Any, keys: Any, day: dt.date) -> Any:
    """Feature rows of the benchmark model: the keys, the day and one constant signal."""
    from pyspark.sql import functions as sf

    return keys.select(
        "store_id", "product_id", sf.lit(day).alias("date"), sf.lit(1.0).alias("signal")
    )


class ScoringOff:
    """The champion, but none in the given micro-batches (counted from 0; the sales job asks
    ``current()`` once per micro-batch with events)."""

    def __init__(self, champion: Any, batches: frozenset[int]) -> None:
        self.champion = champion
        self.batches = batches
        self.asked = 0

    def current(self) -> Any:
        self.asked += 1
        return None if self.asked - 1 in self.batches else self.champion.current()

    def close(self) -> None:
        self.champion.close()


def _job_name() -> str:
    """A job name of its own for each run of the job (its queries, checkpoints and store rows)."""
    return f"bench-sales-{uuid.uuid4().hex[:6]}"


def _job(
    spark: Any,
    settings: Any,
    model_name: str,
    job: str,
    available_now: bool,
    unscored: frozenset[int] = frozenset(),
) -> list[Any]:
    """The queries of the sales job ``job``, scoring with ``model_name`` but in the ``unscored``
    micro-batches."""
    from common.models import ChampionModel
    from streaming.sales import build_queries

    champion: Any = ChampionModel(model_name, job="bench-sales", settings=settings)
    if unscored:
        champion = ScoringOff(champion, unscored)
    return build_queries(
        spark,
        settings,
        job=job,
        available_now=available_now,
        champion=champion,
        feature_builder=constant_features,
    )


def scoring_overhead(
    job: str,
    scored: list[float],
    unscored: list[float],
    pairing: str = "micro-batch i on / micro-batch i off",
) -> dict[str, Any]:
    """The row of a job's scoring overhead: each scored figure over its unscored pair (as
    ``pairing`` says), each pair one sample."""
    return {
        "name": f"{job} job scoring overhead (sustained events/s, scoring on / off)",
        "target": "reported",
        "unit": "x",
        "peer": "scoring off: "
        + ", ".join(f"{rate:,.0f}" for rate in unscored)
        + f" events/s; {pairing}",
        "samples": [
            {"value": on / off, "ratio": on / off, "met": True}
            for on, off in zip(scored, unscored, strict=False)
        ],
    }


def drain_rates(progress: list[Any], batch_size: int) -> list[float]:
    """The events/s of each micro-batch of a drain after the first (which plans the query and
    warms the JVM), leaving out a remainder batch under half of ``batch_size``: a handful of events
    measures the fixed cost of a batch, not a sustained rate."""
    batches = [p for p in progress if p.numInputRows > 0][1:]
    return [
        p.numInputRows / (p.batchDuration / 1000)
        for p in batches
        if p.batchDuration and p.numInputRows >= batch_size / 2
    ]


def measure_throughput(
    spark: Any,
    settings: Any,
    model_name: str,
    events: int,
    unscored: frozenset[int],
    judged_until: dt.datetime,
) -> tuple[list[float], float]:
    """Drain a filled topic with the job (AvailableNow). Returns the events/s of every micro-batch
    after the first (which also plans the query and warms the JVM), each one sample of the
    sustained rate, and the end-to-end events/s over the whole drain's wall time.

    The job finds its anomaly judgements done up to ``judged_until``, as an earlier run would
    leave them: a drain defers judging to its end (it is a backlog), and that judgement
    (13-26 s for the drain's 14 hours of windows) is not what the figures measure.
    """
    import pandas as pd

    from common.store import open_store
    from streaming.runtime import run_queries
    from streaming.sales import query_names

    job = _job_name()
    horizon = {"query_name": query_names(job)["events"], "judged_until": judged_until}
    open_store(settings).insert_df("sales_anomaly_horizon", pd.DataFrame([horizon]))
    started = time.monotonic()
    queries = _job(spark, settings, model_name, job, available_now=True, unscored=unscored)
    queries = run_queries(spark, queries, job="bench-sales", settings=settings)
    end_to_end = events / (time.monotonic() - started)
    rates = drain_rates(queries[0].recentProgress, settings.max_offsets_per_trigger)
    return rates or [end_to_end], end_to_end


def measure_latency(
    spark: Any, settings: Any, store: Any, model_name: str, rate: float, seconds: float, prefix: str
) -> np.ndarray:
    """Run the job while sending at ``rate``; per-event seconds from event_time to ingested_at, in
    the order the events were sent."""
    from streaming.runtime import stop_gracefully

    queries = _job(spark, settings, model_name, _job_name(), available_now=False)
    try:
        # A first batch (planning, state, scoring, JVM warm-up) before the clock starts.
        send_at_rate(
            settings.kafka_bootstrap_servers, settings.sales_topic, rate, 0.2, f"warm{prefix}"
        )
        for query in queries:
            query.processAllAvailable()
        sent = send_at_rate(
            settings.kafka_bootstrap_servers, settings.sales_topic, rate, seconds, prefix
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            stored = store.scalar(
                "SELECT count() FROM sales_events WHERE startsWith(store_id, {p:String})",
                {"p": prefix},
            )
            if stored >= sent:
                break
            time.sleep(1.0)
    finally:
        for query in queries:
            stop_gracefully(query)  # interrupting a running batch is not what is measured
    frame = store.query_df(
        "SELECT (toUnixTimestamp64Milli(ingested_at) - toUnixTimestamp64Milli(event_time)) / 1000 "
        "AS latency FROM sales_events WHERE startsWith(store_id, {p:String}) ORDER BY event_time",
        {"p": prefix},
    )
    return frame["latency"].to_numpy(dtype=float)


def _static_sales(spark: Any, events: int) -> Any:
    """``events`` cached static sales events, 20 per second from a fixed start, over 50 stores."""
    from pyspark.sql import functions as sf

    start = dt.datetime(2026, 1, 5, 8, 0)
    frame = (
        spark.range(events)
        .select(
            (sf.lit(start) + sf.make_dt_interval(secs=(sf.col("id") * 0.05))).alias("event_time"),
            sf.concat(sf.lit("S"), (sf.col("id") % 50).cast("string")).alias("store_id"),
            sf.concat(sf.lit("t"), (sf.col("id") / 3).cast("long").cast("string")).alias(
                "transaction_id"
            ),
            sf.concat(sf.lit("c"), (sf.col("id") % 5000).cast("string")).alias("customer_id"),
            (1 + sf.col("id") % 4).cast("int").alias("quantity"),
            ((sf.col("id") % 37) * 0.35 + 0.5).alias("total_amount"),
        )
        .cache()
    )
    frame.count()
    return frame


def measure_window_methods(spark: Any, events: int) -> list[tuple[float, float]]:
    """Seconds to compute the windows of ``events`` static events by panes and by sliding windows,
    one pair per round (``WINDOW_METHOD_ROUNDS`` rounds, the methods alternated), after both
    have run once on a few events (the JVM's first run of a plan is not what is compared)."""
    from streaming.sales import sliding_window_metrics, windowed_sales_metrics

    methods = (windowed_sales_metrics, sliding_window_metrics)
    warm_up = _static_sales(spark, 10_000)
    for method in methods:
        method(warm_up).write.format("noop").mode("overwrite").save()
    warm_up.unpersist()
    frame = _static_sales(spark, events)
    rounds = []
    for _ in range(WINDOW_METHOD_ROUNDS):  # alternated, so that drift hits both alike
        timings = []
        for method in methods:
            started = time.monotonic()
            method(frame).write.format("noop").mode("overwrite").save()
            timings.append(time.monotonic() - started)
        rounds.append((timings[0], timings[1]))
    frame.unpersist()
    return rounds


def sizes(quick: bool) -> dict[str, Any]:
    """The data sizes of a run (they go in the table's header)."""
    return {
        "events": 600_000 if quick else 2_000_000,
        "events per micro-batch": DRAIN_BATCH,
        "latency run seconds": 15 if quick else 60,
        "latency rate": LATENCY_RATE,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure throughput beside the raw consumer, latency at a fixed rate, and the window methods."""
    from common import stack
    from common.settings import get_settings
    from common.spark import build_spark_session
    from common.store import migrate, open_store

    base = get_settings()
    size = sizes(quick)
    events, rate, seconds = size["events"], LATENCY_RATE, float(size["latency run seconds"])
    tag = uuid.uuid4().hex[:8]
    store = open_store(base)
    migrate(store)
    spark = build_spark_session("sales-bench", base)
    model_name = f"bench_demand_{tag}"
    register_bench_model(spark, base, model_name)
    with tempfile.TemporaryDirectory(prefix="bench-sales-") as folder:
        # Each run's drain in days of its own, so that no two drains share the overall ('ALL')
        # windows that a micro-batch recomputes.
        days_back = 4 * (1 + int(tag, 16) % 1000)
        # The latency run goes first: its 15 s of micro-batches also let the JVM compile the
        # job's hot paths, which the drain would otherwise pay for.
        live = base.model_copy(
            update={
                "sales_topic": f"bench-sales-live-{tag}",
                "checkpoint_dir": Path(folder) / "checkpoints-live",
            }
        )
        stack.ensure_topics(live.model_copy(update={"inventory_topic": live.sales_topic}))
        latencies = measure_latency(spark, live, store, model_name, rate, seconds, f"L{tag}")
        # The drain: the headline's micro-batches, then one with scoring off and one more on.
        job = base.model_copy(
            update={
                "sales_topic": f"bench-sales-drain-{tag}",
                "checkpoint_dir": Path(folder) / "checkpoints-drain",
                "max_offsets_per_trigger": DRAIN_BATCH,
            }
        )
        stack.ensure_topics(job.model_copy(update={"inventory_topic": job.sales_topic}))
        count, off = events + 2 * DRAIN_BATCH, events // DRAIN_BATCH
        first_day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days_back)
        fill_topic(base.kafka_bootstrap_servers, job.sales_topic, count, f"D{tag}", first_day)
        # The consumer reads the messages of the headline's micro-batches.
        peers = consumer_rates(base.kafka_bootstrap_servers, job.sales_topic, events, runs=2)
        drain_end = dt.datetime.combine(first_day, dt.time()) + count * FILL_STEP
        rates, end_to_end = measure_throughput(
            spark, job, model_name, count, unscored=frozenset({off}), judged_until=drain_end
        )
        scored = rates[: off - 1]  # the micro-batches after the first, up to the one off
        with_scoring, without_scoring = [(rates[off - 2] + rates[off]) / 2], [rates[off - 1]]
    window_rounds = measure_window_methods(spark, WINDOW_METHOD_EVENTS)
    if latencies.size == 0:
        raise RuntimeError("no event reached the store during the latency run")
    blocks = np.array_split(latencies, LATENCY_BLOCKS)
    p50s, p99s = ([float(np.percentile(b, q)) for b in blocks] for q in (50, 99))
    return [
        {
            "name": f"sales job sustained events/s ({events:,} events, {DRAIN_BATCH:,} per "
            "micro-batch, store sink + scoring)",
            "target": f">= {THROUGHPUT_TARGET:,.0f} events/s",
            "unit": "events/s",
            "peer": f"end to end with start-up: {end_to_end:,.0f} events/s over the whole "
            f"drain ({events + 2 * DRAIN_BATCH:,} events, one micro-batch unscored); each "
            "micro-batch after the first, up to that one, is a sample",
            "samples": [
                {
                    "value": rate,
                    "ratio": rate / THROUGHPUT_TARGET,
                    "met": rate >= THROUGHPUT_TARGET,
                }
                for rate in scored
            ],
        },
        {
            "name": "sales job share of the raw consumer rate",
            "target": f">= {SHARE_TARGET:.0%}",
            "unit": "share",
            "peer": "kafka ConsumerPerformance fetch rate, same topic: "
            + ", ".join(f"{peer:,.0f}" for peer in peers)
            + " msgs/s; every pairing of a micro-batch and a consumer run is a sample",
            "samples": shares(scored, peers, SHARE_TARGET),
        },
        {
            "name": f"event-to-store latency p50 at {rate:,.0f} events/s",
            "target": "reported",
            "unit": "s",
            "peer": f"{latencies.size} events stored, {LATENCY_BLOCKS} consecutive samples; "
            f"p99 target {LATENCY_P99_TARGET_S:.0f} s",
            "samples": [
                {"value": p50, "ratio": p50 / LATENCY_P99_TARGET_S, "met": True} for p50 in p50s
            ],
        },
        {
            "name": f"event-to-store latency p99 at {rate:,.0f} events/s",
            "target": f"<= {LATENCY_P99_TARGET_S:.0f} s at {LATENCY_RATE:,.0f} events/s",
            "unit": "s",
            "peer": f"{latencies.size} events stored, {LATENCY_BLOCKS} consecutive samples",
            "samples": [
                {
                    "value": p99,
                    "ratio": p99 / LATENCY_P99_TARGET_S,
                    "met": p99 <= LATENCY_P99_TARGET_S,
                }
                for p99 in p99s
            ],
        },
        scoring_overhead(
            "sales",
            with_scoring,
            without_scoring,
            "the mean of the micro-batches before and after it, in the scored drain, over it",
        ),
        {
            "name": f"5-minute windows of {WINDOW_METHOD_EVENTS:,} events: 1-minute panes",
            "target": "faster than sliding windows",
            "unit": "s",
            "peer": "Spark sliding window() in the same round: "
            + ", ".join(f"{sliding:.2f} s" for _, sliding in window_rounds),
            "samples": [
                {"value": panes, "ratio": sliding / panes, "met": panes < sliding}
                for panes, sliding in window_rounds
            ],
        },
    ]


def main() -> None:
    """Run this benchmark alone on a fresh local stack and print the table."""
    from rich.console import Console
    from rich.markdown import Markdown

    from benchmarks.harness import render_markdown, run_benchmarks

    Console().print(
        Markdown(render_markdown(run_benchmarks(quick=True, repeats=1, only=["sales stream"])))
    )


if __name__ == "__main__":
    main()
