"""Hash-based placement: the guide's ``hash(key) % num_shards`` and jump consistent hash.

:class:`ModuloStrategy` (``"hash"``) is the simplest balanced placement and the worst to grow:
going from N to N+1 shards moves about N/(N+1) of all keys. :class:`JumpStrategy` (``"jump"``,
Lamping and Veach, 2014) needs no memory beyond the shard list, balances as evenly as modulo,
and moves only the ideal 1/(N+1) when a shard is appended. Jump hash numbers its buckets, so a
shard can only be appended or dropped from the end without extra movement; removing a shard
from the middle moves the last shard into its slot (its keys move, as well as the removed
shard's: about 2/N of all keys).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from phalanx.sharding.keys import Key, hash64
from phalanx.sharding.strategies.base import Strategy, check_shards, merged_order

__all__ = ["JumpStrategy", "ModuloStrategy", "jump_hash"]

_MASK64: Final = (1 << 64) - 1
_LCG_MULTIPLIER: Final = 2862933555777941757
_TWO_POW_31: Final = 1 << 31


def jump_hash(key_hash: int, buckets: int) -> int:
    """The bucket in ``range(buckets)`` of a 64-bit ``key_hash`` (Lamping and Veach).

    The paper's ``(b + 1) * (2**31 / ((key >> 33) + 1))`` is computed with integer floor
    division: exact, and a little faster in Python than the floating-point original.
    """
    if buckets < 1:
        raise ValueError(f"buckets: need at least 1, got {buckets}")
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key_hash = (key_hash * _LCG_MULTIPLIER + 1) & _MASK64
        candidate = (bucket + 1) * _TWO_POW_31 // ((key_hash >> 33) + 1)
    return bucket


class ModuloStrategy:
    """``shards[hash64(key) % len(shards)]``."""

    __slots__ = ("_count", "_shards")

    name = "hash"

    def __init__(self, shards: Iterable[str]) -> None:
        self._shards = check_shards(shards)
        self._count = len(self._shards)

    @property
    def shards(self) -> tuple[str, ...]:
        return self._shards

    def shard_for(self, key: Key) -> str:
        return self._shards[hash64(key) % self._count]

    def with_shards(self, new_shards: Iterable[str]) -> Strategy:
        return ModuloStrategy(merged_order(self._shards, new_shards))

    def options(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"ModuloStrategy(shards={len(self._shards)})"


class JumpStrategy:
    """``shards[jump_hash(hash64(key), len(shards))]``; see the module notes on removal."""

    __slots__ = ("_count", "_shards")

    name = "jump"

    def __init__(self, shards: Iterable[str]) -> None:
        self._shards = check_shards(shards)
        self._count = len(self._shards)

    @property
    def shards(self) -> tuple[str, ...]:
        return self._shards

    def shard_for(self, key: Key) -> str:
        return self._shards[jump_hash(hash64(key), self._count)]

    def with_shards(self, new_shards: Iterable[str]) -> JumpStrategy:
        wanted = check_shards(new_shards)
        wanted_set = set(wanted)
        slots = list(self._shards)
        # Fill each removed slot with the last surviving shard, so only two shards' keys move.
        index = 0
        while index < len(slots):
            if slots[index] in wanted_set:
                index += 1
                continue
            last = slots.pop()
            if index < len(slots):
                slots[index] = last
        present = set(slots)
        slots.extend(s for s in wanted if s not in present)
        return JumpStrategy(slots)

    def options(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"JumpStrategy(shards={len(self._shards)})"
