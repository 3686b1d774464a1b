"""Crashes, outages and poison against the real broker, Spark and store: the store reconciles
exactly with what the broker holds (no event lost, none duplicated), and each negative control
shows the check catching what it is meant to catch. `make chaos` runs the same scenarios bigger."""

from __future__ import annotations

import pytest

from benchmarks import chaos

pytestmark = [pytest.mark.reliability, pytest.mark.services, pytest.mark.spark]


def test_kill_and_restart_rounds_lose_and_duplicate_nothing(chaos_stack, sizes) -> None:
    result = chaos.kill_restart(chaos_stack, sizes)
    kills = result.details["kills"]
    assert len(kills) == sizes.kill_rounds
    # A crash after the job wrote to the store: its replay must not write twice. Whether a kill
    # also landed before that batch's commit is in its label ("..., before its commit").
    assert any(kill.startswith("SIGKILL after write") for kill in kills), kills
    assert result.events > 0
    assert (result.lost, result.duplicated) == (0, 0), result.details
    assert result.details["stored_rows"] == result.details["pane_line_items"] == result.events


def test_broker_restart_loses_nothing_after_dedup(chaos_stack, sizes) -> None:
    result = chaos.broker_restart(chaos_stack, sizes)
    assert result.details["send_errors"] == 0, result.details
    assert result.events > 0
    assert (result.lost, result.duplicated) == (0, 0), result.details


def test_store_outage_retries_with_the_same_token_and_the_control_catches_duplicates(
    chaos_stack, sizes
) -> None:
    result = chaos.store_outage(chaos_stack, sizes)
    assert result.details["failures"], "the held lock never made a batch fail"
    assert result.events > 0
    assert (result.lost, result.duplicated) == (0, 0), result.details
    token_off = result.details["token_off"]
    assert (token_off["lost"], token_off["duplicated"]) == (0, 0), "the event-id check alone holds"
    control = result.details["negative_control"]
    assert control["lost"] == 0
    assert control["duplicated"] > 0, "with both checks off the replayed batch must show duplicates"


def test_every_poison_record_is_dead_lettered_at_its_manifest_position(chaos_stack, sizes) -> None:
    result = chaos.poison(chaos_stack, sizes)
    assert result.details["poison"] > 0
    assert result.details["dead_letters"] == result.details["poison"], result.details
    assert (result.lost, result.duplicated) == (0, 0), result.details
