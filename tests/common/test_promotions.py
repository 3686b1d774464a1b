"""The record of alias changes, on the real store."""

from __future__ import annotations

import uuid

from common.promotions import record_change, recorded_aliases


def test_an_alias_removed_last_is_recorded_as_gone(store) -> None:
    name = f"model-{uuid.uuid4().hex[:8]}"
    record_change(store, name, "champion", None, "1", "tests", "first")
    record_change(store, name, "challenger", None, "2", "tests", "trained")
    record_change(store, name, "champion", "1", None, "tests", "removed in the UI")
    recorded = recorded_aliases(store)
    assert recorded[(name, "champion")] is None
    assert recorded[(name, "challenger")] == "2"
    record_change(store, name, "champion", None, "2", "tests", "promoted")
    assert recorded_aliases(store)[(name, "champion")] == "2"
