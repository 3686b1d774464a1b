"""Run the expectation suites on one day's frames through Great Expectations checkpoints.

A file-backed GX context lives under ``DATA_DIR/gx``. Each frame is staged as
``uncommitted/staging/<asset>/<YYYY-MM-DD>.parquet``; a pandas filesystem datasource has one
parquet asset per frame with a daily batch definition, so one checkpoint run with the batch
parameters ``year/month/day`` validates all the frames of a day and updates the Data Docs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from filelock import FileLock
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.data_context.types.base import ProgressBarsConfig

from expectations import suites

log = logging.getLogger(__name__)

RAW_CHECKPOINT = "daily_raw_gate"
KPI_CHECKPOINT = "daily_kpi_gate"
DATASOURCE = "batch_staging"
ROW_ID = suites.ROW_ID
_BATCH_DEFINITION = "daily"
_RAW_ASSETS = {
    "sales": suites.sales_suite,
    "inventory": suites.inventory_suite,
    "volume": suites.volume_suite,
}
_KPI_ASSETS = {"kpis": suites.kpi_suite}
_TEXT_LIMIT = 2000
_STAGING_README = "Frames of the day under validation; removed after each checkpoint run.\n"


@dataclass(frozen=True)
class ExpectationOutcome:
    """The result of one expectation on one day's frame."""

    checkpoint: str
    suite: str
    dataset: str
    expectation_type: str
    column: str
    severity: str
    check: str
    success: bool
    element_count: int | None
    unexpected_count: int | None
    unexpected_percent: float | None
    observed_value: str
    kwargs: str
    unexpected_rows: tuple[int, ...]
    data_docs_path: str


class DataQualityGate:
    """The GX context, suites, validation definitions and checkpoints of the daily batch."""

    def __init__(self, data_root: Path) -> None:
        self.project_dir = Path(data_root) / "gx"
        self.staging_dir = self.project_dir / "uncommitted" / "staging"
        self._lock = FileLock(str(Path(data_root) / "gx.lock"))
        self._registered = False

    @property
    def data_docs_index(self) -> Path:
        """The Data Docs home page."""
        return self.project_dir / "uncommitted" / "data_docs" / "local_site" / "index.html"

    def check_raw(
        self,
        day: date,
        sales: pd.DataFrame,
        inventory: pd.DataFrame,
        volume: pd.DataFrame,
        parameters: Mapping[str, Any],
    ) -> list[ExpectationOutcome]:
        """Validate a day's raw sales, inventory and volume frames (suite parameters bound)."""
        frames = {"sales": sales, "inventory": inventory, "volume": volume}
        return self._run(RAW_CHECKPOINT, day, frames, parameters)

    def check_kpis(self, day: date, kpis: pd.DataFrame) -> list[ExpectationOutcome]:
        """Validate a day's KPI rows before they are published."""
        return self._run(KPI_CHECKPOINT, day, {"kpis": kpis}, {})

    def _run(
        self,
        checkpoint_name: str,
        day: date,
        frames: Mapping[str, pd.DataFrame],
        parameters: Mapping[str, Any],
    ) -> list[ExpectationOutcome]:
        with self._lock:
            context = self._open()
            staged = [self._stage(asset, day, frame) for asset, frame in frames.items()]
            try:
                checkpoint = context.checkpoints.get(checkpoint_name)
                result = checkpoint.run(
                    batch_parameters={
                        "year": day.year,
                        "month": day.month,
                        "day": day.day,
                    },
                    expectation_parameters=dict(parameters),
                )
            finally:
                for path in staged:
                    path.unlink(missing_ok=True)
            outcomes = []
            for identifier, suite_result in result.run_results.items():
                page = self._docs_page(context, identifier)
                dataset = suite_result.meta["active_batch_definition"]["data_asset_name"]
                outcomes += [
                    _outcome(checkpoint_name, suite_result.suite_name, dataset, r, page)
                    for r in suite_result.results
                ]
        failed = [o for o in outcomes if not o.success]
        log.info(
            "%s %s: %d expectations, %d failed; Data Docs at %s",
            checkpoint_name,
            day,
            len(outcomes),
            len(failed),
            self.data_docs_index,
        )
        return outcomes

    def _stage(self, asset: str, day: date, frame: pd.DataFrame) -> Path:
        path = self.staging_dir / asset / f"{day:%Y-%m-%d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = frame.reset_index(drop=True)
        staged.insert(0, ROW_ID, range(len(staged)))
        staged.to_parquet(path, index=False)
        return path

    def _open(self) -> Any:
        """A fresh file context (GX caches the staged file list per datasource object); the
        first one (re)registers the suites, assets and checkpoints from code."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        # An asset is only added when its folder holds a file: keep one there at all times.
        (self.staging_dir / "README.txt").write_text(_STAGING_README)
        context = gx.get_context(mode="file", project_root_dir=str(self.project_dir.parent))
        if self._registered:
            return context
        if context.variables.analytics_enabled is not False:
            context.enable_analytics(False)
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.variables.save()
        datasource = context.data_sources.add_or_update_pandas_filesystem(
            DATASOURCE, base_directory=self.staging_dir
        )
        for name, assets in ((RAW_CHECKPOINT, _RAW_ASSETS), (KPI_CHECKPOINT, _KPI_ASSETS)):
            definitions = []
            for asset_name, build_suite in assets.items():
                batch_definition = _daily_batch_definition(datasource, asset_name)
                suite = context.suites.add_or_update(build_suite())
                definitions.append(
                    context.validation_definitions.add_or_update(
                        gx.ValidationDefinition(
                            name=f"{asset_name}_daily", data=batch_definition, suite=suite
                        )
                    )
                )
            context.checkpoints.add_or_update(
                gx.Checkpoint(
                    name=name,
                    validation_definitions=definitions,
                    actions=[UpdateDataDocsAction(name="update_data_docs")],
                    result_format={
                        "result_format": "COMPLETE",
                        "unexpected_index_column_names": [ROW_ID],
                    },
                )
            )
        self._registered = True
        return gx.get_context(mode="file", project_root_dir=str(self.project_dir.parent))

    @staticmethod
    def _docs_page(context: Any, identifier: Any) -> str:
        urls = context.get_docs_sites_urls(resource_identifier=identifier)
        url = next((u.get("site_url") for u in urls if u.get("site_url")), None)
        return (url or "").removeprefix("file://")


def _daily_batch_definition(datasource: Any, asset_name: str) -> Any:
    try:
        asset = datasource.get_asset(asset_name)
    except LookupError:
        asset = datasource.add_parquet_asset(asset_name)
    try:
        return asset.get_batch_definition(_BATCH_DEFINITION)
    except KeyError:
        return asset.add_batch_definition_daily(
            _BATCH_DEFINITION,
            regex=rf"{asset_name}/(?P<year>\d{{4}})-(?P<month>\d{{2}})-(?P<day>\d{{2}})\.parquet",
        )


def _outcome(
    checkpoint: str, suite: str, dataset: str, validation: Any, page: str
) -> ExpectationOutcome:
    config = validation.expectation_config
    kwargs = dict(config.kwargs)
    result = validation.result or {}
    raised = _raised_message(validation.exception_info)
    observed = result.get("observed_value")
    if raised:
        observed = f"error: {raised}"
    elif observed is None and result.get("unexpected_count") is not None:
        observed = f"{result['unexpected_count']} unexpected of {result.get('element_count')}"
    return ExpectationOutcome(
        checkpoint=checkpoint,
        suite=suite,
        dataset=dataset,
        expectation_type=config.type,
        column=_column_of(kwargs),
        severity=(config.meta or {}).get("severity", suites.CRITICAL),
        check=(config.meta or {}).get("check", ""),
        success=bool(validation.success) and not raised,
        element_count=result.get("element_count"),
        unexpected_count=result.get("unexpected_count"),
        unexpected_percent=result.get("unexpected_percent"),
        observed_value=str(observed)[:_TEXT_LIMIT],
        kwargs=json.dumps(kwargs, default=str)[:_TEXT_LIMIT],
        unexpected_rows=tuple(
            sorted(int(i[ROW_ID] if isinstance(i, dict) else i) for i in _index_list(result))
        ),
        data_docs_path=page,
    )


def _index_list(result: Mapping[str, Any]) -> list[Any]:
    return list(result.get("unexpected_index_list") or [])


def _column_of(kwargs: Mapping[str, Any]) -> str:
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_A" in kwargs:
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    return ",".join(kwargs.get("column_list") or [])


def _raised_message(exception_info: Any) -> str:
    """GX reports exceptions either flat or keyed by metric; return the first message, if any."""
    infos = exception_info.values() if isinstance(exception_info, dict) else []
    if isinstance(exception_info, dict) and "raised_exception" in exception_info:
        infos = [exception_info]
    for info in infos:
        if isinstance(info, dict) and info.get("raised_exception"):
            return str(info.get("exception_message") or "exception")
    return ""
