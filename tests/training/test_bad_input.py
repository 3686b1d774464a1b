"""Bad history gives a clear error before anything is logged or registered."""

from __future__ import annotations

import datetime as dt

import pytest
from training_world import WorldSpec, build_world

from training.data import TrainingDataError, resolve_window
from training.train import TrainingConfig, train_models

pytestmark = pytest.mark.spark

TINY_CONFIG = {"folds": 2, "horizon": 7, "max_evals": 1, "max_trees": 10, "max_depth": 4}


def test_an_empty_store_says_to_load_history_first(tmp_path):
    from common.store import migrate
    from common.store.embedded import EmbeddedStore

    empty = EmbeddedStore(tmp_path / "chdb")
    migrate(empty)
    with pytest.raises(TrainingDataError, match="no sales or inventory events.*retail generate"):
        resolve_window(empty)


def test_todays_events_are_not_a_whole_day_of_history(tmp_path):
    import pandas as pd

    from common.store import migrate
    from common.store.embedded import EmbeddedStore

    store = EmbeddedStore(tmp_path / "chdb")
    migrate(store)
    today = dt.datetime.now(dt.UTC).date()

    def sell_on(day: dt.date) -> None:
        sale = {
            "event_id": f"e-{day}", "event_time": pd.Timestamp(day) + pd.Timedelta(hours=1),
            "transaction_id": f"t-{day}", "store_id": "S1", "customer_id": None,
            "product_id": "P1", "category": "dairy", "quantity": 1, "unit_price": 2.0,
            "discount": 0.0, "total_amount": 2.0, "payment_method": "card", "channel": "store",
        }  # fmt: skip
        store.insert_df("sales_events", pd.DataFrame([sale]))

    sell_on(today)
    with pytest.raises(TrainingDataError, match="today's events are not a whole day yet"):
        resolve_window(store)
    sell_on(today - dt.timedelta(days=2))
    window = resolve_window(store)
    assert (window.start, window.end) == (
        today - dt.timedelta(days=2),
        today - dt.timedelta(days=1),
    )


def test_a_window_without_events_is_refused(spark, training_store, world):
    config = TrainingConfig(start=dt.date(2023, 1, 1), end=dt.date(2023, 6, 30), **TINY_CONFIG)
    with pytest.raises(TrainingDataError, match="no sales or inventory events between 2023-01-01"):
        train_models(spark, training_store, config)


def test_a_store_with_one_day_of_history_is_refused_with_the_days_needed(spark, training_store):
    day = dt.date(2024, 6, 1)
    build_world(training_store, WorldSpec(prefix="one", stores=1, products=3, days=1, start=day))
    config = TrainingConfig(start=day, end=day, **TINY_CONFIG)
    with pytest.raises(
        TrainingDataError, match=r"has 1 days \(2024-06-01..2024-06-01\).*at least 63"
    ):
        train_models(spark, training_store, config)


def test_a_history_where_nothing_ever_sells_is_refused(spark, training_store):
    start = dt.date(2024, 1, 1)
    spec = WorldSpec(prefix="zero", stores=2, products=3, days=80, start=start, silent_products=3)
    build_world(training_store, spec)
    config = TrainingConfig(start=start, end=start + dt.timedelta(days=79), **TINY_CONFIG)
    with pytest.raises(TrainingDataError, match="no units were sold between 2024-01-01"):
        train_models(spark, training_store, config)
