"""Gated promotion, forced promotion, rollback and UI alias changes, all recorded in the store.

The tests run in order on the training tests' own registry: the trained challenger becomes the
first champion and its forecasts are written, a deliberately weak version is refused, forced in
with a reason, rolled back, and an alias moved directly in the registry (as a person does in the
MLflow UI) is recorded by sync.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from training_world import PRODUCTS, SILENT_PRODUCT, STORES, tracking_at

from common.promotions import record_change
from training.data import load_daily_history
from training.features import add_demand_features
from training.forecast import refresh_forecasts
from training.models import add_training_target, build_pipeline, model_spec
from training.promote import (
    UI_ACTOR,
    PromotionError,
    promote,
    rollback,
    sync_promotions,
)
from training.registry import CHALLENGER, CHAMPION, alias_version, register_version
from training.validation import split_fold

pytestmark = [pytest.mark.spark, pytest.mark.services]

NAME = "demand_forecaster"
WEAK = {"num_trees": 2, "max_depth": 1, "min_instances_per_node": 50, "subsampling_rate": 0.3,
        "feature_subset_strategy": "sqrt"}  # fmt: skip


def _promotions(store) -> pd.DataFrame:
    return store.query_df(
        "SELECT alias, from_version, to_version, actor, reason, challenger_metric, champion_metric "
        "FROM model_promotions FINAL WHERE model_name = {m:String} ORDER BY changed_at",
        {"m": NAME},
    )


def _client():
    import mlflow

    return mlflow.MlflowClient()


@pytest.fixture(scope="module")
def good_version(trained) -> str:
    return trained.models[NAME].registered.version


@pytest.fixture(scope="module")
def weak_version(spark, training_store, trained, main_window, tracking_server, good_version):
    """A real but weak demand_forecaster (two stumps) registered as the new challenger."""
    import mlflow

    spec = model_spec(NAME)
    features = add_training_target(
        add_demand_features(load_daily_history(spark, training_store, main_window)), NAME
    )
    train, holdout = split_fold(features, trained.plan.holdout, spec.label, spec.label_end_column)
    model = build_pipeline(NAME, WEAK).fit(train)
    sample = model.transform(holdout.limit(3)).select(*spec.input_columns, "prediction").toPandas()
    with tracking_at(tracking_server):
        good_tags = _client().get_model_version(NAME, good_version).tags
        mlflow.set_experiment("tests-training")
        with mlflow.start_run(run_name="weak"):
            weak = register_version(
                model,
                NAME,
                sample[spec.input_columns],
                sample["prediction"],
                tags={
                    k: good_tags[k]
                    for k in ("data_start", "data_end", "train_end", "holdout_start", "holdout_end")
                },  # fmt: skip
                metadata={"conformal_quantiles": trained.models[NAME].quantiles},
            )
    record_change(training_store, NAME, CHALLENGER, good_version, weak.version, "tests", "weak")
    return weak.version


def test_first_promotion_makes_the_challenger_champion(
    spark, training_store, trained, good_version, tracking
):
    decision = promote(spark, training_store, NAME, margin=0.02)
    assert decision.promoted and decision.from_version is None
    assert alias_version(_client(), NAME, CHAMPION) == good_version
    rows = _promotions(training_store)
    assert list(rows["alias"]) == [CHALLENGER, CHAMPION]
    assert rows.iloc[0]["to_version"] == good_version and rows.iloc[0]["actor"] == "retail train"
    assert rows.iloc[1]["to_version"] == good_version and pd.isna(rows.iloc[1]["from_version"])
    assert rows.iloc[1]["challenger_metric"] == pytest.approx(
        trained.models[NAME].holdout["rmse"], rel=1e-6
    )


def test_refresh_writes_the_champions_forecasts_with_intervals(
    spark, training_store, main_window, good_version, tracking
):
    written = refresh_forecasts(spark, training_store, NAME, horizon=3)
    frame = training_store.query_df(
        "SELECT * FROM forecasts FINAL WHERE model_version = {v:String} ORDER BY forecast_date",
        {"v": good_version},
    )
    # generated series, the silent product in every generated store, the one-day store
    series = STORES * PRODUCTS + STORES + PRODUCTS
    assert written == len(frame) == series * 3
    first = main_window.end + dt.timedelta(days=1)
    assert set(pd.to_datetime(frame["forecast_date"]).dt.date) == {
        first + dt.timedelta(days=h) for h in range(3)
    }
    assert sorted(frame["horizon_day"].unique()) == [1, 2, 3]
    assert (frame["lower_90"] <= frame["predicted_units"]).all()
    assert (frame["predicted_units"] <= frame["upper_90"]).all()
    assert (frame["lower_90"] >= 0).all()
    silent = frame[frame["product_id"] == SILENT_PRODUCT]
    assert len(silent) == STORES * 3 and silent["predicted_units"].max() < 0.5
    assert frame[frame["product_id"] != SILENT_PRODUCT]["predicted_units"].mean() > 1


def test_a_worse_challenger_is_refused_and_nothing_changes(
    spark, training_store, good_version, weak_version, tracking
):
    before = _promotions(training_store)
    decision = promote(spark, training_store, NAME, margin=0.02)
    assert not decision.promoted
    assert decision.challenger_rmse > decision.champion_rmse
    assert "refused" in decision.reason
    assert alias_version(_client(), NAME, CHAMPION) == good_version
    assert len(_promotions(training_store)) == len(before)
    refused = training_store.scalar(
        "SELECT count() FROM model_events WHERE model_name = {m:String} "
        "AND model_version = {v:String} AND event_type = 'promotion_refused'",
        {"m": NAME, "v": weak_version},
    )
    assert refused == 1


def test_force_needs_a_reason_and_is_recorded_with_it(
    spark, training_store, good_version, weak_version, tracking
):
    with pytest.raises(PromotionError, match="--reason"):
        promote(spark, training_store, NAME, force=True)
    decision = promote(spark, training_store, NAME, force=True, reason="incident 42 hotfix")
    assert decision.promoted
    assert alias_version(_client(), NAME, CHAMPION) == weak_version
    last = _promotions(training_store).iloc[-1]
    assert (last["alias"], last["from_version"], last["to_version"]) == (
        CHAMPION,
        good_version,
        weak_version,
    )
    assert last["reason"] == "forced: incident 42 hotfix"
    assert last["champion_metric"] < last["challenger_metric"]


def test_rollback_restores_the_previous_champion(
    training_store, good_version, weak_version, tracking
):
    decision = rollback(training_store, NAME, reason="forecasts too flat")
    assert (decision.from_version, decision.to_version) == (weak_version, good_version)
    assert alias_version(_client(), NAME, CHAMPION) == good_version
    last = _promotions(training_store).iloc[-1]
    assert (last["from_version"], last["to_version"]) == (weak_version, good_version)
    assert last["reason"] == "rollback: forecasts too flat"


def test_an_alias_moved_in_the_registry_ui_is_recorded_when_seen(
    training_store, good_version, weak_version, tracking
):
    _client().set_registered_model_alias(NAME, CHAMPION, weak_version)  # what the UI's dialog does
    assert sync_promotions(training_store, models=(NAME,)) == [
        (NAME, CHAMPION, good_version, weak_version)
    ]
    last = _promotions(training_store).iloc[-1]
    assert (last["actor"], last["from_version"], last["to_version"]) == (
        UI_ACTOR,
        good_version,
        weak_version,
    )
    assert sync_promotions(training_store, models=(NAME,)) == []
