"""What the gate's results mean for a day: publish, publish with quarantined rows, or stop.

- A failed ``critical`` expectation stops the day: nothing is published for it.
- A failed ``warning`` expectation on single rows sends those rows to quarantine: they are left
  out of the KPIs and listed in the report. Other failed warnings are only reported.
- When more than ``max_quarantine_percent`` of a dataset's rows would be quarantined the day
  stops too (a synthetic ``quarantine_policy`` result says so).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import pandas as pd

from expectations.gate import RAW_CHECKPOINT, ExpectationOutcome
from expectations.suites import CRITICAL, WARNING

QUARANTINE_COLUMNS = ["batch_date", "dataset", "event_id", "failed_expectations", "row_json"]
POLICY_SUITE = "quarantine_policy"


@dataclass(frozen=True)
class GateDecision:
    """The outcomes of a day's checks and the rows they quarantined."""

    day: date
    outcomes: list[ExpectationOutcome]
    quarantine: pd.DataFrame

    @property
    def critical(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity == CRITICAL]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity == WARNING]

    @property
    def passed(self) -> bool:
        return not self.critical


def label(outcome: ExpectationOutcome) -> str:
    """A short readable name: ``expect_column_values_to_be_between(quantity)``."""
    return (
        f"{outcome.expectation_type}({outcome.column})"
        if outcome.column
        else outcome.expectation_type
    )


def quarantine_rows(
    day: date, frames: Mapping[str, pd.DataFrame], outcomes: list[ExpectationOutcome]
) -> pd.DataFrame:
    """The rows failed warnings point at, one per row, with the expectations each one failed."""
    records = []
    for dataset, frame in frames.items():
        reasons: dict[int, list[str]] = {}
        for outcome in outcomes:
            if outcome.dataset == dataset and outcome.severity == WARNING and not outcome.success:
                for row in outcome.unexpected_rows:
                    reasons.setdefault(row, []).append(label(outcome))
        for row, failed in sorted(reasons.items()):
            values = frame.iloc[row]
            records.append(
                {
                    "batch_date": day,
                    "dataset": dataset,
                    "event_id": values.get("event_id") or "",
                    "failed_expectations": "; ".join(sorted(set(failed))),
                    "row_json": json.dumps(
                        {k: _plain(v) for k, v in values.items()}, sort_keys=True
                    ),
                }
            )
    return pd.DataFrame(records, columns=QUARANTINE_COLUMNS)


def _plain(value: object) -> object:
    if value is None or (not isinstance(value, (list, tuple, dict)) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def quarantine_share_outcome(
    dataset: str, quarantined: int, total: int, max_percent: float
) -> ExpectationOutcome:
    """A critical result that fails when more than ``max_percent`` of the rows are quarantined."""
    percent = 100.0 * quarantined / total if total else 0.0
    return ExpectationOutcome(
        checkpoint=RAW_CHECKPOINT,
        suite=POLICY_SUITE,
        dataset=dataset,
        expectation_type="quarantined_rows_at_most_percent",
        column="",
        severity=CRITICAL,
        check="quarantine share",
        success=percent <= max_percent,
        element_count=total,
        unexpected_count=quarantined,
        unexpected_percent=percent,
        observed_value=f"{percent:.2f}% of {total} rows quarantined (limit {max_percent:g}%)",
        kwargs=json.dumps({"max_percent": max_percent}),
        unexpected_rows=(),
        data_docs_path="",
    )


def decide(
    day: date,
    frames: Mapping[str, pd.DataFrame],
    outcomes: list[ExpectationOutcome],
    max_quarantine_percent: float,
) -> GateDecision:
    """Apply the policy to a day's raw checks."""
    quarantine = quarantine_rows(day, frames, outcomes)
    decided = list(outcomes)
    for dataset, frame in frames.items():
        quarantined = int((quarantine["dataset"] == dataset).sum())
        decided.append(
            quarantine_share_outcome(dataset, quarantined, len(frame), max_quarantine_percent)
        )
    return GateDecision(day=day, outcomes=decided, quarantine=quarantine)
