"""Database sharding: strategies, the shard map, routing and scatter-gather, rebalancing.

Build a strategy with :func:`strategy` (``"range"``, ``"hash"``, ``"jump"``, ``"ring"``,
``"bounded"``, ``"rendezvous"``, ``"geo"``, ``"directory"``), describe it with a versioned
:class:`ShardMap`, and route with it. See ``docs/sharding.md``.
"""

from phalanx.sharding.errors import (
    CrossShardWrite,
    DirectoryUnavailable,
    SchemaVersionUnsupported,
    ShardUnavailable,
    StaleShardMap,
    UnknownShard,
)
from phalanx.sharding.keys import Key, hash64, key_bytes
from phalanx.sharding.shardmap import ShardMap
from phalanx.sharding.strategies import STRATEGY_NAMES, Strategy, strategy

__all__ = [
    "STRATEGY_NAMES",
    "CrossShardWrite",
    "DirectoryUnavailable",
    "Key",
    "SchemaVersionUnsupported",
    "ShardMap",
    "ShardUnavailable",
    "StaleShardMap",
    "Strategy",
    "UnknownShard",
    "hash64",
    "key_bytes",
    "strategy",
]
