"""Helpers of the sharding tests: shard sets on SQLite files or PostgreSQL databases, and a
backend wrapper that fails or hangs on demand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any

from phalanx.sharding.backend import UNGUARDED, Guard, Row, ShardBackend, Statement, open_backend


def locations(
    kind: str, names: Sequence[str], tmp_path: Path, make_pg: Callable[[], str] | None
) -> dict[str, str]:
    if kind == "sqlite":
        return {n: f"sqlite:{tmp_path / f'{n}.db'}" for n in names}
    assert make_pg is not None
    return {n: f"postgres:{make_pg()}" for n in names}


def open_all(urls: dict[str, str]) -> dict[str, ShardBackend]:
    return {name: open_backend(name, url) for name, url in urls.items()}


class FlakyBackend:
    """Wraps a backend; ``fail`` raises OSError, ``hang`` blocks until ``release``."""

    def __init__(self, inner: ShardBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.dialect = inner.dialect
        self.fail = False
        self.hang = False
        self.fail_after_batches: int | None = None
        self.gate = asyncio.Event()

    async def _trouble(self) -> None:
        if self.fail:
            raise OSError(f"{self.name} is down")
        if self.hang:
            await self.gate.wait()

    async def run(self, statements: Sequence[Statement], guard: Guard = UNGUARDED) -> list[int]:
        await self._trouble()
        return await self.inner.run(statements, guard)

    async def fetch(self, sql: str, params: Sequence[Any], guard: Guard = UNGUARDED) -> list[Row]:
        await self._trouble()
        return await self.inner.fetch(sql, params, guard)

    async def stream(
        self, sql: str, params: Sequence[Any], guard: Guard = UNGUARDED, *, batch_rows: int
    ) -> AsyncGenerator[list[Row], None]:
        await self._trouble()
        sent = 0
        inner = self.inner.stream(sql, params, guard, batch_rows=batch_rows)
        async with contextlib.aclosing(inner):
            async for batch in inner:
                if self.fail_after_batches is not None and sent >= self.fail_after_batches:
                    raise OSError(f"{self.name} went down mid-stream")
                yield batch
                sent += 1
                await self._trouble()

    async def meta(self) -> dict[str, int]:
        return await self.inner.meta()

    async def set_meta(self, name: str, value: int) -> None:
        await self.inner.set_meta(name, value)

    async def close(self) -> None:
        await self.inner.close()
