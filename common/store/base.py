"""The store interface shared by the embedded and the server implementations."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from functools import lru_cache
from importlib import resources
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa

_CREATE_TABLE = re.compile(
    r"CREATE\s+(?:TABLE|MATERIALIZED\s+VIEW|VIEW)\s+IF\s+NOT\s+EXISTS\s+([A-Za-z_][A-Za-z0-9_]*)",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")
_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")


class StoreError(RuntimeError):
    """A store operation failed; the message says which and why."""


class StoreBusyError(StoreError):
    """The embedded store stayed locked by another process past the lock timeout."""


class Store(Protocol):
    """Execute DDL, query to pandas or Arrow with bound parameters, insert a frame idempotently."""

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None: ...

    def query_df(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame: ...

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table: ...

    def insert_df(
        self,
        table: str,
        frame: pd.DataFrame | pa.Table,
        dedup_token: str | None = None,
        *,
        unique_rows: bool = False,
    ) -> int:
        """Insert the rows of a pandas or Arrow frame; a repeated insert with the same token is
        dropped. ``unique_rows``: the caller already made the rows unique by the table's key, so
        a Replacing table need not merge them within the insert (ClickHouse's
        ``optimize_on_insert=0``). Returns rows sent."""
        ...

    def session(self) -> AbstractContextManager[Store]:
        """Hold one connection (and, embedded, the lock) for a group of operations."""
        ...

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any: ...

    def known_keys(
        self,
        table: str,
        column: str,
        keys: pa.Array,
        where: str = "1",
        params: Mapping[str, Any] | None = None,
    ) -> pa.Array:
        """The distinct values of ``keys`` (strings) that ``table.column`` holds in the rows that
        match ``where``. The keys travel as a table beside the query (any number of them), not as
        a parameter in its text."""
        ...


def known_keys_sql(table: str, column: str, where: str, probe: str) -> str:
    """The ``known_keys`` query, ``probe`` being how the store names the table of keys."""
    if not _COLUMN.match(column):
        raise StoreError(f"bad column name {column!r}")
    return (
        f"SELECT DISTINCT {column} AS key FROM {check_table(table)} "  # noqa: S608 - checked names
        f"WHERE ({where}) AND {column} IN (SELECT key FROM {probe})"
    )


def frame_rows(frame: pd.DataFrame | pa.Table) -> int:
    """The number of rows of a pandas or Arrow frame."""
    return frame.num_rows if isinstance(frame, pa.Table) else len(frame)


def frame_columns(frame: pd.DataFrame | pa.Table) -> list[str]:
    """The column names of a pandas or Arrow frame."""
    return list(frame.column_names if isinstance(frame, pa.Table) else frame.columns)


def insert_settings(dedup_token: str | None, unique_rows: bool) -> dict[str, str | int]:
    """The ClickHouse settings of one insert (values checked: they are written into the SQL)."""
    settings: dict[str, str | int] = {}
    if dedup_token is not None:
        settings["insert_deduplication_token"] = check_token(dedup_token)
    if unique_rows:
        settings["optimize_on_insert"] = 0
    return settings


def sql_files() -> list[tuple[str, str]]:
    """The migration files in order, as (name, text)."""
    folder = resources.files("common") / "sql"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text()) for name in names]


@lru_cache(maxsize=1)
def known_tables() -> frozenset[str]:
    """Every table and view the migrations create: the allow-list for identifiers."""
    created = {m.group(1) for _, text in sql_files() for m in _CREATE_TABLE.finditer(text)}
    return frozenset(created | {"schema_migrations"})


def check_table(name: str) -> str:
    """Return ``name`` if it is a table the migrations create, else raise StoreError."""
    if name not in known_tables():
        raise StoreError(f"unknown table {name!r}: not created by any migration in common/sql")
    return name


def check_token(token: str) -> str:
    """A deduplication token may hold letters, digits and ``_.:-`` only."""
    if not _TOKEN.match(token):
        raise StoreError(f"bad deduplication token {token!r}: use letters, digits and _.:- only")
    return token


def split_statements(text: str) -> Iterator[str]:
    """Split a SQL file on semicolons at line ends, dropping comments and blanks."""
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    for statement in "\n".join(lines).split(";\n"):
        statement = statement.strip().rstrip(";").strip()
        if statement:
            yield statement
