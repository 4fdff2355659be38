"""The directory table on PostgreSQL: the multi-machine home of ``key -> shard``.

Same tables and rules as :class:`~phalanx.sharding.directory_store.SqliteDirectoryStore`.
Writers serialise on the single version row (``UPDATE ... RETURNING``), so versions are
dense and every row's stamp is unique. One autocommit connection per store object, shared by
its threads behind a lock. Needs psycopg 3 (``pip install 'phalanx[postgres]'``).
"""

from __future__ import annotations

import threading
from typing import Any, Final

import psycopg

from phalanx.sharding.directory_store import CHANGES_BATCH_MAX, Change

__all__ = ["PostgresDirectoryStore"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS shard_directory (
    key BYTEA PRIMARY KEY, shard TEXT, version BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS shard_directory_by_version ON shard_directory (version);
CREATE TABLE IF NOT EXISTS shard_directory_version (
    id INTEGER PRIMARY KEY CHECK (id = 0), version BIGINT NOT NULL);
INSERT INTO shard_directory_version VALUES (0, 0) ON CONFLICT DO NOTHING;
"""


class PostgresDirectoryStore:
    """The directory in a PostgreSQL database reached with ``conninfo``."""

    def __init__(self, conninfo: str) -> None:
        self.url = f"postgres:{conninfo}"
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] = psycopg.connect(conninfo, autocommit=True)
        try:
            with self._conn.transaction():
                self._conn.execute(_SCHEMA)
        except BaseException:
            self._conn.close()
            raise

    def lookup(self, key: bytes) -> tuple[int, str | None]:
        with self._lock, self._conn.transaction():
            version_row = self._conn.execute(
                "SELECT version FROM shard_directory_version"
            ).fetchone()
            row = self._conn.execute(
                "SELECT shard FROM shard_directory WHERE key = %s", (key,)
            ).fetchone()
        version = int(version_row[0]) if version_row else 0
        return version, (row[0] if row else None)

    def assign(self, key: bytes, shard: str | None, *, only_if_absent: bool = False) -> str | None:
        with self._lock, self._conn.transaction():
            # Taking the version row's lock first serialises writers: versions stay dense.
            version_row = self._conn.execute(
                "UPDATE shard_directory_version SET version = version + 1 RETURNING version"
            ).fetchone()
            if only_if_absent:
                row = self._conn.execute(
                    "SELECT shard FROM shard_directory WHERE key = %s", (key,)
                ).fetchone()
                if row is not None and row[0] is not None:
                    return str(row[0])
            version = int(version_row[0]) if version_row else 0
            self._conn.execute(
                "INSERT INTO shard_directory (key, shard, version) VALUES (%s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET shard = excluded.shard, "
                "version = excluded.version",
                (key, shard, version),
            )
        return shard

    def changes(self, since_version: int, limit: int = CHANGES_BATCH_MAX) -> list[Change]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT version, key, shard FROM shard_directory WHERE version > %s "
                "ORDER BY version LIMIT %s",
                (since_version, min(limit, CHANGES_BATCH_MAX)),
            ).fetchall()
        return [(int(v), bytes(k), s) for v, k, s in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
