"""Serving benchmark: latency and throughput of ``GET /forecast`` on precomputed forecasts.

The API runs as ``retail serve`` in its own process on a loopback port, over a store of its own
(a catalog of stores x products with 14 days of forecasts each) and the run's MLflow server (a
tiny registered champion carrying conformal quantiles, under a unique name), with a bearer token
set. Two real HTTP load generators then ask for random store x product pairs:

- an open-loop generator (asyncio) sends at a fixed 200 requests/s for a fixed count;
  each latency is measured from the request's *scheduled* send time, so a stalled server cannot
  hide its queue (no coordinated omission): p50, p99, achieved rate, errors, and the API
  process's CPU per request;
- ``wrk`` (Debian package ``wrk``), closed loop with 8 connections for a few seconds: the
  maximum throughput and its latency, in ``WRK_ROUNDS`` rounds alternated with wrk on ``/health``,
  each round one sample.

The fixed-rate requests go out as four consecutive blocks, each one sample of p50, p99, rate and
CPU: a run gives four samples of each, and the min–max spread shows how much a measurement of
that length moves. The targets are absolute (p99 <= 25 ms, CPU <= 2.5 ms per request); wrk's
throughput is compared with wrk on the same API's ``/health`` (no work behind it: the ceiling of
the HTTP stack on this machine).

``run(quick)`` returns the rows for ``retail bench``; ``python -m benchmarks.bench_serving`` runs it
alone on a fresh local stack and prints the table.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import os
import random
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

RATE = 200.0  # requests/s offered
MAX_CONNECTIONS = 256
KEEPALIVE_S = 4.0
P99_TARGET_MS = 25.0
FIXED_RATE_BLOCKS = 4  # the fixed-rate requests are sent as this many consecutive samples
WRK_ROUNDS = 2  # wrk on /forecast and on /health, alternated, one sample per round
FORECAST_DAYS = 14
ORIGIN = dt.date(2025, 6, 1)
QUANTILES = {"q0.05": -1.2, "q0.5": 0.0, "q0.9": 1.1, "q0.95": 1.5, "q0.99": 2.3}
_WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SCRIPT = """
local keys = {%s}
local token = "%s"
request = function()
  local key = keys[math.random(#keys)]
  return wrk.format("GET", "/forecast?horizon=7&" .. key, {["Authorization"] = "Bearer " .. token})
end
"""


def seed_store(settings: Any, stores: int, products: int) -> list[tuple[str, str]]:
    """A catalog of ``stores`` x ``products`` and their precomputed forecasts; the keys."""
    import pandas as pd

    from common.store import migrate, open_store

    store = open_store(settings)
    migrate(store)
    store_ids = [f"S{i:03d}" for i in range(stores)]
    product_ids = [f"P{i:04d}" for i in range(products)]
    keys = [(s, p) for s in store_ids for p in product_ids]
    rng = random.Random(7)
    forecasts = pd.DataFrame(
        [
            {
                "store_id": s,
                "product_id": p,
                "forecast_date": ORIGIN + dt.timedelta(days=d),
                "horizon_day": d + 1,
                "predicted_units": (units := rng.uniform(0.5, 20.0)),
                "lower_90": max(units - 3.0, 0.0),
                "upper_90": units + 4.0,
                "model_name": settings.serving_demand_model,
                "model_version": "1",
            }
            for s, p in keys
            for d in range(FORECAST_DAYS)
        ]
    ).astype({"horizon_day": "uint16"})
    catalog = pd.DataFrame(
        [
            {
                "product_id": p,
                "name": p,
                "category": "grocery",
                "unit_price": 2.0,
                "unit_cost": 1.0,
                "lead_time_days": 3.0,
                "case_pack": 6,
                "popularity": 1.0,
            }  # fmt: skip
            for p in product_ids
        ]
    )
    shops = pd.DataFrame(
        [
            {
                "store_id": s,
                "name": s,
                "city": "Lyon",
                "region": "south",
                "size_sqm": 900.0,
                "size_class": "medium",
            }  # fmt: skip
            for s in store_ids
        ]
    )
    with store.session():
        store.insert_df("stores", shops)
        store.insert_df("products", catalog)
        store.insert_df("forecasts", forecasts)
    return keys


def register_champion(tracking_uri: str, name: str) -> str:
    """A tiny model with conformal quantiles in its metadata, registered as ``name@champion``."""
    import mlflow
    from sklearn.dummy import DummyRegressor

    mlflow.set_tracking_uri(tracking_uri)
    model = DummyRegressor().fit([[0.0], [1.0]], [1.0, 2.0])
    with mlflow.start_run(run_name="bench-serving"):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=name,
            pip_requirements=["scikit-learn"],
            metadata={"conformal_quantiles": QUANTILES},
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    return version


def start_api(env: dict[str, str], port: int, log_file: Path) -> subprocess.Popen:
    """``retail serve`` on 127.0.0.1:``port``, its output in ``log_file``."""
    retail = Path(sys.executable).parent / "retail"
    command = [str(retail)] if retail.exists() else [sys.executable, "-m", "common.cli"]
    with log_file.open("wb") as out:
        return subprocess.Popen(  # noqa: S603
            [*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(base_url: str, token: str, version: str, process: subprocess.Popen) -> None:
    """Until /ready answers 200 with the champion ``version`` loaded (at most 180 s)."""
    import httpx2

    deadline = time.monotonic() + 180
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"retail serve exited with {process.returncode}")
        try:
            body = httpx2.get(f"{base_url}/ready", headers=headers, timeout=2).json()
            if body.get("ready") and body["champions"][0]["version"] == version:
                return
        except (httpx2.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise RuntimeError("the API did not become ready with the champion within 180 s")


class HttpConnection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for GET and a JSON body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_used = time.monotonic()

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        return cls(*await asyncio.open_connection(host, port))

    async def get(self, target: str, headers: bytes) -> tuple[int, bytes]:
        """Send one GET; the status code and the body."""
        self.writer.write(b"GET " + target.encode() + b" HTTP/1.1\r\n" + headers + b"\r\n")
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        self.last_used = time.monotonic()
        return status, body

    def close(self) -> None:
        self.writer.close()


def forecast_targets(keys: list[tuple[str, str]], count: int) -> list[str]:
    """``count`` forecast requests (horizon 7) for store x product pairs drawn from ``keys``."""
    rng = random.Random(11)
    return [
        f"/forecast?store_id={s}&product_id={p}&horizon=7"
        for s, p in (rng.choice(keys) for _ in range(count))
    ]


async def open_loop(base_url: str, token: str, targets: list[str], rate: float) -> dict[str, float]:
    """``targets`` requested at a fixed ``rate``; latency from each request's scheduled time.

    A request never waits for a busy connection: when all are busy a new one is opened (at most
    ``MAX_CONNECTIONS``), so a slow answer cannot slow down the sending (open loop). Like any
    keep-alive client, a connection idle for longer than ``KEEPALIVE_S`` is replaced (uvicorn
    closes idle connections after 5 s).
    """
    host, port = base_url.removeprefix("http://").split(":")
    headers = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n".encode()
    idle: list[HttpConnection] = [await HttpConnection.open(host, int(port)) for _ in range(8)]
    opened = len(idle)
    latencies: list[float] = []
    failures = 0

    async def one(scheduled: float, target: str) -> None:
        nonlocal failures, opened
        connection = idle.pop() if idle else None
        if connection is not None and time.monotonic() - connection.last_used > KEEPALIVE_S:
            connection.close()
            connection = await HttpConnection.open(host, int(port))
        elif connection is None and opened < MAX_CONNECTIONS:
            opened += 1
            connection = await HttpConnection.open(host, int(port))
        elif connection is None:
            failures += 1
            return
        try:
            status, body = await asyncio.wait_for(connection.get(target, headers), 5.0)
            ok = status == 200 and body.count(b'"source"') == 7
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            connection.close()
            opened -= 1
            failures += 1
            return
        idle.append(connection)
        if ok:
            latencies.append(time.perf_counter() - scheduled)
        else:
            failures += 1

    started = time.perf_counter()
    tasks = []
    for index, target in enumerate(targets):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled, target)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    for connection in idle:
        connection.close()
    ordered = sorted(latencies)
    return {
        "p50_ms": 1000 * statistics.median(ordered) if ordered else float("nan"),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        if ordered
        else float("nan"),
        "answered_per_s": len(ordered) / elapsed,
        "failures": float(failures),
        "connections": float(opened),
    }


def forecast_script(token: str, keys: list[tuple[str, str]]) -> str:
    """A wrk script asking for the forecasts of up to 500 of ``keys`` at random."""
    sample = random.Random(3).sample(keys, min(len(keys), 500))
    listed = ",".join(f'"store_id={s}&product_id={p}"' for s, p in sample)
    return _WRK_SCRIPT % (listed, token)


def run_wrk(url: str, seconds: int, script_text: str = "") -> dict[str, float]:
    """wrk, 1 thread and 8 connections for ``seconds`` on ``url`` (requests from
    ``script_text`` when given): requests/s and its p50/p99."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: `apt-get install wrk` (make bench does it)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(script_text)
    try:
        done = subprocess.run(  # noqa: S603
            [
                wrk,
                "-t1",
                "-c8",
                f"-d{seconds}s",
                "--timeout",
                "2s",
                "--latency",
                *(["-s", script.name] if script_text else []),
                url,
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        )
    finally:
        os.unlink(script.name)
    rate = _WRK_RATE.search(done.stdout)
    if done.returncode != 0 or rate is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-500:]}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = {p: float(v) * scale[u] for p, v, u in _WRK_LATENCY.findall(done.stdout)}
    non_2xx = _WRK_NON_2XX.search(done.stdout)
    return {
        "requests_per_s": float(rate.group(1)),
        "p50_ms": latency.get("50", float("nan")),
        "p99_ms": latency.get("99", float("nan")),
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fixed_rate(
    base_url: str, token: str, targets: list[str], process: subprocess.Popen
) -> dict[str, float]:
    """``open_loop`` at ``RATE``, with the API process's CPU milliseconds per request."""
    cpu_before = cpu_seconds(process.pid)
    gc.collect()
    gc.disable()  # the generator's own collection pauses must not count as server latency
    try:
        figures = asyncio.run(open_loop(base_url, token, targets, RATE))
    finally:
        gc.enable()
    figures["cpu_ms"] = 1000 * (cpu_seconds(process.pid) - cpu_before) / len(targets)
    return figures


def _blocks(items: list[str], count: int) -> list[list[str]]:
    """``items`` cut into ``count`` consecutive blocks of (nearly) equal size."""
    size = -(-len(items) // count)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sizes(quick: bool) -> dict[str, Any]:
    """The data sizes of a run (they go in the table's header)."""
    return {
        "stores x products": (20, 50) if quick else (50, 200),
        "fixed-rate requests": int(RATE * (10 if quick else 30)),
        "wrk seconds per round": 2 if quick else 8,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Seed, start the API, load it at 200 requests/s and with wrk; the figures as rows."""
    from common.settings import get_settings, load_settings

    base = get_settings()
    tag = uuid.uuid4().hex[:8]
    root = base.data_root / f"bench-serving-{tag}"
    settings = load_settings(data_dir=root, serving_demand_model=f"bench_demand_{tag}")
    size = sizes(quick)
    stores, products = size["stores x products"]
    keys = seed_store(settings, stores, products)
    version = register_champion(settings.mlflow_tracking_uri, settings.serving_demand_model)
    token = secrets.token_urlsafe(24)
    port = _free_port()
    env = {
        **os.environ,
        "DATA_DIR": str(root),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "SERVING_DEMAND_MODEL": settings.serving_demand_model,
        "SERVING_STOCK_MODEL": f"bench_stock_{tag}",
        "API_TOKEN": token,
        "LOG_LEVEL": "WARNING",
    }
    base_url = f"http://127.0.0.1:{port}"
    process = start_api(env, port, root / "api.log")
    try:
        wait_ready(base_url, token, version, process)
        asyncio.run(open_loop(base_url, token, forecast_targets(keys, 100), 50.0))  # warm-up
        count = size["fixed-rate requests"]
        load_before = os.getloadavg()[0]
        blocks = [
            fixed_rate(base_url, token, targets, process)
            for targets in _blocks(forecast_targets(keys, count), FIXED_RATE_BLOCKS)
        ]
        load = max(load_before, os.getloadavg()[0])
        script = forecast_script(token, keys)
        rounds = []
        for _ in range(WRK_ROUNDS):  # alternated, so that drift hits both alike
            rounds.append(
                (
                    run_wrk(base_url, size["wrk seconds per round"], script),
                    run_wrk(f"{base_url}/health", size["wrk seconds per round"]),
                )
            )
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    failures = sum(block["failures"] for block in blocks)
    answered = [block["answered_per_s"] for block in blocks]
    answered_all = failures == 0 and min(answered) >= 0.98 * RATE
    peak = {key: statistics.median(r[0][key] for r in rounds) for key in rounds[0][0]}
    non_2xx = sum(forecast["non_2xx"] for forecast, _ in rounds)
    peer = (
        f"wrk closed loop, 8 connections: {peak['requests_per_s']:,.0f} req/s, "
        f"p50 {peak['p50_ms']:.1f} ms, p99 {peak['p99_ms']:.1f} ms; "
        f"machine load average {load:.1f} on {os.cpu_count()} cores"
    )
    cpu_limit = 1000 / RATE / 2

    def samples(key: str, limit: float, met: bool = True) -> list[dict[str, Any]]:
        return [
            {"value": b[key], "ratio": b[key] / limit, "met": met and b[key] <= limit}
            for b in blocks
        ]

    block = count // FIXED_RATE_BLOCKS
    keys_note = f"{len(keys):,} store x product pairs, horizon 7, blocks of {block:,} requests"
    return [
        {
            "name": f"forecast p99 latency at {RATE:.0f} req/s (open loop, {keys_note})",
            "target": f"<= {P99_TARGET_MS:.0f} ms",
            "unit": "ms",
            "peer": peer,
            "samples": samples("p99_ms", P99_TARGET_MS, answered_all),
        },
        {
            "name": f"forecast p50 latency at {RATE:.0f} req/s (open loop)",
            "target": f"<= {P99_TARGET_MS:.0f} ms",
            "unit": "ms",
            "peer": peer,
            "samples": samples("p50_ms", P99_TARGET_MS),
        },
        {
            "name": f"forecast answers/s at {RATE:.0f} req/s offered ({failures:.0f} failed)",
            "target": f">= {0.98 * RATE:.0f} req/s, none failed",
            "unit": "req/s",
            "peer": "",
            "samples": [
                {"value": rate, "ratio": rate / RATE, "met": answered_all} for rate in answered
            ],
        },
        {
            "name": f"API process CPU per forecast request at {RATE:.0f} req/s",
            "target": f"<= {cpu_limit:.1f} ms (under half of one core at {RATE:.0f} req/s)",
            "unit": "ms CPU",
            "peer": "",
            "samples": samples("cpu_ms", cpu_limit),
        },
        {
            "name": f"forecast max throughput (wrk, {non_2xx:.0f} non-2xx)",
            "target": f">= {RATE:.0f} req/s",
            "unit": "req/s",
            "peer": "wrk on /health of the same API, in the same round: "
            + ", ".join(f"{health['requests_per_s']:,.0f}" for _, health in rounds)
            + f" req/s; on /forecast p50 {peak['p50_ms']:.1f} ms, p99 {peak['p99_ms']:.1f} ms",
            "samples": [
                {
                    "value": forecast["requests_per_s"],
                    "ratio": forecast["requests_per_s"] / health["requests_per_s"],
                    "met": forecast["requests_per_s"] >= RATE and non_2xx == 0,
                }
                for forecast, health in rounds
            ],
        },
    ]


def main() -> None:
    """Run this benchmark alone on a fresh local stack and print the table."""
    from rich.console import Console
    from rich.markdown import Markdown

    from benchmarks.harness import render_markdown, run_benchmarks

    Console().print(
        Markdown(render_markdown(run_benchmarks(quick=True, repeats=1, only=["serving"])))
    )


if __name__ == "__main__":
    main()
