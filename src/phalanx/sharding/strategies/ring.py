"""Consistent hashing: a ring with virtual nodes, and the same ring with bounded loads.

:class:`RingStrategy` (``"ring"``) puts ``vnodes`` points per shard on a 64-bit ring (the
hash of ``"<shard>#<i>"``); a key belongs to the first point at or after its own hash,
wrapping around. Adding a shard takes about 1/(N+1) of the keys, a slice from every other
shard; removing one spreads its keys over the rest. Balance improves with ``vnodes``: the
spread of the shards' shares of the ring shrinks roughly as 1/sqrt(vnodes).

:class:`BoundedLoadStrategy` (``"bounded"``, Mirrokni, Thorup and Zadimoghaddam, 2018) walks
the same ring but skips shards that already hold ``ceil(load_factor * keys / shards)`` keys,
so no shard ever exceeds ``load_factor`` times the mean. It has to count keys, so it
remembers each key's placement (at most ``keys_max``; :meth:`BoundedLoadStrategy.release`
forgets one): ``shard_for`` places a new key and answers placed keys from memory. Its
``with_shards`` replays the placements in their original order: a key stays on its shard
unless that shard is gone or full under the new capacity, or the key's own point now belongs
to an added shard. The replay is deterministic, so two routers that saw the same keys agree.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any, Final

from phalanx.errors import InvariantViolation, TooLarge
from phalanx.sharding.keys import Key, hash64, key_bytes
from phalanx.sharding.strategies.base import Strategy, check_shards, merged_order

__all__ = [
    "LOAD_FACTOR_MIN",
    "VNODES_DEFAULT",
    "VNODES_MAX",
    "BoundedLoadStrategy",
    "RingStrategy",
]

#: Virtual nodes per shard unless told otherwise: about 8% spread of shares, 1 MB at 1000 shards.
VNODES_DEFAULT: Final = 160
#: Most virtual nodes per shard.
VNODES_MAX: Final = 10_000
#: Most points on one ring (memory bound: two Python lists of this length).
RING_POINTS_MAX: Final = 5_000_000
#: Most bits of the ring's bucket index (65,536 buckets: 0.5 MB at most).
INDEX_BITS_MAX: Final = 16
#: Smallest load factor of the bounded ring (1.0 would make every shard exactly full).
LOAD_FACTOR_MIN: Final = 1.01
#: Most keys a bounded ring remembers.
KEYS_MAX_DEFAULT: Final = 10_000_000


class _Ring:
    """Sorted points, their owners, and a bucket index over the points.

    ``starts[b]`` is the first point whose top ``bits`` bits are at least ``b``: a lookup
    bisects only the few points of its own bucket, touching a few cache lines instead of
    ~17 scattered ones on a ring of 160,000 points.
    """

    __slots__ = ("owners", "points", "shift", "starts")

    def __init__(self, shards: tuple[str, ...], vnodes: int) -> None:
        if len(shards) * vnodes > RING_POINTS_MAX:
            raise ValueError(
                f"vnodes: {len(shards)} shards x {vnodes} points is over "
                f"RING_POINTS_MAX ({RING_POINTS_MAX})"
            )
        placed = sorted(
            (hash64(f"{shard}#{index}"), shard) for shard in shards for index in range(vnodes)
        )
        self.points = [point for point, _ in placed]
        self.owners = [shard for _, shard in placed]
        bits = min(INDEX_BITS_MAX, max(1, len(self.points).bit_length()))
        self.shift = 64 - bits
        self.starts = [bisect.bisect_left(self.points, b << self.shift) for b in range(1 << bits)]
        self.starts.append(len(self.points))

    def start(self, key: Key) -> int:
        position = hash64(key)
        bucket = position >> self.shift
        index = bisect.bisect_left(
            self.points, position, self.starts[bucket], self.starts[bucket + 1]
        )
        return 0 if index == len(self.points) else index


def _arc_shares(points: list[int], owners: list[str], shards: tuple[str, ...]) -> dict[str, float]:
    """Each shard's arcs: a point owns the keys from the previous point (exclusive) up to it."""
    owned = dict.fromkeys(shards, 0)
    previous = points[-1] - (1 << 64)  # the last point's arc wraps around zero
    for point, owner in zip(points, owners, strict=True):
        owned[owner] += point - previous
        previous = point
    return {shard: arc / (1 << 64) for shard, arc in owned.items()}


def _check_vnodes(vnodes: int) -> int:
    if not isinstance(vnodes, int) or isinstance(vnodes, bool) or not 1 <= vnodes <= VNODES_MAX:
        raise ValueError(f"vnodes: expected an int in 1..{VNODES_MAX}, got {vnodes!r}")
    return vnodes


class RingStrategy:
    """A consistent-hash ring with ``vnodes`` virtual nodes per shard."""

    __slots__ = ("_owners", "_points", "_shards", "_shift", "_starts", "vnodes")

    name = "ring"

    def __init__(self, shards: Iterable[str], *, vnodes: int = VNODES_DEFAULT) -> None:
        self._shards = check_shards(shards)
        self.vnodes = _check_vnodes(vnodes)
        ring = _Ring(self._shards, self.vnodes)
        self._points = ring.points
        self._owners = ring.owners
        self._shift = ring.shift
        self._starts = ring.starts

    @property
    def shards(self) -> tuple[str, ...]:
        return self._shards

    def shard_for(self, key: Key) -> str:
        position = hash64(key)
        bucket = position >> self._shift
        starts = self._starts
        index = bisect.bisect_left(self._points, position, starts[bucket], starts[bucket + 1])
        return self._owners[index if index < len(self._points) else 0]

    def shares(self) -> dict[str, float]:
        """The fraction of the hash space each shard owns: its expected share of keys,
        exactly, with no sampling."""
        return _arc_shares(self._points, self._owners, self._shards)

    def with_shards(self, new_shards: Iterable[str]) -> Strategy:
        return RingStrategy(merged_order(self._shards, new_shards), vnodes=self.vnodes)

    def options(self) -> dict[str, Any]:
        return {"vnodes": self.vnodes}

    def __repr__(self) -> str:
        return f"RingStrategy(shards={len(self._shards)}, vnodes={self.vnodes})"


class BoundedLoadStrategy:
    """Consistent hashing with bounded loads; placements are remembered (see module notes)."""

    __slots__ = ("_loads", "_placed", "_ring", "_shards", "keys_max", "load_factor", "vnodes")

    name = "bounded"

    def __init__(
        self,
        shards: Iterable[str],
        *,
        load_factor: float = 1.25,
        vnodes: int = VNODES_DEFAULT,
        keys_max: int = KEYS_MAX_DEFAULT,
    ) -> None:
        self._shards = check_shards(shards)
        if not isinstance(load_factor, int | float) or load_factor < LOAD_FACTOR_MIN:
            raise ValueError(f"load_factor: must be >= {LOAD_FACTOR_MIN}, got {load_factor!r}")
        if not isinstance(keys_max, int) or keys_max < 1:
            raise ValueError(f"keys_max: must be a positive int, got {keys_max!r}")
        self.load_factor = float(load_factor)
        self.vnodes = _check_vnodes(vnodes)
        self.keys_max = keys_max
        self._ring = _Ring(self._shards, self.vnodes)
        self._loads = dict.fromkeys(self._shards, 0)
        # Insertion-ordered: with_shards replays placements in the order they were made.
        self._placed: dict[bytes, str] = {}

    @property
    def shards(self) -> tuple[str, ...]:
        return self._shards

    def capacity(self, keys: int) -> int:
        """Most keys one shard may hold when ``keys`` keys are placed in total."""
        count = len(self._shards)
        # Integer ceiling of load_factor * keys / count, without float rounding on the edge.
        return max(1, -(-int(self.load_factor * keys * 1_000_000) // (count * 1_000_000)))

    def shard_for(self, key: Key) -> str:
        raw = key_bytes(key)
        shard = self._placed.get(raw)
        if shard is not None:
            return shard
        if len(self._placed) >= self.keys_max:
            raise TooLarge(f"bounded ring: keys_max ({self.keys_max}) keys already placed")
        return self._place(raw, self.capacity(len(self._placed) + 1))

    def _place(self, raw: bytes, cap: int) -> str:
        owners = self._ring.owners
        size = len(owners)
        index = self._ring.start(raw)
        loads = self._loads
        for step in range(size):
            shard = owners[(index + step) % size]
            if loads[shard] < cap:
                loads[shard] += 1
                self._placed[raw] = shard
                return shard
        raise InvariantViolation("bounded ring: every shard is full, which the capacity excludes")

    def release(self, key: Key) -> bool:
        """Forget ``key``'s placement (the row is gone); True when it was placed."""
        shard = self._placed.pop(key_bytes(key), None)
        if shard is None:
            return False
        self._loads[shard] -= 1
        return True

    def loads(self) -> dict[str, int]:
        """Keys placed per shard."""
        return dict(self._loads)

    def with_shards(self, new_shards: Iterable[str]) -> Strategy:
        moved = BoundedLoadStrategy(
            merged_order(self._shards, new_shards),
            load_factor=self.load_factor,
            vnodes=self.vnodes,
            keys_max=self.keys_max,
        )
        # A key stays where it is while its shard survives, has room under the new capacity,
        # and the new ring does not hand the key's own point to an added shard; the others
        # walk the new ring. That moves about what a plain ring moves, plus any overflow.
        cap = moved.capacity(len(self._placed))
        added = set(moved._shards) - set(self._shards)
        loads = moved._loads
        owners = moved._ring.owners
        for raw, old in self._placed.items():
            if old in loads and loads[old] < cap and owners[moved._ring.start(raw)] not in added:
                loads[old] += 1
                moved._placed[raw] = old
            else:
                moved._place(raw, cap)
        return moved

    def options(self) -> dict[str, Any]:
        return {"load_factor": self.load_factor, "vnodes": self.vnodes, "keys_max": self.keys_max}

    def __repr__(self) -> str:
        return (
            f"BoundedLoadStrategy(shards={len(self._shards)}, load_factor={self.load_factor}, "
            f"placed={len(self._placed)})"
        )
