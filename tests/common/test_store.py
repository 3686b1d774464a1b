"""The store suite: runs on embedded chDB, and on a ClickHouse server whenever CLICKHOUSE_URL is set."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import subprocess
import sys
import time
import uuid

import pandas as pd
import pyarrow as pa
import pytest

from common.settings import load_settings
from common.store import StoreBusyError, StoreError, check_table, known_tables, migrate, open_store
from common.store.embedded import EmbeddedStore
from common.store.migrations import schema_version


def _events(n: int, prefix: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "job": [prefix] * n,
            "model_name": ["m"] * n,
            "model_version": [str(i) for i in range(n)],
            "event_type": ["test"] * n,
            "detail": [f"{prefix}-{i}" for i in range(n)],
        }
    )


def test_migrate_is_idempotent_and_records_the_version(store):
    first = migrate(store)
    second = migrate(store)
    assert first == second == schema_version(store) >= 1
    names = store.query_df("SELECT name FROM schema_migrations FINAL ORDER BY name")[
        "name"
    ].tolist()
    assert names == sorted(set(names)) and names[0] == "001_core.sql"


def test_migrate_adds_columns_that_came_after_a_table_was_created(store):
    def columns() -> set[str]:
        return set(store.query_df("DESCRIBE TABLE stream_progress")["name"])

    store.execute("ALTER TABLE stream_progress DROP COLUMN IF EXISTS late_rows")
    assert "late_rows" not in columns()  # stream_progress as the first release made it
    migrate(store)
    assert "late_rows" in columns()


OLD_KEYS = {  # keyed by fewer columns until 2026-12-07: the old table, a row, a new row, its owner
    "stream_progress": (
        "job LowCardinality(String), query_name LowCardinality(String), batch_id Int64, "
        "batch_time DateTime64(3, 'UTC'), input_rows Int64, input_rows_per_second Float64, "
        "processed_rows_per_second Float64, batch_duration_ms Int64, lag_messages Int64, "
        "watermark Nullable(DateTime64(3, 'UTC'))",
        "ORDER BY (job, query_name, batch_id)",
        "({k:String}, 'q', 0, '2026-12-01 10:00:00', 5, 1, 1, 10, 0, NULL)",
        {"query_name": "q", "batch_id": 0, "query_id": "new-checkpoint"},
        "job",
    ),
    "dead_letters": (
        "topic LowCardinality(String), kafka_partition Int32, kafka_offset Int64, "
        "raw_payload String, payload_encoding LowCardinality(String), error String, "
        "job LowCardinality(String), received_at DateTime64(3, 'UTC') DEFAULT now64(3)",
        "ORDER BY (topic, kafka_partition, kafka_offset)",
        "({k:String}, 0, 0, '{', 'utf-8', 'malformed JSON', 'sales-stream', now64(3))",
        {"kafka_partition": 0, "kafka_offset": 0,
         "kafka_timestamp": pd.Timestamp("2026-12-07 09:00:00"), "raw_payload": "[",
         "payload_encoding": "utf-8", "error": "malformed JSON", "job": "sales-stream"},
        "topic",
    ),
}  # fmt: skip


@pytest.mark.parametrize("table", sorted(OLD_KEYS))
def test_migrate_adds_a_key_column_to_an_old_table_keeping_its_rows(store, table):
    """Keyed without it, a new checkpoint's progress (batch ids from 0 again) or a recreated
    topic's dead letter (an old offset) replaced the old row. The table (the store's own is moved
    aside, and put back after) is made in its old shape with a row, migrated, and a row equal but
    for the new key column is kept beside it."""
    columns, order_by, old_row, new_row, owner_column = OLD_KEYS[table]
    key = f"old-{table}-{uuid.uuid4().hex[:6]}"
    old_table, kept_table = check_table(table), f"{table}_kept_{key[-6:]}"
    store.execute(f"RENAME TABLE {old_table} TO {kept_table}")
    try:
        with store.session():
            store.execute(
                f"CREATE TABLE {old_table} ({columns}) ENGINE = ReplacingMergeTree {order_by}"
            )
            store.execute(f"INSERT INTO {old_table} VALUES {old_row}", {"k": key})  # noqa: S608
        migrate(store)
        store.insert_df(table, pd.DataFrame([{**new_row, owner_column: key}]))

        kept = store.scalar(
            f"SELECT count() FROM {old_table} FINAL WHERE {owner_column} = {{k:String}}",  # noqa: S608
            {"k": key},
        )
        assert kept == 2
    finally:
        with store.session():
            store.execute(f"DROP TABLE IF EXISTS {old_table}")
            store.execute(f"RENAME TABLE {kept_table} TO {old_table}")


OLD_VERSIONED_ROWS = {  # a table renamed on 2026-12-07: the columns and a row of a given value
    "sales_metrics": (
        "window_start, window_end, store_id, revenue, transactions, customers, units, line_items, "
        "avg_basket, units_per_transaction",
        "'2026-01-05 08:00:00', '2026-01-05 08:05:00', {s:String}, {r:Float64}, 1, 1, 1, 1, "
        "{r:Float64}, 1",
    ),
    "sales_anomalies": (
        "window_start, window_end, store_id, metric, observed, expected, baseline_mad, score, "
        "direction, severity, reason",
        "'2026-01-05 08:00:00', '2026-01-05 08:05:00', {s:String}, 'transactions', 0, 3, 1, "
        "{r:Float64}, 'below', 'warning', 'a silence'",
    ),
}


@pytest.mark.parametrize("table", sorted(OLD_VERSIONED_ROWS))
def test_migrate_turns_an_old_versioned_table_into_a_view_keeping_its_rows(store, table):
    """Until 2026-12-07 the table was the versioned one itself: a plain SELECT returned every
    version of a row. The store is put back in that shape, then migrated."""
    columns, values = OLD_VERSIONED_ROWS[table]
    versions_table = f"{table}_versions"
    value_column = "revenue" if table == "sales_metrics" else "score"
    shop = f"old-{uuid.uuid4().hex[:8]}"
    store.execute(f"DROP VIEW {table}")
    store.execute(f"RENAME TABLE {versions_table} TO {table}")
    for version in (10.0, 12.5):  # two versions of one row, the later one wins
        store.execute(
            f"INSERT INTO {table} ({columns}) VALUES ({values})",  # noqa: S608
            {"s": shop, "r": version},
        )

    migrate(store)

    engines = store.query_df(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase() "
        "AND name IN ({t:String}, {v:String}) ORDER BY name",
        {"t": table, "v": versions_table},
    )
    assert list(engines.itertuples(index=False, name=None)) == [
        (table, "View"),
        (versions_table, "ReplacingMergeTree"),
    ]
    rows = store.query_df(
        f"SELECT {value_column} AS value FROM {table} WHERE store_id = {{s:String}}",  # noqa: S608
        {"s": shop},
    )
    assert list(rows["value"]) == [12.5]


def test_known_keys_finds_which_keys_a_table_holds_however_many_are_asked(store):
    job = f"keys-{uuid.uuid4().hex[:8]}"
    odd = "x'); DROP TABLE model_events; --\\"
    held = _events(3, job).assign(detail=[f"{job}-a", odd, f"{job}-c"])
    store.insert_df("model_events", held)
    store.insert_df("model_events", _events(1, f"{job}-other").assign(detail=[f"{job}-b"]))
    asked = pa.array([f"{job}-a", f"{job}-b", odd, *(f"{job}-n{i}" for i in range(100_000))])
    found = store.known_keys("model_events", "detail", asked, "job = {job:String}", {"job": job})
    assert sorted(found.to_pylist()) == sorted([f"{job}-a", odd])
    with pytest.raises(StoreError, match="bad column name"):
        store.known_keys("model_events", "detail; DROP TABLE x", asked)


def test_every_known_table_exists(store):
    existing = set(
        store.query_df("SELECT name FROM system.tables WHERE database = currentDatabase()")["name"]
    )
    assert known_tables() <= existing


def test_query_binds_values_and_stores_injection_strings_verbatim(store):
    job = f"bind-{uuid.uuid4().hex[:8]}"
    hostile = "x'); DROP TABLE model_events; --"
    frame = _events(1, job).assign(detail=[hostile])
    store.insert_df("model_events", frame)
    got = store.query_df(
        "SELECT detail FROM model_events WHERE job = {job:String} AND detail = {d:String}",
        {"job": job, "d": hostile},
    )
    assert got["detail"].tolist() == [hostile]
    assert "model_events" in set(store.query_df("SHOW TABLES")["name"])


@pytest.mark.parametrize("text", ["line\nbreak", "tab\tbed", "back\\slash", "it's", "\\n"])
def test_a_string_binds_verbatim_whatever_its_characters(store, text):
    assert store.query_df("SELECT {s:String} AS s", {"s": text})["s"][0] == text


def test_a_list_of_strings_binds_as_an_array_verbatim(store):
    values = ["S1", "it's", "back\\slash", "a,b", "[x]", "", "line\nbreak", "tab\tbed"]
    got = store.query_df(
        "SELECT {ids:Array(String)} AS ids, has({ids:Array(String)}, {one:String}) AS found",
        {"ids": values, "one": "it's"},
    )
    assert list(got["ids"][0]) == values
    assert got["found"][0] == 1


def test_a_list_of_datetimes_binds_as_an_array_of_datetimes(store):
    moments = [dt.datetime(2026, 3, 22, 10, 0), dt.datetime(2026, 3, 22, 10, 1, 30)]
    got = store.query_df(
        "SELECT arrayMap(m -> toString(m), {m:Array(DateTime('UTC'))}) AS moments", {"m": moments}
    )
    assert list(got["moments"][0]) == ["2026-03-22 10:00:00", "2026-03-22 10:01:30"]


def test_insert_with_the_same_token_is_dropped(store):
    job = f"dedup-{uuid.uuid4().hex[:8]}"
    frame = _events(5, job)
    store.insert_df("model_events", frame, dedup_token=f"{job}-batch-0")
    store.insert_df("model_events", frame, dedup_token=f"{job}-batch-0")
    store.insert_df("model_events", frame, dedup_token=f"{job}-batch-1")
    count = store.scalar("SELECT count() FROM model_events WHERE job = {job:String}", {"job": job})
    assert count == 10


def test_an_arrow_table_of_unique_rows_inserts_once_per_token(store):
    """The sales job's raw-event insert: Arrow, rows already unique by key, a batch token."""
    shop = f"arrow-{uuid.uuid4().hex[:8]}"
    moment = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.UTC)
    events = pa.table(
        {
            "event_id": [f"{shop}-1", f"{shop}-2"],
            "event_time": pa.array([moment, moment], pa.timestamp("us", tz="UTC")),
            "transaction_id": ["t1", "t1"],
            "store_id": [shop, shop],
            "customer_id": [None, "c1"],
            "product_id": ["P1", "P2"],
            "category": ["c", "c"],
            "quantity": pa.array([1, 2], pa.int32()),
            "unit_price": [2.5, 1.0],
            "discount": [0.0, 0.0],
            "total_amount": [2.5, 2.0],
            "payment_method": ["card", "card"],
            "channel": ["store", "store"],
            "on_promotion": pa.array([0, 1], pa.int32()),
        }
    )
    for token in (f"{shop}-0", f"{shop}-0", f"{shop}-1"):
        assert store.insert_df("sales_events", events, dedup_token=token, unique_rows=True) == 2
    got = store.query_df(
        "SELECT event_id, customer_id, quantity, source FROM sales_events "
        "WHERE store_id = {s:String} ORDER BY event_id",
        {"s": shop},
    )
    assert len(got) == 4  # the repeated token was dropped; the new one was not
    assert got["event_id"].tolist() == [f"{shop}-1"] * 2 + [f"{shop}-2"] * 2
    assert got["customer_id"].isna().tolist() == [True, True, False, False]
    assert set(got["source"]) == {"stream"}


def test_array_columns_insert_when_every_array_in_the_frame_is_empty(store):
    """A micro-batch of anonymous sales only: every pane's customer_ids is []."""
    store_id = f"arr-{uuid.uuid4().hex[:8]}"
    panes = pd.DataFrame(
        {
            "pane_start": pd.to_datetime(["2026-01-05 08:00", "2026-01-05 08:01"]),
            "store_id": [store_id, store_id],
            "revenue_micros": [2_500_000, 1_000_000],
            "units": [2, 1],
            "line_items": [1, 1],
            "transaction_ids": [["t1"], ["t2"]],
            "customer_ids": [[], []],
        }
    )
    store.insert_df("sales_panes", panes)
    got = store.query_df(
        "SELECT transaction_ids, customer_ids FROM sales_panes WHERE store_id = {s:String} "
        "ORDER BY pane_start",
        {"s": store_id},
    )
    assert [list(ids) for ids in got["transaction_ids"]] == [["t1"], ["t2"]]
    assert [list(ids) for ids in got["customer_ids"]] == [[], []]


def test_query_arrow_returns_a_table(store):
    table = store.query_arrow("SELECT number AS n FROM numbers(3)")
    assert table.column("n").to_pylist() == [0, 1, 2]


def test_unknown_table_and_bad_token_are_refused(store):
    with pytest.raises(StoreError, match="unknown table"):
        store.insert_df("model_events; DROP TABLE x", _events(1, "x"))
    with pytest.raises(StoreError, match="bad deduplication token"):
        store.insert_df("model_events", _events(1, "x"), dedup_token="a' OR 1=1")
    assert check_table("sales_events") == "sales_events"


def test_a_bad_query_names_the_statement(store):
    with pytest.raises(StoreError, match="while running: SELECT nope"):
        store.query_df("SELECT nope FROM model_events")


def _write_rows(path: str, worker: int, batches: int, rows: int) -> None:
    writer = EmbeddedStore(path, lock_timeout_s=120)
    for batch in range(batches):
        writer.insert_df(
            "model_events", _events(rows, f"proc-{worker}"), dedup_token=f"w{worker}-b{batch}"
        )


@pytest.mark.skipif(load_settings().clickhouse_url is not None, reason="embedded-store locking")
def test_four_processes_write_concurrently_with_exact_counts(tmp_path):
    path = str(tmp_path / "chdb")
    migrate(EmbeddedStore(path))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_rows, args=(path, w, 10, 7)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    counts = EmbeddedStore(path).query_df(
        "SELECT job, count() AS n FROM model_events GROUP BY job ORDER BY job"
    )
    assert counts.to_dict("list") == {"job": [f"proc-{w}" for w in range(4)], "n": [70] * 4}


@pytest.mark.skipif(load_settings().clickhouse_url is not None, reason="embedded-store locking")
def test_a_held_lock_times_out_with_a_clear_error(tmp_path):
    path = tmp_path / "chdb"
    migrate(EmbeddedStore(path))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from common.store.embedded import EmbeddedStore; "
            f"session = EmbeddedStore({str(path)!r}).session(); session.__enter__(); "
            "print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(StoreBusyError, match="stayed locked by another process"):
            EmbeddedStore(path, lock_timeout_s=1).query_df("SELECT 1")
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


def _threads_and_files() -> tuple[int, int]:
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(load_settings().clickhouse_url is not None, reason="embedded store")
def test_many_sessions_reuse_one_engine_without_piling_up_threads_or_files(tmp_path):
    store = EmbeddedStore(tmp_path / "chdb")
    migrate(store)
    threads, files = _threads_and_files()
    for n in range(100):
        assert store.scalar("SELECT {n:UInt32} + 1", {"n": n}) == n + 1
    after_threads, after_files = _threads_and_files()
    assert after_threads - threads < 5  # re-opening the engine each time left ~5 per session
    assert after_files - files < 10


@pytest.mark.skipif(load_settings().clickhouse_url is not None, reason="embedded store")
def test_an_idle_process_hands_the_store_to_another_that_asks(tmp_path):
    path = tmp_path / "chdb"
    store = EmbeddedStore(path)
    migrate(store)
    store.insert_df("model_events", _events(3, "parent"))  # this process now keeps the engine
    reader = (
        "import sys, time\n"
        "from common.store.embedded import EmbeddedStore\n"
        "started = time.monotonic()\n"
        "store = EmbeddedStore(sys.argv[1], lock_timeout_s=10)\n"
        "print(store.scalar('SELECT count() FROM model_events'), time.monotonic() - started)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", reader, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows, waited_s = done.stdout.split()
    assert int(rows) == 3
    assert float(waited_s) < 2.0
    assert store.scalar("SELECT count() FROM model_events") == 3  # and takes it back


def test_open_store_picks_the_embedded_store_by_default(settings):
    assert isinstance(open_store(settings), EmbeddedStore) == (settings.clickhouse_url is None)


_SERVER_STORE_CHECK = """
import json, sys
from clickhouse_connect.driver._chdbclient import ChdbClient
from common.store import migrate
from common.store.server import ServerStore

# clickhouse-connect's in-process chDB client: the same result handling as its HTTP client,
# set up (tz_mode) as ServerStore.from_settings sets up the HTTP one.
store = ServerStore(ChdbClient(sys.argv[1], tz_mode="aware"), "in-process")
version = migrate(store)  # a fresh store: its schema_migrations is empty at first
empty = store.query_df("SELECT event_type, event_time FROM model_events")
row = store.query_df(
    "SELECT toDateTime64('2024-01-01 10:00:00.5', 3, 'UTC') AS t, "
    "CAST(NULL AS Nullable(String)) AS nothing, 'x' AS text"
)
print(json.dumps({
    "version": version,
    "empty_columns": list(empty.columns),
    "zone": str(row["t"].dt.tz),
    "null": row["nothing"][0] is None,
    "text": str(row["text"].dtype),
}))
"""


def test_a_server_store_migrates_fresh_and_answers_like_the_embedded_one(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _SERVER_STORE_CHECK, str(tmp_path / "server")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["version"] >= 1
    assert answer["empty_columns"] == ["event_type", "event_time"]
    assert (answer["zone"], answer["null"], answer["text"]) == ("UTC", True, "object")
