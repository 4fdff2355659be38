"""The simulated network: per-link delay, loss, duplication, reordering, and partitions.

A message handed to :meth:`Network.transmit` becomes zero, one or two deliveries, each with
its own delay drawn from the link's :class:`LinkProfile`. Independent delays reorder messages
on the same link; a small ``tail_probability`` gives a few very late messages (the kind that
arrive after their sender has moved on by several terms).

Partitions block directed links. They are checked twice: when a message is sent (it is
dropped at once) and again when it would be delivered (a message in flight when the partition
starts is lost too, as on a real network whose routes change). :meth:`Network.heal` removes
every partition; link profiles stay until :meth:`Network.clean`.

The partition shapes are those of Jepsen's nemeses: isolate one node, two random halves, a
majorities ring (every node sees a majority, no two see the same one) and a bridge (two
halves joined through one node that sees both).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import msgspec

__all__ = ["LinkProfile", "Network", "NetworkStats", "majorities_ring_links"]


class LinkProfile(msgspec.Struct, frozen=True):
    """How one directed link behaves. Delays are uniform in ``[delay_us_min, delay_us_max]``.

    With ``tail_probability`` a message instead takes up to ``tail_delay_us_max``: this is
    what reorders messages badly. ``loss_probability`` drops a message,
    ``duplicate_probability`` delivers a second copy with its own delay.
    """

    delay_us_min: int = 200
    delay_us_max: int = 3_000
    tail_probability: float = 0.01
    tail_delay_us_max: int = 200_000
    loss_probability: float = 0.0
    duplicate_probability: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.delay_us_min <= self.delay_us_max:
            raise ValueError("need 0 <= delay_us_min <= delay_us_max")
        if self.tail_delay_us_max < self.delay_us_max:
            raise ValueError("tail_delay_us_max must be at least delay_us_max")
        for name in ("tail_probability", "loss_probability", "duplicate_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")


class NetworkStats(msgspec.Struct):
    """Counters since the network was built."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    blocked: int = 0


def majorities_ring_links(ring: Sequence[int]) -> set[tuple[int, int]]:
    """The directed links to block so each node of ``ring`` sees only its ring neighbours.

    Each node keeps the ``k`` nearest nodes on either side, with ``k`` the smallest number
    that makes ``2k + 1`` a majority: every node sees a majority (itself included), and
    neighbouring nodes see different majorities.
    """
    n = len(ring)
    majority = n // 2 + 1
    k = majority // 2  # 2k + 1 >= majority
    blocked: set[tuple[int, int]] = set()
    for i, a in enumerate(ring):
        for j, b in enumerate(ring):
            if i == j:
                continue
            distance = min((i - j) % n, (j - i) % n)
            if distance > k:
                blocked.add((a, b))
    return blocked


class Network:
    """Links between nodes, each with a profile, and the set of blocked directed links."""

    __slots__ = ("_blocked", "_links", "_rng", "default", "stats")

    def __init__(self, rng: random.Random, default: LinkProfile | None = None) -> None:
        self._rng = rng
        self.default = default or LinkProfile()
        self._links: dict[tuple[int, int], LinkProfile] = {}
        self._blocked: set[tuple[int, int]] = set()
        self.stats = NetworkStats()

    # -- links -------------------------------------------------------------------------------

    def set_link(self, src: int, dst: int, profile: LinkProfile) -> None:
        """Give the directed link ``src -> dst`` its own profile."""
        self._links[(src, dst)] = profile

    def profile(self, src: int, dst: int) -> LinkProfile:
        return self._links.get((src, dst), self.default)

    def clean(self) -> None:
        """Forget every per-link profile: all links use the default again."""
        self._links.clear()

    # -- partitions --------------------------------------------------------------------------

    def connected(self, src: int, dst: int) -> bool:
        return (src, dst) not in self._blocked

    @property
    def partitioned(self) -> bool:
        return bool(self._blocked)

    def blocked_links(self) -> list[tuple[int, int]]:
        return sorted(self._blocked)

    def block(self, src: int, dst: int) -> None:
        self._blocked.add((src, dst))

    def unblock(self, src: int, dst: int) -> None:
        self._blocked.discard((src, dst))

    def split(self, groups: Sequence[Iterable[int]]) -> None:
        """Block every link between nodes of different groups (both directions)."""
        sets = [sorted(set(g)) for g in groups]
        for i, left in enumerate(sets):
            for right in sets[i + 1 :]:
                for a in left:
                    for b in right:
                        self._blocked.add((a, b))
                        self._blocked.add((b, a))

    def isolate(self, node: int, others: Iterable[int]) -> None:
        self.split([[node], [o for o in others if o != node]])

    def bridge(self, left: Sequence[int], bridge: int, right: Sequence[int]) -> None:
        """Two halves that cannot talk, except through ``bridge``, which sees both."""
        self.split([left, right])

        for a in (*left, *right):
            self._blocked.discard((a, bridge))
            self._blocked.discard((bridge, a))

    def ring(self, ring: Sequence[int]) -> None:
        self._blocked |= majorities_ring_links(ring)

    def heal(self) -> None:
        """Remove every partition."""
        self._blocked.clear()

    # -- traffic -----------------------------------------------------------------------------

    def transmit(self, src: int, dst: int) -> tuple[int, ...]:
        """The delays (us) of the copies of one message that will be delivered: 0, 1 or 2."""
        stats = self.stats
        stats.sent += 1
        if (src, dst) in self._blocked:
            stats.blocked += 1
            return ()
        profile = self._links.get((src, dst), self.default)
        rng = self._rng.random
        if profile.loss_probability and rng() < profile.loss_probability:
            stats.lost += 1
            return ()
        delay = self._delay(profile)
        if profile.duplicate_probability and rng() < profile.duplicate_probability:
            stats.duplicated += 1
            return (delay, self._delay(profile))
        return (delay,)

    def _delay(self, profile: LinkProfile) -> int:
        rng = self._rng.random
        if profile.tail_probability and rng() < profile.tail_probability:
            low, high = profile.delay_us_max, profile.tail_delay_us_max
        else:
            low, high = profile.delay_us_min, profile.delay_us_max
        # Uniform in [low, high], without randint's rejection sampling.
        return low + int(rng() * (high - low + 1))

    def arrives(self, src: int, dst: int) -> bool:
        """Whether a message in flight on ``src -> dst`` still arrives (no partition now)."""
        if (src, dst) in self._blocked:
            self.stats.blocked += 1
            return False
        self.stats.delivered += 1
        return True
