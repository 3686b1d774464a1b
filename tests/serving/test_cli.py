"""`retail serve` as a real uvicorn process on a free port: the token, the open endpoints, OpenAPI."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from serving_world import ORIGIN, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(serving_settings, serving_store, tmp_path_factory):
    """`retail serve` with API_TOKEN set, on the serving tests' store; yields (url, token, log)."""
    token = secrets.token_urlsafe(16)
    port = free_port()
    env = {
        **os.environ,
        "DATA_DIR": str(serving_settings.data_root),
        "SERVING_DEMAND_MODEL": serving_settings.serving_demand_model,
        "SERVING_STOCK_MODEL": serving_settings.serving_stock_model,
        "SERVING_STORE_REFRESH_S": "0.5",
        "API_TOKEN": token,
    }
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    retail = Path(sys.executable).parent / "retail"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603
            [str(retail), "serve", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx2.get(f"{url}/health", timeout=1).status_code == 200
        except httpx2.TransportError:
            return False

    try:
        wait_until(healthy, 120, "retail serve to answer /health")
        yield url, token, log
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_token_guards_every_endpoint_but_health(served, world):
    url, token, log = served
    good = {"Authorization": f"Bearer {token}"}
    params = {"store_id": world.store_id, "product_id": world.product_id}

    assert httpx2.get(f"{url}/health").json() == {"status": "ok"}
    for path in (
        "/ready",
        "/forecast",
        "/reorder-advice",
        "/alerts",
        "/sales-anomalies",
        "/models",
    ):
        missing = httpx2.get(f"{url}{path}", params=params)
        wrong = httpx2.get(
            f"{url}{path}", params=params, headers={"Authorization": f"Bearer {token}x"}
        )
        assert (missing.status_code, wrong.status_code) == (401, 401), path
        assert missing.headers["www-authenticate"] == "Bearer"
    assert httpx2.get(f"{url}/forecast", params=params, auth=("user", token)).status_code == 401

    wait_until(
        lambda: httpx2.get(f"{url}/ready", headers=good).status_code == 200, 120, "readiness"
    )
    answer = httpx2.get(f"{url}/forecast", params={**params, "horizon": 2}, headers=good)
    assert answer.status_code == 200, answer.text
    assert [p["date"] for p in answer.json()["forecasts"]][0] == ORIGIN.isoformat()
    assert token not in log.read_text()


def test_the_openapi_description_lists_every_endpoint(served):
    url, _, _ = served

    spec = httpx2.get(f"{url}/openapi.json").json()

    assert {
        "/health",
        "/ready",
        "/forecast",
        "/forecast/{store_id}/{product_id}",
        "/reorder-advice",
        "/alerts",
        "/sales-anomalies",
        "/models",
        "/models/{name}",
    } <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert httpx2.get(f"{url}/docs").status_code == 200
