"""A broken champion never stops scoring, and a critical data-quality failure publishes nothing."""

from __future__ import annotations

import pytest

from benchmarks import chaos

pytestmark = [pytest.mark.reliability, pytest.mark.services, pytest.mark.spark]


def test_a_broken_champion_keeps_the_last_good_model_and_raises_an_alert(
    chaos_stack, sizes
) -> None:
    result = chaos.broken_model(chaos_stack, sizes)
    good = result.details["scored"][0][0]
    assert result.details["scored"] == [(good, [2.0, 4.0])] * 7
    assert result.details["load_failed"] == sorted(result.details["broken"])
    assert result.details["deleted_folders"] >= 1
    assert result.details["naive_failures"] == 3


def test_a_critical_expectation_failure_publishes_nothing_for_that_day(chaos_stack, sizes) -> None:
    result = chaos.quality_failure(chaos_stack, sizes)
    assert result.details["bad_status"] != "published"
    assert any("sales_volume_ratio" in c for c in result.details["bad_critical"]), result.details
    bad, good = result.details["published_rows"].values()
    assert bad == {"daily_kpis": 0, "product_rankings": 0, "store_rankings": 0}
    assert result.details["good_status"] == "published", result.details
    assert min(good.values()) > 0
