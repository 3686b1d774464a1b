"""The live stream against the real broker: what is produced is what a consumer reads, every clean
event keeps the contract, and the faults a consumer finds are exactly the manifest's."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import defaultdict

import pytest
from pyspark.sql.types import BooleanType, DoubleType, IntegerType, StringType, StructType

from common.schemas import INVENTORY_EVENT_SCHEMA, INVENTORY_EVENT_TYPES, SALES_EVENT_SCHEMA
from common.settings import load_settings
from generator.backfill import backfill
from generator.faults import FaultRates, read_manifest
from generator.simulate import initial_state, simulate_days
from generator.stream import StreamError, produce, record_checksum
from generator.world import build_world

pytestmark = pytest.mark.services

SIZES = {"n_stores": 3, "n_products": 12, "n_customers": 100}
RATE, SECONDS = 1500.0, 4.0
FAULTS = FaultRates(
    malformed_json=0.01,
    wrong_types=0.01,
    missing_fields=0.01,
    impossible_values=0.01,
    non_utf8=0.01,
    duplicate=0.01,
    late=0.01,
    oversized=0.004,
    late_delay_mean_s=0.3,
    oversized_bytes=128 * 1024,
)
PAYLOAD_FAULTS = {
    "malformed_json",
    "wrong_types",
    "missing_fields",
    "impossible_values",
    "non_utf8",
    "oversized",
}
OVERSIZED_BYTES = 64 * 1024
_PYTHON_TYPES = {
    StringType: (str,),
    IntegerType: (int,),
    DoubleType: (float, int),
    BooleanType: (bool,),
}


def contract_problem(value: bytes, schema: StructType) -> str | None:
    """Why a record breaks the event contract (the kind of fault it is), or None when it keeps it."""
    if len(value) > OVERSIZED_BYTES:
        return "oversized"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "non_utf8"
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return "malformed_json"
    for field in schema.fields:
        if field.name not in event:
            if not field.nullable:
                return "missing_fields"
            continue
        item = event[field.name]
        if item is None and field.nullable:
            continue
        wanted = _PYTHON_TYPES[type(field.dataType)]
        if not isinstance(item, wanted) or (isinstance(item, bool) and bool not in wanted):
            return "wrong_types"
    if set(event) - {f.name for f in schema.fields}:
        return "unexpected_fields"
    if "quantity" in event and (event["quantity"] <= 0 or event["unit_price"] <= 0):
        return "impossible_values"
    if "stock_level" in event and event["stock_level"] < 0:
        return "impossible_values"
    if "event_type" in event and event["event_type"] not in INVENTORY_EVENT_TYPES:
        return "impossible_values"
    time = dt.datetime.strptime(event["event_time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    if abs((dt.datetime.now(dt.UTC).replace(tzinfo=None) - time).total_seconds()) > 600:
        return "event_time_not_close_to_now"
    uuid.UUID(event["event_id"])
    return None


def consume_all(bootstrap: str, topic: str, expected: int) -> list:
    """Every record of ``topic`` from the beginning, waiting (with a deadline) for ``expected``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        records = []
        for record in consumer:
            records.append(record)
            if len(records) >= expected:
                break
        return records
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def stream_settings(kafka):
    from common import stack

    tag = uuid.uuid4().hex[:8]
    settings = load_settings(sales_topic=f"gen-sales-{tag}", inventory_topic=f"gen-inv-{tag}")
    stack.ensure_topics(settings)
    return settings


@pytest.fixture(scope="module")
def produced(stream_settings, store, tmp_path_factory):
    backfill(store, 5, 77, start_date=dt.date(2025, 6, 2), prefix="gst", **SIZES)
    manifest = tmp_path_factory.mktemp("stream") / "manifest.jsonl"
    counts = produce(
        stream_settings,
        rate=RATE,
        seconds=SECONDS,
        seed=77,
        faults=FAULTS,
        prefix="gst",
        manifest_path=manifest,
        store=store,
        **SIZES,
    )
    consumed = {
        topic: consume_all(stream_settings.kafka_bootstrap_servers, topic, tally["records"])
        for topic, tally in counts["topics"].items()
    }
    return counts, read_manifest(manifest), consumed


def test_stream_sends_at_the_rate_and_continues_the_backfill(produced, store):
    counts, _, _ = produced
    assert counts["send_errors"] == 0, counts["first_error"]
    paced = counts["records"] - counts["faults"]["duplicate"]
    assert paced <= RATE * counts["seconds"] + 1, "the stream ran faster than its rate"
    assert paced >= 0.6 * RATE * SECONDS, "the stream fell far behind its rate"
    assert counts["simulated_days"] >= 1
    first_streamed = dt.date(2025, 6, 7)
    world = build_world(77, prefix="gst", **SIZES)
    truth = store.scalar(
        "SELECT count() FROM ground_truth FINAL WHERE store_id LIKE 'gst%' AND date >= {d:Date}",
        {"d": first_streamed},
    )
    assert truth == counts["simulated_days"] * world.n_pairs
    next_date = first_streamed + dt.timedelta(days=counts["simulated_days"])
    assert counts["next_date"] == next_date.isoformat()


def test_produced_equals_consumed(produced):
    counts, _, consumed = produced
    for topic, tally in counts["topics"].items():
        records = consumed[topic]
        assert len(records) == tally["records"]
        checksum = sum(record_checksum(r.key, r.value) for r in records) % 2**64
        assert checksum == tally["checksum"], f"{topic}: the consumed records differ"
        assert sum(len(r.value) for r in records) == tally["bytes"]


def test_clean_events_keep_the_contract_and_the_simulated_order(produced):
    counts, manifest, consumed = produced
    listed = {(e["topic"], e["partition"], e["offset"]) for e in manifest if e["kind"] != "late"}
    sales_topic, inventory_topic = list(counts["topics"])
    schemas = {sales_topic: SALES_EVENT_SCHEMA, inventory_topic: INVENTORY_EVENT_SCHEMA}
    clean_ids = defaultdict(list)
    for topic, records in consumed.items():
        for record in records:
            if (topic, record.partition, record.offset) in listed:
                continue
            assert contract_problem(record.value, schemas[topic]) is None, record.value[:300]
            event = json.loads(record.value)
            assert record.key == f"{event['store_id']}|{event['product_id']}".encode()
            clean_ids[topic].append(event["event_id"])
    assert len(clean_ids[sales_topic]) == counts["sales_events"]
    assert len(clean_ids[inventory_topic]) == counts["inventory_events"]

    # The stream's events are the world's: the same ids as a direct simulation of those days.
    world = build_world(77, prefix="gst", **SIZES)
    days = simulate_days(
        world, initial_state(world, dt.date(2025, 6, 2)), 5 + counts["simulated_days"] + 1
    )
    simulated = set().union(*(set(d.sales["event_id"]) for d in days[5:]))
    assert set(clean_ids[sales_topic]) <= simulated
    complete = set().union(*(set(d.sales["event_id"]) for d in days[5:-1]))
    faulted = {e["event_id"] for e in manifest if e["kind"] in PAYLOAD_FAULTS}
    assert complete - faulted <= set(clean_ids[sales_topic])


def test_faults_seen_equal_the_manifest(produced):
    counts, manifest, consumed = produced
    assert {k: v for k, v in counts["faults"].items() if v} and all(
        counts["faults"][k] > 0 for k in ("malformed_json", "duplicate", "late", "non_utf8")
    )
    sales_topic, inventory_topic = list(counts["topics"])
    schemas = {sales_topic: SALES_EVENT_SCHEMA, inventory_topic: INVENTORY_EVENT_SCHEMA}
    seen: dict[tuple[str, int, int], str] = {}
    by_position = {}
    for topic, records in consumed.items():
        first_offset: dict[str, tuple[int, int]] = {}
        for record in sorted(records, key=lambda r: (r.partition, r.offset)):
            position = (topic, record.partition, record.offset)
            by_position[position] = record
            problem = contract_problem(record.value, schemas[topic])
            if problem is not None:
                seen[position] = problem
                continue
            event_id = json.loads(record.value)["event_id"]
            if event_id in first_offset:
                seen[position] = "duplicate"
            else:
                first_offset[event_id] = (record.partition, record.offset)

    listed = {(e["topic"], e["partition"], e["offset"]): e["kind"] for e in manifest}
    assert all(e["offset"] is not None for e in manifest), "every fault has its offset"
    expected = {pos: kind for pos, kind in listed.items() if kind != "late"}
    assert seen == expected
    assert sum(1 for kind in listed.values() if kind == "late") == counts["faults"]["late"]

    # A late record keeps its event time but arrives after records stamped later than it.
    held_long = [e for e in manifest if e["kind"] == "late" and e["delay_s"] > 0.05]
    assert held_long
    out_of_order = 0
    for entry in held_long:
        record = by_position[(entry["topic"], entry["partition"], entry["offset"])]
        previous = by_position.get((entry["topic"], entry["partition"], entry["offset"] - 1))
        late_time = json.loads(record.value)["event_time"]
        if (
            previous is not None
            and contract_problem(previous.value, schemas[entry["topic"]]) is None
        ):
            out_of_order += json.loads(previous.value)["event_time"] > late_time
    assert out_of_order >= 0.8 * len(held_long)


def test_more_workers_than_partitions_is_a_clear_error(settings):
    with pytest.raises(ValueError, match="must not exceed the topics' partitions"):
        produce(settings, 100.0, 1.0, 7, workers=settings.kafka_partitions + 1)


def test_no_broker_is_a_clear_error():
    from generator.stream import connect_producer

    settings = load_settings(kafka_bootstrap_servers="localhost:9")
    with pytest.raises(StreamError, match="KAFKA_BOOTSTRAP_SERVERS=localhost:9"):
        connect_producer(settings, attempts=2, bootstrap_timeout_s=1.0)
