"""The ClickHouse server store, through clickhouse-connect (``CLICKHOUSE_URL``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
import pandas as pd
import pyarrow as pa
from clickhouse_connect.driver.external import ExternalData

from common.settings import Settings
from common.store.base import StoreError, check_table, frame_rows, insert_settings, known_keys_sql


class ServerStore:
    """A ClickHouse server; one HTTP client, safe to share between threads."""

    def __init__(self, client: Any, description: str) -> None:
        self._client = client
        self._description = description

    def __repr__(self) -> str:
        return f"ServerStore({self._description})"

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerStore:
        url = urlparse(settings.clickhouse_url or "")
        database = url.path.strip("/") or "default"
        try:
            client = clickhouse_connect.get_client(
                host=url.hostname,
                port=url.port or (8443 if url.scheme == "https" else 8123),
                username=settings.clickhouse_user,
                password=settings.clickhouse_password.get_secret_value(),
                database=database,
                secure=url.scheme == "https",
                connect_timeout=5,
                tz_mode="aware",  # UTC timestamps come back tz-aware, as from the embedded store
                autogenerate_session_id=False,  # threads share the client; no query needs a session
            )
        except Exception as exc:
            raise StoreError(
                f"CLICKHOUSE_URL={settings.clickhouse_url}: cannot reach the ClickHouse server "
                f"({type(exc).__name__}: {exc})"
            ) from None
        return cls(client, f"{url.hostname}:{url.port}/{database}")

    @contextmanager
    def session(self) -> Iterator[ServerStore]:
        yield self

    def _run(self, action: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return action(sql, *args, **kwargs)
        except Exception as exc:
            raise StoreError(f"{exc}\n-- while running: {sql[:500]}") from exc

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._run(self._client.command, sql, parameters=dict(params or {}))

    def query_df(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """As the embedded store answers: numpy/object dtypes (None for NULL), aware UTC times,
        and an empty result with its columns (which clickhouse-connect's frame would lack)."""
        frame = self._run(
            self._client.query_df, sql, parameters=dict(params or {}), use_extended_dtypes=False
        )
        if len(frame.columns) == 0:
            frame = self.query_arrow(sql, params).to_pandas()
        return frame

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        return self._run(self._client.query_arrow, sql, parameters=dict(params or {}))

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        frame = self.query_df(sql, params)
        return None if frame.empty else frame.iat[0, 0]

    def known_keys(
        self,
        table: str,
        column: str,
        keys: pa.Array,
        where: str = "1",
        params: Mapping[str, Any] | None = None,
    ) -> pa.Array:
        sink = pa.BufferOutputStream()
        probe = pa.table({"key": pa.array(keys, pa.string())})
        with pa.ipc.new_file(sink, probe.schema) as writer:
            writer.write_table(probe)
        external = ExternalData(
            file_name="probe.arrow",
            data=sink.getvalue().to_pybytes(),
            fmt="Arrow",
            structure="key String",
        )
        sql = known_keys_sql(table, column, where, "probe")
        result = self._run(
            self._client.query_arrow, sql, parameters=dict(params or {}), external_data=external
        )
        return result["key"].combine_chunks()

    def insert_df(
        self,
        table: str,
        frame: pd.DataFrame | pa.Table,
        dedup_token: str | None = None,
        *,
        unique_rows: bool = False,
    ) -> int:
        table = check_table(table)
        if frame_rows(frame) == 0:
            return 0
        settings = insert_settings(dedup_token, unique_rows)
        insert = (
            self._client.insert_arrow if isinstance(frame, pa.Table) else self._client.insert_df
        )
        self._run(insert, table, frame, settings=settings)
        return frame_rows(frame)
