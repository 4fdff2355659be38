"""Geographic sharding, ``"geo"``: a key lives in its home region's group of shards.

Shards are named ``"<region>/<name>"`` (``"eu/1"``, ``"us-east/a"``); the part before the
first ``/`` is the shard's region. A key names its home region before ``separator``
(``"eu:user-42"`` lives in ``eu``). Within its region a key is placed by jump hash, so adding
a shard to one region moves 1/(N+1) of that region's keys and nothing elsewhere.

``fallback`` maps a region to the region serving it while it has no shards (a region being
built, or evacuated); chains are followed up to :data:`FALLBACK_HOPS_MAX` hops. A key with no
region prefix, or whose region (after fallbacks) has no shards, goes to ``default_region``;
without one it is refused with :class:`~phalanx.errors.BadRequest`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from phalanx.errors import BadRequest
from phalanx.sharding.keys import Key, key_bytes
from phalanx.sharding.strategies.base import Strategy, check_shards
from phalanx.sharding.strategies.hashing import JumpStrategy

__all__ = ["FALLBACK_HOPS_MAX", "GeoStrategy", "region_of_shard"]

#: Longest chain of fallback regions followed.
FALLBACK_HOPS_MAX: Final = 8


def region_of_shard(shard: str) -> str:
    region, slash, rest = shard.partition("/")
    if not slash or not region or not rest:
        raise ValueError(f"geo: shard names are '<region>/<name>', got {shard!r}")
    return region


class GeoStrategy:
    """Region groups of shards, jump hash inside each group."""

    __slots__ = ("_groups", "_separator", "_shards", "default_region", "fallback")

    name = "geo"

    def __init__(
        self,
        shards: Iterable[str],
        *,
        fallback: Mapping[str, str] | None = None,
        default_region: str | None = None,
        separator: str = ":",
        _groups: dict[str, JumpStrategy] | None = None,
    ) -> None:
        self._shards = check_shards(shards)
        if not separator:
            raise ValueError("separator: must be non-empty")
        self._separator = separator.encode()
        self.fallback = dict(fallback or {})
        self.default_region = default_region
        if _groups is None:
            members: dict[str, list[str]] = {}
            for shard in self._shards:
                members.setdefault(region_of_shard(shard), []).append(shard)
            _groups = {region: JumpStrategy(names) for region, names in members.items()}
        self._groups = _groups

    @property
    def shards(self) -> tuple[str, ...]:
        return self._shards

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(sorted(self._groups))

    def home_region(self, key: Key) -> str | None:
        """The region named by ``key``'s prefix, or ``None`` without one."""
        raw = key_bytes(key)
        region, separator, _ = raw.partition(self._separator)
        return region.decode(errors="replace") if separator and region else None

    def serving_region(self, region: str | None) -> str:
        """The region whose shards serve ``region`` after fallbacks and the default."""
        current = region
        for _ in range(FALLBACK_HOPS_MAX + 1):
            if current is None:
                break
            if current in self._groups:
                return current
            current = self.fallback.get(current)
        if self.default_region is not None and self.default_region in self._groups:
            return self.default_region
        raise BadRequest(f"geo: no shards serve region {region!r} and no default region")

    def shard_for(self, key: Key) -> str:
        return self._groups[self.serving_region(self.home_region(key))].shard_for(key)

    def with_shards(self, new_shards: Iterable[str]) -> Strategy:
        wanted = check_shards(new_shards)
        members: dict[str, list[str]] = {}
        for shard in wanted:
            members.setdefault(region_of_shard(shard), []).append(shard)
        groups: dict[str, JumpStrategy] = {}
        for region, names in members.items():
            old = self._groups.get(region)
            groups[region] = old.with_shards(names) if old is not None else JumpStrategy(names)
        order = [s for region in groups for s in groups[region].shards]
        return GeoStrategy(
            order,
            fallback=self.fallback,
            default_region=self.default_region,
            separator=self._separator.decode(),
            _groups=groups,
        )

    def options(self) -> dict[str, Any]:
        return {
            "fallback": dict(self.fallback),
            "default_region": self.default_region,
            "separator": self._separator.decode(),
        }

    def __repr__(self) -> str:
        return f"GeoStrategy(regions={list(self.regions)}, shards={len(self._shards)})"
