"""Rendezvous (highest random weight) hashing, ``"rendezvous"`` (Thaler and Ravishankar).

Every shard scores every key; the key goes to the highest score. Adding a shard takes exactly
the keys it now outscores (1/(N+1) of them on average) and removing one moves only its own
keys; no ring, no virtual nodes, perfect balance in expectation. The price is O(N) per
lookup: at hundreds of shards it is the slowest strategy here (see docs/benchmarks.md).
Scores are ``mix64(hash64(key) ^ shard_seed)``, with each shard's seed the hash of its name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from phalanx.sharding.keys import Key, hash64
from phalanx.sharding.strategies.base import Strategy, check_shards, merged_order

__all__ = ["RendezvousStrategy"]

_MASK64: Final = (1 << 64) - 1


class RendezvousStrategy:
    """Highest-random-weight placement over the shard names."""

    __slots__ = ("_seeds", "_shards")

    name = "rendezvous"

    def __init__(self, shards: Iterable[str]) -> None:
        self._shards = check_shards(shards)
        self._seeds = tuple((hash64(f"rendezvous:{s}"), s) for s in self._shards)

    @property
    def shards(self) -> tuple[str, ...]:
        return self._shards

    def shard_for(self, key: Key) -> str:
        key_hash = hash64(key)
        best_score, best = -1, self._shards[0]
        mask = _MASK64
        for seed, shard in self._seeds:
            # SplitMix64's finaliser, inlined: this loop is the whole cost of a lookup.
            value = key_hash ^ seed
            value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & mask
            value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & mask
            value ^= value >> 31
            if value > best_score:
                best_score, best = value, shard
        return best

    def with_shards(self, new_shards: Iterable[str]) -> Strategy:
        return RendezvousStrategy(merged_order(self._shards, new_shards))

    def options(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"RendezvousStrategy(shards={len(self._shards)})"
