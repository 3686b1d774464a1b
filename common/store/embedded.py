"""The embedded store: chDB (the ClickHouse engine in process) under a data directory.

chDB lets one process open a data directory at a time. A process takes the directory under an
inter-process file lock and keeps chDB's engine open between its sessions until another process
asks for the directory (it leaves a marker in ``<dir>.waiting/`` while it waits); then the engine
closes and the lock passes on. Keeping the engine open matters: each time chDB 4.4 starts and stops
an engine it leaves about 5 threads and 10 file descriptors behind, which a long-running job that
re-opened the directory for every batch would pile up until it hit the process's limits.
"""

from __future__ import annotations

import atexit
import logging
import os
import resource
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import chdb
import pandas as pd
import pyarrow as pa
from filelock import FileLock, Timeout

from common.store.base import (
    StoreBusyError,
    StoreError,
    check_table,
    frame_columns,
    frame_rows,
    insert_settings,
    known_keys_sql,
)

log = logging.getLogger(__name__)

# One engine per process: threads take turns, and switching directories closes the open one.
_PROCESS_LOCK = threading.RLock()
_HAND_OVER_POLL_S = 0.05
_engine: _Engine | None = None
_open_sessions = 0  # sessions of this process on the engine right now (they may nest)
_watcher: threading.Thread | None = None
_forked_away: list[_Engine] = []  # engines inherited through fork: never released by the child


class _Engine:
    """chDB's engine on one data directory, with the inter-process lock that guards it."""

    def __init__(self, path: Path, lock_timeout_s: float) -> None:
        self.path = path
        self.waiting = Path(f"{path}.waiting")
        self.waiting.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(f"{path}.lock", thread_local=False)
        marker = self.waiting / f"{os.getpid()}-{threading.get_ident()}"
        marker.touch()
        deadline = time.monotonic() + lock_timeout_s
        try:
            while self._someone_ahead_of(marker) and time.monotonic() < deadline:
                time.sleep(_HAND_OVER_POLL_S / 2)  # first come, first served
            self.lock.acquire(timeout=max(deadline - time.monotonic(), 0.0))
        except Timeout:
            raise StoreBusyError(
                f"the embedded store at {path} stayed locked by another process for "
                f"{lock_timeout_s:.0f} s; raise STORE_LOCK_TIMEOUT_S or stop that process"
            ) from None
        finally:
            marker.unlink(missing_ok=True)
        try:
            self.anchor = chdb.connect(f"file:{path}")
        except BaseException:
            self.lock.release()
            raise

    def _waiters(self) -> Iterator[tuple[Path, int]]:
        """Other live processes' markers with their creation time (markers of dead ones go)."""
        if not self.waiting.is_dir():
            return  # the data directory was removed under the engine
        for marker in self.waiting.iterdir():
            pid = marker.name.split("-")[0]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                since = marker.stat().st_mtime_ns
            except FileNotFoundError:
                continue  # it got the directory meanwhile
            if _process_alive(int(pid)):
                yield marker, since
            else:
                marker.unlink(missing_ok=True)

    def _someone_ahead_of(self, mine: Path) -> bool:
        mine_since = mine.stat().st_mtime_ns
        return any(since < mine_since for _, since in self._waiters())

    def wanted_elsewhere(self) -> bool:
        """Whether another live process waits for this directory."""
        return next(self._waiters(), None) is not None

    def close(self) -> None:
        try:
            self.anchor.close()
        finally:
            self.lock.release()


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _engine_for(path: Path, lock_timeout_s: float) -> _Engine:
    """The open engine on ``path``, opening it (and closing another directory's) when needed.
    The caller holds _PROCESS_LOCK."""
    global _engine, _watcher
    if _engine is not None and _engine.path == path:
        return _engine
    if _engine is not None:
        if _open_sessions:
            raise StoreError(
                f"cannot open the embedded store at {path} inside a session on {_engine.path}: "
                "chDB opens one directory per process"
            )
        _engine.close()
        _engine = None
    _raise_open_files_limit()
    _engine = _Engine(path, lock_timeout_s)
    if _watcher is None:
        _watcher = threading.Thread(
            target=_hand_over_when_wanted, name="chdb-hand-over", daemon=True
        )
        _watcher.start()
    return _engine


def _hand_over_if_wanted() -> None:
    """Close the engine when another process waits for its directory. Holds _PROCESS_LOCK."""
    global _engine
    try:
        if _engine is not None and _open_sessions == 0 and _engine.wanted_elsewhere():
            log.debug("handing the embedded store at %s to another process", _engine.path)
            _engine.close()
            _engine = None
    except OSError:
        log.exception("could not check who waits for the embedded store")


def _hand_over_when_wanted() -> None:
    """Watch an idle engine: hand it over as soon as another process asks."""
    while True:
        time.sleep(_HAND_OVER_POLL_S)
        if _PROCESS_LOCK.acquire(blocking=False):  # else a session runs and hands over at its end
            try:
                _hand_over_if_wanted()
            finally:
                _PROCESS_LOCK.release()


def close_engine() -> None:
    """Close this process's chDB engine and release its directory (before using chDB directly
    on another path in this process; the store opens it again when next used)."""
    global _engine
    with _PROCESS_LOCK:
        if _engine is not None:
            _engine.close()
            _engine = None


def remove_data_folder(folder: Path) -> bool:
    """Delete ``folder`` (a run's data: stores, logs, checkpoints) after closing this process's
    engine, which may be open on a store inside it; whether it is gone (a file another process
    still holds may stay)."""
    close_engine()
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def _forget_engine_in_child() -> None:
    """A forked child shares the parent's lock: it must neither use nor release it."""
    global _engine, _watcher, _open_sessions
    if _engine is not None:
        _forked_away.append(_engine)
    _engine = None
    _watcher = None
    _open_sessions = 0


def _raise_open_files_limit() -> None:
    """ClickHouse reads a file per column and part; lift the soft open-files limit to the hard one,
    as clickhouse-server does at start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


atexit.register(close_engine)
os.register_at_fork(after_in_child=_forget_engine_in_child)


class EmbeddedStore:
    """chDB under ``path``; safe to share between processes and threads."""

    def __init__(self, path: Path, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock_timeout_s = lock_timeout_s
        self._conn: Any = None
        self._owner: int | None = None

    def __repr__(self) -> str:
        return f"EmbeddedStore({str(self.path)!r})"

    @contextmanager
    def session(self) -> Iterator[EmbeddedStore]:
        """Work on the directory under the lock for a group of operations (re-entrant)."""
        if self._conn is not None and self._owner == threading.get_ident():
            yield self
            return
        global _open_sessions
        with _PROCESS_LOCK:
            _engine_for(self.path, self.lock_timeout_s)
            self._conn = chdb.connect(f"file:{self.path}")
            self._owner = threading.get_ident()
            _open_sessions += 1
            try:
                yield self
            finally:
                _open_sessions -= 1
                self._conn.close()
                self._conn = None
                self._owner = None
                _hand_over_if_wanted()

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

    def known_keys(
        self,
        table: str,
        column: str,
        keys: pa.Array,
        where: str = "1",
        params: Mapping[str, Any] | None = None,
    ) -> pa.Array:
        probe = pa.table({"key": pa.array(keys, pa.string())})  # noqa: F841 - chDB's Python(probe)
        sql = known_keys_sql(table, column, where, "Python(probe)")
        return self.query_arrow(sql, params)["key"].combine_chunks()

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
        columns = ", ".join(f"`{c}`" for c in frame_columns(frame))
        chosen = insert_settings(dedup_token, unique_rows)
        settings = ""
        if chosen:
            settings = " SETTINGS " + ", ".join(
                f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}"
                for name, value in chosen.items()
            )
        rows = _python_table(frame)  # noqa: F841 - read by name by chDB's Python() below
        self._query(
            f"INSERT INTO {table} ({columns}){settings} SELECT {columns} FROM Python(rows)",  # noqa: S608
            "CSV",
            None,
        )
        return frame_rows(frame)


def _bindable(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """ClickHouse reads a String parameter as escaped text (TSV); escape backslashes, newlines
    and tabs so that the value arrives verbatim (``a\\'b`` would otherwise become ``a'b``, and a
    newline is refused). A list of strings (an ``Array(String)`` parameter) or of naive UTC
    datetimes (``Array(DateTime)``) goes in ClickHouse's quoted text form, which chDB does not
    build."""
    return {name: _bindable_value(value) for name, value in (params or {}).items()}


def _bindable_value(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    if isinstance(value, list | tuple) and value and all(isinstance(v, datetime) for v in value):
        value = [f"{v:%Y-%m-%d %H:%M:%S}" for v in value]  # an Array(DateTime) from its text
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        quoted = (v.replace("\\", "\\\\").replace("'", "\\'") for v in value)
        return "[" + ",".join(f"'{v}'" for v in quoted) + "]"
    return value


def _python_table(frame: pd.DataFrame | pa.Table) -> pd.DataFrame | pa.Table:
    """chDB reads a pandas column of lists as Nullable(String); through Arrow it stays an Array.

    A column whose lists are all empty has no element type in Arrow (``list<null>``), which chDB
    reads as NULLs; it goes as ``list<string>``, and the insert converts it to the column's type.
    """
    if isinstance(frame, pa.Table):
        return _typed_empty_lists(frame)
    for column in frame.columns:
        if frame[column].dtype == object:
            first = frame[column].first_valid_index()
            if first is not None and not isinstance(frame[column].at[first], str | bytes):
                return _typed_empty_lists(pa.Table.from_pandas(frame, preserve_index=False))
    return frame


def _typed_empty_lists(table: pa.Table) -> pa.Table:
    for index, field in enumerate(table.schema):
        if pa.types.is_list(field.type) and pa.types.is_null(field.type.value_type):
            typed = table.column(index).cast(pa.list_(pa.string()))
            table = table.set_column(index, field.name, typed)
    return table
