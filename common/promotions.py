"""The record of alias changes in ``model_promotions``, shared by ``retail promote`` and the jobs.

``retail promote``/``rollback``/``train`` write a row for each change they make. People also move
aliases in the MLflow UI; whoever sees such a change first records it: ``sync_promotions`` before
every promotion, and a streaming job or the API when its champion hot-swaps
(:func:`record_alias_seen`). Two jobs that see the same change write one row: the insert's
deduplication token names the change (the last recorded row and the new version).
"""

from __future__ import annotations

import logging

import pandas as pd

from common.store import Store

log = logging.getLogger(__name__)

METRIC = "holdout_rmse"
SEEN_REASON = "alias changed outside retail, recorded when seen"

LAST_CHANGE_SQL = """
SELECT to_version, toUnixTimestamp64Milli(changed_at) AS changed_ms FROM model_promotions FINAL
WHERE model_name = {model:String} AND alias = {alias:String}
ORDER BY changed_at DESC LIMIT 1
"""


def record_change(
    store: Store,
    model_name: str,
    alias: str,
    from_version: str | None,
    to_version: str | None,
    actor: str,
    reason: str,
    challenger_metric: float | None = None,
    champion_metric: float | None = None,
    dedup_token: str | None = None,
) -> None:
    """Append one alias change to ``model_promotions``."""
    row = {
        "changed_at": pd.Timestamp.now(tz="UTC").tz_localize(None),
        "model_name": model_name,
        "alias": alias,
        "from_version": from_version,
        "to_version": to_version,
        "actor": actor,
        "reason": reason,
        "metric_name": METRIC,
        "challenger_metric": challenger_metric,
        "champion_metric": champion_metric,
    }
    frame = pd.DataFrame([row])
    for column in ("challenger_metric", "champion_metric"):
        frame[column] = frame[column].astype("float64")
    store.insert_df("model_promotions", frame, dedup_token=dedup_token)


def recorded_aliases(store: Store) -> dict[tuple[str, str], str | None]:
    """The version each (model, alias) pointed to at its last recorded change (None when that
    change removed the alias)."""
    # argMax skips a NULL to_version; in a tuple the NULL is kept.
    frame = store.query_df(
        "SELECT model_name, alias, argMax(tuple(to_version), changed_at).1 AS to_version "
        "FROM model_promotions FINAL GROUP BY model_name, alias"
    )
    return {
        (str(r.model_name), str(r.alias)): (None if pd.isna(r.to_version) else str(r.to_version))
        for r in frame.itertuples(index=False)
    }


EARLIER_VERSIONS_SQL = """
SELECT to_version FROM model_promotions FINAL
WHERE model_name = {model:String} AND alias = {alias:String} AND to_version IS NOT NULL
ORDER BY changed_at DESC LIMIT 20
"""


def earlier_versions(store: Store, model_name: str, alias: str) -> list[str]:
    """The versions ``alias`` pointed at, as recorded, newest change first, each once."""
    frame = store.query_df(EARLIER_VERSIONS_SQL, {"model": model_name, "alias": alias})
    return list(dict.fromkeys(str(v) for v in frame["to_version"]))


def record_alias_seen(
    store: Store, model_name: str, alias: str, version: str | None, seen_by: str
) -> bool:
    """Record that ``alias`` now points at ``version`` (None: it was removed) unless that is
    already the last record.

    True when a row was written (or deduplicated against a job that saw the same change).
    """
    last = store.query_df(LAST_CHANGE_SQL, {"model": model_name, "alias": alias})
    last_version = None if last.empty or pd.isna(last.to_version[0]) else str(last.to_version[0])
    if last_version == version:
        return False
    last_at = "never" if last.empty else str(int(last.changed_ms[0]))
    record_change(
        store, model_name, alias, last_version, version, f"mlflow-ui (seen by {seen_by})",
        SEEN_REASON, dedup_token=f"alias-seen:{model_name}:{alias}:{last_at}:{version}",
    )  # fmt: skip
    log.warning(
        "recorded an alias change made outside retail: %s@%s %s -> %s",
        model_name, alias, last_version, version,
    )  # fmt: skip
    return True
