"""The champion versions the API answers with, through the shared model runtime.

Each served model name has one :class:`common.models.ChampionModel` (alias resolution, the
``model_events`` rows, last good version kept on failure). The API loads a version's *metadata*
only (conformal quantiles, holdout metrics, tags): answers come from precomputed rows, and the
Spark model itself is loaded on first on-demand scoring (:mod:`serving.scoring`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from common.models import ChampionModel
from common.settings import Settings
from common.store import Store

log = logging.getLogger(__name__)

JOB = "serving"
_METRIC_TAGS = ("coverage_90", "oracle_rmse")


@dataclass(frozen=True)
class ChampionInfo:
    """What the API knows about the version behind ``name@alias``."""

    name: str
    alias: str
    version: str
    run_id: str | None
    loaded_since: dt.datetime
    quantiles: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    created_at: dt.datetime | None = None


def version_metrics(metadata: dict[str, Any], tags: dict[str, str]) -> dict[str, float]:
    """The holdout metrics logged with the version, plus its numeric metric tags."""
    metrics = {f"holdout_{k}": float(v) for k, v in (metadata.get("holdout_metrics") or {}).items()}
    for key, value in tags.items():
        if key.startswith("holdout_") or key.endswith("_rmse") or key in _METRIC_TAGS:
            try:
                metrics[key] = float(value)
            except ValueError:
                continue
    return metrics


class ModelWatcher:
    """The champion of one registered model: re-checked by :meth:`check`, read by requests."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        store: Store,
        client: Any = None,
        alias: str = "champion",
    ) -> None:
        self.name = name
        self.alias = alias
        self.champion = ChampionModel(
            name, alias, job=JOB, store=store, settings=settings, client=client,
            loader=self._load_metadata, record_alias_moves=False,
        )  # fmt: skip
        self._info: ChampionInfo | None = None
        self.checked_at: dt.datetime | None = None

    @property
    def info(self) -> ChampionInfo | None:
        """The champion as of the last check (None: no champion, or not checked yet)."""
        return self._info

    @property
    def status(self) -> str:
        """``ok``, ``no_champion``, ``registry_unreachable`` or ``unchecked``."""
        return self.champion.status if self.checked_at else "unchecked"

    def check(self) -> ChampionInfo | None:
        """Ask the registry once; on a new version, read its metadata. The champion now."""
        loaded = self.champion.current()
        self.checked_at = dt.datetime.now(dt.UTC)
        if loaded is None:
            self._info = None
        elif self._info is None or self._info.version != loaded.version:
            self._info = self._describe(loaded)
        return self._info

    def close(self) -> None:
        self.champion.close()

    def _load_metadata(self, uri: str) -> dict[str, Any]:
        from training.registry import model_metadata

        return model_metadata(uri)

    def _describe(self, loaded: Any) -> ChampionInfo:
        metadata = loaded.model
        details = self.champion.client.get_model_version(self.name, loaded.version)
        tags = dict(details.tags or {})
        created = details.creation_timestamp
        return ChampionInfo(
            name=self.name,
            alias=self.alias,
            version=loaded.version,
            run_id=loaded.run_id,
            loaded_since=loaded.loaded_at,
            quantiles={k: float(v) for k, v in (metadata.get("conformal_quantiles") or {}).items()},
            metrics=version_metrics(metadata, tags),
            tags=tags,
            created_at=dt.datetime.fromtimestamp(created / 1000, dt.UTC) if created else None,
        )
