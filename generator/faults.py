"""Fault injection: the bad records real systems see, each at its own rate, each in the manifest.

A record gets at most one fault. Kinds that change the payload (malformed JSON, wrong types,
missing fields, impossible values, non-UTF-8 bytes, oversized) replace the clean record; a
duplicate is the clean record sent a second time (same event_id); a late record keeps its
event_time but is held back and sent ``delay`` seconds later, out of order.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

FAULT_KINDS = (
    "malformed_json",
    "wrong_types",
    "missing_fields",
    "impossible_values",
    "non_utf8",
    "duplicate",
    "late",
    "oversized",
)
DELAY_DISTRIBUTIONS = ("exponential", "uniform", "lognormal")

SALES_REQUIRED = (
    "event_time",
    "transaction_id",
    "store_id",
    "product_id",
    "category",
    "quantity",
    "unit_price",
    "discount",
    "total_amount",
    "payment_method",
    "channel",
)
INVENTORY_REQUIRED = (
    "event_time",
    "store_id",
    "product_id",
    "event_type",
    "quantity_change",
    "stock_level",
    "reorder_point",
    "lead_time_days",
    "unit_cost",
)
_WRONG_TYPES = {
    "sales": (("quantity", "two"), ("unit_price", "free"), ("total_amount", "lots")),
    "inventory": (("quantity_change", "minus one"), ("stock_level", "unknown")),
}


@dataclass(frozen=True)
class FaultRates:
    """The share of records that get each fault, and the shape of late and oversized ones."""

    malformed_json: float = 0.0
    wrong_types: float = 0.0
    missing_fields: float = 0.0
    impossible_values: float = 0.0
    non_utf8: float = 0.0
    duplicate: float = 0.0
    late: float = 0.0
    oversized: float = 0.0
    late_delay_distribution: str = "exponential"
    late_delay_mean_s: float = 2.0
    oversized_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        rates = self.rates()
        if any(r < 0 or r > 1 for r in rates):
            raise ValueError("every fault rate must be between 0 and 1")
        if sum(rates) > 1:
            raise ValueError(f"fault rates add up to {sum(rates):.3f}; at most 1 is possible")
        if self.late_delay_distribution not in DELAY_DISTRIBUTIONS:
            raise ValueError(f"late delay distribution must be one of {DELAY_DISTRIBUTIONS}")
        if self.late_delay_mean_s <= 0:
            raise ValueError("the mean late delay must be positive")

    def rates(self) -> list[float]:
        return [getattr(self, kind) for kind in FAULT_KINDS]

    @property
    def any(self) -> bool:
        return sum(self.rates()) > 0


def draw_faults(rates: FaultRates, rng: np.random.Generator, n: int) -> np.ndarray:
    """For ``n`` records, the index into FAULT_KINDS of each record's fault, or -1 for none."""
    if not rates.any:
        return np.full(n, -1)
    cumulative = np.cumsum(rates.rates())
    kind = np.searchsorted(cumulative, rng.random(n), side="right")
    return np.where(kind < len(FAULT_KINDS), kind, -1)


def late_delay_s(rates: FaultRates, rng: np.random.Generator) -> float:
    """How long a late record is held back, in seconds, from the configured distribution."""
    mean = rates.late_delay_mean_s
    if rates.late_delay_distribution == "uniform":
        return float(rng.uniform(0.0, 2.0 * mean))
    if rates.late_delay_distribution == "lognormal":
        sigma = 0.75
        return float(rng.lognormal(np.log(mean) - sigma**2 / 2, sigma))
    return float(rng.exponential(mean))


def corrupt(
    kind: str, topic_kind: str, value: bytes, rates: FaultRates, rng: np.random.Generator
) -> bytes:
    """The faulty version of a clean record ``value`` for the payload-changing kinds."""
    if kind == "malformed_json":
        return value[: max(1, len(value) // 2)]
    if kind == "non_utf8":
        return value.replace(b'"store_id":"', b'"store_id":"\xff\xfe', 1)
    event = json.loads(value)
    if kind == "wrong_types":
        field, bad = _WRONG_TYPES[topic_kind][int(rng.integers(len(_WRONG_TYPES[topic_kind])))]
        event[field] = bad
    elif kind == "missing_fields":
        required = SALES_REQUIRED if topic_kind == "sales" else INVENTORY_REQUIRED
        del event[required[int(rng.integers(len(required)))]]
    elif kind == "impossible_values":
        if topic_kind == "sales":
            if rng.random() < 0.5:
                event["quantity"] = -abs(event["quantity"])
            else:
                event["unit_price"] = 0.0
                event["total_amount"] = 0.0
        else:
            event["stock_level"] = -abs(event["stock_level"]) - 1
    elif kind == "oversized":
        event["padding"] = "x" * rates.oversized_bytes
    else:
        raise ValueError(f"{kind} does not change the payload")
    return json.dumps(event, separators=(",", ":")).encode()


class Manifest:
    """Every injected fault record: kind, topic, key, event_id, partition and offset (JSONL)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def add(self, kind: str, topic: str, key: bytes, event_id: str, **detail: Any) -> dict:
        entry = {
            "kind": kind,
            "topic": topic,
            "key": key.decode(),
            "event_id": event_id,
            "partition": None,
            "offset": None,
            **detail,
        }
        self.entries.append(entry)
        return entry

    def counts(self) -> dict[str, int]:
        return {kind: sum(1 for e in self.entries if e["kind"] == kind) for kind in FAULT_KINDS}

    def write(self, path: Path, rates: FaultRates) -> None:
        """Write one JSON object per line; the first line is the configuration."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            out.write(json.dumps({"config": asdict(rates)}) + "\n")
            for entry in self.entries:
                out.write(json.dumps(entry) + "\n")


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The fault entries of a manifest file (the configuration line is skipped)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if "kind" in line]
