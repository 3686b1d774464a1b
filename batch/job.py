"""The daily batch: gate each day's raw data, compute KPIs and rankings, publish them with a report.

For every day of the range:
1. the raw sales and inventory of the day (deduplicated) and its volume and freshness go through
   the ``daily_raw_gate`` checkpoint; the results land in ``data_quality_results``;
2. a critical failure stops the day: nothing is published for it and earlier results stay;
   rows that failed a warning go to ``quarantine`` and are left out of the KPIs;
3. the KPIs and rankings of the days that passed are computed in the store from the daily views
   (or, for a day with quarantined or duplicate rows, from the raw table), checked by the
   ``daily_kpi_gate`` checkpoint, and published: the day's rows of earlier runs are replaced;
4. a report is written to ``DATA_DIR/reports/<date>/``.

Run it with ``retail batch --date D`` or ``spark-submit batch/job.py --date D``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from batch import views
from common.settings import Settings, get_settings
from common.store import Store, migrate, open_store

if TYPE_CHECKING:
    from expectations.gate import DataQualityGate, ExpectationOutcome
    from expectations.policy import GateDecision

log = logging.getLogger(__name__)

HISTORY_DAYS = 28
VOLUME_WINDOW_DAYS = 7
PUBLISHED = "published"
FAILED = "failed"
_PUBLISHED_TABLES = ("daily_kpis", "product_rankings", "store_rankings")


class BatchError(RuntimeError):
    """The batch cannot run at all (bad dates, no catalog)."""


@dataclass
class DayResult:
    """What happened to one day of the batch."""

    day: date
    status: str = FAILED
    critical: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    quarantined_rows: int = 0
    kpi_source: str = ""
    report_path: Path | None = None


@dataclass
class _CheckedDay:
    decision: GateDecision
    sources: dict[str, str]


def default_day() -> date:
    """Yesterday, in UTC."""
    return datetime.now(UTC).date() - timedelta(days=1)


def resolve_days(
    day: date | None, date_from: date | None, date_to: date | None
) -> tuple[date, date]:
    """The range to run: one day, an inclusive range, or yesterday."""
    if day is not None:
        if date_from or date_to:
            raise BatchError("give either --date or --from/--to, not both")
        return day, day
    if date_from is None and date_to is None:
        yesterday = default_day()
        return yesterday, yesterday
    first, last = date_from or date_to, date_to or date_from
    if last < first:
        raise BatchError(f"--to {last} is before --from {first}")
    return first, last


def new_run_id() -> str:
    """A unique id for one batch run."""
    return f"batch-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def run_batch(settings: Settings, date_from: date, date_to: date) -> list[DayResult]:
    """Run the batch for every day from ``date_from`` to ``date_to`` (inclusive)."""
    from expectations.gate import DataQualityGate

    if date_to < date_from:
        raise BatchError(f"the range ends ({date_to}) before it starts ({date_from})")
    store = open_store(settings)
    migrate(store)
    run_id = new_run_id()
    started = pd.Timestamp.now(tz="UTC")
    days = list(pd.date_range(date_from, date_to, freq="D").date)
    products, stores = views.products(store), views.stores(store)
    if products.empty or stores.empty:
        raise BatchError(
            "the catalog (tables products and stores) is empty: run `retail generate backfill` first"
        )
    history_first = date_from - timedelta(days=HISTORY_DAYS - 1)
    views.repair_daily_views(store, history_first - timedelta(days=VOLUME_WINDOW_DAYS), date_to)
    gate = DataQualityGate(settings.data_root)
    log.info("batch %s: %s to %s (%d days)", run_id, date_from, date_to, len(days))

    results = {day: DayResult(day) for day in days}
    checked: dict[date, _CheckedDay] = {}
    for day in days:
        outcome = _check_raw_day(store, gate, settings, run_id, day, products, stores)
        result = results[day]
        _note(result, outcome.decision)
        if outcome.decision.passed:
            checked[day] = outcome
        else:
            _record_run(store, run_id, result, started, gate.data_docs_index)

    if checked:
        scope = views.Scope(
            days=tuple(days),
            run_dates=tuple(sorted(checked)),
            run_id=run_id,
            raw_sales_days=tuple(d for d, c in checked.items() if c.sources["sales"] == "raw"),
            raw_inventory_days=tuple(
                d for d, c in checked.items() if c.sources["inventory"] == "raw"
            ),
            history_days=HISTORY_DAYS,
        )
        computed = compute_outputs(store, scope, top_n=settings.batch_top_n)
        for day, check in checked.items():
            _finish_day(store, gate, settings, run_id, results[day], check, computed, started)
    return [results[day] for day in days]


def _note(result: DayResult, decision: GateDecision) -> None:
    from expectations.policy import label

    result.critical = [label(o) for o in decision.critical]
    result.warnings = [label(o) for o in decision.warnings]
    result.quarantined_rows = len(decision.quarantine)


def _check_raw_day(
    store: Store,
    gate: DataQualityGate,
    settings: Settings,
    run_id: str,
    day: date,
    products: pd.DataFrame,
    stores: pd.DataFrame,
) -> _CheckedDay:
    from expectations.policy import decide
    from expectations.suites import volume_parameters

    frames = {name: views.raw_events(store, table, day) for name, table in views.RAW_TABLES.items()}
    holiday = views.is_holiday(store, day)
    volume = _volume_frame(store, day, frames).assign(is_holiday=holiday)
    if holiday:  # closed stores sell nothing: the day has arrived as far as any of its events
        latest = volume[["latest_sales_event_time", "latest_inventory_event_time"]].max(axis=1)
        volume["latest_sales_event_time"] = latest
    fresh_after = datetime.combine(day + timedelta(days=1), time(), UTC) - timedelta(
        hours=settings.batch_freshness_hours
    )
    parameters = {
        "store_ids": sorted(stores["store_id"]),
        "product_ids": sorted(products["product_id"]),
        "product_categories": sorted(
            zip(products["product_id"], products["category"], strict=True)
        ),
        "sales_fresh_after": fresh_after.isoformat(),
        **volume_parameters(holiday),
    }
    outcomes = gate.check_raw(day, frames["sales"], frames["inventory"], volume, parameters)
    decision = decide(day, frames, outcomes, settings.batch_quarantine_max_percent)
    _record_outcomes(store, run_id, day, decision.outcomes)
    sources = {}
    if decision.passed:
        quarantine = decision.quarantine.assign(run_id=run_id)
        store.insert_df("quarantine", quarantine)
        for name, table in views.RAW_TABLES.items():
            counts = views.daily_row_counts(store, table, day, day)
            clean = (quarantine["dataset"] == name).sum() == 0
            same = int(counts["view_rows"].iloc[0]) == len(frames[name])
            sources[name] = "view" if clean and same else "raw"
    return _CheckedDay(decision=decision, sources=sources)


def _volume_frame(store: Store, day: date, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row: the day's rows against the mean of the days before it, and the newest event."""
    row: dict[str, object] = {"date": day}
    for name, table in views.RAW_TABLES.items():
        history = views.daily_row_counts(
            store, table, day - timedelta(days=VOLUME_WINDOW_DAYS), day - timedelta(days=1)
        )
        first = views.first_view_day(store, table)
        known = history[history["date"] >= first] if first else history.iloc[0:0]
        mean = float(known["view_rows"].mean()) if len(known) else None
        rows = len(frames[name])
        latest = views.latest_event_time(store, table, day)
        row[f"{name}_rows"] = rows
        row[f"{name}_rows_trailing_mean"] = mean
        row[f"{name}_volume_ratio"] = rows / mean if mean else None
        row[f"latest_{name}_event_time"] = latest
    frame = pd.DataFrame([row])
    for name in views.RAW_TABLES:
        column = f"latest_{name}_event_time"
        frame[column] = pd.to_datetime(frame[column], utc=True)
        for suffix in ("_rows_trailing_mean", "_volume_ratio"):
            frame[name + suffix] = frame[name + suffix].astype("float64")
    return frame


def compute_outputs(store: Store, scope: views.Scope, *, top_n: int) -> dict[str, pd.DataFrame]:
    """KPIs, rankings, the revenue trend and the stored forecasts of ``scope`` (pandas frames).

    ClickHouse computes them from the daily views (the scope's raw days from the raw tables,
    without the run's quarantined rows); only the result rows leave the store.
    """
    from batch import kpis, rankings

    with store.session():
        computed = {
            "kpis": kpis.daily_kpis(store, scope),
            "product_rankings": rankings.product_rankings(store, scope, top_n),
            "store_rankings": rankings.store_rankings(store, scope),
            "trend": kpis.daily_trend(store, scope),
            "forecasts": views.forecasts(store, scope),
        }
    for frame in computed.values():
        frame["date"] = pd.to_datetime(frame["date"]).dt.date
    ranked = computed["store_rankings"]
    ranked[["rank_prev_week", "rank_change"]] = ranked[["rank_prev_week", "rank_change"]].astype(
        "Int64"
    )
    return computed


def _finish_day(
    store: Store,
    gate: DataQualityGate,
    settings: Settings,
    run_id: str,
    result: DayResult,
    check: _CheckedDay,
    computed: dict[str, pd.DataFrame],
    started: pd.Timestamp,
) -> None:
    from batch.report import ReportInputs, write_report
    from expectations.policy import label

    day = result.day
    kpis = _for_day(computed["kpis"], day)
    outcomes = gate.check_kpis(day, kpis)
    _record_outcomes(store, run_id, day, outcomes)
    failed = [o for o in outcomes if not o.success]
    result.critical += [label(o) for o in failed if o.severity == "critical"]
    result.warnings += [label(o) for o in failed if o.severity != "critical"]
    result.kpi_source = ",".join(f"{k}:{v}" for k, v in sorted(check.sources.items()))
    if result.critical:
        store.execute(
            "DELETE FROM quarantine WHERE batch_date = {day:Date} AND run_id = {run_id:String}",
            views.day_params(day, run_id=run_id),
        )
        _record_run(store, run_id, result, started, gate.data_docs_index)
        return
    published = {
        "daily_kpis": kpis,
        "product_rankings": _for_day(computed["product_rankings"], day),
        "store_rankings": _for_day(computed["store_rankings"], day),
    }
    _publish(store, run_id, day, published)
    day_forecasts = _for_day(computed["forecasts"], day)
    model = None
    if not day_forecasts.empty:
        latest = day_forecasts.iloc[-1]
        model = f"{latest['model_name']} v{latest['model_version']}"
    trend = computed["trend"]
    window = trend[(trend["date"] > day - timedelta(days=HISTORY_DAYS)) & (trend["date"] <= day)]
    result.status = PUBLISHED
    result.report_path = write_report(
        ReportInputs(
            day=day,
            run_id=run_id,
            kpis=kpis,
            product_rankings=published["product_rankings"],
            store_rankings=published["store_rankings"],
            trend=window,
            quarantine=check.decision.quarantine,
            outcomes=[*check.decision.outcomes, *outcomes],
            data_docs_index=gate.data_docs_index,
            forecast_model=model,
        ),
        settings.data_root / "reports" / day.isoformat(),
    )
    _record_run(store, run_id, result, started, gate.data_docs_index)


def _for_day(frame: pd.DataFrame, day: date) -> pd.DataFrame:
    dates = pd.to_datetime(frame["date"]).dt.date
    return frame[dates == day].reset_index(drop=True)


def _publish(store: Store, run_id: str, day: date, tables: dict[str, pd.DataFrame]) -> None:
    """Insert the day's rows of this run, then delete the day's rows of every other run."""
    with store.session():
        for table, frame in tables.items():
            store.insert_df(table, frame.assign(run_id=run_id))
        for table in (*_PUBLISHED_TABLES, "quarantine"):
            day_column = "batch_date" if table == "quarantine" else "date"
            store.execute(
                f"DELETE FROM {table} WHERE {day_column} = {{day:Date}} "  # noqa: S608 - constant names
                "AND run_id != {run_id:String}",
                views.day_params(day, run_id=run_id),
            )
    log.info(
        "published %s: %s",
        day,
        ", ".join(f"{len(frame)} rows to {table}" for table, frame in tables.items()),
    )


def _record_outcomes(
    store: Store, run_id: str, day: date, outcomes: list[ExpectationOutcome]
) -> None:
    frame = pd.DataFrame(
        [
            {
                "run_id": run_id,
                "batch_date": day,
                "checkpoint": o.checkpoint,
                "suite": o.suite,
                "expectation_type": o.expectation_type,
                "column": o.column,
                "severity": o.severity,
                "success": int(o.success),
                "element_count": o.element_count,
                "unexpected_count": o.unexpected_count,
                "unexpected_percent": o.unexpected_percent,
                "observed_value": o.observed_value,
                "kwargs": o.kwargs,
                "data_docs_path": o.data_docs_path,
            }
            for o in outcomes
        ]
    )
    for column in ("element_count", "unexpected_count"):
        frame[column] = frame[column].astype("Int64")
    frame["unexpected_percent"] = frame["unexpected_percent"].astype("float64")
    store.insert_df("data_quality_results", frame)


def _record_run(
    store: Store, run_id: str, result: DayResult, started: pd.Timestamp, docs: Path
) -> None:
    detail = "; ".join(result.critical) if result.status == FAILED else "; ".join(result.warnings)
    store.insert_df(
        "batch_runs",
        pd.DataFrame(
            [
                {
                    "run_id": run_id,
                    "batch_date": result.day,
                    "status": result.status,
                    "critical_failures": len(result.critical),
                    "warnings": len(result.warnings),
                    "quarantined_rows": result.quarantined_rows,
                    "kpi_source": result.kpi_source,
                    "report_path": str(result.report_path or ""),
                    "data_docs_path": str(docs),
                    "detail": detail[:4000],
                    "started_at": started,
                }
            ]
        ),
    )
    if result.status == FAILED:
        log.error("%s not published: %s", result.day, detail)


def main(argv: list[str] | None = None) -> int:
    """Entry point for spark-submit: ``batch/job.py [--date D | --from D --to D]``."""
    from common.logs import configure_logging

    parser = argparse.ArgumentParser(description="Run the daily batch (default: yesterday).")
    parser.add_argument("--date", type=date.fromisoformat, help="one day, YYYY-MM-DD")
    parser.add_argument("--from", dest="date_from", type=date.fromisoformat)
    parser.add_argument("--to", dest="date_to", type=date.fromisoformat)
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings)
    try:
        first, last = resolve_days(args.date, args.date_from, args.date_to)
        results = run_batch(settings, first, last)
    except BatchError as exc:
        log.error("%s", exc)
        return 2
    for result in results:
        log.info(
            "%s %s: %d critical, %d warnings, %d quarantined, report %s",
            result.day,
            result.status,
            len(result.critical),
            len(result.warnings),
            result.quarantined_rows,
            result.report_path or "-",
        )
    return 0 if all(r.status == PUBLISHED for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
