"""Serving fixtures: a store of its own with a tiny catalog, sales history and stored forecasts, and
two real versions of a tiny Spark ML demand model in the real MLflow registry (unique names).

Version 1 predicts 2 x ``units_mean_7d``, version 2 predicts 3 x ``units_mean_7d``; the history
sells 3 units a day, so on-demand scoring gives 6 (version 1) or 9 (version 2) units a day.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from serving_world import (
    QUANTILES,
    World,
    forecast_rows,
    products_frame,
    sales_frame,
    stores_frame,
    wait_until,
)


@pytest.fixture(scope="session")
def world() -> World:
    tag = uuid.uuid4().hex[:8]
    return World(
        store_id=f"SV{tag}",
        other_store_id=f"SW{tag}",
        product_id=f"PV{tag}",
        demand_model=f"serving_demand_{tag}",
        stock_model=f"serving_stock_{tag}",
    )


@pytest.fixture(scope="session")
def serving_settings(settings, world, tmp_path_factory):
    """The session's settings with a store of the serving tests' own and quick refresh loops."""
    from common.settings import load_settings

    overrides: dict[str, object] = {
        "serving_demand_model": world.demand_model,
        "serving_stock_model": world.stock_model,
        "serving_store_refresh_s": 0.2,
        "serving_alias_check_s": 0.2,
        "serving_refresh_forecasts": False,
    }
    if settings.uses_embedded_store:
        overrides["data_dir"] = tmp_path_factory.mktemp("serving-data")
    return load_settings(**overrides)


@pytest.fixture(scope="session")
def serving_store(serving_settings, world):
    """A migrated store holding the catalog, 14 days of sales and version 1's forecasts."""
    from common.store import migrate, open_store

    store = open_store(serving_settings)
    migrate(store)
    with store.session():
        store.insert_df("stores", stores_frame(world))
        store.insert_df("products", products_frame(world))
        store.insert_df("sales_events", sales_frame(world))
        store.insert_df("forecasts", forecast_rows(world, "1", 1.0))
    return store


@pytest.fixture(scope="session")
def mlflow_server(settings):
    """Only the session's real MLflow server (no broker: serving does not read Kafka)."""
    from common import stack

    stack.start_mlflow(settings)
    yield settings.mlflow_tracking_uri
    stack.stop_mlflow(settings)


@pytest.fixture(scope="session")
def registry(mlflow_server, serving_settings):
    """An MlflowClient on the session's real MLflow server."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(serving_settings.mlflow_tracking_uri)
    return MlflowClient(serving_settings.mlflow_tracking_uri, serving_settings.mlflow_tracking_uri)


@pytest.fixture(scope="session")
def demand_versions(spark, registry, world) -> dict[str, str]:
    """Two registered versions of a tiny Spark ML pipeline (2x and 3x units_mean_7d); v1 champion."""
    import mlflow
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import LinearRegression

    versions = {}
    for slope in (2.0, 3.0):
        rows = [(float(x), slope * x) for x in range(1, 9)]
        frame = spark.createDataFrame(rows, "units_mean_7d double, label double")
        model = Pipeline(
            stages=[
                VectorAssembler(inputCols=["units_mean_7d"], outputCol="features"),
                LinearRegression(labelCol="label", regParam=0.0, solver="normal"),
            ]
        ).fit(frame)
        with mlflow.start_run(run_name=f"serving-test-{slope:g}x"):
            info = mlflow.spark.log_model(
                model,
                "model",
                registered_model_name=world.demand_model,
                metadata={"conformal_quantiles": QUANTILES, "holdout_metrics": {"rmse": slope}},
            )
        version = str(info.registered_model_version)
        registry.set_model_version_tag(world.demand_model, version, "holdout_rmse", str(slope))
        versions[f"{slope:g}x"] = version
    registry.set_registered_model_alias(world.demand_model, "champion", versions["2x"])
    return versions


@pytest.fixture(scope="module")
def serving_client(serving_settings, serving_store, demand_versions, registry) -> Iterator[object]:
    """A TestClient on the app (one per module), its store read and its champion resolved."""
    from fastapi.testclient import TestClient

    from serving.app import create_app

    with TestClient(create_app(serving_settings)) as client:

        def ready() -> bool:
            response = client.get("/ready")
            return response.status_code == 200 and response.json()["champions"][0]["version"]

        wait_until(ready, 120, "the store read and the champion resolved")
        yield client
