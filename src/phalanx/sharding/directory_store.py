"""Where the directory's ``key -> shard`` table lives: in memory, SQLite, or PostgreSQL.

Every store keeps one table of assignments and a version counter. Each write bumps the
version and stamps the row with it, so a client holding a cache at version ``v`` catches up
by reading only the rows stamped after ``v`` (:meth:`DirectoryStore.changes`). A removed
assignment stays as a tombstone (shard ``NULL``) so that the removal reaches caches too.

URLs name a store: ``memory:`` (a fresh in-process twin), ``sqlite:<path>``,
``postgres:<libpq conninfo or URI>``. PostgreSQL needs psycopg 3 (the ``postgres`` extra),
imported only when such a store is opened.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Final, Protocol, runtime_checkable

from phalanx.errors import TooLarge

__all__ = [
    "CHANGES_BATCH_MAX",
    "DirectoryStore",
    "MemoryDirectoryStore",
    "SqliteDirectoryStore",
    "open_directory_store",
]

#: Most rows one :meth:`DirectoryStore.changes` call returns.
CHANGES_BATCH_MAX: Final = 10_000
#: Most assignments the in-memory twin holds.
MEMORY_KEYS_MAX: Final = 10_000_000
#: How long SQLite waits for another writer's lock.
SQLITE_BUSY_TIMEOUT_S: Final = 5.0

Change = tuple[int, bytes, str | None]


@runtime_checkable
class DirectoryStore(Protocol):
    """The replicated table behind :class:`~phalanx.sharding.strategies.DirectoryStrategy`."""

    url: str

    def lookup(self, key: bytes) -> tuple[int, str | None]:
        """``(store version, shard or None)``."""
        ...

    def assign(self, key: bytes, shard: str | None, *, only_if_absent: bool = False) -> str | None:
        """Set (or with ``None`` remove) ``key``'s shard; returns the shard now assigned
        (with ``only_if_absent``, an existing assignment wins and is returned)."""
        ...

    def changes(self, since_version: int, limit: int = CHANGES_BATCH_MAX) -> list[Change]:
        """Rows written after ``since_version``, oldest first: ``(version, key, shard)``."""
        ...

    def close(self) -> None: ...


class MemoryDirectoryStore:
    """The in-process twin; ``fail`` makes every call raise ``OSError`` (an outage)."""

    def __init__(self, *, keys_max: int = MEMORY_KEYS_MAX) -> None:
        self.url = "memory:"
        self.keys_max = keys_max
        self.fail = False
        self._version = 0
        self._rows: dict[bytes, tuple[int, str | None]] = {}
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self.fail:
            raise OSError("directory store is down")

    def lookup(self, key: bytes) -> tuple[int, str | None]:
        self._check()
        with self._lock:
            row = self._rows.get(key)
            return self._version, (row[1] if row else None)

    def assign(self, key: bytes, shard: str | None, *, only_if_absent: bool = False) -> str | None:
        self._check()
        with self._lock:
            row = self._rows.get(key)
            if only_if_absent and row is not None and row[1] is not None:
                return row[1]
            if row is None and len(self._rows) >= self.keys_max:
                raise TooLarge(f"directory: keys_max ({self.keys_max}) reached")
            self._version += 1
            self._rows[key] = (self._version, shard)
            return shard

    def changes(self, since_version: int, limit: int = CHANGES_BATCH_MAX) -> list[Change]:
        self._check()
        with self._lock:
            found = sorted(
                (version, key, shard)
                for key, (version, shard) in self._rows.items()
                if version > since_version
            )
        return found[: min(limit, CHANGES_BATCH_MAX)]

    def close(self) -> None:
        pass


_SQLITE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS shard_directory (
    key BLOB PRIMARY KEY, shard TEXT, version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS shard_directory_by_version ON shard_directory (version);
CREATE TABLE IF NOT EXISTS shard_directory_version (
    id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL);
INSERT OR IGNORE INTO shard_directory_version VALUES (0, 0);
"""


class SqliteDirectoryStore:
    """The directory in one SQLite file (WAL mode; one connection per store object)."""

    def __init__(self, path: str) -> None:
        self.url = f"sqlite:{path}"
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SQLITE_SCHEMA)
        except BaseException:
            self._conn.close()
            raise

    def lookup(self, key: bytes) -> tuple[int, str | None]:
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                (version,) = self._conn.execute(
                    "SELECT version FROM shard_directory_version"
                ).fetchone()
                row = self._conn.execute(
                    "SELECT shard FROM shard_directory WHERE key = ?", (key,)
                ).fetchone()
            finally:
                self._conn.execute("COMMIT")
        return int(version), (row[0] if row else None)

    def assign(self, key: bytes, shard: str | None, *, only_if_absent: bool = False) -> str | None:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if only_if_absent:
                    row = conn.execute(
                        "SELECT shard FROM shard_directory WHERE key = ?", (key,)
                    ).fetchone()
                    if row is not None and row[0] is not None:
                        conn.execute("COMMIT")
                        return str(row[0])
                conn.execute("UPDATE shard_directory_version SET version = version + 1")
                (version,) = conn.execute("SELECT version FROM shard_directory_version").fetchone()
                conn.execute(
                    "INSERT OR REPLACE INTO shard_directory (key, shard, version) VALUES (?, ?, ?)",
                    (key, shard, version),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return shard

    def changes(self, since_version: int, limit: int = CHANGES_BATCH_MAX) -> list[Change]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT version, key, shard FROM shard_directory WHERE version > ? "
                "ORDER BY version LIMIT ?",
                (since_version, min(limit, CHANGES_BATCH_MAX)),
            ).fetchall()
        return [(int(v), bytes(k), s) for v, k, s in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_directory_store(url: str) -> DirectoryStore:
    """Open the store a URL names (see the module docstring)."""
    scheme, colon, rest = url.partition(":")
    if not colon:
        raise ValueError(f"directory store url: expected '<scheme>:...', got {url!r}")
    if scheme == "memory":
        return MemoryDirectoryStore()
    if scheme == "sqlite":
        return SqliteDirectoryStore(rest)
    if scheme in {"postgres", "postgresql"}:
        from phalanx.sharding.directory_pg import PostgresDirectoryStore

        return PostgresDirectoryStore(rest if scheme == "postgres" else url)
    raise ValueError(f"directory store url: unknown scheme {scheme!r} in {url!r}")
