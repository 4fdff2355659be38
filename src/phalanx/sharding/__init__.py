"""Database sharding: strategies, the shard map, routing and scatter-gather, rebalancing.

Build a strategy with :func:`strategy` (``"range"``, ``"hash"``, ``"jump"``, ``"ring"``,
``"bounded"``, ``"rendezvous"``, ``"geo"``, ``"directory"``), describe it with a versioned
:class:`ShardMap`, route with a :class:`Router` over :class:`ShardBackend` objects
(:func:`open_backend`), move rows online with a :class:`Rebalancer`, and change schemas with a
:class:`Migrator`. See ``docs/sharding.md``.
"""

from phalanx.sharding.backend import Guard, ShardBackend, open_backend
from phalanx.sharding.errors import (
    CrossShardWrite,
    DirectoryUnavailable,
    SchemaVersionUnsupported,
    ShardUnavailable,
    StaleShardMap,
    UnknownShard,
)
from phalanx.sharding.keys import Key, hash64, key_bytes
from phalanx.sharding.mapstore import FileMapStore, MapStore, MemoryMapStore
from phalanx.sharding.migrate import Migration, Migrator
from phalanx.sharding.query import Aggregate, Select
from phalanx.sharding.rebalance import RebalanceFailed, Rebalancer, TableSpec, plan
from phalanx.sharding.router import QueryResult, Router
from phalanx.sharding.shardmap import ShardMap
from phalanx.sharding.strategies import STRATEGY_NAMES, Strategy, strategy

__all__ = [
    "STRATEGY_NAMES",
    "Aggregate",
    "CrossShardWrite",
    "DirectoryUnavailable",
    "FileMapStore",
    "Guard",
    "Key",
    "MapStore",
    "MemoryMapStore",
    "Migration",
    "Migrator",
    "QueryResult",
    "RebalanceFailed",
    "Rebalancer",
    "Router",
    "SchemaVersionUnsupported",
    "Select",
    "ShardBackend",
    "ShardMap",
    "ShardUnavailable",
    "StaleShardMap",
    "Strategy",
    "TableSpec",
    "UnknownShard",
    "hash64",
    "key_bytes",
    "open_backend",
    "plan",
    "strategy",
]
