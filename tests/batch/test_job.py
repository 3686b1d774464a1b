"""The daily batch end to end on a real embedded store, real Great Expectations:
hand-computed KPIs, idempotent reruns, quarantine on warnings, and a critical failure (through the
`retail batch` command) that publishes nothing and leaves earlier results as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
from batch_world import EXPECTED_KPIS, MODEL_VERSION, RUN_DAY

from batch.job import FAILED, PUBLISHED, BatchError, resolve_days, run_batch

WARN_DAY = date(2019, 7, 10)
KEY = ["level", "store_id", "category"]


def published_kpis(store, day: date) -> pd.DataFrame:
    return store.query_df(
        "SELECT * FROM daily_kpis FINAL WHERE date = {day:Date} ORDER BY level, store_id, category",
        {"day": day.isoformat()},
    )


def quality_results(store, run_id: str, day: date) -> pd.DataFrame:
    return store.query_df(
        "SELECT * FROM data_quality_results WHERE run_id = {run:String} AND batch_date = {day:Date}",
        {"run": run_id, "day": day.isoformat()},
    )


def last_run_id(store, day: date) -> str:
    return store.scalar(
        "SELECT run_id FROM batch_runs WHERE batch_date = {day:Date} "
        "ORDER BY finished_at DESC LIMIT 1",
        {"day": day.isoformat()},
    )


@pytest.fixture(scope="module")
def published(batch_settings, batch_store, clean_world):
    """The clean day run twice: the first results and the state after the rerun."""
    first = run_batch(batch_settings, RUN_DAY, RUN_DAY)
    first_run = last_run_id(batch_store, RUN_DAY)
    first_kpis = published_kpis(batch_store, RUN_DAY)
    second = run_batch(batch_settings, RUN_DAY, RUN_DAY)
    return {"first": first, "first_run": first_run, "first_kpis": first_kpis, "second": second}


def test_the_published_kpis_equal_the_hand_computed_values(published) -> None:
    (result,) = published["first"]
    assert result.status == PUBLISHED
    assert result.critical == [] and result.quarantined_rows == 0
    assert result.kpi_source == "inventory:view,sales:view"
    kpis = published["first_kpis"]
    assert sorted(map(tuple, kpis[KEY].values)) == sorted(EXPECTED_KPIS)
    for row in kpis.itertuples():
        expected = EXPECTED_KPIS[(row.level, row.store_id, row.category)]
        for column, value in expected.items():
            actual = getattr(row, column)
            if value is None:
                assert pd.isna(actual), (row.level, row.store_id, row.category, column)
            else:
                assert actual == pytest.approx(value, rel=1e-9), (row.store_id, column)


def test_a_rerun_replaces_the_day_and_never_doubles_it(published, batch_store) -> None:
    (result,) = published["second"]
    assert result.status == PUBLISHED
    day = {"day": RUN_DAY.isoformat()}
    for table, rows in (("daily_kpis", 6), ("store_rankings", 2)):
        counted = batch_store.query_df(
            f"SELECT count() AS n, uniqExact(run_id) AS runs FROM {table} WHERE date = {{day:Date}}",  # noqa: S608
            day,
        )
        assert (counted["n"].iloc[0], counted["runs"].iloc[0]) == (rows, 1), table
    ranked = batch_store.query_df(
        "SELECT count() AS n, uniqExact(run_id) AS runs FROM product_rankings WHERE date = {day:Date}",
        day,
    )
    assert ranked["runs"].iloc[0] == 1
    assert last_run_id(batch_store, RUN_DAY) != published["first_run"]
    again = published_kpis(batch_store, RUN_DAY)
    columns = [c for c in again.columns if c not in ("run_id", "published_at")]
    pd.testing.assert_frame_equal(again[columns], published["first_kpis"][columns])


def test_the_rankings_are_published(published, batch_store) -> None:
    stores = batch_store.query_df(
        "SELECT store_id, rank, revenue_7d, revenue_prev_7d, wow_change, rank_change "
        "FROM store_rankings FINAL WHERE date = {day:Date} ORDER BY rank",
        {"day": RUN_DAY.isoformat()},
    )
    assert list(stores["store_id"]) == ["BT-S2", "BT-S1"]
    assert list(stores["revenue_7d"]) == [51.0, 42.0]
    assert stores["wow_change"].tolist() == pytest.approx([51 / 35 - 1, 2.0])
    top = batch_store.query_df(
        "SELECT product_id, value FROM product_rankings FINAL WHERE date = {day:Date} "
        "AND store_id = 'ALL' AND metric = 'revenue' AND direction = 'top' ORDER BY rank",
        {"day": RUN_DAY.isoformat()},
    )
    assert list(zip(top["product_id"], top["value"], strict=True)) == [
        ("BT-P1", 16.0),
        ("BT-P3", 14.0),
        ("BT-P2", 9.0),
    ]


def test_every_check_is_recorded_and_the_report_written(
    published, batch_store, batch_settings
) -> None:
    run_id = last_run_id(batch_store, RUN_DAY)
    results = quality_results(batch_store, run_id, RUN_DAY)
    assert set(results["checkpoint"]) == {"daily_raw_gate", "daily_kpi_gate"}
    assert set(results["suite"]) == {
        "raw_sales",
        "raw_inventory",
        "daily_volume",
        "quarantine_policy",
        "daily_kpis",
    }
    assert results["success"].all()
    (result,) = published["second"]
    folder = batch_settings.data_root / "reports" / RUN_DAY.isoformat()
    assert result.report_path == folder / "report.html"
    summary = json.loads((folder / "report.json").read_text())
    assert summary["overall"]["revenue"] == 39.0
    assert summary["forecast_model"] == f"demand_forecaster v{MODEL_VERSION}"
    assert summary["quarantined_rows"] == 0
    assert "| revenue | 39.00 |" in (folder / "report.md").read_text()
    assert (batch_settings.data_root / "gx/uncommitted/data_docs/local_site/index.html").is_file()


@pytest.fixture(scope="module")
def warned(batch_settings, batch_store, make_world):
    """A day with bad rows next to good ones, run with a lenient quarantine limit."""
    world = make_world("warn")
    world.clean_day(WARN_DAY)
    cheese = batch_store.scalar(
        "SELECT event_id FROM sales_events WHERE toDate(event_time) = {day:Date} "
        "AND store_id = 'BT-S2' AND product_id = 'BT-P3'",
        {"day": WARN_DAY.isoformat()},
    )
    world.insert_sales(
        [
            world.sale(WARN_DAY, 12, None, "BT-P1", 1),
            world.sale(WARN_DAY, 12, "BT-S1", "BT-P4", 1, event_id=cheese),
            world.sale(WARN_DAY, 12, "BT-S1", "BT-P2", -2),
        ]
    )
    world.insert_movements([world.movement(WARN_DAY, 12, "BT-S1", "BT-P1", "adjustment", -8, -1)])
    lenient = batch_settings.model_copy(update={"batch_quarantine_max_percent": 50.0})
    (result,) = run_batch(lenient, WARN_DAY, WARN_DAY)
    return result, cheese


def test_warnings_quarantine_the_offending_rows_with_exact_counts(warned, batch_store) -> None:
    result, cheese = warned
    assert result.status == PUBLISHED
    assert result.quarantined_rows == 5
    assert result.kpi_source == "inventory:raw,sales:raw"
    results = quality_results(batch_store, last_run_id(batch_store, WARN_DAY), WARN_DAY)
    failed = results[results["success"] == 0]
    counts = {
        (r.suite, r.expectation_type, r.column): (r.severity, r.unexpected_count)
        for r in failed.itertuples()
    }
    assert counts == {
        ("raw_sales", "expect_column_values_to_not_be_null", "store_id"): ("warning", 1),
        ("raw_sales", "expect_column_values_to_be_unique", "event_id"): ("warning", 2),
        ("raw_sales", "expect_column_values_to_be_between", "quantity"): ("warning", 1),
        ("raw_sales", "expect_column_values_to_be_between", "total_amount"): ("warning", 1),
        ("raw_inventory", "expect_column_values_to_be_between", "stock_level"): ("warning", 1),
    }
    quarantine = batch_store.query_df(
        "SELECT dataset, event_id, failed_expectations FROM quarantine "
        "WHERE batch_date = {day:Date} ORDER BY dataset, event_id",
        {"day": WARN_DAY.isoformat()},
    )
    assert quarantine.groupby("dataset").size().to_dict() == {"inventory": 1, "sales": 4}
    assert (quarantine["event_id"] == cheese).sum() == 2


def test_quarantined_rows_are_left_out_of_the_kpis(warned, batch_store, batch_settings) -> None:
    kpis = published_kpis(batch_store, WARN_DAY).set_index(KEY)
    overall = kpis.loc[("overall", "ALL", "ALL")]
    # The clean day without the cheese sale at BT-S2 (1 unit, 5.0), whose event id is duplicated.
    assert (overall["revenue"], overall["units"], overall["transactions"]) == (34.0, 13, 4)
    assert kpis.loc[("store", "BT-S2", "ALL"), "revenue"] == 16.0
    report = json.loads(
        (batch_settings.data_root / "reports" / WARN_DAY.isoformat() / "report.json").read_text()
    )
    assert report["quarantined_rows"] == 5
    assert {row["dataset"] for row in report["quarantine"]} == {"sales", "inventory"}


@pytest.mark.timeout(900)
def test_a_critical_failure_publishes_nothing_and_keeps_earlier_results(
    warned, batch_settings, batch_store, make_world
) -> None:
    report = batch_settings.data_root / "reports" / WARN_DAY.isoformat() / "report.html"
    before = {
        "kpis": published_kpis(batch_store, WARN_DAY),
        "quarantine": batch_store.query_df(
            "SELECT * FROM quarantine WHERE batch_date = {day:Date} ORDER BY event_id",
            {"day": WARN_DAY.isoformat()},
        ),
        "report": report.read_bytes(),
    }
    world = make_world("critical")
    world.insert_sales([world.sale(WARN_DAY, 15, "BT-S1", "BT-P1", -1) for _ in range(10)])
    missing = WARN_DAY + timedelta(days=1)

    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "common.cli",
            "batch",
            "--from",
            str(WARN_DAY),
            "--to",
            str(missing),
        ],
        env={**os.environ, "DATA_DIR": str(batch_settings.data_root)},
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert finished.returncode == 1, finished.stdout + finished.stderr
    assert "Traceback" not in finished.stderr, finished.stderr
    assert finished.stderr.count("not published") == 2
    pd.testing.assert_frame_equal(published_kpis(batch_store, WARN_DAY), before["kpis"])
    pd.testing.assert_frame_equal(
        batch_store.query_df(
            "SELECT * FROM quarantine WHERE batch_date = {day:Date} ORDER BY event_id",
            {"day": WARN_DAY.isoformat()},
        ),
        before["quarantine"],
    )
    assert report.read_bytes() == before["report"]
    assert published_kpis(batch_store, missing).empty

    run_id = last_run_id(batch_store, missing)
    runs = batch_store.query_df(
        "SELECT batch_date, status, detail FROM batch_runs WHERE run_id = {run:String} "
        "ORDER BY batch_date",
        {"run": run_id},
    )
    assert list(runs["status"]) == [FAILED, FAILED]
    assert "quarantined_rows_at_most_percent" in runs["detail"].iloc[0]
    results = quality_results(batch_store, run_id, missing)
    missing_day = results.query("suite == 'daily_volume' and column == 'sales_rows'")
    assert missing_day[["severity", "success", "unexpected_count"]].values.tolist() == [
        ["critical", 0, 1]
    ], results.to_string()


def test_a_holiday_that_sells_little_is_published(batch_settings, batch_store, make_world) -> None:
    holiday = date(2019, 12, 25)
    world = make_world("holiday")
    world.history(holiday)
    world.insert_sales([world.sale(holiday, 22, "BT-S1", "BT-P1", 1)])  # a third of a usual day
    (ordinary,) = run_batch(batch_settings, holiday, holiday)
    assert ordinary.status == FAILED  # as an ordinary day, its volume collapsed
    calendar = {"date": holiday, "is_holiday": 1, "holiday_name": "Christmas Day", "day_of_week": 3}
    batch_store.insert_df("calendar", pd.DataFrame([calendar]))

    (marked,) = run_batch(batch_settings, holiday, holiday)

    assert marked.status == PUBLISHED
    kpis = published_kpis(batch_store, holiday).set_index(KEY)
    assert kpis.loc[("overall", "ALL", "ALL"), "units"] == 1


def test_a_holiday_without_a_sale_is_published_once_its_stock_snapshots_came(
    batch_settings, batch_store, make_world
) -> None:
    """Every store closed: no sale on the day nor yet on the next, but the evening's stock
    snapshots show the day's data has arrived (until 2026-12-07 freshness failed the day)."""
    holiday = date(2018, 12, 25)
    world = make_world("closed")
    world.history(holiday)
    snapshots = [("BT-S1", "BT-P1", 10), ("BT-S2", "BT-P1", 5)]
    world.insert_movements(
        [world.movement(holiday, 23.5, s, p, "snapshot", 0, level) for s, p, level in snapshots]
    )
    calendar = {"date": holiday, "is_holiday": 1, "holiday_name": "Christmas Day", "day_of_week": 2}
    batch_store.insert_df("calendar", pd.DataFrame([calendar]))

    (closed,) = run_batch(batch_settings, holiday, holiday)

    assert closed.status == PUBLISHED


def test_the_range_to_run_defaults_to_yesterday() -> None:
    day = date(2024, 2, 29)
    assert resolve_days(day, None, None) == (day, day)
    assert resolve_days(None, day, None) == (day, day)
    assert resolve_days(None, day, day + timedelta(days=2)) == (day, day + timedelta(days=2))
    first, last = resolve_days(None, None, None)
    assert first == last == datetime.now(UTC).date() - timedelta(days=1)  # yesterday in UTC
    with pytest.raises(BatchError, match="before"):
        resolve_days(None, day, day - timedelta(days=1))
    with pytest.raises(BatchError, match="either"):
        resolve_days(day, day, None)
