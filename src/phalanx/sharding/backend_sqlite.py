"""The SQLite shard backend: the embedded default, one file per shard.

Work runs on worker threads (``asyncio.to_thread``) so the event loop never blocks. One
connection per backend object serves ``run``, ``fetch`` and the metadata calls behind a lock;
each ``stream`` opens a connection of its own, so a long scan neither holds that lock nor
sees half of a concurrent write (WAL mode: readers see the last commit and never block the
writer). A path of ``:memory:`` is the in-process twin: one private database, streams served
from the shared connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Final

from phalanx.errors import TooLarge
from phalanx.sharding.backend import (
    BATCH_ROWS_MAX,
    STATEMENTS_MAX,
    UNGUARDED,
    Guard,
    Row,
    Statement,
    check_guard,
)

__all__ = ["SqliteShardBackend"]

#: How long a writer waits for another connection's lock before failing.
BUSY_TIMEOUT_S: Final = 10.0

_META_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS phalanx_shard_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO phalanx_shard_meta VALUES ('fence_version', 0);
INSERT OR IGNORE INTO phalanx_shard_meta VALUES ('schema_version', 0);
"""


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteShardBackend:
    """A shard in the SQLite file at ``path`` (created when missing)."""

    dialect = "sqlite"

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self.url = f"sqlite:{path}"
        self._lock = threading.Lock()
        self._conn = _connect(path)
        try:
            self._conn.executescript(_META_SCHEMA)
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"SqliteShardBackend({self.name!r}, {self.path!r})"

    def _check(self, conn: sqlite3.Connection, guard: Guard) -> None:
        if guard is UNGUARDED:
            return
        values = dict(conn.execute("SELECT name, value FROM phalanx_shard_meta").fetchall())
        check_guard(self.name, guard, int(values["fence_version"]), int(values["schema_version"]))

    def _run(self, statements: Sequence[Statement], guard: Guard) -> list[int]:
        if len(statements) > STATEMENTS_MAX:
            raise TooLarge(f"{len(statements)} statements over STATEMENTS_MAX ({STATEMENTS_MAX})")
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._check(conn, guard)
                counts = [conn.execute(sql, tuple(params)).rowcount for sql, params in statements]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return counts

    async def run(self, statements: Sequence[Statement], guard: Guard = UNGUARDED) -> list[int]:
        return await asyncio.to_thread(self._run, list(statements), guard)

    def _fetch(self, sql: str, params: Sequence[Any], guard: Guard) -> list[Row]:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                self._check(conn, guard)
                rows = conn.execute(sql, tuple(params)).fetchall()
            finally:
                conn.execute("COMMIT")
        return [tuple(r) for r in rows]

    async def fetch(self, sql: str, params: Sequence[Any], guard: Guard = UNGUARDED) -> list[Row]:
        return await asyncio.to_thread(self._fetch, sql, list(params), guard)

    async def stream(
        self, sql: str, params: Sequence[Any], guard: Guard = UNGUARDED, *, batch_rows: int
    ) -> AsyncGenerator[list[Row], None]:
        if not 1 <= batch_rows <= BATCH_ROWS_MAX:
            raise ValueError(f"batch_rows: 1..{BATCH_ROWS_MAX}, got {batch_rows}")
        if self.path == ":memory:":
            rows = await self.fetch(sql, params, guard)
            for start in range(0, len(rows), batch_rows):
                yield rows[start : start + batch_rows]
            return
        conn = await asyncio.to_thread(_connect, self.path)
        try:
            cursor = await asyncio.to_thread(self._open_stream, conn, sql, list(params), guard)
            while True:
                batch = await asyncio.to_thread(cursor.fetchmany, batch_rows)
                if not batch:
                    break
                yield [tuple(r) for r in batch]
        finally:
            await asyncio.to_thread(self._close_stream, conn)

    def _open_stream(
        self, conn: sqlite3.Connection, sql: str, params: list[Any], guard: Guard
    ) -> sqlite3.Cursor:
        conn.execute("BEGIN")  # one read snapshot for the whole scan
        self._check(conn, guard)
        return conn.execute(sql, tuple(params))

    @staticmethod
    def _close_stream(conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("COMMIT")
        finally:
            conn.close()

    def _meta(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT name, value FROM phalanx_shard_meta").fetchall()
        return {str(name): int(value) for name, value in rows}

    async def meta(self) -> dict[str, int]:
        return await asyncio.to_thread(self._meta)

    async def set_meta(self, name: str, value: int) -> None:
        await self.run(
            [
                (
                    "INSERT OR REPLACE INTO phalanx_shard_meta (name, value) VALUES (?, ?)",
                    (name, value),
                )
            ]
        )

    async def close(self) -> None:
        with self._lock:
            self._conn.close()
