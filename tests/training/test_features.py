"""Features: exact lags and censoring on a hand-made panel; scoring equals training (no skew)."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from training.data import load_daily_history
from training.features import add_demand_features, build_scoring_features, model_input_columns

pytestmark = pytest.mark.spark

DAY0 = dt.date(2024, 3, 1)


def _panel(spark, units, stockouts=(), lead_time_days=2.0):
    rows = [
        (DAY0 + dt.timedelta(days=i), "s1", "p1", float(u), int(i in stockouts), 0, 1.0, 0,
         "north", "small", 500.0, "drinks", 2.5, lead_time_days)
        for i, u in enumerate(units)
    ]  # fmt: skip
    schema = (
        "date date, store_id string, product_id string, units_sold double, stockout int, "
        "on_promotion int, price_ratio double, is_holiday int, region string, size_class string, "
        "size_sqm double, category string, list_price double, lead_time_days double"
    )
    return spark.createDataFrame(rows, schema)


def _day(frame, offset):
    return frame.where(F.col("date") == DAY0 + dt.timedelta(days=offset)).first()


def test_lags_and_rolling_means_use_only_earlier_days(spark):
    features = add_demand_features(_panel(spark, range(1, 31)))  # day i sold i + 1 units
    row = _day(features, 29)
    assert (row["units_lag_1"], row["units_lag_7"], row["units_lag_14"], row["units_lag_28"]) == (
        29.0,
        23.0,
        16.0,
        2.0,
    )
    assert row["units_mean_7d"] == pytest.approx(sum(range(23, 30)) / 7)
    assert row["units_mean_28d"] == pytest.approx(sum(range(2, 30)) / 28)
    assert row["units_same_weekday_mean_4w"] == pytest.approx((23 + 16 + 9 + 2) / 4)
    assert row["observed_days_28d"] == 28.0
    assert row["demand_label"] == 30.0
    assert row["day_of_week"] == 7.0  # 2024-03-30 is a Saturday (Spark: Sunday = 1)
    assert row["lead_time_demand"] is None  # its 2-day lead time runs past the last day
    assert _day(features, 27)["lead_time_demand"] == 28.0 + 29.0


def test_stockout_days_are_masked_out_of_lags_and_labels(spark):
    units = [10.0] * 30
    units[28] = 3.0  # a stockout day: only 3 sold, demand unknown
    features = add_demand_features(_panel(spark, units, stockouts={28}))
    censored, after = _day(features, 28), _day(features, 29)
    assert censored["demand_label"] is None
    assert censored["units_sold"] == 3.0
    assert after["units_lag_1"] == 10.0  # the censored 3 is replaced by the 7-day mean
    assert after["units_mean_7d"] == 10.0
    assert after["observed_days_28d"] == 27.0
    assert _day(features, 27)["lead_time_demand"] is None  # its lead time includes the stockout


def test_first_day_of_a_series_falls_back_to_zero_without_any_history(spark):
    row = _day(add_demand_features(_panel(spark, [4.0, 5.0])), 0)
    assert row["units_lag_1"] == 0.0
    assert row["units_mean_28d"] == 0.0
    assert row["observed_days_28d"] == 0.0


def test_scoring_features_equal_training_features(spark, training_store, world, main_window):
    """The same rows through both paths give the same model inputs (no train/serve skew)."""
    as_of = main_window.end - dt.timedelta(days=3)
    columns = ["store_id", "product_id", *model_input_columns("stock_optimizer")]
    # The day's promotion and price come from its own sales: not known before it, not inputs.
    assert not {"on_promotion", "price_ratio"} & set(columns)
    training = (
        add_demand_features(load_daily_history(spark, training_store, main_window))
        .where(F.col("date") == as_of)
        .select(*columns)
    )
    keys = [(r.store_id, r.product_id) for r in training.select("store_id", "product_id").collect()]
    scoring = build_scoring_features(spark, training_store, keys, as_of)
    assertDataFrameEqual(scoring.select(*columns), training, rtol=1e-9)


def test_scoring_a_key_without_history_uses_the_product_fallback(
    spark, training_store, world, main_window
):
    as_of = main_window.end
    product = world["products"]["product_id"][0]
    row = build_scoring_features(spark, training_store, [("nowhere", product)], as_of).first()
    assert row["observed_days_28d"] == 0.0
    assert row["units_mean_28d"] > 0  # the product's mean over all stores, not zero
    assert row["units_lag_1"] == row["units_mean_28d"]


def test_no_keys_read_no_history_and_still_give_the_feature_columns(
    spark, training_store, main_window
):
    """What the streaming jobs' model probes ask for as they start: the columns, not the panel."""
    from training.features import load_recent_history

    no_keys = spark.createDataFrame([], "store_id string, product_id string")
    assert load_recent_history(spark, training_store, no_keys, main_window.end) is None
    features = build_scoring_features(spark, training_store, no_keys, main_window.end)
    assert set(model_input_columns("stock_optimizer")) <= set(features.columns)
    assert features.count() == 0
