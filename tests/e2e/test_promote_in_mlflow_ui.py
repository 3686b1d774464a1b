"""A person promotes a challenger in the MLflow UI (real Chromium, real MLflow server) while both
streaming jobs run on the real broker: the next micro-batch of each scores with the new version,
and ``model_promotions`` records the change. Each promoted version's page is saved as a screenshot
under ``TEST_ARTIFACTS_DIR`` (default ``test-artifacts/``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf

from common.models import ChampionModel
from common.promotions import record_change
from common.schemas import event_key
from common.settings import Settings
from common.store import Store
from streaming.runtime import stop_gracefully

pytestmark = [pytest.mark.browser, pytest.mark.services, pytest.mark.spark]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", "test-artifacts"))
DAY = dt.date(2026, 5, 4)


def register_line(spark: SparkSession, name: str, feature: str, slope: float) -> str:
    """A Spark ML pipeline predicting ``slope x feature``, registered as a new version of ``name``."""
    import mlflow
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import LinearRegression

    data = spark.createDataFrame(
        [(float(x), slope * x) for x in range(1, 5)], f"{feature} double, label double"
    )
    model = Pipeline(
        stages=[VectorAssembler(inputCols=[feature], outputCol="features"), LinearRegression()]
    ).fit(data)
    with mlflow.start_run():
        info = mlflow.spark.log_model(
            model, "model", registered_model_name=name, pip_requirements=[]
        )
    return str(info.registered_model_version)


def demand_features(spark: SparkSession, store: Store, keys: DataFrame, day: dt.date) -> DataFrame:
    """Both toy models read one feature: signal = 10 for the demand model, lead time 2 for stock."""
    return keys.select(
        "store_id",
        "product_id",
        sf.lit(day).alias("date"),
        sf.lit(10.0).alias("signal"),
        sf.lit(2.0).alias("lead_time_days"),
    )


def sale(shop: str, product: str, clock: str) -> dict:
    amount = 3.0
    return {
        "event_id": f"s-{shop}-{product}-{clock}",
        "event_time": f"{DAY}T{clock}Z",
        "transaction_id": f"t-{clock}",
        "store_id": shop,
        "customer_id": "c1",
        "product_id": product,
        "category": "grocery",
        "quantity": 1,
        "unit_price": amount,
        "discount": 0.0,
        "total_amount": amount,
        "payment_method": "card",
        "channel": "store",
        "on_promotion": False,
    }


def movement(shop: str, product: str, clock: str, level: int) -> dict:
    return {
        "event_id": f"i-{shop}-{product}-{clock}",
        "event_time": f"{DAY}T{clock}Z",
        "store_id": shop,
        "product_id": product,
        "event_type": "sale",
        "quantity_change": -1,
        "stock_level": level,
        "reorder_point": 10,
        "lead_time_days": 2.0,
        "unit_cost": 2.0,
    }


def produce(settings: Settings, topic: str, events: list[dict]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    try:
        for event in events:
            key = event_key(event["store_id"], event["product_id"])
            producer.send(topic, key=key, value=json.dumps(event).encode())
        producer.flush(timeout=60)
    finally:
        producer.close()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(1.0)


@pytest.fixture
def world(spark: SparkSession, services: Settings, store: Store, tmp_path: Path) -> Iterator[dict]:
    """Two toy models with a champion (v1, promoted by `retail promote`) and a challenger (v2);
    both streaming jobs running in this process on fresh topics."""
    import mlflow

    from common import stack
    from streaming import inventory, sales

    tag = uuid.uuid4().hex[:6]
    mlflow.set_tracking_uri(services.mlflow_tracking_uri)
    client = mlflow.MlflowClient()
    names = {"demand": f"demand_ui_{tag}", "stock": f"stock_ui_{tag}"}
    features = {"demand": "signal", "stock": "lead_time_days"}
    for kind, name in names.items():
        v1 = register_line(spark, name, features[kind], 1.0)
        v2 = register_line(spark, name, features[kind], 2.0)
        client.set_registered_model_alias(name, "champion", v1)
        client.set_registered_model_alias(name, "challenger", v2)
        record_change(store, name, "champion", None, v1, "retail (tests)", "first champion")
    settings = services.model_copy(
        update={
            "sales_topic": f"sales-ui-{tag}",
            "inventory_topic": f"inventory-ui-{tag}",
            "checkpoint_dir": tmp_path / "checkpoints",
        }
    )
    stack.ensure_topics(settings)
    champions = {
        "demand": ChampionModel(
            names["demand"], job="sales-stream", settings=settings, registry_timeout_s=60
        ),
        "stock": ChampionModel(
            names["stock"], job="inventory-stream", settings=settings, registry_timeout_s=60
        ),
    }
    queries = sales.build_queries(
        spark,
        settings,
        job=f"sales-ui-{tag}",
        champion=champions["demand"],
        feature_builder=demand_features,
    )
    queries += inventory.build_queries(
        spark,
        settings,
        rules=inventory.InventoryRules(),
        policy=inventory.StockPolicy(),
        stock_champion=champions["stock"],
        feature_builder=demand_features,
        query_names=(f"inventory_ui_{tag}_changes", f"inventory_ui_{tag}_dead"),
    )
    try:
        yield {"tag": tag, "names": names, "settings": settings, "shop": f"ui-{tag}"}
    finally:
        for query in queries:
            stop_gracefully(query)  # between batches: a stop mid-batch interrupts its scoring
        for champion in champions.values():
            champion.close()


def scored_versions(store: Store, shop: str, product: str) -> tuple[set[str], set[str]]:
    """The model versions the sales job's and the inventory job's rows of ``product`` carry."""
    demand = store.query_df(
        "SELECT model_version FROM demand_scores WHERE store_id = {s:String} "
        "AND product_id = {p:String}",
        {"s": shop, "p": product},
    )
    stock = store.query_df(
        "SELECT stock_model_version FROM stock_recommendations FINAL WHERE store_id = {s:String} "
        "AND product_id = {p:String}",
        {"s": shop, "p": product},
    )
    return set(demand.model_version), set(stock.stock_model_version)


def send_and_score(world: dict, store: Store, product: str, clock: str, level: int) -> tuple:
    """One sale and one stock movement of a new product; the versions that scored them."""
    settings, shop = world["settings"], world["shop"]
    produce(settings, settings.sales_topic, [sale(shop, product, clock)])
    produce(settings, settings.inventory_topic, [movement(shop, product, clock, level)])
    versions: tuple[set[str], set[str]] = (set(), set())

    def both_scored() -> bool:
        nonlocal versions
        versions = scored_versions(store, shop, product)
        return bool(versions[0]) and bool(versions[1])

    wait_for(both_scored, 300, f"both jobs to score {product}")
    return versions


def promote_in_ui(page, mlflow_url: str, name: str, version: str) -> None:
    """What a person does: open the version page, Edit aliases, type champion, Save aliases."""
    page.goto(f"{mlflow_url}/#/models/{name}/versions/{version}")
    page.get_by_role("button", name="Edit aliases").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("combobox").fill("champion")
    dialog.get_by_role("combobox").press("Enter")
    dialog.get_by_role("button", name="Save aliases").click()
    dialog.wait_for(state="hidden")
    page.get_by_text("@ champion").first.wait_for()


def test_a_version_promoted_in_the_mlflow_ui_drives_both_running_streams(
    world: dict, store: Store, services: Settings
) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: apt-get install -y chromium (part of `make setup`)")
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    assert send_and_score(world, store, "P1", "09:00:00", 30) == ({"1"}, {"1"})

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(120_000)  # the UI's bundle is large; CI machines are busy
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            for kind, name in world["names"].items():
                promote_in_ui(page, services.mlflow_tracking_uri, name, "2")
                page.screenshot(path=str(ARTIFACTS / f"mlflow-ui-promoted-{kind}-model.png"))
        finally:
            browser.close()
    client = MlflowClient(services.mlflow_tracking_uri)
    for name in world["names"].values():
        assert client.get_model_version_by_alias(name, "champion").version == "2"

    # The first micro-batch after the click already scores with version 2, in both jobs.
    assert send_and_score(world, store, "P2", "09:01:00", 29) == ({"2"}, {"2"})

    recorded = store.query_df(
        "SELECT model_name, from_version, to_version, actor FROM model_promotions FINAL "
        "WHERE model_name IN ({d:String}, {s:String}) ORDER BY model_name, changed_at",
        {"d": world["names"]["demand"], "s": world["names"]["stock"]},
    )
    moves = recorded[recorded.actor.str.startswith("mlflow-ui")]
    assert sorted(zip(moves.model_name, moves.from_version, moves.to_version, strict=True)) == [
        (world["names"]["demand"], "1", "2"),
        (world["names"]["stock"], "1", "2"),
    ]
    assert set(moves.actor) == {
        "mlflow-ui (seen by sales-stream)",
        "mlflow-ui (seen by inventory-stream)",
    }
    assert pd.notna(recorded.to_version).all()
