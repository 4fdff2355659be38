"""Range sharding, ``"range"``: each shard owns one contiguous interval of keys.

Keys compare as bytes (``str`` keys as their UTF-8 bytes, so ASCII text sorts as text;
zero-pad numeric ids, ``"user:00001234"``, to make them sort as numbers). ``bounds`` are the
N-1 split points: shard ``i`` owns ``[bounds[i-1], bounds[i])``, the first shard everything
below ``bounds[0]`` and the last everything from ``bounds[-1]`` up. Without ``bounds`` the
first eight bytes of the key space are cut into equal parts, which suits hashed or random
keys and not text.

Range queries stay on few shards, and hot ranges can be split (:meth:`RangeStrategy.split`)
and cold neighbours merged (:meth:`RangeStrategy.merge`). ``with_shards`` merges each removed
shard's range into its neighbour and gives each added shard the upper half of the widest
range (width measured on the first eight bytes).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from typing import Any, Final

from phalanx.errors import BadRequest
from phalanx.sharding.keys import Key, key_bytes
from phalanx.sharding.strategies.base import Strategy, check_shards, require_shard

__all__ = ["RangeStrategy", "even_bounds"]

_PREFIX_BYTES: Final = 8
_SPACE: Final = 1 << (8 * _PREFIX_BYTES)


def _to_bound(value: int) -> bytes:
    raw = value.to_bytes(_PREFIX_BYTES, "big").rstrip(b"\0")
    return raw or b"\0"


def _position(bound: bytes) -> int:
    return int.from_bytes(bound[:_PREFIX_BYTES].ljust(_PREFIX_BYTES, b"\0"), "big")


def even_bounds(count: int) -> list[bytes]:
    """``count - 1`` split points cutting the 8-byte key prefix space into equal parts."""
    return [_to_bound(i * _SPACE // count) for i in range(1, count)]


def _parse_bounds(bounds: Sequence[Key] | None, bounds_hex: Sequence[str] | None) -> list[bytes]:
    if bounds is not None and bounds_hex is not None:
        raise ValueError("range: give bounds or bounds_hex, not both")
    if bounds_hex is not None:
        return [bytes.fromhex(b) for b in bounds_hex]
    return [key_bytes(b) for b in bounds or ()]


class RangeStrategy:
    """Contiguous key ranges, one per shard, in shard order."""

    __slots__ = ("_bounds", "_shards")

    name = "range"

    def __init__(
        self,
        shards: Iterable[str],
        *,
        bounds: Sequence[Key] | None = None,
        bounds_hex: Sequence[str] | None = None,
    ) -> None:
        self._shards = check_shards(shards)
        if bounds is None and bounds_hex is None:
            parsed = even_bounds(len(self._shards))
        else:
            parsed = _parse_bounds(bounds, bounds_hex)
        if len(parsed) != len(self._shards) - 1:
            raise ValueError(
                f"bounds: {len(self._shards)} shards need {len(self._shards) - 1} split points, "
                f"got {len(parsed)}"
            )
        if any(a >= b for a, b in itertools.pairwise(parsed)) or b"" in parsed:
            raise ValueError("bounds: split points must be non-empty and strictly increasing")
        self._bounds = parsed

    @property
    def shards(self) -> tuple[str, ...]:
        return self._shards

    @property
    def bounds(self) -> tuple[bytes, ...]:
        return tuple(self._bounds)

    def shard_for(self, key: Key) -> str:
        raw = key.encode() if isinstance(key, str) else key
        return self._shards[bisect.bisect_right(self._bounds, raw)]

    def range_of(self, shard: str) -> tuple[bytes, bytes | None]:
        """``(low, high)`` owned by ``shard``: low inclusive (``b""`` is the start), high
        exclusive (``None`` is the end)."""
        index = require_shard(self._shards, shard)
        low = self._bounds[index - 1] if index > 0 else b""
        high = self._bounds[index] if index < len(self._bounds) else None
        return low, high

    def ranges(self) -> list[tuple[str, bytes, bytes | None]]:
        """Every shard with its ``(low, high)``, in key order."""
        return [(s, *self.range_of(s)) for s in self._shards]

    def split(self, shard: str, at: Key, new_shard: str) -> RangeStrategy:
        """``shard`` keeps ``[low, at)``; ``new_shard`` takes ``[at, high)``."""
        index = require_shard(self._shards, shard)
        point = key_bytes(at)
        low, high = self.range_of(shard)
        if not (point > low and (high is None or point < high)):
            raise BadRequest(f"split point {point!r} is not inside {shard!r}'s range")
        shards = list(self._shards)
        shards.insert(index + 1, new_shard)
        bounds = list(self._bounds)
        bounds.insert(index, point)
        return RangeStrategy(shards, bounds=bounds)

    def merge(self, left: str, right: str) -> RangeStrategy:
        """``left`` absorbs the adjacent range of ``right``, which leaves the map."""
        index = require_shard(self._shards, left)
        if require_shard(self._shards, right) != index + 1:
            raise BadRequest(f"{right!r} does not own the range right after {left!r}")
        shards = list(self._shards)
        del shards[index + 1]
        bounds = list(self._bounds)
        del bounds[index]
        return RangeStrategy(shards, bounds=bounds)

    def move_bound(self, left: str, right: str, at: Key) -> RangeStrategy:
        """Move the boundary between the adjacent ``left`` and ``right`` to ``at``: the keys
        between the old and the new boundary change owner (a key range moves between
        neighbours, as a balancer moves chunks)."""
        index = require_shard(self._shards, left)
        if require_shard(self._shards, right) != index + 1:
            raise BadRequest(f"{right!r} does not own the range right after {left!r}")
        point = key_bytes(at)
        low = self._bounds[index - 1] if index > 0 else b""
        high = self._bounds[index + 1] if index + 1 < len(self._bounds) else None
        if not (point > low and (high is None or point < high)):
            raise BadRequest(f"bound {point!r} would leave {left!r} or {right!r} without a range")
        bounds = list(self._bounds)
        bounds[index] = point
        return RangeStrategy(self._shards, bounds=bounds)

    def split_point(self, shard: str) -> bytes:
        """The midpoint of ``shard``'s range: on the eight bytes after the prefix that its
        low and high bounds share (so ``user:0000`` .. ``user:5000`` splits near
        ``user:2``)."""
        low, high = self.range_of(shard)
        shared = _common_prefix(low, high)
        start = _position(low[len(shared) :])
        end = _SPACE if high is None else _position(high[len(shared) :])
        middle = shared + _to_bound((start + end) // 2)
        if not (middle > low and (high is None or middle < high)):
            raise BadRequest(f"{shard!r}'s range is too narrow to split at a midpoint")
        return middle

    def with_shards(self, new_shards: Iterable[str]) -> Strategy:
        wanted = check_shards(new_shards)
        wanted_set = set(wanted)
        current = self
        for shard in self._shards:
            if shard in wanted_set:
                continue
            index = current._shards.index(shard)
            if len(current._shards) == 1:
                raise ValueError("range: cannot remove every shard")
            if index > 0:
                current = current.merge(current._shards[index - 1], shard)
            else:
                # The first range has no left neighbour: the next shard takes it over.
                following = current._shards[1]
                merged = current.merge(shard, following)
                renamed = list(merged._shards)
                renamed[0] = following
                current = RangeStrategy(renamed, bounds=merged._bounds)
        for shard in wanted:
            if shard in current._shards:
                continue
            widest = max(current._shards, key=current._width)
            current = current.split(widest, current.split_point(widest), shard)
        return current

    def _width(self, shard: str) -> int:
        low, high = self.range_of(shard)
        return (_SPACE if high is None else _position(high)) - _position(low)

    def options(self) -> dict[str, Any]:
        return {"bounds_hex": [b.hex() for b in self._bounds]}

    def __repr__(self) -> str:
        return f"RangeStrategy(shards={len(self._shards)})"


def _common_prefix(low: bytes, high: bytes | None) -> bytes:
    if high is None:
        return b""
    size = 0
    for a, b in zip(low, high, strict=False):
        if a != b:
            break
        size += 1
    return low[:size]
