"""Training fixtures: a store of its own (so other packages' events never mix into the history)
holding one small generated world, trained on once per session."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator

import pytest
from training_world import (
    DAYS,
    ONE_DAY_STORE_PREFIX,
    PRODUCTS,
    SILENT_PRODUCT,
    START,
    STORES,
    TINY,
    WorldSpec,
    add_silent_product,
    build_world,
    tracking_at,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def training_settings(settings, tmp_path_factory):
    """The session's settings with a DATA_DIR and an MLflow server of the training tests' own,
    so other packages' events and registered versions never mix into these tests."""
    from common.settings import load_settings

    port = free_port()
    overrides = {"mlflow_port": port, "mlflow_tracking_uri": f"http://127.0.0.1:{port}"}
    if settings.uses_embedded_store:
        overrides["data_dir"] = tmp_path_factory.mktemp("training-data")
    return load_settings(**overrides)


@pytest.fixture(scope="session")
def tracking_server(training_settings) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, proxied artifacts) for these tests."""
    from common import stack

    stack.start_mlflow(training_settings)
    yield training_settings.mlflow_tracking_uri
    stack.stop_mlflow(training_settings)


@pytest.fixture
def tracking(tracking_server) -> Iterator[str]:
    """The training tests' tracking server, active for one test."""
    with tracking_at(tracking_server):
        yield tracking_server


@pytest.fixture(scope="session")
def training_store(training_settings):
    """A migrated store for the training tests."""
    from common.store import migrate, open_store

    store = open_store(training_settings)
    migrate(store)
    return store


@pytest.fixture(scope="session")
def world(training_store):
    """The generator's backfill (STORES x PRODUCTS x DAYS from START), plus a product that never
    sells in those stores and a store seen on the last day only."""
    from generator.backfill import backfill

    backfill(training_store, DAYS, seed=7, start_date=START, n_stores=STORES, n_products=PRODUCTS,
             n_customers=300, prefix="g")  # fmt: skip
    stores = training_store.query_df("SELECT * FROM stores WHERE startsWith(store_id, 'gS')")
    products = training_store.query_df(
        "SELECT * FROM products WHERE startsWith(product_id, 'gP') ORDER BY product_id"
    )
    add_silent_product(training_store, list(stores["store_id"]), SILENT_PRODUCT, START, DAYS)
    last_day = START + dt.timedelta(days=DAYS - 1)
    build_world(
        training_store,
        WorldSpec(
            prefix=ONE_DAY_STORE_PREFIX,
            stores=1,
            products=len(products),
            days=1,
            start=last_day,
            seed=8,
        ),
        products=products,
    )
    return {"stores": stores, "products": products}


@pytest.fixture(scope="session")
def main_window():
    from training.data import HistoryWindow

    return HistoryWindow(START, START + dt.timedelta(days=DAYS - 1))


@pytest.fixture(scope="session")
def trained(spark, training_store, world, main_window, tracking_server):
    """Both models trained once on the main world and registered as challengers."""
    from training.train import TrainingConfig, train_models

    config = TrainingConfig(
        start=main_window.start, end=main_window.end, experiment="tests-training", **TINY
    )
    with tracking_at(tracking_server):
        return train_models(spark, training_store, config)
