"""The send loop's bookkeeping against a stand-in producer with confluent-kafka's interface (no
broker): delivery failures counted, a full queue waited out without losing a record, fault records
listed with the partition and offset of their acknowledgement."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError

from generator.faults import FaultRates
from generator.simulate import Simulator, initial_state
from generator.stream import StreamError, _Run, partitions_of, record_checksum
from generator.world import build_world

TOPICS = ("sales", "inventory")
SIZES = {"n_stores": 3, "n_products": 12, "n_customers": 100}


class _Message:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class FakeProducer:
    """Keeps what it is given; acknowledges on poll/flush, failing the records ``fails`` picks;
    refuses every ``full_every``-th produce call with BufferError (a full queue)."""

    def __init__(self, fails: Callable[[int], bool] = lambda n: False, full_every: int = 0):
        self.fails, self.full_every = fails, full_every
        self.calls = 0
        self.refused = 0
        self.records: list[tuple[str, bytes, bytes, int]] = []
        self.pending: list[tuple[int, Callable[[Any, Any], None]]] = []
        self.offsets: dict[tuple[str, int], int] = defaultdict(int)
        self.acknowledged: dict[int, tuple[int, int]] = {}

    def produce(self, topic, value, key, partition, on_delivery) -> None:
        self.calls += 1
        if self.full_every and self.calls % self.full_every == 0:
            self.refused += 1
            raise BufferError("Local: Queue full")
        self.records.append((topic, key, value, partition))
        self.pending.append((len(self.records) - 1, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        served, self.pending = self.pending, []
        for n, on_delivery in served:
            topic, _, _, partition = self.records[n]
            if self.fails(n):
                on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                offset = self.offsets[(topic, partition)]
                self.offsets[(topic, partition)] += 1
                self.acknowledged[n] = (partition, offset)
                on_delivery(None, _Message(partition, offset))
        return len(served)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


class FakeClock:
    """The loop's clock: 20 µs pass at every reading, so a run's records do not depend on the
    machine's load."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        self.now += 20e-6
        return self.now

    def time(self) -> float:
        return 1_780_000_000.0 + self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    import generator.stream

    monkeypatch.setattr(generator.stream, "time", FakeClock())


def run_stream(producer: FakeProducer, faults: FaultRates, seconds: float = 0.3) -> _Run:
    world = build_world(5, **SIZES)
    run = _Run(producer, TOPICS, [[0, 1, 2], [0, 1, 2]], 5, faults, 1e9, None, None)
    run.stream(Simulator(world), initial_state(world, dt.date(2025, 6, 2)), seconds)
    return run


def tally_of(records: list[tuple[str, bytes, bytes, int]], topic: str) -> tuple[int, int, int]:
    mine = [(k, v) for t, k, v, _ in records if t == topic]
    checksum = sum(record_checksum(k, v) for k, v in mine) % 2**64
    return len(mine), sum(len(v) for _, v in mine), checksum


def test_every_record_is_tallied_as_it_was_handed_over():
    producer = FakeProducer()
    run = run_stream(producer, FaultRates(duplicate=0.02, malformed_json=0.02, late=0.02))
    assert run.delivery.errors == 0 and run.delivery.first_error is None
    assert len(producer.records) > 5_000
    for topic, tally in zip(TOPICS, run.tallies, strict=True):
        assert (tally.records, tally.bytes, tally.checksum) == tally_of(producer.records, topic)


def test_delivery_failures_are_counted_and_the_first_is_kept():
    producer = FakeProducer(fails=lambda n: n % 7 == 3)
    run = run_stream(producer, FaultRates())
    assert run.delivery.errors == sum(1 for n in range(len(producer.records)) if n % 7 == 3)
    assert run.delivery.first_error == "_MSG_TIMED_OUT: Local: Message timed out"


def test_a_full_queue_is_waited_out_and_loses_nothing():
    producer = FakeProducer(full_every=50)
    run = run_stream(producer, FaultRates(duplicate=0.05, non_utf8=0.05, late=0.05))
    assert producer.refused > 10
    assert sum(t.records for t in run.tallies) == len(producer.records)
    assert all(e["offset"] is not None for e in run.manifest.entries)


def test_fault_records_are_listed_with_their_acknowledged_position():
    producer = FakeProducer()
    run = run_stream(producer, FaultRates(duplicate=0.03, wrong_types=0.03, late=0.03))
    kinds = Counter(e["kind"] for e in run.manifest.entries)
    assert kinds["duplicate"] and kinds["wrong_types"] and kinds["late"]
    positions = {}
    for n, (partition, offset) in producer.acknowledged.items():
        positions[(producer.records[n][0], partition, offset)] = producer.records[n]
    for entry in run.manifest.entries:
        topic, key, _, partition = positions[(entry["topic"], entry["partition"], entry["offset"])]
        assert (topic, key.decode()) == (entry["topic"], entry["key"])


def test_a_worker_whose_share_holds_no_record_stops_at_the_deadline():
    world = build_world(5, **SIZES)
    run = _Run(FakeProducer(), TOPICS, [[0, 1, 2], [0, 1, 2]], 5, FaultRates(), 1e9, None, None)
    run.share = (3, 4)  # partitions p with p % 4 == 3: none of the three
    _, partial = run.stream(Simulator(world), initial_state(world, dt.date(2025, 6, 2)), 0.3)
    assert partial is not None and sum(t.records for t in run.tallies) == 0


def test_with_a_speedup_nothing_is_sent_ahead_of_the_deadline():
    """Half a wall second at one simulated second per second reaches 00:00:00.5 of the day, before
    any store opens: no record is due yet, so none is sent (stamped hours ahead)."""
    world = build_world(5, **SIZES)
    producer = FakeProducer()
    run = _Run(producer, TOPICS, [[0, 1, 2], [0, 1, 2]], 5, FaultRates(), 1e9, 1.0, None)
    run.stream(Simulator(world), initial_state(world, dt.date(2025, 6, 2)), 0.5)
    assert producer.records == []


class _Metadata:
    def __init__(self, topics: dict) -> None:
        self.topics = topics


class _TopicMetadata:
    def __init__(self, partitions: dict, error: KafkaError | None) -> None:
        self.partitions, self.error = partitions, error


class _MetadataProducer:
    """Answers metadata requests from a list of (partitions, error), the last one repeated."""

    def __init__(self, answers: list[tuple[dict, KafkaError | None]]) -> None:
        self.answers = answers

    def list_topics(self, topic: str, timeout: float) -> _Metadata:
        partitions, error = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return _Metadata({topic: _TopicMetadata(partitions, error)})


def test_partitions_wait_for_an_auto_created_topic():
    unknown = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)
    producer = _MetadataProducer([({}, unknown), ({2: None, 0: None, 1: None}, None)])
    assert partitions_of(producer, "t", timeout_s=5) == [0, 1, 2]


def test_a_topic_that_never_appears_is_a_clear_error():
    producer = _MetadataProducer([({}, KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))])
    with pytest.raises(StreamError, match="topic t has no partitions.*UNKNOWN_TOPIC_OR_PART"):
        partitions_of(producer, "t", timeout_s=0.3)
