"""Gated promotion, rollback, and a record of every alias change in ``model_promotions``.

``promote`` moves ``champion`` to the ``challenger`` only when the challenger's RMSE on the
challenger's holdout beats the champion's RMSE on the very same rows by ``margin`` (a fraction);
``force`` with a reason overrides the margin. ``rollback`` moves ``champion`` back to the version
it replaced. People also move aliases in the MLflow UI: :func:`sync_promotions` compares the
aliases in the registry with the last recorded ones and records every difference it sees, and
runs before every promotion, rollback and training registration.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from common.models import load_spark_model, model_uri
from common.promotions import SEEN_REASON, record_change, recorded_aliases
from common.store import Store
from training.data import HistoryWindow, load_daily_history, resolve_window
from training.features import FEATURE_HISTORY_DAYS, add_demand_features
from training.models import MODEL_NAMES, model_spec
from training.registry import ALIASES, CHALLENGER, CHAMPION, alias_version
from training.tune import forecast_metrics

log = logging.getLogger(__name__)

UI_ACTOR = "mlflow-ui (seen by sync)"


class PromotionError(RuntimeError):
    """A promotion or rollback cannot be done; the message says why."""


@dataclass(frozen=True)
class Decision:
    model_name: str
    promoted: bool
    from_version: str | None
    to_version: str | None
    challenger_rmse: float | None
    champion_rmse: float | None
    reason: str


def default_actor() -> str:
    """Who runs the command, for the record."""
    try:
        return f"retail ({getpass.getuser()})"
    except (KeyError, OSError):
        return "retail"


def sync_promotions(
    store: Store, client: Any = None, models: tuple[str, ...] = MODEL_NAMES
) -> list[tuple[str, str, str | None, str | None]]:
    """Record alias changes made outside ``retail`` (the MLflow UI); return what was recorded."""
    import mlflow

    client = client or mlflow.MlflowClient()
    recorded = recorded_aliases(store)
    changes = []
    for name in models:
        for alias in ALIASES:
            current = alias_version(client, name, alias)
            last = recorded.get((name, alias))
            if current != last:
                record_change(
                    store, name, alias, last, current, UI_ACTOR,
                    SEEN_REASON,
                )  # fmt: skip
                changes.append((name, alias, last, current))
    for change in changes:
        log.warning("recorded an alias change made outside retail: %s", change)
    return changes


def holdout_rmse(
    spark: SparkSession, store: Store, model_name: str, versions: list[str], holdout: HistoryWindow
) -> dict[str, float]:
    """RMSE of each version of ``model_name`` on the same labelled rows of ``holdout``."""
    spec = model_spec(model_name)
    # Labels may look past the holdout, but not past the newest day with events: beyond it the
    # daily grid would count days that have not happened as days without sales.
    window = HistoryWindow(
        holdout.start - dt.timedelta(days=FEATURE_HISTORY_DAYS),
        min(holdout.end + dt.timedelta(days=int(max_lead_days(store))), resolve_window(store).end),
    )
    rows = (
        add_demand_features(load_daily_history(spark, store, window))
        .where(F.col("date").between(F.lit(holdout.start), F.lit(holdout.end)))
        .where(F.col(spec.label).isNotNull())
        .cache()
    )
    if rows.isEmpty():
        raise PromotionError(f"no labelled rows between {holdout.start} and {holdout.end}")
    scores = {}
    for version in versions:
        model = load_spark_model(model_uri(model_name, version))
        scored = model.transform(rows).select(spec.label, "prediction").toPandas()
        scores[version] = forecast_metrics(scored[spec.label], scored["prediction"])["rmse"]
    rows.unpersist()
    return scores


def max_lead_days(store: Store) -> float:
    """The longest product lead time: how far past the holdout the stock labels look."""
    return float(store.scalar("SELECT max(lead_time_days) FROM products") or 1.0)


def promote(
    spark: SparkSession,
    store: Store,
    model_name: str,
    margin: float = 0.02,
    force: bool = False,
    reason: str = "",
    actor: str | None = None,
    client: Any = None,
) -> Decision:
    """Move ``champion`` to the challenger if it beats the champion by ``margin`` (or ``force``)."""
    import mlflow

    model_spec(model_name)
    if force and not reason.strip():
        raise PromotionError("--force needs a --reason, which is recorded with the change")
    client = client or mlflow.MlflowClient()
    actor = actor or default_actor()
    sync_promotions(store, client, (model_name,))
    challenger = alias_version(client, model_name, CHALLENGER)
    if challenger is None:
        raise PromotionError(f"{model_name} has no @{CHALLENGER}: run `retail train` first")
    champion = alias_version(client, model_name, CHAMPION)
    if champion == challenger:
        return Decision(model_name, False, champion, challenger, None, None, "already champion")
    tags = client.get_model_version(model_name, challenger).tags
    holdout = HistoryWindow(
        dt.date.fromisoformat(tags["holdout_start"]), dt.date.fromisoformat(tags["holdout_end"])
    )
    versions = [challenger] if champion is None else [challenger, champion]
    scores = holdout_rmse(spark, store, model_name, versions, holdout)
    challenger_rmse, champion_rmse = scores[challenger], scores.get(champion or "")
    if champion is None:
        why = "first champion"
    else:
        champion_train_end = client.get_model_version(model_name, champion).tags.get("train_end")
        if champion_train_end and champion_train_end >= tags["holdout_start"] and not force:
            raise PromotionError(
                f"the champion (version {champion}) trained on data up to {champion_train_end}, "
                f"inside the challenger's holdout from {tags['holdout_start']}: no fair comparison; "
                "use --force with a reason"
            )
        threshold = champion_rmse * (1 - margin)
        if challenger_rmse <= threshold:
            why = f"challenger RMSE {challenger_rmse:.4f} <= {threshold:.4f} (champion x (1 - {margin}))"
        elif force:
            why = f"forced: {reason.strip()}"
        else:
            refusal = (
                f"refused: challenger {challenger} RMSE {challenger_rmse:.4f} does not beat "
                f"champion {champion} RMSE {champion_rmse:.4f} by {margin:.0%}"
            )
            _record_event(store, model_name, challenger, "promotion_refused", refusal)
            return Decision(model_name, False, champion, challenger, challenger_rmse,
                            champion_rmse, refusal)  # fmt: skip
    if reason.strip() and not why.startswith("forced"):
        why = f"{why}; {reason.strip()}"
    client.set_registered_model_alias(model_name, CHAMPION, challenger)
    record_change(store, model_name, CHAMPION, champion, challenger, actor, why,
                  challenger_rmse, champion_rmse)  # fmt: skip
    _record_event(store, model_name, challenger, "promoted", why)
    log.info("%s: champion %s -> %s (%s)", model_name, champion, challenger, why)
    return Decision(model_name, True, champion, challenger, challenger_rmse, champion_rmse, why)


def rollback(
    store: Store,
    model_name: str,
    reason: str = "",
    actor: str | None = None,
    client: Any = None,
) -> Decision:
    """Move ``champion`` back to the version it pointed to before its last change."""
    import mlflow

    model_spec(model_name)
    client = client or mlflow.MlflowClient()
    sync_promotions(store, client, (model_name,))
    current = alias_version(client, model_name, CHAMPION)
    history = store.query_df(
        "SELECT from_version, to_version FROM model_promotions FINAL "
        "WHERE model_name = {model:String} AND alias = 'champion' ORDER BY changed_at DESC",
        {"model": model_name},
    )
    previous = next(
        (
            str(r.from_version)
            for r in history.itertuples(index=False)
            if r.to_version == current and not pd.isna(r.from_version)
        ),
        None,
    )
    if current is None or previous is None:
        raise PromotionError(f"{model_name} has no earlier champion to roll back to")
    why = "rollback" + (f": {reason.strip()}" if reason.strip() else "")
    client.set_registered_model_alias(model_name, CHAMPION, previous)
    record_change(store, model_name, CHAMPION, current, previous, actor or default_actor(), why)
    _record_event(store, model_name, previous, "rolled_back", f"from version {current}")
    log.info("%s: champion rolled back %s -> %s", model_name, current, previous)
    return Decision(model_name, True, current, previous, None, None, why)


def _record_event(
    store: Store, model_name: str, version: str, event_type: str, detail: str
) -> None:
    store.insert_df(
        "model_events",
        pd.DataFrame(
            [
                {
                    "job": "promote",
                    "model_name": model_name,
                    "model_version": version,
                    "event_type": event_type,
                    "detail": detail,
                }
            ]
        ),
    )
