"""The model runtime against the real MLflow server: alias resolution, hot swap, keeping the last
good model when a promoted version is broken, and the model_events it writes."""

from __future__ import annotations

import socket
import tempfile
import uuid

import pandas as pd
import pytest
from pyspark.ml import Pipeline
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.regression import LinearRegression
from pyspark.sql import DataFrame, SparkSession

from common.models import ChampionModel, check_transform, load_spark_model, model_info, model_uri

pytestmark = [pytest.mark.services, pytest.mark.spark]


def toy_pipeline(spark: SparkSession, slope: float, feature: str = "signal"):
    """A fitted pipeline predicting ``slope * feature`` (exactly, on a line)."""
    data = spark.createDataFrame(
        [(x, slope * x) for x in (1.0, 2.0, 3.0, 4.0)], f"{feature} double, label double"
    )
    return Pipeline(
        stages=[
            VectorAssembler(inputCols=[feature], outputCol="features"),
            LinearRegression(maxIter=10, regParam=0.0),
        ]
    ).fit(data)


def register_spark_model(model, name: str) -> str:
    """Log ``model`` in a run and register it under ``name``; its version."""
    import mlflow
    import mlflow.spark

    with mlflow.start_run():
        info = mlflow.spark.log_model(
            model, "model", registered_model_name=name, pip_requirements=[]
        )
    return str(info.registered_model_version)


def register_python_model(name: str) -> str:
    """A version that is not a Spark model at all: ``mlflow.spark.load_model`` refuses it."""
    import mlflow
    import mlflow.pyfunc

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: pd.DataFrame) -> list[float]:
            return [0.0] * len(model_input)

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Constant(), registered_model_name=name, pip_requirements=[]
        )
    return str(info.registered_model_version)


def events(store, name: str) -> list[tuple[str, str]]:
    frame = store.query_df(
        "SELECT event_type, model_version FROM model_events WHERE model_name = {n:String} "
        "ORDER BY event_time",
        {"n": name},
    )
    return list(zip(frame["event_type"], frame["model_version"], strict=True))


def probed_champion(name: str, store, settings, features: DataFrame) -> ChampionModel:
    """``name``'s champion as a job holds it: probed on an empty frame of ``features``."""
    return ChampionModel(
        name,
        job="test-models",
        store=store,
        settings=settings,
        probe=check_transform(features.limit(0)),
        registry_timeout_s=60,
    )


def predictions(loaded, frame: DataFrame) -> list[float]:
    return [round(r.prediction, 6) for r in loaded.model.transform(frame).collect()]


def test_alias_moves_hot_swap_and_broken_versions_keep_the_last_good_model(
    spark, services, store
) -> None:
    from mlflow import MlflowClient

    name = f"test_models_{uuid.uuid4().hex[:8]}"
    client = MlflowClient(services.mlflow_tracking_uri)
    features = spark.createDataFrame([(2.0,)], "signal double")
    champion = probed_champion(name, store, services, features)

    assert champion.current() is None  # nothing registered yet: run without scoring
    v1 = register_spark_model(toy_pipeline(spark, 1.0), name)
    v2 = register_spark_model(toy_pipeline(spark, 2.0), name)
    not_spark = register_python_model(name)
    wrong_inputs = register_spark_model(toy_pipeline(spark, 3.0, feature="other"), name)

    client.set_registered_model_alias(name, "champion", v1)
    first = champion.current()
    assert (first.version, predictions(first, features)) == (v1, [2.0])
    assert champion.current() is first  # alias unchanged: no reload

    client.set_registered_model_alias(name, "champion", v2)
    second = champion.current()
    assert (second.version, predictions(second, features)) == (v2, [4.0])

    for broken in (not_spark, wrong_inputs):
        client.set_registered_model_alias(name, "champion", broken)
        assert champion.current() is second  # the last good model keeps scoring
        assert champion.current() is second  # and the broken one is not retried every batch

    client.delete_registered_model_alias(name, "champion")
    assert champion.current() is None

    assert events(store, name) == [
        ("no_champion", ""),
        ("loaded", v1),
        ("loaded", v2),
        ("load_failed", not_spark),
        ("load_failed", wrong_inputs),
        ("no_champion", v2),
    ]
    detail = store.scalar(
        "SELECT detail FROM model_events WHERE model_name = {n:String} AND model_version = {v:String}",
        {"n": name, "v": wrong_inputs},
    )
    assert "keeping version " + v2 in detail and "other" in detail


def test_a_job_started_with_a_version_failing_on_rows_falls_back_to_the_one_before(
    spark, services, store, failing_on_rows
) -> None:
    """A restarted job has no earlier version in memory: when the champion it started with fails
    on the job's rows, the version the alias pointed at before (as ``model_promotions`` recorded
    the moves) scores instead, and the failing one is not retried every batch. At most one
    version is taken from that history per retry interval."""
    from mlflow import MlflowClient

    name = f"test_models_{uuid.uuid4().hex[:8]}"
    client = MlflowClient(services.mlflow_tracking_uri)
    features = spark.createDataFrame([(2.0,)], "signal double")
    v0 = register_spark_model(toy_pipeline(spark, 0.5), name)
    v1 = register_spark_model(toy_pipeline(spark, 1.0), name)
    v2 = register_spark_model(failing_on_rows(toy_pipeline(spark, 2.0)), name)

    def start_job() -> ChampionModel:
        return probed_champion(name, store, services, features)

    for version in (v0, v1):
        client.set_registered_model_alias(name, "champion", version)
        assert start_job().current().version == version
    client.set_registered_model_alias(name, "champion", v2)  # while the job was down
    restarted = start_job()
    started_with = restarted.current()
    assert started_with.version == v2  # it passed the probes
    with pytest.raises(Exception, match="assert_true|signal"):
        predictions(started_with, features)

    fallback = restarted.reject(v2, RuntimeError("failed on the job's rows"))

    assert (fallback.version, predictions(fallback, features)) == (v1, [2.0])
    assert restarted.current() is fallback
    assert events(store, name) == [
        ("loaded", v0),
        ("loaded", v1),
        ("loaded", v2),
        ("load_failed", v2),
        ("loaded", v1),
    ]
    # Should v1 fail alike (a failure that is not the version's own, say), the job does not go
    # on loading the history (v0) within the retry interval: no scoring instead.
    assert restarted.reject(v1, RuntimeError("failed on the job's rows")) is None
    assert events(store, name)[-1] == ("load_failed", v1)


def test_an_unreachable_registry_keeps_the_current_model(
    spark, services, store, monkeypatch
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    name = f"test_models_{uuid.uuid4().hex[:8]}"
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = MlflowClient(f"http://127.0.0.1:{sock.getsockname()[1]}")
    champion = ChampionModel(
        name, job="test-models", store=store, settings=services, client=dead, registry_timeout_s=10
    )
    assert champion.current() is None
    assert champion.current() is None  # one event per outage, not one per batch
    assert events(store, name) == [("registry_unreachable", "")]


def test_an_alias_moved_outside_retail_is_recorded_once_by_the_jobs_that_see_it(
    spark, services, store
) -> None:
    from mlflow import MlflowClient

    name = f"test_models_{uuid.uuid4().hex[:8]}"
    client = MlflowClient(services.mlflow_tracking_uri)
    v1 = register_spark_model(toy_pipeline(spark, 1.0), name)
    v2 = register_spark_model(toy_pipeline(spark, 2.0), name)
    jobs = [
        ChampionModel(name, job=job, store=store, settings=services, registry_timeout_s=60)
        for job in ("sales-stream", "inventory-stream")
    ]
    for version in (v1, v2, v1, None, v1):  # as a person would in the MLflow UI
        if version is None:
            client.delete_registered_model_alias(name, "champion")
        else:
            client.set_registered_model_alias(name, "champion", version)
        for job in jobs:
            for _ in range(2):  # no new record while the alias stays
                loaded = job.current()
                assert (loaded.version if loaded else None) == version

    recorded = store.query_df(
        "SELECT from_version, to_version, actor FROM model_promotions FINAL "
        "WHERE model_name = {n:String} ORDER BY changed_at",
        {"n": name},
    )
    assert list(zip(recorded.from_version, recorded.to_version, strict=True)) == [
        (None, v1),
        (v1, v2),
        (v2, v1),
        (v1, None),
        (None, v1),
    ]
    assert set(recorded.actor) == {"mlflow-ui (seen by sales-stream)"}


def test_loading_a_model_leaves_nothing_in_the_temp_directory(
    spark, services, tmp_path, monkeypatch
) -> None:
    name = f"test_models_tmp_{uuid.uuid4().hex[:8]}"
    uri = model_uri(name, register_spark_model(toy_pipeline(spark, 2.0), name))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where MLflow and we make folders

    model = load_spark_model(uri, services)
    info = model_info(uri)

    assert list(temp.iterdir()) == []  # mlflow.spark.load_model alone leaves the model's copy
    assert "spark" in info.flavors
    frame = spark.createDataFrame([(3.0,)], "signal double")
    assert [round(r.prediction, 6) for r in model.transform(frame).collect()] == [6.0]


def test_a_warm_up_loads_the_champion_before_any_batch_asks(spark, services, store) -> None:
    from mlflow import MlflowClient

    name = f"test_models_{uuid.uuid4().hex[:8]}"
    version = register_spark_model(toy_pipeline(spark, 1.0), name)
    MlflowClient(services.mlflow_tracking_uri).set_registered_model_alias(name, "champion", version)
    champion = ChampionModel(
        name, job="test-models", store=store, settings=services, registry_timeout_s=60
    )
    assert champion.loaded is None

    champion.warm_up().join(timeout=180)

    assert champion.loaded is not None and champion.loaded.version == version
    assert champion.current() is champion.loaded  # the first batch loads nothing again
    assert events(store, name) == [("loaded", version)]
