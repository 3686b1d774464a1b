"""Live events to Kafka: the world continues from the store's generator_state, day after simulated
day, at a target rate, with optional fault injection and a manifest of every injected record.

Two clocks (docs/generator.md):
- rate mode (no speedup): records go out at ``rate`` per second in simulated order and are stamped
  with the wall-clock time of sending;
- speedup mode: a simulated day lasts 86,400 / ``speedup`` wall seconds from the moment the stream
  starts; each record is sent when its time comes (``rate`` caps the pace) and stamped with it.
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import operator
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.settings import Settings
from common.store import Store, open_store
from generator.backfill import write_catalog
from generator.faults import FAULT_KINDS, FaultRates, Manifest, corrupt, draw_faults, late_delay_s
from generator.simulate import (
    DayResult,
    SimState,
    Simulator,
    day_start_ms,
    initial_state,
    simulate_days,
)
from generator.state import load_state, save_state
from generator.wire import inventory_payloads, iso_utc, sales_payloads
from generator.world import World, build_world

log = logging.getLogger(__name__)

FAULT_STREAM = 3
_PAYLOAD_FAULTS = {"malformed_json", "wrong_types", "missing_fields", "impossible_values"}
_PAYLOAD_FAULTS |= {"non_utf8", "oversized"}


class StreamError(RuntimeError):
    """The broker could not be reached or refused records; the message says why."""


@dataclass
class TopicTally:
    """What was sent to one topic: records, bytes and an order-independent checksum of
    (key, value), so a consumer can prove it saw exactly the same records."""

    records: int = 0
    clean_events: int = 0
    bytes: int = 0
    checksum: int = 0

    def add(self, key: bytes, value: bytes) -> None:
        self.records += 1
        self.bytes += len(value)
        self.checksum = (self.checksum + zlib.crc32(value, zlib.crc32(key))) & 0xFFFFFFFFFFFFFFFF


def record_checksum(key: bytes, value: bytes) -> int:
    """The per-record term of :class:`TopicTally`'s checksum (sum these modulo 2**64)."""
    return zlib.crc32(value, zlib.crc32(key))


@dataclass
class _Delivery:
    """Delivery reports: failures counted, the first one kept and logged."""

    errors: int = 0
    first_error: str | None = None

    def report(self, err: Any, msg: Any) -> None:
        """The ``on_delivery`` callback of every record (served by the producer's poll/flush)."""
        if err is not None:
            self.failed(err)

    def failed(self, err: Any) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = _describe(err)
            log.error("a record was not delivered: %s", self.first_error)


def _describe(err: Any) -> str:
    """A confluent-kafka ``KafkaError`` as ``NAME: text``."""
    return f"{err.name()}: {err.str()}"


def _log_client_error(err: Any) -> None:
    """librdkafka's global errors (broker down, fatal idempotence errors): logged, not raised."""
    log.warning("Kafka client: %s", _describe(err))


def connect_producer(
    settings: Settings, attempts: int = 3, bootstrap_timeout_s: float = 10.0
) -> Any:
    """An idempotent confluent-kafka Producer (librdkafka; acks=all) tuned for throughput, once a
    broker has answered a metadata request; retries while no broker answers."""
    from confluent_kafka import KafkaException, Producer
    from tenacity import (
        retry,
        retry_if_exception_type,
        stop_after_attempt,
        wait_exponential,
    )

    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "client.id": "retail-generator",
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 50,
            "batch.size": 512 * 1024,
            "message.max.bytes": 1024 * 1024,
            "request.timeout.ms": 30_000,
            "delivery.timeout.ms": 300_000,  # rides out a broker restart on a busy machine
            "logger": log,
            "error_cb": _log_client_error,
        }
    )

    @retry(
        retry=retry_if_exception_type(KafkaException),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=8),
        reraise=True,
    )
    def connect() -> None:
        producer.list_topics(timeout=bootstrap_timeout_s)

    try:
        connect()
    except KafkaException as exc:
        raise StreamError(
            f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}: no broker answered in "
            f"{attempts} attempts of {bootstrap_timeout_s:.0f} s ({_describe(exc.args[0])}); "
            "start one with `retail up`"
        ) from None
    return producer


def partitions_of(producer: Any, topic: str, timeout_s: float = 30.0) -> list[int]:
    """The topic's partition ids, sorted. Asking for an unknown topic makes a broker that
    auto-creates topics create it, so the question is repeated until ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = producer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is not None and metadata.error is None and metadata.partitions:
            return sorted(metadata.partitions)
        if time.monotonic() >= deadline:
            why = _describe(metadata.error) if metadata is not None and metadata.error else "none"
            raise StreamError(
                f"topic {topic} has no partitions ({why}); `retail up` creates the topics"
            )
        time.sleep(0.2)


def close_producer(producer: Any, timeout_s: float = 120.0) -> None:
    """Wait up to ``timeout_s`` for the records in flight; any still undelivered then are purged,
    which reports each of them as a delivery failure, and the producer is closed."""
    if producer.flush(timeout_s):
        producer.purge()
        producer.flush(5.0)
    producer.close()


def _partition_of(key: bytes, partitions: list[int]) -> int:
    """The partition Kafka's Java default partitioner picks for ``key`` (murmur2)."""
    from kafka.partitioner.default import murmur2

    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


@dataclass(frozen=True)
class DayRecords:
    """One day's records in simulated order (parallel lists, ready for the send loop)."""

    topic: list[int]  # 0 sales, 1 inventory
    key: list[str]
    sim_ms: list[int]
    event_id: list[str]
    head: list[bytes]
    tail: list[bytes]


def day_records(result: DayResult) -> DayRecords:
    """The day's sales and inventory events merged in simulated order, sales first on a tie."""
    sales, inventory = result.sales, result.inventory
    sales_head, sales_tail = sales_payloads(sales)
    inv_head, inv_tail = inventory_payloads(inventory)
    topic = np.concatenate([np.zeros(len(sales), np.int8), np.ones(len(inventory), np.int8)])
    sim_ms = np.concatenate([sales["event_time_ms"], inventory["event_time_ms"]])
    order = np.lexsort((np.arange(len(topic)), topic, sim_ms))
    # itemgetter reorders in C; with one index it would return the item, not a 1-tuple.
    pick = operator.itemgetter(*order.tolist()) if len(order) > 1 else lambda items: tuple(items)
    keys = (
        np.concatenate([sales["store_id"], inventory["store_id"]]).astype(object)
        + "|"
        + np.concatenate([sales["product_id"], inventory["product_id"]]).astype(object)
    ).tolist()
    event_ids = sales["event_id"].tolist() + inventory["event_id"].tolist()
    heads, tails = sales_head + inv_head, sales_tail + inv_tail
    return DayRecords(
        topic=topic[order].tolist(),
        key=list(pick(keys)),
        sim_ms=sim_ms[order].tolist(),
        event_id=list(pick(event_ids)),
        head=list(pick(heads)),
        tail=list(pick(tails)),
    )


@dataclass
class _ShareResult:
    """What one sender (the whole stream, or one worker's share of the partitions) did."""

    tallies: list[TopicTally]
    manifest: list[dict]
    completed_days: int
    partial: dt.date | None
    elapsed: float
    errors: int
    first_error: str | None


def _stream_share(
    settings: Settings,
    world: World,
    state: SimState,
    faults: FaultRates,
    rate: float,
    speedup: float | None,
    seconds: float,
    share: tuple[int, int],
    on_progress: Callable[[int], None] | None,
    on_ready: Callable[[], None] | None = None,
) -> _ShareResult:
    """Connect a producer and send the records of partitions ``p % share[1] == share[0]``."""
    from confluent_kafka import KafkaException

    topics = (settings.sales_topic, settings.inventory_topic)
    producer = connect_producer(settings)
    try:
        partitions = [partitions_of(producer, t) for t in topics]
        run = _Run(producer, topics, partitions, world.seed, faults, rate, speedup, on_progress)
        run.share = share
        if on_ready is not None:
            on_ready()
        completed, partial = run.stream(Simulator(world), state, seconds)
    except KafkaException as exc:  # the producer refused a record outright (fatal, too large)
        raise StreamError(f"the producer refused a record: {_describe(exc.args[0])}") from None
    finally:
        close_producer(producer, timeout_s=60)
    return _ShareResult(
        run.tallies,
        run.manifest.entries,
        len(completed),
        partial,
        run.elapsed,
        run.delivery.errors,
        run.delivery.first_error,
    )


def _worker_main(
    settings: Settings,
    world: World,
    state: SimState,
    faults: FaultRates,
    rate: float,
    speedup: float | None,
    seconds: float,
    share: tuple[int, int],
    counter: Any,
    barrier: Any,
    results: Any,
) -> None:
    """A sender process: its share of the stream; the result (or the error) goes on ``results``."""

    def progress(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    try:
        result = _stream_share(
            settings, world, state, faults, rate, speedup, seconds, share, progress, barrier.wait
        )
        results.put(("ok", result))
    except Exception as exc:  # reported to the parent, which raises it
        barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _stream_in_workers(
    settings: Settings,
    world: World,
    state: SimState,
    faults: FaultRates,
    rate: float,
    speedup: float | None,
    seconds: float,
    workers: int,
    on_progress: Callable[[int], None] | None,
) -> list[_ShareResult]:
    """Run ``workers`` sender processes, each with its own idempotent producer and partitions."""
    import multiprocessing
    import queue

    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    barrier = context.Barrier(workers, timeout=120)
    results = context.Queue()
    processes = [
        context.Process(
            target=_worker_main,
            args=(settings, world, state, faults, rate / workers, speedup, seconds, (k, workers)),
            kwargs={"counter": counter, "barrier": barrier, "results": results},
            daemon=True,
        )
        for k in range(workers)
    ]
    for process in processes:
        process.start()
    collected: list[tuple[str, Any]] = []
    reported = 0
    while len(collected) < workers:
        try:
            collected.append(results.get(timeout=0.5))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in processes):
                barrier.abort()
            if not any(p.is_alive() for p in processes) and results.empty():
                break
        if on_progress is not None:
            value = counter.value
            on_progress(value - reported)
            reported = value
    for process in processes:
        process.join(timeout=30)
    errors = [detail for status, detail in collected if status == "error"]
    if errors or len(collected) < workers:
        exits = [p.exitcode for p in processes]
        raise StreamError(f"a sender process failed: {'; '.join(errors) or f'exit codes {exits}'}")
    return [detail for _, detail in collected]


def produce(
    settings: Settings,
    rate: float,
    seconds: float,
    seed: int,
    faults: FaultRates | None = None,
    speedup: float | None = None,
    *,
    scale: float = 1.0,
    n_stores: int | None = None,
    n_products: int | None = None,
    n_customers: int | None = None,
    prefix: str = "",
    workers: int = 1,
    manifest_path: Path | None = None,
    store: Store | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Stream the world for ``seconds`` at ``rate`` records/s to the settings' two topics.

    The world (seed, scale, sizes) continues from its saved state in the store, or starts today.
    ``workers`` > 1 splits the partitions between that many sender processes (each simulates the
    same days and sends its share), for rates one Python process cannot reach.
    Completed simulated days get their ground truth written and the state saved at the end.
    Returns counts per topic (records, clean events, bytes, checksum), faults by kind,
    simulated days, send errors and the achieved rate.
    """
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    if speedup is not None and speedup <= 0:
        raise ValueError("speedup must be positive")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if workers > settings.kafka_partitions:
        raise ValueError(
            f"workers ({workers}) must not exceed the topics' partitions (KAFKA_PARTITIONS="
            f"{settings.kafka_partitions}): each worker sends the records of its own partitions"
        )
    faults = faults or FaultRates()
    world = build_world(
        seed,
        scale,
        n_stores=n_stores,
        n_products=n_products,
        n_customers=n_customers,
        prefix=prefix,
    )
    store = store or open_store(settings)
    state = load_state(store, world)
    if state is None:
        state = initial_state(world, dt.datetime.now(dt.UTC).date())
        with store.session():
            write_catalog(store, world, state.next_date, 1)
    if workers == 1:
        shares = [
            _stream_share(
                settings, world, state, faults, rate, speedup, seconds, (0, 1), on_progress
            )
        ]
    else:
        shares = _stream_in_workers(
            settings, world, state, faults, rate, speedup, seconds, workers, on_progress
        )
    days = min(share.completed_days for share in shares)
    completed = simulate_days(world, state, days) if days else []
    if completed:
        with store.session():
            write_catalog(store, world, completed[0].day, len(completed))
            store.insert_df(
                "ground_truth", pd.concat([d.ground_truth for d in completed], ignore_index=True)
            )
            save_state(store, world, completed[-1].state, mode="stream")
    manifest = Manifest()
    manifest.entries = [entry for share in shares for entry in share.manifest]
    if manifest_path is not None:
        manifest.write(Path(manifest_path), faults)
    topics = (settings.sales_topic, settings.inventory_topic)
    tallies = [TopicTally(), TopicTally()]
    for share in shares:
        for total, part in zip(tallies, share.tallies, strict=True):
            total.records += part.records
            total.clean_events += part.clean_events
            total.bytes += part.bytes
            total.checksum = (total.checksum + part.checksum) & 0xFFFFFFFFFFFFFFFF
    elapsed = max(share.elapsed for share in shares)
    sent = sum(t.records for t in tallies)
    partial = [share.partial for share in shares if share.partial is not None]
    counts = {
        "world": world.key,
        "workers": workers,
        "seconds": round(elapsed, 3),
        "records": sent,
        "records_per_s": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        "sales_events": tallies[0].clean_events,
        "inventory_events": tallies[1].clean_events,
        "topics": {
            topic: {
                "records": t.records,
                "clean_events": t.clean_events,
                "bytes": t.bytes,
                "checksum": t.checksum,
            }
            for topic, t in zip(topics, tallies, strict=True)
        },
        "faults": manifest.counts(),
        "simulated_days": len(completed),
        "partial_day": min(partial).isoformat() if partial else None,
        "next_date": (completed[-1].state.next_date if completed else state.next_date).isoformat(),
        "send_errors": sum(share.errors for share in shares),
        "first_error": next((s.first_error for s in shares if s.first_error), None),
    }
    log.info("stream done: %s", {k: counts[k] for k in ("records", "records_per_s", "faults")})
    return counts


class _Run:
    """The send loop of one stream: pacing, clocks, faults, the held-back late records."""

    def __init__(
        self,
        producer: Any,
        topics: tuple[str, str],
        partitions: list[list[int]],
        seed: int,
        faults: FaultRates,
        rate: float,
        speedup: float | None,
        on_progress: Callable[[int], None] | None,
    ) -> None:
        self.producer, self.topics, self.partitions = producer, topics, partitions
        self.seed, self.faults, self.rate, self.speedup = seed, faults, rate, speedup
        self.on_progress = on_progress
        self.tallies = [TopicTally(), TopicTally()]
        self.manifest = Manifest()
        self.delivery = _Delivery()
        self.keys: dict[str, tuple[bytes, int, int, int]] = {}
        self.held: list[tuple[float, int, int, bytes, int, bytes, dict]] = []
        self.elapsed = 0.0
        self.share = (0, 1)  # (k, n): send the records of partitions p with p % n == k

    def _key(self, key: str) -> tuple[bytes, int, int, int]:
        """The key's bytes, its sales and inventory partitions and its CRC-32 (cached)."""
        info = self.keys.get(key)
        if info is None:
            raw = key.encode()
            info = (
                raw,
                _partition_of(raw, self.partitions[0]),
                _partition_of(raw, self.partitions[1]),
                zlib.crc32(raw),
            )
            self.keys[key] = info
        return info

    def _produce(
        self, topic: str, value: bytes, key: bytes, partition: int, on_delivery: Any
    ) -> None:
        """Hand one record to the producer, waiting (serving delivery reports) while its queue
        is full."""
        while True:
            try:
                self.producer.produce(topic, value, key, partition, on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _send(
        self, topic_index: int, key: bytes, partition: int, value: bytes, on_delivery: Any = None
    ) -> None:
        self._produce(
            self.topics[topic_index], value, key, partition, on_delivery or self.delivery.report
        )
        self.tallies[topic_index].add(key, value)

    def _send_listed(
        self, entry: dict, topic_index: int, key: bytes, partition: int, value: bytes
    ) -> None:
        """Send a fault record and fill its manifest entry with the partition and offset."""
        delivery = self.delivery

        def report(err: Any, msg: Any) -> None:
            if err is not None:
                delivery.failed(err)
            else:
                entry.update(partition=msg.partition(), offset=msg.offset())

        self._send(topic_index, key, partition, value, report)

    def _release_late(self, now: float, everything: bool = False) -> None:
        while self.held and (everything or self.held[0][0] <= now):
            _, _, topic_index, key, partition, value, entry = heapq.heappop(self.held)
            self._send_listed(entry, topic_index, key, partition, value)

    def stream(
        self, simulator: Simulator, state: Any, seconds: float
    ) -> tuple[list[DayResult], dt.date | None]:
        """Send day after day until ``seconds`` pass; return the completed days and the partial one."""
        completed: list[DayResult] = []
        start = time.monotonic()
        deadline = start + seconds
        wall_offset_ms = time.time() * 1000.0 - start * 1000.0
        sim_start_ms = day_start_ms(state.next_date)
        interval = 1.0 / self.rate
        speedup = self.speedup
        topics, keys, crc32 = self.topics, self.keys, zlib.crc32
        produce, poll, report = self.producer.produce, self.producer.poll, self.delivery.report
        # The clean records' tally terms per topic, added to the tallies at the end.
        clean_records, clean_bytes, clean_sums = [0, 0], [0, 0], [0, 0]
        sent = reported = 0
        next_poll = next_report = start
        last_ms, last_stamp = -1, b""
        mine, shares = self.share
        partial: dt.date | None = None
        try:
            while partial is None:
                result = simulator.run_day(state)
                day = day_records(result)
                fault_rng = np.random.default_rng([self.seed, FAULT_STREAM, result.day.toordinal()])
                fault_kind = draw_faults(self.faults, fault_rng, len(day.topic)).tolist()
                for topic_index, key_text, sim_ms, head, tail, fault, position in zip(
                    day.topic,
                    day.key,
                    day.sim_ms,
                    day.head,
                    day.tail,
                    fault_kind,
                    range(len(day.topic)),
                    strict=True,
                ):
                    info = keys.get(key_text)
                    if info is None:
                        info = self._key(key_text)
                    key, p_sales, p_inventory, key_crc = info
                    partition = p_inventory if topic_index else p_sales
                    now = time.monotonic()
                    if now >= deadline:  # before the share: a worker may own no record at all
                        partial = result.day
                        break
                    if shares > 1 and partition % shares != mine:
                        continue
                    gate = start + sent * interval
                    if speedup is not None:
                        gate = max(gate, start + (sim_ms - sim_start_ms) / 1000.0 / speedup)
                    if gate > now + 0.002:
                        time.sleep(min(gate, deadline) - now)
                        now = time.monotonic()
                        if now >= deadline:  # its time (simulated, with speedup) is yet to come
                            partial = result.day
                            break
                    if self.held and self.held[0][0] <= now:
                        self._release_late(now)
                    if speedup is None:
                        stamp_ms = int(now * 1000.0 + wall_offset_ms)
                    else:
                        stamp_ms = int(
                            start * 1000.0 + wall_offset_ms + (sim_ms - sim_start_ms) / speedup
                        )
                    if stamp_ms != last_ms:
                        last_ms, last_stamp = stamp_ms, iso_utc(stamp_ms).encode()
                    value = head + last_stamp + tail
                    if fault < 0:
                        try:
                            produce(topics[topic_index], value, key, partition, report)
                        except BufferError:
                            self._produce(topics[topic_index], value, key, partition, report)
                        clean_records[topic_index] += 1
                        clean_bytes[topic_index] += len(value)
                        clean_sums[topic_index] += crc32(value, key_crc)
                    else:
                        self._inject(
                            FAULT_KINDS[fault],
                            topic_index,
                            key,
                            partition,
                            value,
                            day.event_id[position],
                            now,
                            fault_rng,
                        )
                    sent += 1
                    if now >= next_poll:
                        poll(0)
                        next_poll = now + 0.02
                        if now >= next_report and self.on_progress is not None:
                            self.on_progress(sent - reported)
                            reported, next_report = sent, now + 0.5
                else:
                    completed.append(result)
                    state = result.state
        finally:
            self._release_late(0.0, everything=True)
            self.producer.flush(120)
            self.elapsed = time.monotonic() - start
            for tally, records, size, checksum in zip(
                self.tallies, clean_records, clean_bytes, clean_sums, strict=True
            ):
                tally.records += records
                tally.clean_events += records
                tally.bytes += size
                tally.checksum = (tally.checksum + checksum) & 0xFFFFFFFFFFFFFFFF
            if self.on_progress is not None:
                self.on_progress(sent - reported)
        return completed, partial

    def _inject(
        self,
        kind: str,
        topic_index: int,
        key: bytes,
        partition: int,
        value: bytes,
        event_id: str,
        now: float,
        rng: np.random.Generator,
    ) -> None:
        topic = self.topics[topic_index]
        if kind in _PAYLOAD_FAULTS:
            topic_kind = "sales" if topic_index == 0 else "inventory"
            bad = corrupt(kind, topic_kind, value, self.faults, rng)
            entry = self.manifest.add(kind, topic, key, event_id, bytes=len(bad))
            self._send_listed(entry, topic_index, key, partition, bad)
            return
        self.tallies[topic_index].clean_events += 1
        if kind == "duplicate":
            self._send(topic_index, key, partition, value)
            entry = self.manifest.add(kind, topic, key, event_id)
            self._send_listed(entry, topic_index, key, partition, value)
        else:
            delay = late_delay_s(self.faults, rng)
            entry = self.manifest.add(kind, topic, key, event_id, delay_s=round(delay, 3))
            seq = len(self.manifest.entries)
            heapq.heappush(self.held, (now + delay, seq, topic_index, key, partition, value, entry))
