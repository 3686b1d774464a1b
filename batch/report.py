"""The daily business report: one self-contained HTML page with charts, plus JSON and Markdown.

The page inlines plotly.js once, so it opens offline from disk. Files go to
``DATA_DIR/reports/<date>/report.{html,json,md}``.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from expectations.gate import ExpectationOutcome
from expectations.policy import label

log = logging.getLogger(__name__)

NO_FORECASTS = "no forecasts yet"
QUARANTINE_ROWS_SHOWN = 500
_KPI_TABLE_COLUMNS = [
    "revenue",
    "units",
    "transactions",
    "avg_order_value",
    "unique_customers",
    "gross_margin",
    "gross_margin_pct",
    "sell_through",
    "stockout_rate",
    "inventory_turnover",
    "days_of_supply",
    "forecast_wape",
    "forecast_bias",
]
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1f2933; }
h1 { margin-bottom: 0; } .sub { color: #52606d; margin-top: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #d9e2ec; border-radius: 8px; padding: 10px 14px; min-width: 130px; }
.card b { display: block; font-size: 1.3em; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 16px; }
.chart { border: 1px solid #d9e2ec; border-radius: 8px; padding: 8px; }
table { border-collapse: collapse; margin: 8px 0 24px; font-size: 0.9em; }
th, td { border: 1px solid #d9e2ec; padding: 4px 8px; text-align: right; }
th { background: #f0f4f8; } td:first-child, th:first-child { text-align: left; }
.warn { color: #b44d12; } .ok { color: #1f7a3f; } .note { color: #52606d; font-style: italic; }
code { font-size: 0.85em; word-break: break-all; }
"""


@dataclass(frozen=True)
class ReportInputs:
    """Everything one day's report shows."""

    day: date
    run_id: str
    kpis: pd.DataFrame
    product_rankings: pd.DataFrame
    store_rankings: pd.DataFrame
    trend: pd.DataFrame
    quarantine: pd.DataFrame
    outcomes: list[ExpectationOutcome]
    data_docs_index: Path
    forecast_model: str | None


def revenue_trend_figure(trend: pd.DataFrame) -> go.Figure:
    """Daily revenue with its 7-day mean."""
    frame = trend.sort_values("date")
    figure = go.Figure()
    figure.add_bar(x=frame["date"], y=frame["revenue"], name="revenue")
    figure.add_scatter(
        x=frame["date"],
        y=frame["revenue"].rolling(7, min_periods=1).mean(),
        name="7-day mean",
        mode="lines",
    )
    return _layout(figure, "Revenue trend", "revenue")


def top_products_figure(product_rankings: pd.DataFrame) -> go.Figure:
    """The top products of all stores by revenue."""
    top = product_rankings.query(
        "store_id == 'ALL' and metric == 'revenue' and direction == 'top'"
    ).sort_values("rank", ascending=False)
    figure = go.Figure(go.Bar(x=top["value"], y=top["product_name"], orientation="h"))
    return _layout(figure, "Top products by revenue", "revenue")


def stockouts_figure(kpis: pd.DataFrame) -> go.Figure:
    """The stockout rate of each store."""
    stores = kpis.query("level == 'store'").sort_values("store_id")
    figure = go.Figure(
        go.Bar(
            x=stores["store_id"],
            y=stores["stockout_rate"],
            text=[
                f"{d} of {t} days"
                for d, t in zip(stores["stockout_days"], stores["tracked_days"], strict=True)
            ],
        )
    )
    figure.update_yaxes(tickformat=".0%")
    return _layout(
        figure, "Stockouts (share of store x product days out of stock)", "stockout rate"
    )


def forecast_figure(trend: pd.DataFrame) -> go.Figure | None:
    """The champion's forecast beside the actual units it forecast; None without forecasts."""
    frame = trend.dropna(subset=["forecast_units"]).sort_values("date")
    if frame.empty:
        return None
    figure = go.Figure()
    figure.add_bar(x=frame["date"], y=frame["forecast_actual_units"], name="actual units")
    figure.add_bar(x=frame["date"], y=frame["forecast_units"], name="forecast units")
    figure.update_layout(barmode="group")
    figure.update_xaxes(type="category")
    return _layout(figure, "Forecast vs actual (units)", "units")


def _layout(figure: go.Figure, title: str, y_title: str) -> go.Figure:
    figure.update_layout(
        title=title,
        yaxis_title=y_title,
        height=360,
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
        template="plotly_white",
    )
    return figure


def write_report(inputs: ReportInputs, out_dir: Path) -> Path:
    """Write report.html, report.json and report.md for a day; return the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(inputs), encoding="utf-8")
    (out_dir / "report.json").write_text(
        json.dumps(report_summary(inputs), indent=2, default=str), encoding="utf-8"
    )
    (out_dir / "report.md").write_text(render_markdown(inputs), encoding="utf-8")
    log.info("daily report for %s written to %s", inputs.day, html_path)
    return html_path


def _overall(kpis: pd.DataFrame) -> dict[str, object]:
    rows = kpis.query("level == 'overall'")
    return {} if rows.empty else {k: _plain(v) for k, v in rows.iloc[0].items()}


def _plain(value: object) -> object:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def _failed(outcomes: list[ExpectationOutcome]) -> list[ExpectationOutcome]:
    return [o for o in outcomes if not o.success]


def report_summary(inputs: ReportInputs) -> dict[str, object]:
    """The report's content as plain data (report.json)."""
    failed = _failed(inputs.outcomes)
    return {
        "date": inputs.day.isoformat(),
        "run_id": inputs.run_id,
        "overall": _overall(inputs.kpis),
        "kpis": _records(inputs.kpis),
        "store_rankings": _records(inputs.store_rankings),
        "product_rankings": _records(inputs.product_rankings),
        "forecast_model": inputs.forecast_model,
        "forecasts": "available" if inputs.forecast_model else NO_FORECASTS,
        "data_quality": {
            "expectations": len(inputs.outcomes),
            "failed": [
                {
                    "expectation": label(o),
                    "dataset": o.dataset,
                    "severity": o.severity,
                    "unexpected_count": o.unexpected_count,
                    "observed_value": o.observed_value,
                }
                for o in failed
            ],
            "data_docs": str(inputs.data_docs_index),
        },
        "quarantined_rows": len(inputs.quarantine),
        "quarantine": _records(inputs.quarantine.head(QUARANTINE_ROWS_SHOWN)),
    }


def _records(frame: pd.DataFrame) -> list[dict[str, object]]:
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def _number(value: object, kind: str = "num") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "n/a"
    if kind == "pct":
        return f"{float(value):.1%}"
    if kind == "int":
        return f"{int(value):,}"
    return f"{float(value):,.2f}"


def _cards(overall: dict[str, object], forecast_model: str | None) -> str:
    cards = [
        ("Revenue", _number(overall.get("revenue"))),
        ("Units", _number(overall.get("units"), "int")),
        ("Transactions", _number(overall.get("transactions"), "int")),
        ("Avg order value", _number(overall.get("avg_order_value"))),
        ("Customers", _number(overall.get("unique_customers"), "int")),
        ("Gross margin", _number(overall.get("gross_margin_pct"), "pct")),
        ("Sell-through", _number(overall.get("sell_through"), "pct")),
        ("Stockout rate", _number(overall.get("stockout_rate"), "pct")),
        ("Days of supply", _number(overall.get("days_of_supply"))),
        (
            "Forecast WAPE",
            _number(overall.get("forecast_wape"), "pct") if forecast_model else NO_FORECASTS,
        ),
    ]
    return "".join(
        f'<div class="card">{html.escape(name)}<b>{html.escape(value)}</b></div>'
        for name, value in cards
    )


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return '<p class="note">none</p>'
    return frame.to_html(index=False, na_rep="n/a", float_format=lambda v: f"{v:,.3f}", border=0)


def _chart(figure: go.Figure | None, empty_note: str) -> str:
    if figure is None:
        return f'<div class="chart"><p class="note">{html.escape(empty_note)}</p></div>'
    return (
        '<div class="chart">'
        + pio.to_html(figure, full_html=False, include_plotlyjs=False, default_width="100%")
        + "</div>"
    )


def render_html(inputs: ReportInputs) -> str:
    """The self-contained HTML page."""
    overall = _overall(inputs.kpis)
    failed = _failed(inputs.outcomes)
    forecast_note = (
        f"forecasts of {inputs.forecast_model}" if inputs.forecast_model else NO_FORECASTS
    )
    charts = "".join(
        [
            _chart(revenue_trend_figure(inputs.trend), "no sales"),
            _chart(top_products_figure(inputs.product_rankings), "no products"),
            _chart(stockouts_figure(inputs.kpis), "no stock data"),
            _chart(forecast_figure(inputs.trend), NO_FORECASTS),
        ]
    )
    quality = pd.DataFrame(
        [
            {
                "expectation": label(o),
                "dataset": o.dataset,
                "severity": o.severity,
                "unexpected": o.unexpected_count,
                "observed": o.observed_value[:200],
            }
            for o in failed
        ]
    )
    quarantine = inputs.quarantine.head(QUARANTINE_ROWS_SHOWN)[
        ["dataset", "event_id", "failed_expectations", "row_json"]
    ]
    kpi_columns = ["store_id", "category", *_KPI_TABLE_COLUMNS]
    sections = [
        f"<h1>Daily business report — {inputs.day.isoformat()}</h1>",
        f'<p class="sub">run {html.escape(inputs.run_id)} · {html.escape(forecast_note)}</p>',
        f'<div class="cards">{_cards(overall, inputs.forecast_model)}</div>',
        f'<div class="charts">{charts}</div>',
        "<h2>Stores</h2>",
        _table(inputs.kpis.query("level == 'store'")[kpi_columns].drop(columns="category")),
        "<h2>Categories</h2>",
        _table(inputs.kpis.query("level == 'category'")[kpi_columns].drop(columns="store_id")),
        "<h2>Store ranking (trailing 7 days, week over week)</h2>",
        _table(inputs.store_rankings.drop(columns=["date"], errors="ignore")),
        "<h2>Products across all stores</h2>",
        _table(
            inputs.product_rankings.query("store_id == 'ALL'")
            .sort_values(["metric", "direction", "rank"])
            .drop(columns=["date", "store_id"], errors="ignore")
        ),
        "<h2>Data quality</h2>",
        f"<p>{len(inputs.outcomes)} expectations checked, {len(failed)} failed. "
        f"Data Docs: <code>{html.escape(str(inputs.data_docs_index))}</code></p>",
        _table(quality),
        f'<h2 class="{"warn" if len(quarantine) else "ok"}">Quarantined rows '
        f"({len(inputs.quarantine)})</h2>",
        _table(quarantine),
    ]
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Daily report {inputs.day.isoformat()}</title>"
        f"<style>{_STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
        + "\n".join(sections)
        + "</body></html>"
    )


def render_markdown(inputs: ReportInputs) -> str:
    """A short Markdown summary (report.md)."""
    overall = _overall(inputs.kpis)
    lines = [
        f"# Daily business report — {inputs.day.isoformat()}",
        "",
        f"Run `{inputs.run_id}`.",
        "",
        "| KPI | value |",
        "|---|---|",
    ]
    for column in _KPI_TABLE_COLUMNS:
        kind = "pct" if column.endswith(("_pct", "_rate", "through", "wape", "bias")) else "num"
        value = _number(overall.get(column), kind)
        if column.startswith("forecast_") and not inputs.forecast_model:
            value = NO_FORECASTS
        lines.append(f"| {column} | {value} |")
    top = inputs.product_rankings.query(
        "store_id == 'ALL' and metric == 'revenue' and direction == 'top'"
    ).sort_values("rank")
    lines += ["", "## Top products", ""]
    lines += [f"{r.rank}. {r.product_name} — {_number(r.value)}" for r in top.itertuples()]
    lines += ["", "## Stores", ""]
    lines += [
        f"{r.rank}. {r.store_name} — 7-day revenue {_number(r.revenue_7d)}, "
        f"week over week {_number(r.wow_change, 'pct')}"
        for r in inputs.store_rankings.sort_values("rank").itertuples()
    ]
    failed = _failed(inputs.outcomes)
    lines += [
        "",
        "## Data quality",
        "",
        f"{len(failed)} of {len(inputs.outcomes)} expectations failed.",
    ]
    lines += [
        f"- {o.severity}: {label(o)} on {o.dataset}: {o.observed_value[:120]}" for o in failed
    ]
    lines += ["", f"Quarantined rows: {len(inputs.quarantine)}.", ""]
    return "\n".join(lines)
