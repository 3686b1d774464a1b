"""The API's view of the world, kept current in the background.

Every ``SERVING_STORE_REFRESH_S`` the store reader process (:mod:`serving.reader`) sends the
serving tables that changed, and a thread folds them into the snapshot (:mod:`serving.snapshot`);
every ``SERVING_ALIAS_CHECK_S`` another thread re-resolves the champion aliases
(:mod:`serving.registry`). Requests only read the latest snapshot and champion info: a slow
store or registry delays freshness, never an answer.

When the demand model's champion moves, the forecasts of the new version normally arrive from
``retail promote`` (it refreshes them). If none of the new version's forecasts are stored
``SERVING_REFRESH_AFTER_S`` after the API first saw the move (and ``SERVING_REFRESH_FORECASTS``
is on), the API recomputes them itself with ``training.forecast.refresh_forecasts``, once per
version per that interval; until then it answers with the forecasts it has, stamped with the
version that made them. With the same setting on, it also rolls them forward: once sales are
stored on a day after the forecasts' first day (the next day has begun), it recomputes them
from the day after the last whole day, once per such day.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from common.models import record_model_event
from common.settings import Settings
from common.store import Store, open_store
from serving.reader import StoreReaderProcess
from serving.registry import JOB, ChampionInfo, ModelWatcher
from serving.scoring import OnDemandScorer
from serving.snapshot import ServingData, StoreRead, apply_read

log = logging.getLogger(__name__)

Refresher = Callable[[str], int]
DEFAULT_REFRESH_HORIZON = 14
ROLL_RETRY_S = 600.0  # a roll-forward that failed is tried again after this long


def freeze_long_lived_objects() -> None:
    """Take every object alive now out of the cyclic GC's view (``gc.freeze``).

    Called after the rare events that create many long-lived objects (the first snapshot, a new
    champion and the libraries it imports): a full collection over them took up to 0.6 s here,
    a pause of every request in flight. Refcounting still frees what is replaced later. Not
    called per request, so the cyclic garbage of requests is still collected.
    """
    gc.collect()
    gc.freeze()


class ServingState:
    """The snapshot, the champions and the loop that keeps them current."""

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        client: Any = None,
        refresher: Refresher | None = None,
        scorer: OnDemandScorer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.demand_model = settings.serving_demand_model
        self.stock_model = settings.serving_stock_model
        self.watchers = {
            name: ModelWatcher(name, settings, self.store, client)
            for name in dict.fromkeys((self.demand_model, self.stock_model))
        }
        self.scorer = scorer or OnDemandScorer(settings, self.store)
        self.reader = StoreReaderProcess(settings, self.demand_model)
        self.data = ServingData()
        self.store_error: str | None = None
        self.started_at = dt.datetime.now(dt.UTC)
        self.forecast_refresh: dict[str, Any] = {}
        self._refresher = refresher or self._refresh_with_training
        self._champion_seen: dict[str, float] = {}
        self._refresh_tried: dict[str, float] = {}
        # version -> (the sale day it rolled for, whether that worked, when it was tried)
        self._rolled_for: dict[str, tuple[dt.date, bool, float]] = {}
        self._refresh_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def champion(self, name: str) -> ChampionInfo | None:
        watcher = self.watchers.get(name)
        return watcher.info if watcher else None

    @property
    def ready(self) -> bool:
        """The store has been read, its last read succeeded and the forecasts could be read."""
        data = self.data
        return (
            data.checked_at is not None
            and self.store_error is None
            and "forecasts" not in data.table_errors
        )

    def start(self) -> None:
        """Start the store reader and the two background loops (store and registry)."""
        import mlflow

        # models:/ URIs (metadata, Spark models) resolve against the process-wide registry URI.
        mlflow.set_tracking_uri(self.settings.mlflow_tracking_uri)
        self.reader.start()
        for name, loop in (
            ("serving-store", self._store_loop),
            ("serving-registry", self._registry_loop),
        ):
            thread = threading.Thread(target=loop, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.reader.stop()
        for watcher in self.watchers.values():
            watcher.close()

    def apply(self, read: StoreRead) -> None:
        """Fold one look at the store into the snapshot; a failed look keeps the last one."""
        if read.store_error is not None:
            if self.store_error is None:
                log.error(
                    "could not read the store (answers keep the last snapshot): %s",
                    read.store_error,
                )
            self.store_error = read.store_error[:500]
            return
        first = self.data.checked_at is None
        self.data = apply_read(self.data, read)
        self.store_error = None
        if first:
            freeze_long_lived_objects()
        unconverted = [t for t in read.tables if t in self.data.table_errors]
        if unconverted:
            self.reader.read_now(again=unconverted)

    def check_models(self) -> None:
        """Re-resolve every champion alias (one registry call each)."""
        before = [w.info for w in self.watchers.values()]
        for watcher in self.watchers.values():
            try:
                watcher.check()
            except Exception:
                log.exception("checking %s@%s failed", watcher.name, watcher.alias)
        if before != [w.info for w in self.watchers.values()]:
            freeze_long_lived_objects()

    def refresh_forecasts_when_due(self) -> None:
        """Start a forecast refresh when the champion's forecasts stayed missing, or when sales
        came on a day after their first day (see module)."""
        champion = self.champion(self.demand_model)
        running = self._refresh_thread is not None and self._refresh_thread.is_alive()
        if not self.settings.serving_refresh_forecasts or champion is None or running:
            return
        if not self.ready:
            return
        if champion.version in self.data.forecast_versions:
            reason = self._roll_forward_reason(champion.version)
        else:
            reason = self._missing_reason(champion.version)
        if reason is None:
            return
        self._refresh_thread = threading.Thread(
            target=self._run_refresh,
            args=(champion.version, reason),
            name="forecast-refresh",
            daemon=True,
        )
        self._refresh_thread.start()

    def _missing_reason(self, version: str) -> str | None:
        now = time.monotonic()
        wait = self.settings.serving_refresh_after_s
        seen = self._champion_seen.setdefault(version, now)
        tried = self._refresh_tried.get(version)
        if now - seen < wait or (tried is not None and now - tried < max(wait, 60.0)):
            return None
        self._refresh_tried[version] = now
        return "no stored forecasts of the champion"

    def _roll_forward_reason(self, version: str) -> str | None:
        """Sales came on a day after the forecasts' first day (not after today: a till clock
        ahead does not count). Once per such day, again after a failed try."""
        origin, latest = self.data.forecast_origin, self.data.latest_sale_at
        if origin is None or latest is None:
            return None
        day = min(latest.date(), dt.datetime.now(dt.UTC).date())
        if day <= origin:
            return None
        now = time.monotonic()
        tried = self._rolled_for.get(version)
        if tried is not None and tried[0] == day and (tried[1] or now - tried[2] < ROLL_RETRY_S):
            return None
        self._rolled_for[version] = (day, False, now)
        return f"sales of {day} came after the forecasts' first day {origin}"

    def _run_refresh(self, version: str, reason: str) -> None:
        started = dt.datetime.now(dt.UTC)
        self.forecast_refresh = {
            "version": version,
            "state": "running",
            "reason": reason,
            "started_at": started,
        }
        self._event(version, "forecast_refresh_started", reason)
        try:
            rows = self._refresher(self.demand_model)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            log.exception(
                "refreshing the forecasts of %s version %s failed", self.demand_model, version
            )
            self.forecast_refresh.update(state="failed", error=detail[:500])
            self._event(version, "forecast_refresh_failed", detail)
            return
        self.forecast_refresh.update(state="done", rows=rows, finished_at=dt.datetime.now(dt.UTC))
        rolled = self._rolled_for.get(version)
        if rolled is not None:
            self._rolled_for[version] = (rolled[0], True, rolled[2])
        self._event(version, "forecast_refreshed", f"{rows} rows")
        self.reader.read_now()

    def _refresh_with_training(self, model_name: str) -> int:
        from serving.scoring import api_spark_session
        from training.forecast import refresh_forecasts

        stored_horizon = max(
            (day.horizon_day for days in self.data.forecasts.values() for day in days.values()),
            default=DEFAULT_REFRESH_HORIZON,
        )
        spark = api_spark_session(self.settings)
        return refresh_forecasts(spark, self.store, model_name, horizon=stored_horizon)

    def _event(self, version: str, event_type: str, detail: str) -> None:
        try:
            record_model_event(self.store, JOB, self.demand_model, version, event_type, detail)
        except Exception:
            log.exception("could not record the model event %s", event_type)

    def _store_loop(self) -> None:
        interval = self.settings.serving_store_refresh_s
        while not self._stop.is_set():
            try:
                read = self.reader.receive(timeout_s=min(interval, 1.0))
                if read is not None:
                    self.apply(read)
                self.refresh_forecasts_when_due()
            except Exception:
                log.exception("the serving store loop failed")
                self._stop.wait(interval)

    def _registry_loop(self) -> None:
        while not self._stop.is_set():
            self.check_models()
            self._stop.wait(self.settings.serving_alias_check_s)
