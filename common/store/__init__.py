"""The analytics store: one small interface, an embedded chDB implementation and a ClickHouse server one.

Both run the same plain ClickHouse SQL. Values are always bound as ``{name:Type}`` parameters and
table names come from the allow-list of tables the migrations create.
"""

from __future__ import annotations

from common.settings import Settings, get_settings
from common.store.base import Store, StoreBusyError, StoreError, check_table, known_tables
from common.store.migrations import migrate


def open_store(settings: Settings | None = None) -> Store:
    """The configured store: embedded chDB under DATA_DIR, or the server at CLICKHOUSE_URL."""
    settings = settings or get_settings()
    if settings.uses_embedded_store:
        from common.store.embedded import EmbeddedStore

        return EmbeddedStore(settings.store_dir, lock_timeout_s=settings.store_lock_timeout_s)
    from common.store.server import ServerStore

    return ServerStore.from_settings(settings)


__all__ = [
    "Store",
    "StoreBusyError",
    "StoreError",
    "check_table",
    "known_tables",
    "migrate",
    "open_store",
]
