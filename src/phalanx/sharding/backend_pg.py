"""The PostgreSQL shard backend: one database (on any server) per shard.

psycopg 3 in async mode. One connection per backend object serves ``run``, ``fetch`` and the
metadata calls, one at a time (an ``asyncio.Lock``); each ``stream`` opens its own
connection and reads through a server-side cursor inside a ``REPEATABLE READ`` transaction,
so a scan sees one snapshot and holds at most ``batch_rows`` rows in memory.

Guards: a write transaction reads the shard's metadata rows ``FOR SHARE``. Raising the fence
is an ``UPDATE`` of the same row, so it waits for writes already past the check and every
later write sees the new fence: no write slips through a cut-over.

Statements are written with ``?`` placeholders; this backend rewrites them to psycopg's
``%s`` (a literal ``%`` becomes ``%%``). A ``?`` inside a quoted SQL string is not
supported: pass such values as parameters.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Final

import psycopg

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

__all__ = ["PostgresShardBackend", "to_pyformat"]

#: Seconds to wait when connecting.
CONNECT_TIMEOUT_S: Final = 5

_META_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS phalanx_shard_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO phalanx_shard_meta VALUES ('fence_version', 0), ('schema_version', 0)
ON CONFLICT DO NOTHING;
"""

_READ_META: Final = "SELECT name, value FROM phalanx_shard_meta"
_READ_META_FOR_SHARE: Final = "SELECT name, value FROM phalanx_shard_meta FOR SHARE"

_stream_ids = itertools.count(1)


def to_pyformat(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresShardBackend:
    """A shard in the PostgreSQL database reached with ``conninfo``."""

    dialect = "postgres"

    def __init__(self, name: str, conninfo: str) -> None:
        self.name = name
        self.conninfo = conninfo
        self.url = f"postgres:{conninfo}"
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresShardBackend({self.name!r})"

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        )

    async def _shared(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            conn = await self._connect()
            try:
                async with conn.transaction():
                    await conn.execute(_META_SCHEMA)
            except BaseException:
                # Cancelled (a sibling shard failed, a time limit) or failed: do not leak it.
                await asyncio.shield(conn.close())
                raise
            self._conn = conn
        return self._conn

    async def _check(self, conn: psycopg.AsyncConnection[Any], guard: Guard, *, lock: bool) -> None:
        if guard is UNGUARDED:
            return
        cursor = await conn.execute(_READ_META_FOR_SHARE if lock else _READ_META)
        values = {str(n): int(v) for n, v in await cursor.fetchall()}
        check_guard(self.name, guard, values["fence_version"], values["schema_version"])

    async def run(self, statements: Sequence[Statement], guard: Guard = UNGUARDED) -> list[int]:
        if len(statements) > STATEMENTS_MAX:
            raise TooLarge(f"{len(statements)} statements over STATEMENTS_MAX ({STATEMENTS_MAX})")
        async with self._lock:
            conn = await self._shared()
            async with conn.transaction():
                await self._check(conn, guard, lock=True)
                counts = []
                for sql, params in statements:
                    cursor = await conn.execute(to_pyformat(sql), tuple(params))
                    counts.append(cursor.rowcount)
        return counts

    async def fetch(self, sql: str, params: Sequence[Any], guard: Guard = UNGUARDED) -> list[Row]:
        async with self._lock:
            conn = await self._shared()
            async with conn.transaction():
                await self._check(conn, guard, lock=False)
                cursor = await conn.execute(to_pyformat(sql), tuple(params))
                rows = await cursor.fetchall()
        return [tuple(r) for r in rows]

    async def stream(
        self, sql: str, params: Sequence[Any], guard: Guard = UNGUARDED, *, batch_rows: int
    ) -> AsyncGenerator[list[Row], None]:
        if not 1 <= batch_rows <= BATCH_ROWS_MAX:
            raise ValueError(f"batch_rows: 1..{BATCH_ROWS_MAX}, got {batch_rows}")
        conn = await self._connect()
        try:
            await conn.set_autocommit(False)
            await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
            await self._check(conn, guard, lock=False)
            async with conn.cursor(name=f"phalanx_scan_{next(_stream_ids)}") as cursor:
                await cursor.execute(to_pyformat(sql), tuple(params))
                while True:
                    batch = await cursor.fetchmany(batch_rows)
                    if not batch:
                        break
                    yield [tuple(r) for r in batch]
            await conn.rollback()
        finally:
            await asyncio.shield(conn.close())

    async def meta(self) -> dict[str, int]:
        async with self._lock:
            conn = await self._shared()
            cursor = await conn.execute("SELECT name, value FROM phalanx_shard_meta")
            rows = await cursor.fetchall()
        return {str(n): int(v) for n, v in rows}

    async def set_meta(self, name: str, value: int) -> None:
        await self.run(
            [
                (
                    (
                        "INSERT INTO phalanx_shard_meta (name, value) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
                    ),
                    (name, value),
                )
            ]
        )

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
