"""The :class:`ShardMap`: which strategy, which shards, where they live, and at which version.

Every router holds one. It is an immutable value with a ``version`` that only grows: each
change (a shard added, a range split, a key range moved) produces the next version through
:meth:`ShardMap.advance`. Shards are fenced at the version that last changed their ownership,
and a router that still holds an older map is told so (``StaleShardMap``) and reloads.

It serialises to JSON (:meth:`ShardMap.to_json`, :meth:`ShardMap.from_json`), holding the
strategy's name, shard names and options, so any process can rebuild the same strategy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec

from phalanx.errors import BadRequest, invariant
from phalanx.sharding.strategies import Strategy, strategy
from phalanx.sharding.strategies.base import check_shards

__all__ = ["SHARD_MAP_BYTES_MAX", "ShardMap"]

#: Largest serialised map accepted by :meth:`ShardMap.from_json`.
SHARD_MAP_BYTES_MAX: Final = 64 * 1024 * 1024


class ShardMap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A versioned strategy description plus each shard's location (a backend URL)."""

    version: int
    strategy: str
    shards: tuple[str, ...]
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    locations: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"version: must be >= 1, got {self.version}")
        check_shards(self.shards)
        stray = sorted(set(self.locations) - set(self.shards))
        if stray:
            raise ValueError(f"locations: shards not in the map: {stray}")

    @classmethod
    def create(
        cls,
        built: Strategy,
        locations: Mapping[str, str] | None = None,
        *,
        version: int = 1,
    ) -> ShardMap:
        """The map describing ``built`` (version 1 unless told)."""
        return cls(
            version=version,
            strategy=built.name,
            shards=built.shards,
            options=built.options(),
            locations=dict(locations or {}),
        )

    def build(self) -> Strategy:
        """The strategy this map describes."""
        built = strategy(self.strategy, self.shards, **self.options)
        invariant(built.shards == self.shards, "shard map: strategy reordered the shards")
        return built

    def advance(self, built: Strategy, locations: Mapping[str, str] | None = None) -> ShardMap:
        """The next version, describing ``built`` (locations kept unless given)."""
        if built.name != self.strategy:
            raise BadRequest(f"shard map: cannot change strategy {self.strategy} -> {built.name}")
        merged = dict(self.locations)
        merged.update(locations or {})
        kept = {s: merged[s] for s in built.shards if s in merged}
        return ShardMap.create(built, kept, version=self.version + 1)

    def with_shards(
        self, new_shards: Iterable[str], locations: Mapping[str, str] | None = None
    ) -> ShardMap:
        """The next version after adding or removing shards."""
        return self.advance(self.build().with_shards(new_shards), locations)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> ShardMap:
        raw = data.encode() if isinstance(data, str) else data
        if len(raw) > SHARD_MAP_BYTES_MAX:
            raise BadRequest(f"shard map: {len(raw)} bytes over SHARD_MAP_BYTES_MAX")
        try:
            return msgspec.json.decode(raw, type=cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadRequest(f"shard map: invalid JSON document: {exc}") from exc
