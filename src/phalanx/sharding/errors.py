"""The errors of :mod:`phalanx.sharding`, placed in the one tree of :mod:`phalanx.errors`::

    Unavailable
    ├── ShardUnavailable        a shard did not answer (``shard`` names it); not applied
    ├── StaleShardMap           the caller's map is older than the shard's fence: refresh, retry
    └── DirectoryUnavailable    the directory store is down and the key is not in the cache
    Rejected
    ├── CrossShardWrite         a write touches several shards and no transaction layer exists
    ├── SchemaVersionUnsupported  a shard's schema version is outside what the app supports
    └── UnknownShard            a shard name that is not in the map

A query that reads several shards and loses one raises :class:`ShardUnavailable` under the
``"fail"`` policy; under ``"partial"`` it returns rows flagged ``partial`` instead.
"""

from __future__ import annotations

from phalanx.errors import Rejected, Unavailable

__all__ = [
    "CrossShardWrite",
    "DirectoryUnavailable",
    "SchemaVersionUnsupported",
    "ShardUnavailable",
    "StaleShardMap",
    "UnknownShard",
]


class ShardUnavailable(Unavailable):
    """A shard could not be reached, was too slow, or its bulkhead was full."""

    def __init__(self, message: str, *, shard: str) -> None:
        super().__init__(message)
        self.shard = shard


class StaleShardMap(Unavailable):
    """The shard is fenced at ``fence_version``; the caller routed with an older map."""

    def __init__(self, message: str, *, shard: str, fence_version: int) -> None:
        super().__init__(message)
        self.shard = shard
        self.fence_version = fence_version


class DirectoryUnavailable(Unavailable):
    """The directory store cannot be read and the key is not cached."""


class CrossShardWrite(Rejected):
    """A write spans shards and :mod:`phalanx.txn` is not available to make it atomic."""


class SchemaVersionUnsupported(Rejected):
    """A shard's schema version is outside the range the application declared."""

    def __init__(self, message: str, *, shard: str, version: int) -> None:
        super().__init__(message)
        self.shard = shard
        self.version = version


class UnknownShard(Rejected):
    """A shard name that the map or strategy does not hold."""
