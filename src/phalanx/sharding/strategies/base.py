"""The interface every sharding strategy implements, and the checks they share.

A strategy is an immutable value: ``shard_for(key)`` is a pure function of the key and the
strategy's configuration (the bounded-load ring and the directory are the documented
exceptions: they remember placements). ``with_shards(new_shards)`` returns a new strategy for
the new shard set and leaves the old one untouched, so a router can keep routing with the old
map while a rebalance prepares the new one. ``options()`` returns JSON-ready options that,
passed back to :func:`phalanx.sharding.strategy` with the same name and shards, rebuild an
equal strategy: that is how a :class:`~phalanx.sharding.ShardMap` is serialised.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, Final, Protocol, runtime_checkable

from phalanx.sharding.errors import UnknownShard
from phalanx.sharding.keys import Key

__all__ = [
    "SHARDS_MAX",
    "SHARD_NAME_CHARS_MAX",
    "Strategy",
    "check_shards",
    "merged_order",
    "require_shard",
]

#: Most shards one strategy may hold.
SHARDS_MAX: Final = 65_536
#: Longest shard name.
SHARD_NAME_CHARS_MAX: Final = 200


@runtime_checkable
class Strategy(Protocol):
    """Maps a key to the name of the shard that owns it."""

    @property
    def name(self) -> str:
        """The registry name (``"range"``, ``"hash"``, ...)."""
        ...

    @property
    def shards(self) -> tuple[str, ...]:
        """The shard names, in the strategy's own order."""
        ...

    def shard_for(self, key: Key) -> str:
        """The shard owning ``key`` (``str`` or ``bytes``)."""
        ...

    def with_shards(self, new_shards: Iterable[str]) -> Strategy:
        """The strategy after shards are added or removed; ``self`` is unchanged."""
        ...

    def options(self) -> dict[str, Any]:
        """JSON-ready options that rebuild this strategy with :func:`strategy`."""
        ...


def check_shards(shards: Iterable[str], *, minimum: int = 1) -> tuple[str, ...]:
    """Validate shard names: distinct non-empty strings, at least ``minimum``, at most
    :data:`SHARDS_MAX`."""
    if isinstance(shards, str | bytes):
        raise TypeError("shards: expected a collection of shard names, got a single string")
    names = tuple(shards)
    if len(names) < minimum:
        raise ValueError(f"shards: need at least {minimum}, got {len(names)}")
    if len(names) > SHARDS_MAX:
        raise ValueError(f"shards: {len(names)} is over SHARDS_MAX ({SHARDS_MAX})")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"shards: every name must be a non-empty string, got {name!r}")
        if len(name) > SHARD_NAME_CHARS_MAX:
            raise ValueError(f"shards: name over {SHARD_NAME_CHARS_MAX} characters: {name!r}")
    if len(set(names)) != len(names):
        dupes = sorted(name for name, count in Counter(names).items() if count > 1)
        raise ValueError(f"shards: duplicate names {dupes}")
    return names


def require_shard(shards: tuple[str, ...], shard: str) -> int:
    """The index of ``shard``; :class:`UnknownShard` when absent."""
    try:
        return shards.index(shard)
    except ValueError:
        raise UnknownShard(f"no shard named {shard!r} (shards: {list(shards)})") from None


def merged_order(old: tuple[str, ...], new: Iterable[str]) -> tuple[str, ...]:
    """``new`` ordered as: the survivors of ``old`` in their old order, then the additions in
    the order given. Keeps index-based strategies (modulo, jump) as stable as they can be."""
    wanted = check_shards(new)
    wanted_set = set(wanted)
    kept = [s for s in old if s in wanted_set]
    kept_set = set(kept)
    return (*kept, *(s for s in wanted if s not in kept_set))
