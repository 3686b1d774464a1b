"""Batch benchmark: the daily KPIs over 10M sales rows beside the bare aggregation query over the
same rows in the same run, and the store's insert rate beside a plain chDB bulk insert of the
same frame.

- KPIs: ``batch.kpis.daily_kpis`` for the 30 days of data (SQL over the daily views kept on
  insert: stock positions, KPIs per store, per category and overall). Peer: one
  ``GROUP BY day, store`` over the same days of the raw table with revenue, units, distinct
  transactions and customers. Target: at most 3x the bare query. The whole daily compute
  (``batch.job.compute_outputs``: KPIs, product and store rankings, trend) is reported beside it.
  Each is timed as the best of three runs in a row; the data is loaded once per process.
- Insert rate: ``Store.insert_df`` into ``sales_events`` (inter-process lock, connection, the
  two materialized views) beside ``INSERT ... SELECT FROM Python(frame)`` on a bare chDB
  connection into a table of the same DDL without views, in alternated rounds (each round one
  sample). Target: at least half its rate.

``python -m benchmarks.bench_batch [--full]`` runs it alone and prints the rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

KPI_RATIO_TARGET = 3.0
INSERT_SHARE_TARGET = 0.5
INSERT_ROUNDS = 2
DAYS = 30
STORES = 50
PRODUCTS = 200
FIRST_DAY = dt.date(2025, 1, 1)

_SYNTHETIC_SALES = """
INSERT INTO sales_events (event_id, event_time, transaction_id, store_id, customer_id, product_id,
                          category, quantity, unit_price, discount, total_amount, payment_method,
                          channel, on_promotion, source)
SELECT
    concat('bench-', toString(number)) AS event_id,
    toDateTime64({first:DateTime}, 3, 'UTC')
        + toIntervalMillisecond(intDiv(number * {span_ms:UInt64}, {rows:UInt64})) AS event_time,
    concat('tx-', toString(intDiv(number, 3))) AS transaction_id,
    concat('S', toString(intDiv(number, 3) % {stores:UInt32})) AS store_id,
    if(intDiv(number, 3) % 4 = 0, NULL, concat('C', toString(intDiv(number, 3) % 40000))),
    concat('P', toString(cityHash64(number) % {products:UInt32})) AS product_id,
    concat('cat-', toString((cityHash64(number) % {products:UInt32}) % 10)) AS category,
    toInt32(1 + number % 4) AS quantity,
    toFloat64(1 + (cityHash64(number) % {products:UInt32}) % 50) AS unit_price,
    0.0 AS discount,
    quantity * unit_price AS total_amount,
    'card', 'store', 0, 'backfill'
FROM numbers({rows:UInt64})
"""

_SYNTHETIC_STOCK = """
INSERT INTO inventory_events (event_id, event_time, store_id, product_id, event_type,
                              quantity_change, stock_level, reorder_point, lead_time_days,
                              unit_cost, source)
SELECT
    concat('bench-inv-', toString(number)) AS event_id,
    toDateTime64({first:DateTime}, 3, 'UTC') + toIntervalDay(intDiv(number, {pairs:UInt32}))
        + toIntervalHour(20) AS event_time,
    concat('S', toString(intDiv(number % {pairs:UInt32}, {products:UInt32}))) AS store_id,
    concat('P', toString(number % {products:UInt32})) AS product_id,
    'snapshot', toInt32(0), toInt32(cityHash64(number) % 40), toInt32(5), 3.0,
    toFloat64(0.6 * (1 + number % {products:UInt32} % 50)), 'backfill'
FROM numbers({movements:UInt64})
"""

_BARE_QUERY = """
SELECT toDate(event_time) AS date, store_id, sum(total_amount) AS revenue,
       sum(quantity) AS units, uniqExact(transaction_id) AS transactions,
       uniqExact(customer_id) AS customers
FROM sales_events
WHERE toDate(event_time) BETWEEN {first:Date} AND {last:Date}
GROUP BY date, store_id
"""
# The loaded store of each size, kept across the repeats of one process (loading 10M rows through
# the views takes longer than everything it is loaded for); the folders go when the process ends.
_LOADED: dict[int, tuple[Any, Path, float]] = {}
_FOLDERS: list[tempfile.TemporaryDirectory] = []


def _catalog(store: Any) -> None:
    products = pd.DataFrame(
        {
            "product_id": [f"P{i}" for i in range(PRODUCTS)],
            "name": [f"product {i}" for i in range(PRODUCTS)],
            "category": [f"cat-{i % 10}" for i in range(PRODUCTS)],
            "unit_price": [float(1 + i % 50) for i in range(PRODUCTS)],
            "unit_cost": [0.6 * (1 + i % 50) for i in range(PRODUCTS)],
            "lead_time_days": 3.0,
            "case_pack": np.int32(6),
            "popularity": 1.0,
        }
    )
    stores = pd.DataFrame(
        {
            "store_id": [f"S{i}" for i in range(STORES)],
            "name": [f"store {i}" for i in range(STORES)],
            "city": "bench",
            "region": [f"r{i % 5}" for i in range(STORES)],
            "size_sqm": 1000.0,
            "size_class": "medium",
        }
    )
    store.insert_df("products", products)
    store.insert_df("stores", stores)


def _load(store: Any, rows: int) -> float:
    """Insert ``rows`` synthetic sales over DAYS days and one stock snapshot per pair and day."""
    started = time.perf_counter()
    first = dt.datetime.combine(FIRST_DAY, dt.time(8)).isoformat(sep=" ")
    with store.session():
        store.execute(
            _SYNTHETIC_SALES,
            {
                "first": first,
                "span_ms": DAYS * 86_400_000 - 14 * 3_600_000,
                "rows": rows,
                "stores": STORES,
                "products": PRODUCTS,
            },
        )
        store.execute(
            _SYNTHETIC_STOCK,
            {
                "first": dt.datetime.combine(FIRST_DAY, dt.time()).isoformat(sep=" "),
                "pairs": STORES * PRODUCTS,
                "products": PRODUCTS,
                "movements": STORES * PRODUCTS * DAYS,
            },
        )
    return time.perf_counter() - started


def _best_of(repeats: int, action: Any) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return min(timings)


def _kpi_rows(store: Any, rows: int, top_n: int) -> list[dict[str, Any]]:
    from batch.job import compute_outputs
    from batch.kpis import daily_kpis
    from batch.views import Scope

    days = tuple(pd.date_range(FIRST_DAY, periods=DAYS, freq="D").date)
    scope = Scope(days=days, run_dates=days)

    def kpis() -> None:
        with store.session():
            computed = daily_kpis(store, scope)
        assert len(computed) == DAYS * (1 + STORES + 10), len(computed)

    def everything() -> None:
        computed = compute_outputs(store, scope, top_n=top_n)
        assert len(computed["product_rankings"]) > 0

    kpi_seconds = _best_of(3, kpis)
    all_seconds = _best_of(3, everything)
    period = {"first": days[0].isoformat(), "last": days[-1].isoformat()}
    bare_seconds = _best_of(3, lambda: store.query_df(_BARE_QUERY, period))
    peer = f"bare GROUP BY day, store on the raw table: {bare_seconds:.2f} s"
    size = f"{rows / 1e6:g}M sales rows ({DAYS} days)"
    ratio = kpi_seconds / bare_seconds
    return [
        {
            "name": f"daily KPIs (overall, per store, per category) over {size}",
            "target": f"<= {KPI_RATIO_TARGET:g}x the bare query",
            "value": kpi_seconds,
            "unit": "s",
            "peer": peer,
            "ratio": ratio,
            "met": ratio <= KPI_RATIO_TARGET,
        },
        {
            "name": f"the whole daily compute (KPIs, rankings, trend) over {size}",
            "target": "reported",
            "value": all_seconds,
            "unit": "s",
            "peer": peer,
            "ratio": all_seconds / bare_seconds,
            "met": True,
        },
    ]


def _frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    quantity = rng.integers(1, 5, rows).astype("int32")
    price = rng.integers(1, 50, rows).astype("float64")
    return pd.DataFrame(
        {
            "event_id": [f"ins-{i}" for i in range(rows)],
            "event_time": pd.Timestamp("2025-03-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 86_400_000, rows), unit="ms"),
            "transaction_id": [f"itx-{i // 3}" for i in range(rows)],
            "store_id": [f"S{i % STORES}" for i in range(rows)],
            "customer_id": [None if i % 4 == 0 else f"C{i % 40000}" for i in range(rows)],
            "product_id": [f"P{i % PRODUCTS}" for i in range(rows)],
            "category": [f"cat-{i % PRODUCTS % 10}" for i in range(rows)],
            "quantity": quantity,
            "unit_price": price,
            "discount": 0.0,
            "total_amount": quantity * price,
            "payment_method": "card",
            "channel": "store",
            "on_promotion": np.zeros(rows, dtype="uint8"),
            "source": "backfill",
        }
    )


def _plain_insert_seconds(path: Path, ddl: str, frame: pd.DataFrame) -> float:
    """Seconds of one ``INSERT ... SELECT FROM Python(frame)`` on a bare chDB connection to
    ``path``, into a table made by ``ddl`` (no views)."""
    import chdb

    connection = chdb.connect(f"file:{path}")
    try:
        connection.query(ddl.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
        columns = ", ".join(frame.columns)
        insert = f"INSERT INTO sales_events ({columns}) SELECT {columns} FROM Python(frame)"  # noqa: S608
        return _best_of(1, lambda: connection.query(insert))
    finally:
        connection.close()


def _insert_rows(store: Any, folder: Path, rows: int) -> list[dict[str, Any]]:
    from common.store.embedded import close_engine

    frame = _frame(rows)
    ddl = store.scalar("SHOW CREATE TABLE sales_events")
    store_timings, plain_timings = [], []
    for _ in range(INSERT_ROUNDS):  # alternated, so that both see the machine in the same state
        store_timings.append(_best_of(1, lambda: store.insert_df("sales_events", frame)))
        close_engine()  # chDB opens one directory per process
        plain_timings.append(_plain_insert_seconds(folder / "plain-chdb", ddl, frame))
    return [
        {
            "name": f"store insert of {rows:,} sales rows (with the daily views)",
            "target": f">= {INSERT_SHARE_TARGET:g}x plain chDB",
            "unit": "rows/s",
            "peer": "plain chDB INSERT FROM Python(frame), no views, in the same round: "
            + ", ".join(f"{rows / seconds:,.0f}" for seconds in plain_timings)
            + " rows/s",
            "samples": [
                {
                    "value": rows / mine,
                    "ratio": plain / mine,
                    "met": plain / mine >= INSERT_SHARE_TARGET,
                }
                for mine, plain in zip(store_timings, plain_timings, strict=True)
            ],
        }
    ]


def sizes(quick: bool) -> dict[str, Any]:
    """The data sizes of a run (they go in the table's header)."""
    return {
        "sales rows": 10_000_000,
        "days": DAYS,
        "stores x products": (STORES, PRODUCTS),
        "insert rows": 200_000 if quick else 1_000_000,
    }


def _loaded_store(rows: int) -> tuple[Any, Path, float]:
    """A store holding the catalog and ``rows`` synthetic sales, loaded once per process."""
    from common.settings import load_settings
    from common.store import migrate, open_store

    if rows not in _LOADED:
        _FOLDERS.append(tempfile.TemporaryDirectory(prefix="bench-batch-"))
        folder = Path(_FOLDERS[-1].name)
        store = open_store(load_settings(data_dir=folder / "data"))
        migrate(store)
        _catalog(store)
        load_seconds = _load(store, rows)
        log.info("loaded %d sales rows in %.1f s", rows, load_seconds)
        _LOADED[rows] = (store, folder, load_seconds)
    return _LOADED[rows]


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure the batch; one row per figure (see the module docstring)."""
    from common.settings import get_settings

    size = sizes(quick)
    rows = size["sales rows"]
    store, folder, load_seconds = _loaded_store(rows)
    results = _kpi_rows(store, rows, get_settings().batch_top_n)
    results += _insert_rows(store, folder, size["insert rows"])
    results.append(
        {
            "name": f"load {rows / 1e6:g}M sales rows through the views (INSERT SELECT, once)",
            "target": "",
            "value": rows / load_seconds,
            "unit": "rows/s",
            "peer": "",
            "ratio": None,
            "met": True,
        }
    )
    return results


if __name__ == "__main__":
    from common.logs import configure_logging
    from common.settings import get_settings

    configure_logging(get_settings())
    for row in run(quick="--full" not in sys.argv[1:]):
        print(row)
