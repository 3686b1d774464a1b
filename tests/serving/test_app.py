"""The API against the real store, the real MLflow registry and the shared SparkSession."""

from __future__ import annotations

import datetime as dt
import math
import uuid

import pandas as pd
import pytest
from serving_world import (
    FORECAST_DAYS,
    ORIGIN,
    QUANTILES,
    forecast_rows,
    products_frame,
    sales_frame,
    wait_until,
)

pytestmark = [pytest.mark.services, pytest.mark.spark]


def key_params(world, **extra):
    return {"store_id": world.store_id, "product_id": world.product_id, **extra}


def stored_points(rows: pd.DataFrame) -> list[tuple]:
    return [
        (r.forecast_date.isoformat(), r.predicted_units, r.lower_90, r.upper_90, r.model_version)
        for r in rows.itertuples(index=False)
    ]


def answered_points(body: dict) -> list[tuple]:
    return [
        (p["date"], p["predicted_units"], p["lower_90"], p["upper_90"], p["model_version"])
        for p in body["forecasts"]
    ]


def on_demand_point(units_mean_7d: float, slope: float) -> tuple[float, float, float]:
    """What the tiny model and the conformal bounds give: slope x mean, mean -/+ q x sqrt(.+1)."""
    predicted = slope * units_mean_7d
    scale = math.sqrt(predicted + 1)
    return predicted, predicted + QUANTILES["q0.05"] * scale, predicted + QUANTILES["q0.95"] * scale


def test_the_answer_is_the_stored_forecast_stamped_with_the_champion(
    serving_client, world, demand_versions
):
    response = serving_client.get("/forecast", params=key_params(world, horizon=FORECAST_DAYS))

    assert response.status_code == 200, response.text
    body = response.json()
    assert demand_versions["2x"] == "1"
    assert answered_points(body) == stored_points(forecast_rows(world, "1", 1.0))
    assert (body["model_name"], body["model_version"]) == (world.demand_model, "1")
    assert (body["champion_version"], body["up_to_date"]) == ("1", True)
    assert body["start"] == ORIGIN.isoformat()
    assert [p["horizon_day"] for p in body["forecasts"]] == list(range(1, FORECAST_DAYS + 1))
    assert {p["source"] for p in body["forecasts"]} == {"precomputed"}
    by_path = serving_client.get(f"/forecast/{world.store_id}/{world.product_id}?horizon=14")
    assert by_path.json()["forecasts"] == body["forecasts"]


def test_days_not_precomputed_are_scored_on_demand_by_the_champion(serving_client, world):
    # The day before the origin has stored sales; the day after the last forecast day has none.
    start = ORIGIN - dt.timedelta(days=1)
    response = serving_client.get(
        "/forecast", params=key_params(world, start=str(start), horizon=FORECAST_DAYS + 2)
    )

    assert response.status_code == 200, response.text
    days = response.json()["forecasts"]
    sources = [p["source"] for p in days]
    assert sources == ["on_demand"] + ["precomputed"] * FORECAST_DAYS + ["on_demand"]
    assert [p["predicted_units"] for p in days[1:-1]] == [float(u) for u in range(1, 15)]
    expected = on_demand_point(3.0, 2.0)  # 7-day mean of 3 units a day, model version 1 (2x)
    for point in (days[0], days[-1]):
        assert (point["predicted_units"], point["lower_90"], point["upper_90"]) == pytest.approx(
            expected, abs=1e-6
        )
        assert point["model_version"] == "1"
    assert [days[0]["date"], days[-1]["date"]] == [
        str(start),
        str(ORIGIN + dt.timedelta(days=FORECAST_DAYS)),
    ]


KNOWN = {"store_id": "<store>", "product_id": "<product>"}


@pytest.mark.parametrize(
    ("path", "params", "status", "named"),
    [
        ("/forecast", {**KNOWN, "store_id": "NOPE-S"}, 404, ["NOPE-S"]),
        ("/forecast", {**KNOWN, "product_id": "NOPE-P"}, 404, ["NOPE-P"]),
        ("/forecast", {"store_id": "NOPE-S", "product_id": "NOPE-P"}, 404, ["NOPE-S", "NOPE-P"]),
        ("/reorder-advice", {**KNOWN, "store_id": "NOPE-S"}, 404, ["NOPE-S"]),
        ("/alerts", {"store_id": "NOPE-S"}, 404, ["NOPE-S"]),
        ("/forecast", {**KNOWN, "horizon": 0}, 422, ["horizon"]),
        ("/forecast", {**KNOWN, "horizon": 29}, 422, ["horizon"]),
        ("/forecast", {**KNOWN, "horizon": "a week"}, 422, ["horizon"]),
        ("/forecast", {**KNOWN, "start": "2025-02-30"}, 422, ["start"]),
        ("/forecast", {**KNOWN, "start": "2025-05-01"}, 422, ["start", "28 days"]),
        ("/forecast", {**KNOWN, "start": "2023-01-01"}, 422, ["start", "366 days"]),
        ("/forecast", {**KNOWN, "start": "9999-12-31", "horizon": 2}, 422, ["start", "28 days"]),
        ("/alerts", {"severity": "URGENT"}, 422, ["severity"]),
        ("/reorder-advice", {**KNOWN, "service_level": 0.93}, 422, ["service_level", "0.95"]),
        ("/models/no_such_model", {}, 404, ["no_such_model"]),
    ],
)
def test_bad_requests_are_refused_with_a_message_that_names_the_problem(
    serving_client, world, path, params, status, named
):
    ids = {"<store>": world.store_id, "<product>": world.product_id}
    query = {name: ids.get(value, value) for name, value in params.items()}

    response = serving_client.get(path, params=query)

    assert response.status_code == status, response.text
    for text in named:
        assert text in response.text


def test_model_info_has_version_metrics_and_promotion_time(serving_client, serving_store, world):
    promoted_at = pd.Timestamp("2025-03-15 09:30:00")
    serving_store.insert_df(
        "model_promotions",
        pd.DataFrame(
            [
                {
                    "changed_at": promoted_at,
                    "model_name": world.demand_model,
                    "alias": "champion",
                    "from_version": None,
                    "to_version": "1",
                    "actor": "test",
                    "reason": "first",
                    "metric_name": "holdout_rmse",
                    "challenger_metric": 2.0,
                    "champion_metric": None,
                }
            ]  # fmt: skip
        ).astype({"champion_metric": "float64"}),
    )

    info = wait_until(
        lambda: (
            (b := serving_client.get(f"/models/{world.demand_model}").json())["promoted_at"] and b
        ),
        30,
        "the promotion time",
    )

    assert (info["version"], info["alias"], info["status"]) == ("1", "champion", "ok")
    assert info["metrics"] == {"holdout_rmse": 2.0}
    assert info["promoted_at"] == "2025-03-15T09:30:00Z"
    listed = {m["name"]: m for m in serving_client.get("/models").json()}
    assert listed[world.stock_model]["status"] == "no_champion"
    assert listed[world.stock_model]["version"] is None
    ready = serving_client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["registry_reachable"] is True


def reorder_answer(client, params: dict, status: int) -> dict | bool:
    """The body of ``/reorder-advice`` once it answers with ``status`` (False until then)."""
    answer = client.get("/reorder-advice", params=params)
    return answer.status_code == status and answer.json()


def test_reorder_advice_comes_from_the_recommendation_row_when_there_is_one(
    serving_client, serving_store, world
):
    row = {
        "store_id": world.other_store_id, "product_id": world.product_id,
        "as_of": pd.Timestamp("2025-03-14 18:00"), "forecast_date": ORIGIN, "stock_level": 4,
        "lead_time_days": 2.5, "lead_time_demand": 7.5, "daily_demand": 3.0, "safety_stock": 2.5,
        "reorder_point": 10.0, "order_up_to": 31.0, "order_quantity": 30, "reorder_now": 1,
        "days_of_cover": 1.3333, "eta_hours": 32.0,
        "stockout_eta": pd.Timestamp("2025-03-16 02:00"), "service_level": 0.95,
        "stock_model_name": world.stock_model, "stock_model_version": "4",
        "demand_model_name": world.demand_model, "demand_model_version": "1",
        "query_name": "test", "batch_id": 1,
    }  # fmt: skip
    serving_store.insert_df("stock_recommendations", pd.DataFrame([row]))
    params = {"store_id": world.other_store_id, "product_id": world.product_id}

    advice = wait_until(
        lambda: reorder_answer(serving_client, params, 200), 30, "the recommendation"
    )

    assert advice["source"] == "stock_recommendations"
    assert (advice["reorder_point"], advice["safety_stock"], advice["order_quantity"]) == (
        10.0, 2.5, 30,
    )  # fmt: skip
    assert (advice["reorder_now"], advice["eta_hours"]) == (True, 32.0)
    assert advice["stockout_eta"] == "2025-03-16T02:00:00Z"
    assert (advice["stock_model_version"], advice["demand_model_version"]) == ("4", "1")


def test_reorder_advice_is_computed_from_the_forecasts_without_a_recommendation(
    serving_client, serving_store, world
):
    level = {
        "store_id": world.store_id, "product_id": world.product_id, "stock_level": 5,
        "event_time": pd.Timestamp(ORIGIN), "reorder_point": 4, "lead_time_days": 2.5,
        "unit_cost": 1.2, "effective_reorder_point": 4.0, "demand_per_hour": None,
        "eta_hours": None, "threshold_source": "static", "model_name": "", "model_version": "",
        "last_event_id": "e", "last_event_type": "sale", "updated_at": pd.Timestamp(ORIGIN),
    }  # fmt: skip
    serving_store.insert_df(
        "stock_levels",
        pd.DataFrame([level]).astype({"demand_per_hour": "float64", "eta_hours": "float64"}),
    )

    advice = wait_until(
        lambda: (
            (b := serving_client.get("/reorder-advice", params=key_params(world)).json()).get(
                "stock_level"
            )
            == 5
            and b
        ),
        30,
        "the stock level",
    )

    safety = QUANTILES["q0.95"] * math.sqrt(2 + 3 + 0.5 * 4)  # forecasts 1, 2, 3, ... units a day
    assert advice["source"] == "forecasts"
    assert advice["lead_time_demand"] == pytest.approx(1 + 2 + 0.5 * 3)
    assert advice["safety_stock"] == pytest.approx(safety)
    assert advice["reorder_point"] == pytest.approx(4.5 + safety)
    assert advice["order_up_to"] == pytest.approx(45 + 5 + safety)
    assert (advice["reorder_now"], advice["order_quantity"]) == (True, 54)
    assert advice["eta_hours"] == pytest.approx(24 * (2 + 2 / 3))  # 1 + 2 units, then 2 of 3
    assert advice["stockout_eta"] == "2025-03-17T16:00:00Z"
    assert (advice["demand_model_version"], advice["service_level"]) == ("1", 0.95)


def test_computed_reorder_advice_starts_from_the_newest_forecast_run(
    serving_client, serving_store, world
):
    """A product without a stock level: its advice is sized on the latest run's forecasts, not on
    the days an older run left in the store (the store keeps one row per day)."""
    product = f"PR{uuid.uuid4().hex[:6]}"
    serving_store.insert_df("products", products_frame(world).assign(product_id=product))

    def run(origin: dt.date, units: float) -> pd.DataFrame:
        rows = forecast_rows(world, "1", 1.0).assign(product_id=product, predicted_units=units)
        return rows.assign(forecast_date=[origin + dt.timedelta(days=n) for n in range(len(rows))])

    serving_store.insert_df("forecasts", run(ORIGIN - dt.timedelta(days=10), 50.0))
    serving_store.insert_df("forecasts", run(ORIGIN, 5.0))
    both_stored = dt.datetime.now(dt.UTC)

    def advice_read_after_both_runs() -> dict:
        """The API may read the store between the two inserts; wait for a read after both."""
        answer = serving_client.get(
            "/reorder-advice", params={"store_id": world.store_id, "product_id": product}
        )
        body = answer.status_code == 200 and answer.json()
        return body and dt.datetime.fromisoformat(body["data_as_of"]) > both_stored and body

    sized = wait_until(advice_read_after_both_runs, 30, "the new product's advice")
    assert sized["source"] == "forecasts" and sized["stock_level"] is None
    assert sized["lead_time_demand"] == pytest.approx(5.0 * 2.5)  # 2.5 days of lead time


def stock_level_row(world, product: str, moment: pd.Timestamp, units: int) -> pd.DataFrame:
    level = {
        "store_id": world.store_id, "product_id": product, "stock_level": units,
        "event_time": moment, "reorder_point": 4, "lead_time_days": 2.5, "unit_cost": 1.2,
        "effective_reorder_point": 4.0, "demand_per_hour": None, "eta_hours": None,
        "threshold_source": "event", "model_name": "", "model_version": "",
        "last_event_id": "e", "last_event_type": "sale", "updated_at": moment,
    }  # fmt: skip
    return pd.DataFrame([level]).astype({"demand_per_hour": "float64", "eta_hours": "float64"})


def recommendation_row(world, product: str, as_of: pd.Timestamp) -> pd.DataFrame:
    """The inventory job's recommendation for (the world's store, ``product``) at ``as_of``."""
    row = {
        "store_id": world.store_id, "product_id": product, "as_of": as_of,
        "forecast_date": ORIGIN, "stock_level": 3, "lead_time_days": 2.5,
        "lead_time_demand": 7.5, "daily_demand": 3.0, "safety_stock": 2.5,
        "reorder_point": 10.0, "order_up_to": 31.0, "order_quantity": 30, "reorder_now": 1,
        "days_of_cover": 1.0, "eta_hours": 24.0, "stockout_eta": None, "service_level": 0.95,
        "stock_model_name": world.stock_model, "stock_model_version": "4",
        "demand_model_name": world.demand_model, "demand_model_version": "1",
        "query_name": "test", "batch_id": 1,
    }  # fmt: skip
    return pd.DataFrame([row])


def test_a_recommendation_older_than_the_stock_level_gives_way_to_computed_advice(
    serving_client, serving_store, world
):
    """The inventory job stopped scoring (no champion) while the level kept moving: its last
    recommendation no longer fits, so the advice is computed for the current level."""
    product = f"PS{uuid.uuid4().hex[:6]}"
    serving_store.insert_df("products", products_frame(world).assign(product_id=product))
    serving_store.insert_df("forecasts", forecast_rows(world, "1", 1.0).assign(product_id=product))
    recommended = pd.Timestamp("2025-03-14 18:00")
    serving_store.insert_df(
        "stock_recommendations", recommendation_row(world, product, recommended)
    )

    def level_at(moment: pd.Timestamp, units: int) -> None:
        serving_store.insert_df("stock_levels", stock_level_row(world, product, moment, units))

    def advice_with(level: int) -> dict:
        answer = serving_client.get(
            "/reorder-advice", params={"store_id": world.store_id, "product_id": product}
        ).json()
        return answer.get("stock_level") == level and answer

    level_at(recommended, 3)
    current = wait_until(lambda: advice_with(3), 30, "the recommendation")
    assert current["source"] == "stock_recommendations"
    level_at(recommended + pd.Timedelta(hours=2), 200)  # restocked, not scored
    moved = wait_until(lambda: advice_with(200), 30, "the advice at the new level")
    assert moved["source"] == "forecasts"
    assert (moved["reorder_now"], moved["order_quantity"]) == (False, 0)


def test_computed_advice_counts_the_stockout_from_the_first_forecast_day_and_refuses_old_ones(
    serving_client, serving_store, world
):
    """A slow mover's level observed three days before the forecasts' first day still held then:
    its stockout is counted from that day, not in the past. A level newer than every forecast
    day gets a 503, not advice sized on days gone by."""
    product = f"PE{uuid.uuid4().hex[:6]}"
    serving_store.insert_df("products", products_frame(world).assign(product_id=product))
    serving_store.insert_df("forecasts", forecast_rows(world, "1", 1.0).assign(product_id=product))
    params = {"store_id": world.store_id, "product_id": product}
    observed = pd.Timestamp(ORIGIN) - pd.Timedelta(days=3) + pd.Timedelta(hours=10)
    serving_store.insert_df("stock_levels", stock_level_row(world, product, observed, 2))

    advice = wait_until(
        lambda: (
            (b := serving_client.get("/reorder-advice", params=params).json()).get("stock_level")
            == 2
            and b
        ),
        30,
        "the advice",
    )
    assert advice["eta_hours"] == pytest.approx(24 * 1.5)  # 1 unit on day 1, then 1 of day 2's 2
    assert advice["stockout_eta"] == f"{ORIGIN + dt.timedelta(days=1)}T12:00:00Z"

    last_day = ORIGIN + dt.timedelta(days=FORECAST_DAYS - 1)
    later = pd.Timestamp(last_day) + pd.Timedelta(days=2)
    serving_store.insert_df("stock_levels", stock_level_row(world, product, later, 2))
    refused = wait_until(lambda: reorder_answer(serving_client, params, 503), 30, "the refusal")
    assert f"end on {last_day}" in refused["detail"]


def test_another_review_period_without_forecasts_is_a_clear_422(
    serving_client, serving_store, world
):
    """The pair has the inventory job's recommendation but no forecasts to size another one."""
    product = f"PQ{uuid.uuid4().hex[:6]}"
    serving_store.insert_df("products", products_frame(world).assign(product_id=product))
    recommended = pd.Timestamp("2025-03-14 18:00")
    serving_store.insert_df(
        "stock_recommendations", recommendation_row(world, product, recommended)
    )
    params = {"store_id": world.store_id, "product_id": product}
    wait_until(
        lambda: serving_client.get("/reorder-advice", params=params).status_code == 200,
        30,
        "the recommendation",
    )

    answer = serving_client.get("/reorder-advice", params={**params, "review_days": 14})

    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"] == ["query", "review_days"]
    assert "sized at service level 0.95" in error["msg"] and "none are stored" in error["msg"]


def test_alerts_lists_the_open_alerts_most_severe_first(serving_client, serving_store, world):
    def alert(alert_id, severity, status, updated):
        return {
            "alert_id": alert_id, "store_id": world.store_id, "product_id": world.product_id,
            "alert_type": f"type-{alert_id}", "severity": severity, "peak_severity": severity,
            "status": status, "opened_at": pd.Timestamp("2025-03-14 08:00"),
            "updated_at": pd.Timestamp(updated), "resolved_at": None, "reason": "low stock",
            "stock_level": 2, "reorder_point": 6.0, "threshold": 6.0, "eta_hours": 5.0,
            "stockout_eta": pd.Timestamp("2025-03-14 13:00"), "model_name": world.demand_model,
            "model_version": "1", "opened_event_id": "e1", "last_event_id": "e2", "revision": 1,
            "detected_at": pd.Timestamp(updated),
        }  # fmt: skip

    tag = uuid.uuid4().hex[:6]
    rows = [
        alert(f"low-{tag}", "LOW", "open", "2025-03-14 10:00"),
        alert(f"crit-{tag}", "CRITICAL", "open", "2025-03-14 09:00"),
        alert(f"gone-{tag}", "HIGH", "open", "2025-03-14 09:00"),
        alert(f"gone-{tag}", "HIGH", "resolved", "2025-03-14 11:00"),
    ]
    frame = pd.DataFrame(rows).astype({"resolved_at": "datetime64[ns]"})
    serving_store.insert_df("stock_alerts", frame)

    listed = wait_until(
        lambda: (
            (b := serving_client.get("/alerts", params={"store_id": world.store_id}).json())[
                "count"
            ]
            == 2
            and b
        ),
        30,
        "the alerts",
    )

    assert [a["alert_id"] for a in listed["alerts"]] == [f"crit-{tag}", f"low-{tag}"]
    low = serving_client.get("/alerts", params={**key_params(world), "severity": "LOW"}).json()
    assert [a["alert_id"] for a in low["alerts"]] == [f"low-{tag}"]
    assert low["alerts"][0]["stockout_eta"] == "2025-03-14T13:00:00Z"
    other = serving_client.get("/alerts", params={"store_id": world.other_store_id}).json()
    assert other["count"] == 0


def test_sales_anomalies_lists_the_recent_windows_and_silences_most_severe_first(
    serving_client, serving_store, world
):
    now = pd.Timestamp.now(tz="UTC").floor("min").tz_localize(None)

    def anomaly(store, metric, severity, ended_ago, direction="above"):
        end = now - pd.Timedelta(ended_ago)
        return {
            "window_start": end - pd.Timedelta("5min"), "window_end": end, "store_id": store,
            "metric": metric, "observed": 300.0, "expected": 50.0, "baseline_mad": 2.0,
            "score": 9.0, "model_expected": None, "model_name": None, "model_version": None,
            "direction": direction, "severity": severity, "reason": f"{metric} {severity}",
        }  # fmt: skip

    rows = [
        anomaly(world.store_id, "revenue", "warning", "1h"),
        anomaly(world.store_id, "transactions", "critical", "2h", "below"),
        anomaly(world.store_id, "units", "critical", "30h"),  # older than a day
        anomaly("ALL", "units", "warning", "30min", "below"),
    ]

    def listed(**params) -> dict:
        answer = serving_client.get("/sales-anomalies", params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert listed(store_id="ALL")["count"] == 0  # the overall rows exist before any is flagged
    serving_store.insert_df("sales_anomalies_versions", pd.DataFrame(rows))

    day = wait_until(
        lambda: (b := listed(store_id=world.store_id))["count"] == 2 and b, 30, "the anomalies"
    )
    assert [(a["metric"], a["severity"]) for a in day["anomalies"]] == [
        ("transactions", "critical"),
        ("revenue", "warning"),
    ]
    assert day["anomalies"][0]["direction"] == "below"
    two_days = listed(store_id=world.store_id, hours=48)
    assert [a["metric"] for a in two_days["anomalies"]] == ["transactions", "units", "revenue"]
    critical = listed(store_id=world.store_id, severity="critical")
    assert [a["metric"] for a in critical["anomalies"]] == ["transactions"]
    overall = listed(store_id="ALL")
    assert [(a["store_id"], a["metric"]) for a in overall["anomalies"]] == [("ALL", "units")]
    assert listed(store_id=world.other_store_id)["count"] == 0
    assert serving_client.get("/sales-anomalies", params={"hours": 0}).status_code == 422
    assert serving_client.get("/sales-anomalies", params={"store_id": "nope"}).status_code == 404


def test_after_the_alias_moves_the_answers_switch_to_the_new_version(
    serving_client, serving_store, registry, world, demand_versions
):
    v1, v2 = demand_versions["2x"], demand_versions["3x"]
    params = key_params(world, horizon=FORECAST_DAYS)
    try:
        registry.set_registered_model_alias(world.demand_model, "champion", v2)
        waiting = wait_until(
            lambda: (
                (b := serving_client.get("/forecast", params=params).json())["champion_version"]
                == v2
                and b
            ),
            30,
            "the API to see the new champion",
        )
        # Until the new version's forecasts are stored, the old ones are served as what they are.
        assert (waiting["model_version"], waiting["up_to_date"]) == (v1, False)

        serving_store.insert_df("forecasts", forecast_rows(world, v2, 2.0))
        switched = wait_until(
            lambda: (
                (b := serving_client.get("/forecast", params=params).json())["model_version"] == v2
                and b
            ),
            30,
            "the new version's forecasts",
        )
        assert answered_points(switched) == stored_points(forecast_rows(world, v2, 2.0))
        assert switched["up_to_date"] is True
        events = serving_store.query_df(
            "SELECT model_version FROM model_events WHERE model_name = {m:String} "
            "AND job = 'serving' AND event_type = 'loaded'",
            {"m": world.demand_model},
        )
        assert v2 in set(events["model_version"])
    finally:
        registry.set_registered_model_alias(world.demand_model, "champion", v1)
        serving_store.insert_df("forecasts", forecast_rows(world, v1, 1.0))


def test_the_api_refreshes_the_forecasts_itself_when_the_champion_moves_without_them(
    serving_settings, serving_store, registry, world, demand_versions
):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.state import ServingState

    v1, v2 = demand_versions["2x"], demand_versions["3x"]
    calls = []

    def refresh(model_name: str) -> int:
        """Stands in for training.forecast.refresh_forecasts (which serves demand_forecaster
        only): writes the champion's forecasts."""
        version = registry.get_model_version_by_alias(model_name, "champion").version
        calls.append((model_name, version))
        return serving_store.insert_df("forecasts", forecast_rows(world, version, 2.0))

    settings = serving_settings.model_copy(
        update={"serving_refresh_forecasts": True, "serving_refresh_after_s": 0.0}
    )
    params = key_params(world, horizon=FORECAST_DAYS)
    try:
        with TestClient(create_app(settings, ServingState(settings, refresher=refresh))) as client:
            wait_until(
                lambda: client.get("/forecast", params=params).json().get("up_to_date"),
                90,
                "the first champion's forecasts",
            )
            registry.set_registered_model_alias(world.demand_model, "champion", v2)
            switched = wait_until(
                lambda: (
                    (b := client.get("/forecast", params=params).json())["model_version"] == v2
                    and b
                ),
                60,
                "the refreshed forecasts",
            )
            ready = client.get("/ready").json()
        assert calls == [(world.demand_model, v2)]
        assert answered_points(switched) == stored_points(forecast_rows(world, v2, 2.0))
        assert ready["forecast_refresh"]["state"] == "done"
        assert ready["forecast_refresh"]["version"] == v2
    finally:
        registry.set_registered_model_alias(world.demand_model, "champion", v1)
        serving_store.insert_df("forecasts", forecast_rows(world, v1, 1.0))


def test_the_api_rolls_the_forecasts_forward_once_sales_come_after_their_first_day(
    serving_settings, serving_store, registry, world, demand_versions
):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.state import ServingState

    v1 = demand_versions["2x"]
    registry.set_registered_model_alias(world.demand_model, "champion", v1)
    rolled_product, calls = "P-rolled", []

    def refresh(model_name: str) -> int:
        """Stands in for training.forecast.refresh_forecasts (its Spark scoring is tested in
        tests/training): forecasts from the day after the newest sale, of a product of its own."""
        calls.append(model_name)
        rows = forecast_rows(world, v1, 1.0).assign(product_id=rolled_product)
        rows["forecast_date"] = [ORIGIN + dt.timedelta(days=2 + i) for i in range(len(rows))]
        return serving_store.insert_df("forecasts", rows)

    settings = serving_settings.model_copy(
        update={"serving_refresh_forecasts": True, "serving_refresh_after_s": 0.0}
    )
    late_sale = (
        sales_frame(world)
        .head(1)
        .assign(
            event_id=f"rolled-{world.store_id}",
            event_time=pd.Timestamp(ORIGIN) + pd.Timedelta(days=1),
        )
    )
    try:
        with TestClient(create_app(settings, ServingState(settings, refresher=refresh))) as client:
            wait_until(
                lambda: client.get("/forecast", params=key_params(world)).json().get("up_to_date"),
                90,
                "the champion's forecasts",
            )
            assert calls == []  # the newest sale is on the day before the forecasts' first day
            serving_store.insert_df("sales_events", late_sale)
            refreshed = wait_until(
                lambda: (
                    (r := client.get("/ready").json()["forecast_refresh"]).get("state") == "done"
                    and r
                ),
                60,
                "the forecasts rolled forward",
            )
            wait_until(
                lambda: (
                    client.get("/ready").json()["forecast_origin"]
                    == (ORIGIN + dt.timedelta(days=2)).isoformat()
                ),
                30,
                "the new first day",
            )
        assert calls == [world.demand_model]  # once for that day's sales
        assert refreshed["version"] == v1
        assert f"sales of {ORIGIN + dt.timedelta(days=1)} came after" in refreshed["reason"]
    finally:
        serving_store.execute(
            "DELETE FROM sales_events WHERE event_id = {e:String}",
            {"e": f"rolled-{world.store_id}"},
        )
        serving_store.execute(
            "DELETE FROM forecasts WHERE product_id = {p:String}", {"p": rolled_product}
        )


def test_the_api_runs_its_spark_work_in_its_own_process_whatever_the_cluster(serving_settings):
    """On a cluster the streaming jobs may hold every core: the API's small Spark jobs (on-demand
    scoring, forecast refreshes) would wait for good."""
    from serving.scoring import api_settings

    on_cluster = serving_settings.model_copy(update={"spark_master": "spark://spark-master:7077"})
    local = api_settings(on_cluster)
    assert local.spark_master == "local[*]"
    assert local.model_copy(update={"spark_master": on_cluster.spark_master}) == on_cluster
