"""The model runtime: the production model behind a registry alias, re-checked and hot-swapped.

Shared by the streaming jobs and serving. Usage, once per micro-batch::

    champion = ChampionModel("demand_forecaster", job="sales-stream", probe=check_transform(frame))
    ...
    loaded = champion.current()          # one registry call, at most; None = no champion
    if loaded is not None:
        scored = loaded.model.transform(features)   # the whole batch uses this one version

``current()`` resolves ``models:/<name>@<alias>`` with one cheap call to the registry
(``MlflowClient.get_model_version_by_alias``, the client is cached, the call bounded by a timeout)
and loads a version only when the alias has moved, with ``mlflow.spark.load_model`` (a Spark ML
model scores inside Spark; ``spark_udf`` is the wrong tool for it). When the new version fails to
load or its ``probe`` (signature or transform check) fails, the last good model stays in use and a
``load_failed`` row goes to ``model_events``; the same version is retried only after
``retry_failed_after_s``. Other rows: ``loaded`` (first load or hot swap), ``no_champion`` (the alias
points nowhere: callers run without scoring), ``registry_unreachable`` (the current model stays).
An alias move nobody recorded (made in the MLflow UI) goes to ``model_promotions`` when a job first
sees it (the API only reads that record: ``record_alias_moves=False``).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from common.logs import redact
from common.promotions import earlier_versions, record_alias_seen
from common.settings import Settings, get_settings
from common.store import Store, open_store

log = logging.getLogger(__name__)

Probe = Callable[["LoadedModel"], None]
ALIAS_MISSING = "RESOURCE_DOES_NOT_EXIST"
ALIAS_NOT_FOUND = "INVALID_PARAMETER_VALUE"


class ModelMismatchError(RuntimeError):
    """A loaded model cannot score the frames the caller has (signature or transform check)."""


@dataclass(frozen=True)
class LoadedModel:
    """One registered model version, loaded: pin it for a whole batch."""

    name: str
    version: str
    model: Any
    run_id: str | None = None
    input_columns: tuple[str, ...] | None = None
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def uri(self) -> str:
        return model_uri(self.name, self.version)


def model_uri(name: str, version: str) -> str:
    """``models:/<name>/<version>``: a pinned version, never an alias, so a load is repeatable."""
    return f"models:/{name}/{version}"


def model_info(uri: str) -> Any:
    """The model's ``mlflow.models.ModelInfo`` (signature, metadata) from its MLmodel file, read
    from a download folder removed afterwards (``get_model_info`` would leave its folder in the
    temp directory at every call)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="retail-mlmodel-") as folder:
        path = download_artifacts(artifact_uri=f"{uri}/MLmodel", dst_path=folder)
        return Model.load(path).get_model_info()


def signature_inputs(uri: str) -> tuple[str, ...] | None:
    """The input column names of the model's MLflow signature, or None when it has none."""
    signature = model_info(uri).signature
    if signature is None or signature.inputs is None:
        return None
    return tuple(signature.inputs.input_names())


def check_signature(available_columns: Sequence[str]) -> Probe:
    """A probe failing when the model's signature asks for a column the caller cannot provide."""
    available = set(available_columns)

    def probe(loaded: LoadedModel) -> None:
        if loaded.input_columns is None:
            return
        missing = [c for c in loaded.input_columns if c not in available]
        if missing:
            raise ModelMismatchError(
                f"the signature needs columns not provided: {', '.join(missing)}"
            )

    return probe


def check_transform(frame: Any, output_column: str = "prediction") -> Probe:
    """A probe running the model's ``transform`` on ``frame`` (e.g. an empty frame of the feature
    schema) and checking that ``output_column`` comes out; Spark validates the columns at plan time.
    """

    def probe(loaded: LoadedModel) -> None:
        try:
            columns = loaded.model.transform(frame).select(output_column).columns
        except Exception as exc:
            raise ModelMismatchError(f"transform fails on the feature schema: {exc}") from exc
        if columns != [output_column]:
            raise ModelMismatchError(f"the model does not produce {output_column!r}")

    return probe


def use_tracking_server(settings: Settings) -> None:
    """Point this process's MLflow at ``MLFLOW_TRACKING_URI`` from the settings.

    ``models:/`` URIs resolve against the process-wide registry, and a job started by spark-submit
    has no MLFLOW_* variables: without this, MLflow looks in a local store. Call it once at a job's
    entry point (the library never changes MLflow's globals itself).
    """
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)


def load_spark_model(uri: str, settings: Settings | None = None) -> Any:
    """Load a Spark ML model from the registry with ``mlflow.spark.load_model``. Its artifacts are
    downloaded to a folder removed once the model is loaded (Spark ML reads a model's data as it
    loads it); MLflow's own download folder would stay in the temp directory for good."""
    import mlflow.spark

    tmp = (settings or get_settings()).data_root / "mlflow-dfs-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="retail-model-") as download:
        return mlflow.spark.load_model(uri, dfs_tmpdir=str(tmp), dst_path=download)


def record_model_event(
    store: Store, job: str, name: str, version: str, event_type: str, detail: str = ""
) -> None:
    """Append one row to ``model_events``."""
    row = {
        "job": job,
        "model_name": name,
        "model_version": version,
        "event_type": event_type,
        "detail": detail[:2000],
    }
    store.insert_df("model_events", pd.DataFrame([row]))


class ChampionModel:
    """The version behind ``models:/<name>@<alias>``, re-resolved at every ``current()`` call."""

    def __init__(
        self,
        name: str,
        alias: str = "champion",
        *,
        job: str,
        store: Store | None = None,
        settings: Settings | None = None,
        client: Any = None,
        probe: Probe | Sequence[Probe] | None = None,
        loader: Callable[[str], Any] | None = None,
        registry_timeout_s: float = 5.0,
        retry_failed_after_s: float = 300.0,
        record_alias_moves: bool = True,
    ) -> None:
        self.name = name
        self.alias = alias
        self.job = job
        self.settings = settings or get_settings()
        self.store = store or open_store(self.settings)
        self._client = client
        self._probes: list[Probe] = (
            [] if probe is None else [probe] if callable(probe) else list(probe)
        )
        self._loader = loader or (lambda uri: load_spark_model(uri, self.settings))
        self.registry_timeout_s = registry_timeout_s
        self.retry_failed_after_s = retry_failed_after_s
        self._loaded: LoadedModel | None = None
        self._previous: LoadedModel | None = None  # in use before the last swap: a fallback
        self._failed: dict[str, float] = {}
        self._state = ""  # "", "no_champion" or "registry_unreachable": logged once per episode
        self._seen_version: str | None = None  # where the alias pointed at the last check
        self._record_alias_moves = record_alias_moves
        self._lock = threading.Lock()
        self._pending: Future | None = None
        self._recalled_at = -float("inf")  # the last load of a version from model_promotions

    @property
    def client(self) -> Any:
        """The registry client, built once."""
        if self._client is None:
            from mlflow import MlflowClient

            uri = self.settings.mlflow_tracking_uri
            self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return self._client

    @property
    def loaded(self) -> LoadedModel | None:
        """The model in use now, without asking the registry."""
        return self._loaded

    @property
    def status(self) -> str:
        """After the last ``current()``: ``ok``, ``no_champion`` or ``registry_unreachable``."""
        return self._state or "ok"

    def current(self) -> LoadedModel | None:
        """Check the alias (one registry call), hot-swap if it moved; the model to use, or None."""
        with self._lock:
            try:
                version = self._resolve_alias()
            except FutureTimeout:
                self._note("registry_unreachable", f"no answer within {self.registry_timeout_s} s")
                return self._loaded
            except Exception as exc:
                if _is_missing_alias(exc):
                    self._on_no_champion()
                    return None
                self._note("registry_unreachable", str(exc))
                return self._loaded
            if version != self._seen_version:
                self._seen_version = version
                if self._record_alias_moves:
                    self._record_alias(version)
            if self._loaded is not None and self._loaded.version == version:
                self._state = ""
                return self._loaded
            if self._failed_lately(version):
                return self._loaded
            self._state = ""
            self._load(version)
            return self._loaded

    def reject(self, version: str, error: BaseException) -> LoadedModel | None:
        """``version`` failed on a job's real rows though it passed its probes: as for a version
        that fails to load, the one in use before it comes back, a ``load_failed`` row is written
        and ``version`` is tried again after ``retry_failed_after_s``. A job that started with
        ``version`` has none in memory: it loads the newest version the alias pointed at before
        (``model_promotions``) that has not failed lately, at most one such version every
        ``retry_failed_after_s``. The model to use now."""
        with self._lock:
            if self._loaded is None or self._loaded.version != version:
                return self._loaded
            fallback, self._previous = self._previous, None
            self._failed[version] = time.monotonic()
            kept = f"keeping version {fallback.version}" if fallback else "none in use before it"
            detail = f"failed on the job's rows: {type(error).__name__}: {error}"[:1000]
            log.error("%s version %s %s (%s)", self.name, version, detail, kept)
            self._event(version, "load_failed", f"{detail} ({kept})")
            self._loaded = fallback
            if fallback is None:
                self._load_earlier_than(version)
            return self._loaded

    def warm_up(self) -> threading.Thread:
        """Resolve and load the champion on a thread of its own, so that a job's first
        micro-batch finds it loaded (or waits for the load under way) instead of starting it."""
        thread = threading.Thread(target=self.current, name=f"warm-up-{self.name}", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Drop the loaded model and forget a pending registry call (after a load under way)."""
        with self._lock:
            self._loaded = self._previous = None
            self._pending = None

    def _resolve_alias(self) -> str:
        # One call in flight at a time: while a hung registry call is still running, callers get
        # the current model at once instead of waiting again.
        if self._pending is not None and not self._pending.done():
            raise FutureTimeout
        self._pending = _in_background(
            f"alias-{self.name}", self.client.get_model_version_by_alias, self.name, self.alias
        )
        return str(self._pending.result(timeout=self.registry_timeout_s).version)

    def _failed_lately(self, version: str) -> bool:
        failed_at = self._failed.get(version)
        return failed_at is not None and time.monotonic() - failed_at < self.retry_failed_after_s

    def _load_earlier_than(self, version: str) -> None:
        """Load the newest earlier version that has not failed lately: one version per
        ``retry_failed_after_s``, so that a failure that is not the versions' own (every version
        failing alike) does not load the whole history."""
        if time.monotonic() - self._recalled_at < self.retry_failed_after_s:
            return
        try:
            versions = earlier_versions(self.store, self.name, self.alias)
        except Exception:  # the record is a fallback's hint: no model, as before, without it
            log.exception("could not read the earlier versions of %s@%s", self.name, self.alias)
            return
        earlier = next((v for v in versions if v != version and not self._failed_lately(v)), None)
        if earlier is not None:
            log.info(
                "%s: falling back to version %s, in use before %s", self.name, earlier, version
            )
            self._recalled_at = time.monotonic()
            self._load(earlier)

    def _load(self, version: str) -> None:
        uri = model_uri(self.name, version)
        previous = self._loaded.version if self._loaded else None
        started = time.monotonic()
        try:
            details = self.client.get_model_version(self.name, version)
            candidate = LoadedModel(
                name=self.name,
                version=version,
                model=self._loader(uri),
                run_id=details.run_id,
                input_columns=signature_inputs(uri),
            )
            for probe in self._probes:
                probe(candidate)
        except Exception as exc:
            self._failed[version] = time.monotonic()
            kept = f"keeping version {previous}" if previous else "no model in use"
            detail = f"{type(exc).__name__}: {exc}"
            log.error("%s version %s failed to load (%s): %s", self.name, version, kept, detail)
            self._event(version, "load_failed", f"{detail} ({kept})")
            return
        self._previous, self._loaded = self._loaded, candidate
        self._failed.pop(version, None)
        seconds = time.monotonic() - started
        detail = f"alias {self.alias}; loaded in {seconds:.1f} s" + (
            f"; replaces version {previous}" if previous else ""
        )
        log.info("%s version %s in use (%s)", self.name, version, detail)
        self._event(version, "loaded", detail)

    def _on_no_champion(self) -> None:
        if self._state != "no_champion":
            was = f"; stopped using version {self._loaded.version}" if self._loaded else ""
            log.warning(
                "no %s@%s in the registry: running WITHOUT scoring until one is promoted%s",
                self.name,
                self.alias,
                was,
            )
            self._event(self._loaded.version if self._loaded else "", "no_champion", self.alias)
            self._state = "no_champion"
        if self._seen_version is not None:  # the alias was removed: a change like any move
            self._seen_version = None
            if self._record_alias_moves:
                self._record_alias(None)
        self._loaded = None

    def _note(self, state: str, detail: str) -> None:
        if self._state != state:
            kept = f"keeping version {self._loaded.version}" if self._loaded else "no model in use"
            log.warning("%s: the registry did not answer (%s); %s", self.name, detail, kept)
            self._event(self._loaded.version if self._loaded else "", state, detail)
            self._state = state

    def _record_alias(self, version: str | None) -> None:
        """A move (or, with None, a removal) made in the MLflow UI goes to ``model_promotions``
        when this job first sees it."""
        try:
            record_alias_seen(self.store, self.name, self.alias, version, seen_by=self.job)
        except Exception:  # the record must not stop scoring
            log.exception("could not record the alias change of %s to %s", self.name, version)

    def _event(self, version: str, event_type: str, detail: str) -> None:
        detail = redact(detail, self.settings.secrets())  # an error may quote its URL's password
        try:
            record_model_event(self.store, self.job, self.name, version, event_type, detail)
        except Exception:  # the event log must not stop scoring
            log.exception("could not write the model event %s for %s", event_type, self.name)


def _in_background(thread_name: str, function: Callable[..., Any], *args: Any) -> Future:
    """Run ``function`` on a daemon thread (a hung registry never delays the process's exit)."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # handed to the caller through the future
            future.set_exception(exc)

    threading.Thread(target=run, name=thread_name, daemon=True).start()
    return future


def _is_missing_alias(exc: Exception) -> bool:
    """The registry says: no such model, or no such alias (MLflow answers the latter with
    INVALID_PARAMETER_VALUE "Registered model alias ... not found")."""
    code = getattr(exc, "error_code", "")
    message = str(exc)
    return code == ALIAS_MISSING or (
        code == ALIAS_NOT_FOUND and "alias" in message and "not found" in message
    )
