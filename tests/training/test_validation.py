"""Rolling-origin folds: exact block dates, and no fold trains on data after its validation block."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from training.data import TrainingDataError, load_daily_history
from training.features import FEATURE_HISTORY_DAYS, add_demand_features
from training.models import MODEL_SPECS
from training.validation import Fold, plan_folds, split_fold

D = dt.date


def test_plan_folds_are_consecutive_blocks_before_the_holdout():
    plan = plan_folds(D(2025, 1, 1), D(2025, 4, 10), folds=3, horizon=7)
    start = D(2025, 1, 1) + dt.timedelta(days=FEATURE_HISTORY_DAYS)
    assert plan.folds == [
        Fold(0, start, D(2025, 3, 14), D(2025, 3, 20)),
        Fold(1, start, D(2025, 3, 21), D(2025, 3, 27)),
        Fold(2, start, D(2025, 3, 28), D(2025, 4, 3)),
    ]
    assert plan.holdout == Fold(3, start, D(2025, 4, 4), D(2025, 4, 10))


def test_a_window_too_short_for_the_folds_says_what_it_needs():
    with pytest.raises(TrainingDataError, match=r"has 1 days .* need at least 84"):
        plan_folds(D(2025, 1, 1), D(2025, 1, 1), folds=2, horizon=14)


@pytest.mark.spark
@pytest.mark.parametrize("model_name", sorted(MODEL_SPECS))
def test_no_fold_trains_on_data_after_its_validation_block(
    spark, training_store, world, main_window, model_name
):
    spec = MODEL_SPECS[model_name]
    features = add_demand_features(load_daily_history(spark, training_store, main_window)).cache()
    plan = plan_folds(main_window.start, main_window.end, folds=2, horizon=14)
    for fold in [*plan.folds, plan.holdout]:
        train, validation = split_fold(features, fold, spec.label, spec.label_end_column)
        seen = train.agg(F.max("date"), F.max(spec.label_end_column), F.count(F.lit(1))).first()
        judged = validation.agg(
            F.min("date"), F.max("date"), F.count(F.lit(1)), F.max(spec.label_end_column)
        ).first()
        assert seen[2] > 0 and judged[2] > 0
        assert judged[3] <= fold.validation_end, "a validation label reads past its block"
        assert seen[1] < fold.validation_start, "a training label reaches into the validation block"
        assert seen[0] < fold.validation_start
        assert judged[0] >= fold.validation_start and judged[1] <= fold.validation_end
        assert train.where(F.col(spec.label).isNull()).isEmpty()
    if model_name == "stock_optimizer":
        # Rows whose lead time straddles the block start are excluded, not just later rows.
        fold = plan.holdout
        straddling = features.where(
            (F.col("date") < fold.validation_start)
            & (F.col("lead_time_end_date") >= fold.validation_start)
            & F.col(spec.label).isNotNull()
        )
        train, _ = split_fold(features, fold, spec.label, spec.label_end_column)
        assert not straddling.isEmpty()
        assert train.join(straddling, ["store_id", "product_id", "date"]).isEmpty()
    features.unpersist()
