"""The data-quality gate on hand-made frames: each injected defect trips its expectation with the
exact count, the policy turns the results into quarantine or a stop, and Data Docs are built."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from expectations.gate import KPI_CHECKPOINT, RAW_CHECKPOINT, DataQualityGate
from expectations.policy import decide, label
from expectations.suites import CRITICAL, KPI_COLUMNS, WARNING, volume_parameters

DAY = date(2020, 3, 2)
PARAMETERS = {
    "store_ids": ["S1", "S2"],
    "product_ids": ["P1", "P2"],
    "product_categories": [("P1", "fruit"), ("P2", "bakery")],
    "sales_fresh_after": "2020-03-02T18:00:00+00:00",
    **volume_parameters(holiday=False),
}


def _at(hour: int) -> pd.Timestamp:
    return pd.Timestamp(f"2020-03-02 {hour:02d}:00", tz="UTC")


def sales_frame(rows: list[tuple]) -> pd.DataFrame:
    """Sales rows from (event_id, store_id, product_id, category, quantity)."""
    frame = pd.DataFrame(
        rows, columns=["event_id", "store_id", "product_id", "category", "quantity"]
    )
    n = len(frame)
    frame["event_time"] = [_at(9 + i % 12) for i in range(n)]
    frame["transaction_id"] = [f"T{i}" for i in range(n)]
    frame["customer_id"] = None
    frame["quantity"] = frame["quantity"].astype("int32")
    frame["unit_price"] = 2.0
    frame["discount"] = 0.0
    frame["total_amount"] = frame["quantity"] * 2.0
    frame["payment_method"] = "card"
    frame["channel"] = "store"
    frame["on_promotion"] = pd.Series([0] * n, dtype="uint8")
    return frame


def inventory_frame(levels: list[int]) -> pd.DataFrame:
    n = len(levels)
    return pd.DataFrame(
        {
            "event_id": [f"I{i}" for i in range(n)],
            "event_time": [_at(10)] * n,
            "store_id": ["S1"] * n,
            "product_id": ["P1"] * n,
            "event_type": ["sale"] * n,
            "quantity_change": pd.Series([-1] * n, dtype="int32"),
            "stock_level": pd.Series(levels, dtype="int32"),
            "reorder_point": pd.Series([2] * n, dtype="int32"),
            "lead_time_days": [2.0] * n,
            "unit_cost": [1.0] * n,
        }
    )


def volume_frame(sales_rows: int, ratio: float | None, latest: pd.Timestamp | None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": [DAY],
            "sales_rows": [sales_rows],
            "sales_rows_trailing_mean": [10.0],
            "sales_volume_ratio": pd.Series([ratio], dtype="float64"),
            "latest_sales_event_time": pd.to_datetime(pd.Series([latest]), utc=True),
            "inventory_rows": [3],
            "inventory_rows_trailing_mean": [3.0],
            "inventory_volume_ratio": [1.0],
            "latest_inventory_event_time": pd.to_datetime(pd.Series([_at(21)]), utc=True),
        }
    )


CLEAN_SALES = [(f"E{i}", "S1" if i % 2 else "S2", "P1", "fruit", 1 + i % 3) for i in range(8)]
BAD_SALES = [
    ("E-null-store", None, "P1", "fruit", 1),
    ("E-null-product", "S1", None, "fruit", 1),
    ("E3", "S2", "P2", "bakery", 2),  # duplicates the event id of a clean row
    ("E-negative", "S1", "P2", "bakery", -4),
    ("E-unknown", "S1", "P9", "fruit", 1),
]


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> DataQualityGate:
    return DataQualityGate(tmp_path_factory.mktemp("gate-data"))


@pytest.fixture(scope="module")
def bad_day(gate):
    """A day with every row-level defect once, a stale clock and a collapsed volume."""
    sales = sales_frame(CLEAN_SALES + BAD_SALES)
    inventory = inventory_frame([5, -1, 3])
    volume = volume_frame(len(sales), 0.2, _at(15))
    outcomes = gate.check_raw(DAY, sales, inventory, volume, PARAMETERS)
    return sales, inventory, outcomes


def _by_label(outcomes) -> dict[str, object]:
    return {f"{o.dataset}:{label(o)}:{o.severity}": o for o in outcomes}


def test_each_defect_trips_its_expectation_with_the_exact_count(bad_day) -> None:
    _, _, outcomes = bad_day
    failed = {
        key: o.unexpected_count
        for key, o in _by_label(outcomes).items()
        if not o.success and o.unexpected_count is not None
    }
    assert failed == {
        "sales:expect_column_values_to_not_be_null(store_id):warning": 1,
        "sales:expect_column_values_to_not_be_null(product_id):warning": 1,
        "sales:expect_column_values_to_be_unique(event_id):warning": 2,
        "sales:expect_column_values_to_be_between(quantity):warning": 1,
        "sales:expect_column_values_to_be_between(total_amount):warning": 1,
        "sales:expect_column_values_to_be_in_set(product_id):warning": 1,
        "sales:expect_column_pair_values_to_be_in_set(product_id,category):warning": 1,
        "inventory:expect_column_values_to_be_between(stock_level):warning": 1,
        "volume:expect_column_values_to_be_between(sales_volume_ratio):critical": 1,
    }
    freshness = _by_label(outcomes)[
        "volume:expect_column_max_to_be_between(latest_sales_event_time):critical"
    ]
    assert not freshness.success
    assert freshness.observed_value.startswith("2020-03-02 15:00:00")


def test_failed_rows_point_at_the_offending_rows(bad_day) -> None:
    sales, _, outcomes = bad_day
    unique = _by_label(outcomes)["sales:expect_column_values_to_be_unique(event_id):warning"]
    assert sorted(sales.iloc[list(unique.unexpected_rows)]["event_id"]) == ["E3", "E3"]
    negative = _by_label(outcomes)["sales:expect_column_values_to_be_between(quantity):warning"]
    assert list(sales.iloc[list(negative.unexpected_rows)]["event_id"]) == ["E-negative"]


def test_policy_quarantines_warned_rows_and_stops_on_critical(bad_day) -> None:
    sales, inventory, outcomes = bad_day
    decision = decide(DAY, {"sales": sales, "inventory": inventory}, outcomes, 100.0)
    quarantined = decision.quarantine.groupby("dataset")["event_id"].apply(sorted).to_dict()
    assert quarantined == {
        "inventory": ["I1"],
        "sales": ["E-negative", "E-null-product", "E-null-store", "E-unknown", "E3", "E3"],
    }
    negative = decision.quarantine.query("event_id == 'E-negative'").iloc[0]
    assert negative["failed_expectations"] == (
        "expect_column_values_to_be_between(quantity); "
        "expect_column_values_to_be_between(total_amount)"
    )
    assert '"quantity": -4' in negative["row_json"]
    assert not decision.passed
    assert {label(o) for o in decision.critical} == {
        "expect_column_values_to_be_between(sales_volume_ratio)",
        "expect_column_max_to_be_between(latest_sales_event_time)",
    }


def test_too_many_quarantined_rows_stop_the_day(gate) -> None:
    sales = sales_frame(CLEAN_SALES + BAD_SALES[3:4])
    outcomes = gate.check_raw(
        DAY, sales, inventory_frame([5]), volume_frame(len(sales), 1.0, _at(21)), PARAMETERS
    )
    frames = {"sales": sales, "inventory": inventory_frame([5])}
    lenient = decide(DAY, frames, outcomes, 20.0)
    assert lenient.passed
    assert sorted(label(o) for o in lenient.warnings) == [
        "expect_column_values_to_be_between(quantity)",
        "expect_column_values_to_be_between(total_amount)",
    ]
    strict = decide(DAY, frames, outcomes, 5.0)
    assert not strict.passed
    (share,) = strict.critical
    assert (share.dataset, share.unexpected_count, share.element_count) == ("sales", 1, 9)
    assert share.observed_value == "11.11% of 9 rows quarantined (limit 5%)"


def test_a_missing_day_is_critical(gate) -> None:
    empty = sales_frame([])
    outcomes = gate.check_raw(
        DAY, empty, inventory_frame([]), volume_frame(0, 0.0, None), PARAMETERS
    )
    decision = decide(DAY, {"sales": empty, "inventory": inventory_frame([])}, outcomes, 5.0)
    missing = _by_label(outcomes)["volume:expect_column_values_to_be_between(sales_rows):critical"]
    assert (missing.success, missing.unexpected_count, missing.element_count) == (False, 1, 1)
    assert missing.check == "missing day"
    assert not decision.passed
    assert decision.quarantine.empty


def test_a_holiday_may_sell_little_or_nothing(gate) -> None:
    holiday = {**PARAMETERS, **volume_parameters(holiday=True)}
    for rows, ratio in ((0, 0.0), (2, 0.2)):
        sales = sales_frame(CLEAN_SALES[:rows])
        outcomes = gate.check_raw(
            DAY, sales, inventory_frame([5]), volume_frame(rows, ratio, _at(21)), holiday
        )
        decision = decide(DAY, {"sales": sales, "inventory": inventory_frame([5])}, outcomes, 5.0)
        assert decision.passed, [label(o) for o in outcomes if not o.success]


def test_consecutive_days_are_each_validated(gate) -> None:
    for offset in (1, 2):
        day = date(2020, 3, 2 + offset)
        outcomes = gate.check_raw(
            day, sales_frame([]), inventory_frame([]), volume_frame(0, None, None), PARAMETERS
        )
        pages = {o.data_docs_path for o in outcomes if o.suite == "daily_volume"}
        assert [Path(p).name for p in pages] == [
            f"batch_staging-volume-year_2020-month_03-day_{day.day:02d}.html"
        ]


def test_kpi_output_is_checked_before_publishing(gate) -> None:
    row = dict.fromkeys(KPI_COLUMNS, 0.0)
    row.update({"date": DAY, "level": "store", "store_id": "S1", "category": "ALL"})
    kpis = pd.DataFrame(
        [row, {**row, "revenue": -5.0}, {**row, "store_id": "S2", "stockout_rate": 1.5}]
    )
    outcomes = gate.check_kpis(DAY, kpis)
    failed = {label(o): o.unexpected_count for o in outcomes if not o.success}
    assert failed == {
        "expect_compound_columns_to_be_unique(level,store_id,category)": 2,
        "expect_column_values_to_be_between(revenue)": 1,
        "expect_column_values_to_be_between(stockout_rate)": 1,
    }
    assert all(o.severity == CRITICAL for o in outcomes if not o.success)
    assert all(o.checkpoint == KPI_CHECKPOINT for o in outcomes)


def test_data_docs_are_built_for_every_suite(gate, bad_day) -> None:
    _, _, outcomes = bad_day
    assert gate.data_docs_index.is_file()
    pages = {o.suite: o.data_docs_path for o in outcomes if o.checkpoint == RAW_CHECKPOINT}
    assert set(pages) == {"raw_sales", "raw_inventory", "daily_volume"}
    for page in pages.values():
        assert Path(page).is_file()
        assert page.endswith("year_2020-month_03-day_02.html")
    assert {o.severity for o in outcomes} == {CRITICAL, WARNING}
    assert not list(gate.staging_dir.rglob("*.parquet"))
