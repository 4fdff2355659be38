"""The :class:`ShardBackend` interface: one SQL database holding one shard.

A backend runs statements and queries for the router, the rebalancer and the migrator. Every
routed call carries a :class:`Guard`, checked inside the same transaction as the work:

* ``map_version``: the version of the caller's :class:`~phalanx.sharding.ShardMap`. The shard
  keeps a *fence*, the lowest map version allowed to use it (raised at each cut-over that
  changes what it owns); an older caller gets :class:`~phalanx.sharding.StaleShardMap` and
  nothing runs.
* ``schema_min``/``schema_max``: the schema versions the application supports; a shard on
  another version raises :class:`~phalanx.sharding.SchemaVersionUnsupported`.

Both live in the shard's own ``phalanx_shard_meta`` table, so they move with the database.

Statements use ``?`` placeholders on every backend (PostgreSQL backends translate them).
Backends: :class:`~phalanx.sharding.backend_sqlite.SqliteShardBackend` (embedded default,
``sqlite:<path>``; ``sqlite::memory:`` is the in-process twin) and
:class:`~phalanx.sharding.backend_pg.PostgresShardBackend` (``postgres:<conninfo>``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from phalanx.sharding.errors import SchemaVersionUnsupported, StaleShardMap

__all__ = [
    "BATCH_ROWS_MAX",
    "META_TABLE",
    "Guard",
    "Row",
    "ShardBackend",
    "Statement",
    "check_guard",
    "open_backend",
]

#: The table holding a shard's fence and schema version.
META_TABLE: Final = "phalanx_shard_meta"
#: Most rows one streamed batch holds.
BATCH_ROWS_MAX: Final = 100_000
#: Most statements in one atomic batch.
STATEMENTS_MAX: Final = 10_000

Row = tuple[Any, ...]
Statement = tuple[str, Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Guard:
    """What a routed call requires of the shard (see the module docstring)."""

    map_version: int = 0
    schema_min: int | None = None
    schema_max: int | None = None


#: A guard that checks nothing (administration: migrations, rebalancing, inspection).
UNGUARDED: Final = Guard()


def check_guard(shard: str, guard: Guard, fence_version: int, schema_version: int) -> None:
    """Raise the typed error when ``guard`` does not admit a shard in this state."""
    if guard.map_version and guard.map_version < fence_version:
        raise StaleShardMap(
            f"shard {shard!r} is fenced at map version {fence_version}; "
            f"the caller routed with version {guard.map_version}",
            shard=shard,
            fence_version=fence_version,
        )
    low, high = guard.schema_min, guard.schema_max
    if (low is not None and schema_version < low) or (high is not None and schema_version > high):
        raise SchemaVersionUnsupported(
            f"shard {shard!r} is on schema version {schema_version}; "
            f"the application supports {low}..{high}",
            shard=shard,
            version=schema_version,
        )


@runtime_checkable
class ShardBackend(Protocol):
    """One shard's database."""

    name: str
    dialect: str  # "sqlite" or "postgres"

    async def run(self, statements: Sequence[Statement], guard: Guard = UNGUARDED) -> list[int]:
        """Run ``statements`` in one transaction; their row counts."""
        ...

    async def fetch(self, sql: str, params: Sequence[Any], guard: Guard = UNGUARDED) -> list[Row]:
        """All rows of one query."""
        ...

    def stream(
        self, sql: str, params: Sequence[Any], guard: Guard = UNGUARDED, *, batch_rows: int
    ) -> AsyncGenerator[list[Row], None]:
        """The rows of one query in batches of at most ``batch_rows``."""
        ...

    async def meta(self) -> dict[str, int]:
        """The shard's metadata: ``fence_version``, ``schema_version``, ..."""
        ...

    async def set_meta(self, name: str, value: int) -> None:
        """Set one metadata value (``fence_version`` only ever grows: see rebalancing)."""
        ...

    async def close(self) -> None: ...


def open_backend(name: str, url: str) -> ShardBackend:
    """The backend a location URL names: ``sqlite:<path>`` or ``postgres:<conninfo>``."""
    scheme, colon, rest = url.partition(":")
    if not colon:
        raise ValueError(f"shard location: expected '<scheme>:...', got {url!r}")
    if scheme == "sqlite":
        from phalanx.sharding.backend_sqlite import SqliteShardBackend

        return SqliteShardBackend(name, rest)
    if scheme in {"postgres", "postgresql"}:
        from phalanx.sharding.backend_pg import PostgresShardBackend

        return PostgresShardBackend(name, rest if scheme == "postgres" else url)
    raise ValueError(f"shard location: unknown scheme {scheme!r} in {url!r}")
