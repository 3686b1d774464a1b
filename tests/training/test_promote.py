"""Gated promotion, forced promotion, rollback and UI alias changes, all recorded in the store.

On the training tests' own registry: the trained challenger becomes the first champion and its
forecasts are written, a deliberately weak version is refused, forced in with a reason, rolled
back, and an alias moved directly in the registry (as a person does in the MLflow UI) is recorded
by sync. Each test first sets the aliases it starts from (``_start_from``), so each runs alone or
in any order, and looks at the changes recorded after that.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from training_world import PRODUCTS, SILENT_PRODUCT, STORES, tracking_at

from common.promotions import record_change
from training.data import HistoryWindow, load_daily_history
from training.features import add_demand_features
from training.forecast import refresh_forecasts
from training.models import add_training_target, build_pipeline, model_spec
from training.promote import (
    UI_ACTOR,
    PromotionError,
    holdout_rmse,
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


def _start_from(store, *, champion: str | None, challenger: str) -> int:
    """Set the aliases a test starts from, as a person would in the MLflow UI, and let sync record
    them; returns how many promotions are recorded by then (the test's own come after)."""
    client = _client()
    client.set_registered_model_alias(NAME, CHALLENGER, challenger)
    if champion is not None:
        client.set_registered_model_alias(NAME, CHAMPION, champion)
    elif alias_version(client, NAME, CHAMPION) is not None:
        client.delete_registered_model_alias(NAME, CHAMPION)
    sync_promotions(store, models=(NAME,))
    return len(_promotions(store))


def _refusals(store, version: str) -> int:
    return store.scalar(
        "SELECT count() FROM model_events WHERE model_name = {m:String} "
        "AND model_version = {v:String} AND event_type = 'promotion_refused'",
        {"m": NAME, "v": version},
    )


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


def test_promotion_judges_the_stock_model_on_the_rows_training_held_out(
    spark, training_store, trained, tracking_server
) -> None:
    """Right after training the store's events end with the holdout: a lead-time label that
    would look past them is as unknown to the promotion as it was to training, so the challenger
    scores its own holdout RMSE."""
    report = trained.models["stock_optimizer"]
    version = report.registered.version
    fold = trained.plan.holdout
    holdout = HistoryWindow(fold.validation_start, fold.validation_end)
    with tracking_at(tracking_server):
        scores = holdout_rmse(spark, training_store, "stock_optimizer", [version], holdout)
    assert scores[version] == pytest.approx(report.holdout["rmse"], rel=1e-6)


def test_first_promotion_makes_the_challenger_champion(
    spark, training_store, trained, good_version, tracking
):
    before = _start_from(training_store, champion=None, challenger=good_version)
    decision = promote(spark, training_store, NAME, margin=0.02)
    assert decision.promoted and decision.from_version is None
    assert alias_version(_client(), NAME, CHAMPION) == good_version
    rows = _promotions(training_store)
    trained_row = rows[(rows["alias"] == CHALLENGER) & (rows["actor"] == "retail train")]
    assert good_version in set(trained_row["to_version"])
    new = rows.iloc[before:]
    assert list(new["alias"]) == [CHAMPION]
    assert new.iloc[0]["to_version"] == good_version and pd.isna(new.iloc[0]["from_version"])
    assert new.iloc[0]["challenger_metric"] == pytest.approx(
        trained.models[NAME].holdout["rmse"], rel=1e-6
    )


def test_refresh_writes_the_champions_forecasts_with_intervals(
    spark, training_store, main_window, good_version, tracking
):
    _start_from(training_store, champion=good_version, challenger=good_version)
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
    before = _start_from(training_store, champion=good_version, challenger=weak_version)
    refusals = _refusals(training_store, weak_version)
    decision = promote(spark, training_store, NAME, margin=0.02)
    assert not decision.promoted
    assert decision.challenger_rmse > decision.champion_rmse
    assert "refused" in decision.reason
    assert alias_version(_client(), NAME, CHAMPION) == good_version
    assert len(_promotions(training_store)) == before
    assert _refusals(training_store, weak_version) == refusals + 1


def test_force_needs_a_reason_and_is_recorded_with_it(
    spark, training_store, good_version, weak_version, tracking
):
    before = _start_from(training_store, champion=good_version, challenger=weak_version)
    with pytest.raises(PromotionError, match="--reason"):
        promote(spark, training_store, NAME, force=True)
    assert len(_promotions(training_store)) == before
    decision = promote(spark, training_store, NAME, force=True, reason="incident 42 hotfix")
    assert decision.promoted
    assert alias_version(_client(), NAME, CHAMPION) == weak_version
    new = _promotions(training_store).iloc[before:]
    assert len(new) == 1
    last = new.iloc[0]
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
    _start_from(training_store, champion=good_version, challenger=weak_version)
    before = _start_from(training_store, champion=weak_version, challenger=weak_version)
    decision = rollback(training_store, NAME, reason="forecasts too flat")
    assert (decision.from_version, decision.to_version) == (weak_version, good_version)
    assert alias_version(_client(), NAME, CHAMPION) == good_version
    new = _promotions(training_store).iloc[before:]
    assert len(new) == 1
    last = new.iloc[0]
    assert (last["from_version"], last["to_version"]) == (weak_version, good_version)
    assert last["reason"] == "rollback: forecasts too flat"


def test_an_alias_moved_in_the_registry_ui_is_recorded_when_seen(
    training_store, good_version, weak_version, tracking
):
    before = _start_from(training_store, champion=good_version, challenger=weak_version)
    _client().set_registered_model_alias(NAME, CHAMPION, weak_version)  # what the UI's dialog does
    assert sync_promotions(training_store, models=(NAME,)) == [
        (NAME, CHAMPION, good_version, weak_version)
    ]
    new = _promotions(training_store).iloc[before:]
    assert len(new) == 1
    last = new.iloc[0]
    assert (last["actor"], last["from_version"], last["to_version"]) == (
        UI_ACTOR,
        good_version,
        weak_version,
    )
    assert sync_promotions(training_store, models=(NAME,)) == []
