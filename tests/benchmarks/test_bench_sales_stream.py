"""The stream benchmarks' samples: one per full micro-batch of a drain, and one per pairing of a
job rate with a consumer run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmarks.bench_sales_stream import drain_rates, scoring_overhead, shares


def _batch(rows: int, millis: int) -> SimpleNamespace:
    return SimpleNamespace(numInputRows=rows, batchDuration=millis)


def test_drain_rates_skip_the_first_batch_empty_batches_and_a_small_remainder() -> None:
    progress = [
        _batch(0, 300),  # no data
        _batch(50_000, 9_000),  # the first: planning and warm-up
        _batch(50_000, 2_500),
        _batch(49_999, 2_000),
        _batch(4, 900),  # the remainder of the offsets' split over partitions
    ]
    assert drain_rates(progress, 50_000) == pytest.approx([20_000.0, 24_999.5])


def test_shares_pair_every_job_rate_with_every_consumer_run() -> None:
    samples = shares([20.0, 30.0], [100.0, 200.0], target=0.25)
    assert [s["value"] for s in samples] == pytest.approx([0.2, 0.1, 0.3, 0.15])
    assert [s["ratio"] for s in samples] == pytest.approx([0.8, 0.4, 1.2, 0.6])
    assert [s["met"] for s in samples] == [False, False, True, False]


def test_scoring_overhead_pairs_the_ith_micro_batch_on_and_off() -> None:
    row = scoring_overhead("sales", scored=[20.0, 30.0], unscored=[25.0, 30.0])
    assert row["name"] == "sales job scoring overhead (sustained events/s, scoring on / off)"
    assert [s["ratio"] for s in row["samples"]] == pytest.approx([0.8, 1.0])
