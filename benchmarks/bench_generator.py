"""Generator benchmark: sustained events/s to the real broker beside Kafka's own producer perf test
(``org.apache.kafka.tools.ProducerPerformance``) sending the same records with the same producer
settings in the same run, and the backfill's line items per minute into the store beside the same
days simulated without the store. Both run in two alternated rounds, each round one sample.

``run(quick)`` returns the rows for ``retail bench``; ``python -m benchmarks.bench_generator``
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

STREAM_TARGET = 50_000.0  # events/s
PERF_TEST_SHARE_TARGET = 0.25
BACKFILL_TARGET = 1_000_000.0  # line items per minute
BACKFILL_ROUNDS = 2  # each round one sample: a backfill, then its peer
STREAM_ROUNDS = 2  # each round one sample per sender count
START_DATE = dt.date(2025, 3, 3)  # fixed, so that every run simulates the same days
_JARS = Path(__file__).resolve().parent.parent / ".jvm" / "kafka"
_PERF_LINE = re.compile(r"(\d+) records sent, ([\d.]+) records/sec")
# The producer settings the generator uses (generator/stream.py), given to the perf test too.
PRODUCER_PROPS = (
    "acks=all",
    "enable.idempotence=true",
    "compression.type=lz4",
    "linger.ms=50",
    "batch.size=524288",
)


def _payload_file(folder: Path, scale: float, lines: int) -> Path:
    """Real generator records (one JSON per line) for the perf test to send."""
    from generator.simulate import Simulator, initial_state
    from generator.stream import day_records
    from generator.wire import iso_utc
    from generator.world import build_world

    world = build_world(7, scale)
    simulator = Simulator(world)
    state = initial_state(world, START_DATE)
    stamp = iso_utc(1_741_000_000_000).encode()
    values: list[bytes] = []
    while len(values) < lines:
        result = simulator.run_day(state)
        state = result.state
        day = day_records(result)
        values += [h + stamp + t for h, t in zip(day.head, day.tail, strict=True)]
    path = folder / "payloads.jsonl"
    path.write_bytes(b"\n".join(values[:lines]))
    return path


def run_perf_test(bootstrap: str, topic: str, records: int, payloads: Path) -> float:
    """Kafka's ProducerPerformance at full speed; its records/s."""
    command = [
        "java",
        "-Xmx512m",
        "-cp",
        f"{_JARS}/*",
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--throughput",
        "-1",
        "--payload-file",
        str(payloads),
        "--producer-props",
        f"bootstrap.servers={bootstrap}",
        *PRODUCER_PROPS,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)  # noqa: S603
    found = _PERF_LINE.findall(done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"ProducerPerformance failed ({done.returncode}): {done.stderr[-800:]}")
    return float(found[-1][1])


def simulation_rate(days: int, seed: int, scale: float, start: dt.date) -> float:
    """Line items per minute of the backfill's simulation alone, without the store: the ceiling
    of the backfill, measured on the same world and days."""
    from generator.simulate import Simulator, initial_state
    from generator.world import build_world

    began = time.perf_counter()
    world = build_world(seed, scale)
    simulator = Simulator(world)
    state = initial_state(world, start)
    line_items = 0
    for _ in range(days):
        result = simulator.run_day(state)
        state = result.state
        line_items += len(result.sales)
    return line_items / (time.perf_counter() - began) * 60.0


def _stream_sample(rate: float, peer: float) -> dict[str, Any]:
    share = rate / peer
    return {
        "value": rate,
        "ratio": share,
        "met": rate >= STREAM_TARGET and share >= PERF_TEST_SHARE_TARGET,
    }


def sizes(quick: bool) -> dict[str, Any]:
    """The data sizes of a run (they go in the table's header)."""
    return {
        "stream seconds per round": 4 if quick else 15,
        "perf test records": 1_000_000 if quick else 4_000_000,
        "backfill days": 10 if quick else 40,
        "scale": 4.0,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure the stream against the perf test, and the backfill; one row per figure."""
    from common import stack
    from common.settings import get_settings, load_settings
    from common.store import migrate, open_store
    from generator.backfill import backfill
    from generator.stream import produce

    base = get_settings()
    size = sizes(quick)
    scale = size["scale"]
    seconds = float(size["stream seconds per round"])
    perf_records = size["perf test records"]
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="bench-generator-") as folder:
        settings = load_settings(
            data_dir=Path(folder) / "data",
            sales_topic=f"bench-gen-sales-{tag}",
            inventory_topic=f"bench-gen-inventory-{tag}",
        )
        stack.ensure_topics(settings)
        store = open_store(settings)
        migrate(store)
        backfills = []
        for round_ in range(BACKFILL_ROUNDS):  # alternated with the peer; a new world each round
            filled = backfill(
                store, size["backfill days"], 7, scale, START_DATE, prefix=f"r{round_}"
            )
            ceiling = simulation_rate(size["backfill days"], 7, scale, START_DATE)
            backfills.append((filled["line_items_per_minute"], ceiling))
        streams: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for _ in range(STREAM_ROUNDS):  # alternated, each stream one sample
            for workers, samples in streams.items():
                counts = produce(
                    settings,
                    rate=1e9,
                    seconds=seconds,
                    seed=7,
                    scale=scale,
                    workers=workers,
                    store=store,
                )
                if counts["send_errors"]:
                    raise RuntimeError(f"the generator lost records: {counts['first_error']}")
                samples.append(counts)
        counts = streams[1][0]
        record_size = sum(t["bytes"] for t in counts["topics"].values()) / counts["records"]
        payloads = _payload_file(Path(folder), scale, 20_000)
        perf_topic = f"bench-gen-perf-{tag}"
        stack.ensure_topics(load_settings(sales_topic=perf_topic, inventory_topic=perf_topic))
        peer = run_perf_test(base.kafka_bootstrap_servers, perf_topic, perf_records, payloads)
    rows = [
        {
            "name": f"stream events/s to Kafka, {workers} sender process(es) "
            "(acks=all, idempotent)",
            "target": f">= {STREAM_TARGET:,.0f} events/s and "
            f">= {PERF_TEST_SHARE_TARGET:.0%} of perf test",
            "unit": "events/s",
            "peer": f"kafka ProducerPerformance, same records ({record_size:.0f} B on average) "
            f"and settings: {peer:,.0f} records/s",
            "samples": [_stream_sample(counts["records_per_s"], peer) for counts in samples],
        }
        for workers, samples in streams.items()
    ]
    return [
        *rows,
        {
            "name": "backfill sales line items/min into the store",
            "target": f">= {BACKFILL_TARGET:,.0f} line items/min",
            "unit": "line items/min",
            "peer": "the same days simulated without the store, in the same round: "
            + ", ".join(f"{ceiling:,.0f}" for _, ceiling in backfills)
            + " line items/min",
            "samples": [
                {
                    "value": per_minute,
                    "ratio": per_minute / ceiling,
                    "met": per_minute >= BACKFILL_TARGET,
                }
                for per_minute, ceiling in backfills
            ],
        },
    ]


def main() -> None:
    """Run this benchmark alone on a fresh local stack and print the table."""
    from rich.console import Console
    from rich.markdown import Markdown

    from benchmarks.harness import render_markdown, run_benchmarks

    Console().print(
        Markdown(render_markdown(run_benchmarks(quick=True, repeats=1, only=["generator"])))
    )


if __name__ == "__main__":
    main()
