"""Apply the DDL in ``common/sql`` idempotently and record the schema version."""

from __future__ import annotations

import hashlib
import logging

import pandas as pd

from common.store.base import Store, check_table, split_statements, sql_files

log = logging.getLogger(__name__)

_VERSIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree ORDER BY version
"""


# Tables a later release gave a new name, (old, new): a view of the old name now reads them.
# A store that still holds the old table has it renamed before the files run, keeping its rows.
RENAMED_TABLES = [
    ("sales_metrics", "sales_metrics_versions"),
    ("sales_anomalies", "sales_anomalies_versions"),
]

_TABLE_ENGINES_SQL = "SELECT name, engine FROM system.tables WHERE database = currentDatabase()"


def migrate(store: Store) -> int:
    """Apply every migration file (each is idempotent); return the schema version now in force."""
    with store.session():
        store.execute(_VERSIONS_DDL)
        _rename_old_tables(store)
        applied = set(store.query_df("SELECT name FROM schema_migrations FINAL")["name"])
        version = 0
        for name, text in sql_files():
            version = int(name.split("_", 1)[0])
            for statement in split_statements(text):
                store.execute(statement)
            if name not in applied:
                checksum = hashlib.sha256(text.encode()).hexdigest()[:16]
                row = pd.DataFrame([{"version": version, "name": name, "checksum": checksum}])
                store.insert_df("schema_migrations", row)
                log.info("applied migration %s", name)
        return version


def _rename_old_tables(store: Store) -> None:
    engines = dict(store.query_df(_TABLE_ENGINES_SQL).itertuples(index=False, name=None))
    for old, new in RENAMED_TABLES:
        if engines.get(old, "View") != "View" and new not in engines:
            old_table, new_table = check_table(old), check_table(new)
            store.execute(f"RENAME TABLE {old_table} TO {new_table}")
            log.info("renamed table %s to %s", old, new)


def schema_version(store: Store) -> int:
    """The highest applied migration, 0 on an empty store."""
    with store.session():
        store.execute(_VERSIONS_DDL)
        return int(store.scalar("SELECT max(version) FROM schema_migrations") or 0)
