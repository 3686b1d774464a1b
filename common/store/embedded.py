"""The embedded store: chDB (the ClickHouse engine in process) under a data directory.

chDB lets one process open a data directory at a time, so every operation opens the directory,
works and closes it again under an inter-process file lock, waiting its turn up to a timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import chdb
import pandas as pd
import pyarrow as pa
from filelock import FileLock, Timeout

from common.store.base import StoreBusyError, StoreError, check_table, check_token

log = logging.getLogger(__name__)

# chDB keeps one engine per process: connections from different threads take turns.
_PROCESS_LOCK = threading.RLock()


class EmbeddedStore:
    """chDB under ``path``; safe to share between processes and threads."""

    def __init__(self, path: Path, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock_timeout_s = lock_timeout_s
        self._file_lock = FileLock(str(self.path) + ".lock", thread_local=False)
        self._conn: Any = None
        self._owner: int | None = None

    def __repr__(self) -> str:
        return f"EmbeddedStore({str(self.path)!r})"

    @contextmanager
    def session(self) -> Iterator[EmbeddedStore]:
        """Open the directory under the lock for a group of operations (re-entrant)."""
        if self._conn is not None and self._owner == threading.get_ident():
            yield self
            return
        with _PROCESS_LOCK:
            try:
                self._file_lock.acquire(timeout=self.lock_timeout_s)
            except Timeout:
                raise StoreBusyError(
                    f"the embedded store at {self.path} stayed locked by another process for "
                    f"{self.lock_timeout_s:.0f} s; raise STORE_LOCK_TIMEOUT_S or stop that process"
                ) from None
            try:
                self._conn = chdb.connect(f"file:{self.path}")
                self._owner = threading.get_ident()
                try:
                    yield self
                finally:
                    self._conn.close()
                    self._conn = None
                    self._owner = None
            finally:
                self._file_lock.release()

    def _query(self, sql: str, fmt: str, params: Mapping[str, Any] | None) -> Any:
        with self.session():
            try:
                return self._conn.query(sql, fmt, params=_bindable(params))
            except Exception as exc:  # chDB raises plain RuntimeError with the server message
                raise StoreError(f"{exc}\n-- while running: {sql[:500]}") from exc

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._query(sql, "CSV", params)

    def query_df(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        return self._query(sql, "DataFrame", params)

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        return self._query(sql, "ArrowTable", params)

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        frame = self.query_df(sql, params)
        return None if frame.empty else frame.iat[0, 0]

    def insert_df(self, table: str, frame: pd.DataFrame, dedup_token: str | None = None) -> int:
        table = check_table(table)
        if frame.empty:
            return 0
        columns = ", ".join(f"`{c}`" for c in frame.columns)
        settings = ""
        if dedup_token is not None:
            settings = f" SETTINGS insert_deduplication_token='{check_token(dedup_token)}'"
        rows = _python_table(frame)  # noqa: F841 - read by name by chDB's Python() below
        self._query(
            f"INSERT INTO {table} ({columns}){settings} SELECT {columns} FROM Python(rows)",  # noqa: S608
            "CSV",
            None,
        )
        return len(frame)


def _bindable(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """ClickHouse reads a String parameter with escape sequences; escape backslashes so that the
    value arrives verbatim (``a\\'b`` would otherwise become ``a'b``)."""
    return {
        name: value.replace("\\", "\\\\") if isinstance(value, str) else value
        for name, value in (params or {}).items()
    }


def _python_table(frame: pd.DataFrame) -> pd.DataFrame | pa.Table:
    """chDB reads a pandas column of lists as Nullable(String); through Arrow it stays an Array."""
    for column in frame.columns:
        if frame[column].dtype == object:
            first = frame[column].first_valid_index()
            if first is not None and not isinstance(frame[column].at[first], str | bytes):
                return pa.Table.from_pandas(frame, preserve_index=False)
    return frame
