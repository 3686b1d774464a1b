"""The daily report opens offline in headless Chromium and shows its charts."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from batch.report import NO_FORECASTS, ReportInputs, write_report
from expectations.gate import ExpectationOutcome

pytestmark = pytest.mark.browser

DAY = date(2019, 6, 10)
CHROMIUM = Path("/usr/bin/chromium")


def report_inputs(with_forecasts: bool) -> ReportInputs:
    days = [DAY - timedelta(days=n) for n in range(27, -1, -1)]
    trend = pd.DataFrame(
        {
            "date": days,
            "revenue": [100.0 + 5 * i for i in range(28)],
            "units": [40 + i for i in range(28)],
            "forecast_units": [38.0 + i for i in range(28)] if with_forecasts else [None] * 28,
            "forecast_actual_units": [40.0 + i for i in range(28)]
            if with_forecasts
            else [None] * 28,
        }
    )
    base = {"date": DAY, "revenue": 10.0, "units": 4, "transactions": 2, "avg_order_value": 5.0}
    kpis = pd.DataFrame(
        [
            {**base, "level": "overall", "store_id": "ALL", "category": "ALL"},
            {**base, "level": "store", "store_id": "S1", "category": "ALL"},
            {**base, "level": "store", "store_id": "S2", "category": "ALL"},
            {**base, "level": "category", "store_id": "ALL", "category": "fruit"},
        ]
    )
    for column in ["unique_customers", "gross_margin", "gross_margin_pct", "sell_through"]:
        kpis[column] = 0.5
    kpis["stockout_rate"] = [0.25, 0.5, 0.0, 0.25]
    kpis["stockout_days"] = [1, 1, 0, 1]
    kpis["tracked_days"] = 4
    for column in ["inventory_turnover", "days_of_supply"]:
        kpis[column] = 3.0
    kpis["forecast_wape"] = 0.2 if with_forecasts else None
    kpis["forecast_bias"] = 0.1 if with_forecasts else None
    rankings = pd.DataFrame(
        {
            "date": DAY,
            "store_id": "ALL",
            "metric": "revenue",
            "direction": "top",
            "rank": [1, 2],
            "product_id": ["P1", "P2"],
            "product_name": ["Apple", "Bread"],
            "category": ["fruit", "bakery"],
            "value": [7.0, 3.0],
        }
    )
    stores = pd.DataFrame(
        {
            "date": DAY,
            "store_id": ["S1", "S2"],
            "store_name": ["North", "South"],
            "rank": [1, 2],
            "revenue_7d": [50.0, 20.0],
            "wow_change": [0.1, None],
        }
    )
    quarantine = pd.DataFrame(
        {
            "batch_date": [DAY],
            "dataset": ["sales"],
            "event_id": ["E-negative"],
            "failed_expectations": ["expect_column_values_to_be_between(quantity)"],
            "row_json": [json.dumps({"quantity": -4})],
        }
    )
    failed = ExpectationOutcome(
        checkpoint="daily_raw_gate",
        suite="raw_sales",
        dataset="sales",
        expectation_type="expect_column_values_to_be_between",
        column="quantity",
        severity="warning",
        check="value range",
        success=False,
        element_count=10,
        unexpected_count=1,
        unexpected_percent=10.0,
        observed_value="1 unexpected of 10",
        kwargs="{}",
        unexpected_rows=(3,),
        data_docs_path="",
    )
    return ReportInputs(
        day=DAY,
        run_id="batch-test",
        kpis=kpis,
        product_rankings=rankings,
        store_rankings=stores,
        trend=trend,
        quarantine=quarantine,
        outcomes=[failed],
        data_docs_index=Path("/data/gx/uncommitted/data_docs/local_site/index.html"),
        forecast_model="demand_forecaster v3" if with_forecasts else None,
    )


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: apt-get install -y chromium (part of `make setup`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield launched
        launched.close()


def render(browser, html: Path) -> object:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    blocked: list[str] = []
    page.route("http*://**", lambda route: (blocked.append(route.request.url), route.abort()))
    page.goto(html.as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
    return page, blocked


def test_the_report_renders_its_charts_offline(browser, tmp_path) -> None:
    html = write_report(report_inputs(with_forecasts=True), tmp_path / "2019-06-10")
    page, blocked = render(browser, html)
    titles = page.locator(".js-plotly-plot .gtitle").all_text_contents()
    assert titles == [
        "Revenue trend",
        "Top products by revenue",
        "Stockouts (share of store x product days out of stock)",
        "Forecast vs actual (units)",
    ]
    assert page.locator(".js-plotly-plot .main-svg").count() >= 4
    assert page.locator(".js-plotly-plot .bars path").count() >= 28 + 2 + 2
    assert blocked == []
    assert "E-negative" in page.locator("table").last.inner_text()
    assert (html.parent / "report.json").is_file() and (html.parent / "report.md").is_file()
    page.close()


def test_without_forecasts_the_report_says_so(browser, tmp_path) -> None:
    html = write_report(report_inputs(with_forecasts=False), tmp_path / "2019-06-10")
    page, _ = render(browser, html)
    assert page.locator(".js-plotly-plot").count() == 3
    assert page.get_by_text(NO_FORECASTS).count() >= 2
    summary = json.loads((html.parent / "report.json").read_text())
    assert summary["forecasts"] == NO_FORECASTS
    assert f"forecast_wape | {NO_FORECASTS}" in (html.parent / "report.md").read_text()
    page.close()
