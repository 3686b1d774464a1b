"""Inventory job benchmark: sustained events/s through the whole job (state, alerts, windows, store
sink) beside Kafka's own ``ConsumerPerformance`` reading the same topic in the same run, and the
event-to-alert latency p50/p99 at a fixed input rate.

Throughput: a topic is filled first, then the job drains it with ``Trigger.AvailableNow`` in
batches of ``DRAIN_BATCH`` events; the rate is the rows over the summed durations of every batch
after the first (which starts the Python workers), once with stock scoring on (a small Spark ML
pipeline registered as the champion of a benchmark model name, fed by constant features, as in the
sales benchmark) and once with it off. Latency: the job runs continuously while a producer sends at a
fixed rate; every stock series is drained to zero and restocked in turn, so alerts open, escalate
and resolve all the time, and each alert change's latency is the time from sending the event that
caused it to the change row reaching the store (its ``written_at``).

Each drain micro-batch after the first is one sample of the sustained rate (the scoring overhead
pairs the i-th micro-batch with scoring on and off), and the alert changes, in the order their
events were sent, are cut into ``LATENCY_BLOCKS`` consecutive samples of p50 and p99.

``run(quick)`` returns the rows for ``retail bench``; ``python -m benchmarks.bench_inventory_stream``
runs it alone on a fresh local stack and prints the table.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

DRAIN_BATCH = 5_000  # events per micro-batch of the throughput drain
LATENCY_P99_TARGET_S = 5.0
LATENCY_BLOCKS = 3  # the alert changes, in send order, are cut into this many samples


STORES = 10


def _event(series: int, step: int, moment: datetime, prefix: str) -> tuple[bytes, bytes, str]:
    """Step ``step`` of one stock series: 25 sales of 2 units from 50, then a restock to 50."""
    store_id, product_id = f"{prefix}{series % STORES:03d}", f"P{series // STORES:04d}"
    phase = step % 26
    if phase == 25:
        kind, change, level = "restock", 50, 50
    else:
        kind, change, level = "sale", -2, 50 - 2 * (phase + 1)
    event_id = f"{store_id}-{product_id}-{step}-{uuid.uuid4().hex[:8]}"
    body = {
        "event_id": event_id,
        "event_time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "store_id": store_id,
        "product_id": product_id,
        "event_type": kind,
        "quantity_change": change,
        "stock_level": level,
        "reorder_point": 10,
        "lead_time_days": 0.01,
        "unit_cost": 3.5,
    }
    key = f"{store_id}|{product_id}".encode()
    return key, json.dumps(body, separators=(",", ":")).encode(), event_id


def _producer(bootstrap: str) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024
    )


def fill_topic(bootstrap: str, topic: str, events: int, series: int, prefix: str) -> None:
    """Send ``events`` inventory events over ``series`` stock series, as fast as possible."""
    producer = _producer(bootstrap)
    moment = datetime.now(UTC)
    try:
        for n in range(events):
            key, value, _ = _event(n % series, n // series, moment, prefix)
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def send_at_rate(
    bootstrap: str,
    topic: str,
    rate: float,
    seconds: float,
    series: int,
    prefix: str,
    sent: dict[str, float],
) -> None:
    """Send ``rate`` events/s for ``seconds``; record each event's send time (epoch s)."""
    producer = _producer(bootstrap)
    started = time.monotonic()
    n = 0
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate)
            while n < due:
                key, value, event_id = _event(n % series, n // series, datetime.now(UTC), prefix)
                sent[event_id] = time.time()
                producer.send(topic, key=key, value=value)
                n += 1
            time.sleep(0.005)
        producer.flush()
    finally:
        producer.close()


def _job_settings(base: Any, topic: str, folder: Path) -> Any:
    return base.model_copy(
        update={"inventory_topic": topic, "checkpoint_dir": folder / f"checkpoints-{topic}"}
    )


def measure_throughput(
    spark: Any, settings: Any, model_name: str | None
) -> tuple[list[float], int]:
    """Drain a filled topic with the job (AvailableNow); the events/s of each micro-batch after
    the first (each one sample), and the events drained. ``model_name`` None: scoring off."""
    from benchmarks.bench_sales_stream import constant_features, drain_rates
    from common.models import ChampionModel
    from streaming.inventory import JOB, InventoryRules, StockPolicy, build_queries
    from streaming.runtime import run_queries

    name = f"bench_inv_{uuid.uuid4().hex[:6]}"
    champion = ChampionModel(model_name, job=JOB, settings=settings) if model_name else None
    queries = build_queries(
        spark,
        settings,
        rules=InventoryRules.from_settings(settings),
        policy=StockPolicy.from_settings(settings),
        available_now=True,
        stock_champion=champion,
        feature_builder=constant_features if champion else None,
        query_names=(f"{name}_changes", f"{name}_dead"),
    )
    ended = run_queries(spark, queries, job=JOB, settings=settings)
    progress = ended[0].recentProgress
    drained = sum(p.numInputRows for p in progress)
    return drain_rates(progress, settings.max_offsets_per_trigger), drained


def measure_alert_latency(
    spark: Any, settings: Any, store: Any, rate: float, seconds: float, series: int, prefix: str
) -> tuple[np.ndarray, np.ndarray]:
    """Run the job while sending at ``rate``; per-event latencies (s) to the store, and to the
    alert changes in the order their events were sent."""
    from streaming.inventory import InventoryRules, StockPolicy, build_queries
    from streaming.runtime import stop_gracefully

    name = f"bench_lat_{uuid.uuid4().hex[:6]}"
    queries = build_queries(
        spark,
        settings,
        rules=InventoryRules.from_settings(settings),
        policy=StockPolicy.from_settings(settings),
        query_names=(f"{name}_changes", f"{name}_dead"),
    )
    sent: dict[str, float] = {}
    try:
        # The producer starts once the query has run its first (empty) micro-batch.
        deadline = time.monotonic() + 120
        while not all(query.recentProgress for query in queries):
            if time.monotonic() > deadline:
                raise RuntimeError("the inventory job ran no micro-batch within 120 s")
            time.sleep(0.2)
        sender = threading.Thread(
            target=send_at_rate,
            args=(settings.kafka_bootstrap_servers, settings.inventory_topic, rate, seconds),
            kwargs={"series": series, "prefix": prefix, "sent": sent},
        )
        sender.start()
        sender.join()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            stored = store.scalar(
                "SELECT count() FROM inventory_events WHERE startsWith(store_id, {p:String})",
                {"p": prefix},
            )
            if stored >= len(sent):
                break
            time.sleep(1.0)
    finally:
        for query in queries:
            stop_gracefully(query)
    frame = store.query_df(
        "SELECT event_id, toUnixTimestamp64Milli(ingested_at) / 1000 AS stored_at "
        "FROM inventory_events WHERE startsWith(store_id, {p:String})",
        {"p": prefix},
    )
    to_store = np.array(
        [t - sent[e] for e, t in zip(frame.event_id, frame.stored_at, strict=True) if e in sent]
    )
    changes = store.query_df(
        "SELECT event_id, toUnixTimestamp64Milli(written_at) / 1000 AS written "
        "FROM stock_alert_changes WHERE startsWith(store_id, {p:String})",
        {"p": prefix},
    )
    caused = sorted(
        (sent[e], t - sent[e])
        for e, t in zip(changes.event_id, changes.written, strict=True)
        if e in sent
    )
    return to_store, np.array([latency for _, latency in caused])


def sizes(quick: bool) -> dict[str, Any]:
    """The data sizes of a run (they go in the table's header)."""
    return {
        "events": 15_000 if quick else 200_000,
        "series": 200 if quick else 1_000,
        "latency rate": 200 if quick else 1_000,
        "latency run seconds": 15 if quick else 60,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure throughput beside the raw consumer, and latency at a fixed rate."""
    from benchmarks.bench_sales_stream import (
        consumer_rates,
        register_bench_model,
        scoring_overhead,
    )
    from common import stack
    from common.settings import get_settings
    from common.spark import build_spark_session
    from common.store import migrate, open_store

    base = get_settings()
    size = sizes(quick)
    events, series = size["events"], size["series"]
    rate, seconds = float(size["latency rate"]), float(size["latency run seconds"])
    tag = uuid.uuid4().hex[:8]
    store = open_store(base)
    migrate(store)
    spark = build_spark_session("inventory-bench", base)
    model_name = f"bench_stock_{tag}"
    register_bench_model(spark, base, model_name)
    with tempfile.TemporaryDirectory(prefix="bench-inventory-") as folder:
        topic = f"bench-inv-{tag}"
        stack.ensure_topics(
            base.model_copy(update={"sales_topic": topic, "inventory_topic": topic})
        )
        fill_topic(base.kafka_bootstrap_servers, topic, events, series, f"T{tag}")
        peers = consumer_rates(base.kafka_bootstrap_servers, topic, events)
        rates = {}
        for scoring, model in (("on", model_name), ("off", None)):
            drain = _job_settings(base, topic, Path(folder) / scoring).model_copy(
                update={"max_offsets_per_trigger": DRAIN_BATCH}
            )
            rates[scoring], drained = measure_throughput(spark, drain, model)
            if drained != events:
                raise RuntimeError(f"the job drained {drained} of {events} events")
        live = _job_settings(base, f"bench-inv-live-{tag}", Path(folder))
        stack.ensure_topics(live.model_copy(update={"sales_topic": live.inventory_topic}))
        to_store, to_alert = measure_alert_latency(
            spark, live, store, rate, seconds, series, f"L{tag}"
        )
    if to_alert.size == 0:
        raise RuntimeError("no alert changes reached the store during the latency run")
    blocks = np.array_split(to_alert, LATENCY_BLOCKS)
    p50s, p99s = ([float(np.percentile(b, q)) for b in blocks] for q in (50, 99))
    store_p99 = float(np.percentile(to_store, 99)) if to_store.size else float("nan")
    return [
        {
            "name": f"inventory job sustained events/s ({events:,} events, {series} series, "
            "store sink + stock scoring)",
            "target": "reported, beside the raw consumer rate",
            "unit": "events/s",
            "peer": "kafka ConsumerPerformance fetch rate, same topic: "
            + ", ".join(f"{peer:,.0f}" for peer in peers)
            + " msgs/s; every pairing of a micro-batch and a consumer run is a sample",
            "samples": [
                {"value": rate, "ratio": rate / peer, "met": True}
                for rate in rates["on"]
                for peer in peers
            ],
        },
        scoring_overhead("inventory", rates["on"], rates["off"]),
        {
            "name": f"event-to-alert latency p50 at {rate:,.0f} events/s",
            "target": "reported",
            "unit": "s",
            "peer": f"{to_alert.size} changes, {LATENCY_BLOCKS} consecutive samples; "
            f"event-to-store p99 {store_p99:.2f} s",
            "samples": [
                {"value": p50, "ratio": p50 / LATENCY_P99_TARGET_S, "met": True} for p50 in p50s
            ],
        },
        {
            "name": f"event-to-alert latency p99 at {rate:,.0f} events/s",
            "target": f"<= {LATENCY_P99_TARGET_S:.0f} s",
            "unit": "s",
            "peer": f"{to_store.size} events stored, {LATENCY_BLOCKS} consecutive samples",
            "samples": [
                {
                    "value": p99,
                    "ratio": p99 / LATENCY_P99_TARGET_S,
                    "met": p99 <= LATENCY_P99_TARGET_S,
                }
                for p99 in p99s
            ],
        },
    ]


def main() -> None:
    """Run this benchmark alone on a fresh local stack and print the table."""
    from rich.console import Console
    from rich.markdown import Markdown

    from benchmarks.harness import render_markdown, run_benchmarks

    Console().print(
        Markdown(render_markdown(run_benchmarks(quick=True, repeats=1, only=["inventory stream"])))
    )


if __name__ == "__main__":
    main()
