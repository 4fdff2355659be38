"""Injected faults of one node: cut links, toxics on the links that stay up, a clock offset.

A :class:`LinkFaults` belongs to one node. Its driver asks :meth:`LinkFaults.blocks_in` when
a message arrives and hands every outgoing message to :meth:`LinkFaults.send`, which drops
it when the link is cut: the same effect as a firewall rule on both directions, with no root
needed. Chaos tests and the partition tests of the node cut and heal links through it while
the processes keep running (``phalanx node --admin`` exposes it over HTTP, see
:mod:`phalanx.node.http`).

**Toxics** (the word is Toxiproxy's) degrade a link that is not cut, outgoing direction only
(set them on both ends for both directions): ``loss`` drops each message with that
probability, ``latency_ms`` and ``jitter_ms`` delay each one by ``latency_ms`` plus a uniform
draw in ``[-jitter_ms, +jitter_ms]`` (never below zero). Draws come from the instance's own
seeded RNG (:meth:`LinkFaults.reseed`). Delayed messages may overtake each other, which Raft
tolerates; at most :data:`DELAYED_MESSAGES_MAX` are held at once, further ones are dropped.

**Clock offset**: :meth:`LinkFaults.now_ms` is the wall clock shifted by ``clock_offset_ms``
(at most :data:`CLOCK_OFFSET_MS_MAX` either way). The node stamps its proposals with it, so
on a leader it moves lease decisions (grants, renewals, expiry) as a skewed clock would.

**Clock strobe** (Jepsen's word): for ``duration_ms`` the clock flips between its (offset)
time plus ``delta_ms`` and that time, every ``period_ms`` (the jump first): time jumps
forward and back many times a second, as an unstable NTP sync or a flapping VM clock would.
The phase follows the injected monotonic clock. :meth:`LinkFaults.heal` resets the offset
and the strobe along with the links.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Final, TypeVar

import msgspec

from phalanx.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "CLOCK_OFFSET_MS_MAX",
    "DELAYED_MESSAGES_MAX",
    "LATENCY_MS_MAX",
    "STROBE_DURATION_MS_MAX",
    "STROBE_PERIOD_MS_MIN",
    "ClockStrobe",
    "FaultsState",
    "LinkFaults",
    "Toxic",
]

M = TypeVar("M")

#: Messages held back by latency toxics at once; more are dropped (and counted).
DELAYED_MESSAGES_MAX: Final = 10_000
#: The largest latency or jitter a toxic may add.
LATENCY_MS_MAX: Final = 60_000.0
#: The largest clock offset, either way (an hour).
CLOCK_OFFSET_MS_MAX: Final = 3_600_000
#: The shortest half-period of a clock strobe, and the longest a strobe may last (an hour).
STROBE_PERIOD_MS_MIN: Final = 1
STROBE_DURATION_MS_MAX: Final = 3_600_000


class Toxic(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How one outgoing link is degraded (all zero: not at all)."""

    loss: float = 0.0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss: a probability in [0, 1], got {self.loss}")
        for name, value in (("latency_ms", self.latency_ms), ("jitter_ms", self.jitter_ms)):
            if not 0.0 <= value <= LATENCY_MS_MAX:
                raise ValueError(f"{name}: in [0, {LATENCY_MS_MAX:g}], got {value}")


class ClockStrobe(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Flip the clock between ``+0`` and ``+delta_ms`` every ``period_ms``, for ``duration_ms``."""

    delta_ms: int
    period_ms: int
    duration_ms: int

    def __post_init__(self) -> None:
        if abs(self.delta_ms) > CLOCK_OFFSET_MS_MAX:
            raise ValueError(f"strobe delta_ms: at most {CLOCK_OFFSET_MS_MAX} ms either way")
        if self.period_ms < STROBE_PERIOD_MS_MIN:
            raise ValueError(f"strobe period_ms: at least {STROBE_PERIOD_MS_MIN}")
        if not 0 <= self.duration_ms <= STROBE_DURATION_MS_MAX:
            raise ValueError(f"strobe duration_ms: in [0, {STROBE_DURATION_MS_MAX}]")


class FaultsState(msgspec.Struct, kw_only=True):
    """What :meth:`LinkFaults.state` reports (the admin endpoint's answer)."""

    cut: list[int]
    toxics: dict[int, Toxic]
    dropped_out: int
    dropped_in: int
    delayed: int
    clock_offset_ms: int = 0
    clock_strobe: ClockStrobe | None = None


class LinkFaults:
    """The cut links and toxics of one node (``clock``: whose time :meth:`now_ms` reports)."""

    def __init__(self, *, seed: int = 0, clock: Clock = SYSTEM_CLOCK) -> None:
        self._cut: set[int] = set()
        self._toxics: dict[int, Toxic] = {}
        self._rng = random.Random(seed)
        self._clock = clock
        self._delayed = 0
        self._clock_offset_ms = 0
        self._strobe: ClockStrobe | None = None
        self._strobe_from_s = 0.0
        self.dropped_out = 0
        self.dropped_in = 0

    def isolate(self, peers: Iterable[int]) -> None:
        """Cut the links to ``peers`` (added to any already cut)."""
        self._cut.update(peers)

    def set_toxics(self, toxics: Mapping[int, Toxic]) -> None:
        """Degrade the outgoing links to these peers (replacing their previous toxics)."""
        self._toxics.update(toxics)

    def heal(self) -> None:
        """Restore every link, remove every toxic, reset the clock offset."""
        self._cut.clear()
        self._toxics.clear()
        self._clock_offset_ms = 0
        self._strobe = None

    def set_clock_offset(self, offset_ms: int) -> None:
        """Shift :meth:`now_ms` by ``offset_ms`` (replacing any earlier offset)."""
        if abs(offset_ms) > CLOCK_OFFSET_MS_MAX:
            raise ValueError(f"clock offset: at most {CLOCK_OFFSET_MS_MAX} ms either way")
        self._clock_offset_ms = offset_ms

    def set_clock_strobe(self, strobe: ClockStrobe) -> None:
        """Start strobing the clock now (replacing any strobe under way)."""
        self._strobe = strobe
        self._strobe_from_s = self._clock.now_s()

    def now_ms(self) -> int:
        """The wall clock in milliseconds, shifted by the clock offset and the strobe."""
        now_ms = int(self._clock.wall_s() * 1000) + self._clock_offset_ms
        strobe = self._strobe
        if strobe is not None:
            elapsed_ms = (self._clock.now_s() - self._strobe_from_s) * 1000
            if elapsed_ms >= strobe.duration_ms:
                self._strobe = None
            elif int(elapsed_ms // strobe.period_ms) % 2 == 0:  # jump first, then back
                now_ms += strobe.delta_ms
        return now_ms

    def reseed(self, seed: int) -> None:
        """Restart the RNG that draws losses and jitter."""
        self._rng = random.Random(seed)

    @property
    def cut(self) -> frozenset[int]:
        return frozenset(self._cut)

    def state(self) -> FaultsState:
        return FaultsState(
            cut=sorted(self._cut),
            toxics=dict(sorted(self._toxics.items())),
            dropped_out=self.dropped_out,
            dropped_in=self.dropped_in,
            delayed=self._delayed,
            clock_offset_ms=self._clock_offset_ms,
            clock_strobe=self._strobe,
        )

    def blocks_out(self, peer: int) -> bool:
        """True (and counted) when a message to ``peer`` is to be dropped: cut, or lost."""
        toxic = self._toxics.get(peer)
        if peer in self._cut or (toxic is not None and self._rng.random() < toxic.loss):
            self.dropped_out += 1
            return True
        return False

    def blocks_in(self, peer: int) -> bool:
        if peer in self._cut:
            self.dropped_in += 1
            return True
        return False

    def send(self, peer: int, send: Callable[[M], object], message: M) -> None:
        """Pass ``message`` for ``peer`` to ``send`` now, later (latency) or never (cut,
        loss). Delays run on the running event loop's timers."""
        if self.blocks_out(peer):
            return
        toxic = self._toxics.get(peer)
        delay_ms = 0.0
        if toxic is not None and (toxic.latency_ms or toxic.jitter_ms):
            jitter_ms = self._rng.uniform(-toxic.jitter_ms, toxic.jitter_ms)
            delay_ms = max(0.0, toxic.latency_ms + jitter_ms)
        if delay_ms <= 0.0:
            send(message)
            return
        if self._delayed >= DELAYED_MESSAGES_MAX:
            self.dropped_out += 1
            return
        self._delayed += 1
        asyncio.get_running_loop().call_later(delay_ms / 1000, self._deliver, send, message)

    def _deliver(self, send: Callable[[M], object], message: M) -> None:
        self._delayed -= 1
        send(message)
