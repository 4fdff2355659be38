"""Backoff schedules: how long to wait before each retry.

Pure functions of the retry number, the previous delay and an RNG, so they are easy to test
and to reason about. ``retry_index`` counts retries from 0: the wait before the first retry
is ``base_delay_s`` (before jitter), then it doubles, capped at ``max_delay_s``. With
``base_delay_s=1`` and no jitter this is the guide's schedule: 1 s, 2 s, 4 s, 8 s, 16 s.

Jitter modes (see "Exponential Backoff And Jitter", AWS Architecture Blog, 2015):

``full`` (default)
    uniform(0, capped): the best at spreading a thundering herd.
``equal``
    capped/2 + uniform(0, capped/2): never waits less than half the schedule.
``decorrelated``
    min(max, uniform(base, previous * 3)): grows from the previous delay instead of the count.
``proportional``
    the guide's formula, ``base * 2**retry_index * (1 + uniform(0, 0.1))``, capped.
``none``
    the plain schedule; use only when a single client retries.
"""

from __future__ import annotations

import math
import random
from typing import Final

from phalanx.resilience.config import require_non_negative, require_positive

__all__ = ["JITTER_MODES", "Backoff"]

JITTER_MODES: Final = ("full", "equal", "decorrelated", "proportional", "none")
# Exponents beyond this would overflow float for any sane base; the cap applies long before.
_EXPONENT_MAX: Final = 62
MULTIPLIER_MAX: Final = 1000.0


class Backoff:
    """An exponential backoff schedule with a jitter mode. Immutable and thread-safe."""

    __slots__ = ("_exponent_max", "base_delay_s", "jitter", "max_delay_s", "multiplier")

    def __init__(
        self,
        *,
        base_delay_s: float = 0.1,
        max_delay_s: float = 5.0,
        multiplier: float = 2.0,
        jitter: str = "full",
    ) -> None:
        self.base_delay_s = require_non_negative("base_delay_s", base_delay_s)
        self.max_delay_s = require_non_negative("max_delay_s", max_delay_s)
        if self.max_delay_s < self.base_delay_s:
            raise ValueError(
                f"max_delay_s: must be >= base_delay_s ({base_delay_s}), got {max_delay_s}"
            )
        self.multiplier = require_positive("multiplier", multiplier)
        if not 1.0 <= self.multiplier <= MULTIPLIER_MAX:
            raise ValueError(
                f"multiplier: must be between 1 and {MULTIPLIER_MAX}, got {multiplier}"
            )
        if jitter not in JITTER_MODES:
            raise ValueError(f"jitter: unknown mode {jitter!r}; expected one of {JITTER_MODES}")
        self.jitter = jitter
        # Past this exponent the schedule is at its cap; stopping there keeps the power from
        # overflowing a float whatever the multiplier.
        if self.base_delay_s == 0 or self.multiplier == 1.0:
            self._exponent_max = 0
        else:
            log_ratio = math.log(self.max_delay_s) - math.log(self.base_delay_s)
            steps = math.ceil(log_ratio / math.log(self.multiplier)) + 1
            self._exponent_max = min(_EXPONENT_MAX, steps)

    def schedule_s(self, retry_index: int) -> float:
        """The un-jittered, capped delay before retry number ``retry_index`` (from 0)."""
        if retry_index < 0:
            raise ValueError(f"retry_index: must be >= 0, got {retry_index}")
        exponent = min(retry_index, self._exponent_max)
        return min(self.max_delay_s, self.base_delay_s * self.multiplier**exponent)

    def delay_s(self, retry_index: int, previous_delay_s: float, rng: random.Random) -> float:
        """The delay before retry ``retry_index``, always within ``[0, max_delay_s]``."""
        capped = self.schedule_s(retry_index)
        mode = self.jitter
        if mode == "full":
            return rng.uniform(0.0, capped)
        if mode == "equal":
            return capped / 2 + rng.uniform(0.0, capped / 2)
        if mode == "decorrelated":
            low = self.base_delay_s
            high = max(low, (previous_delay_s or low) * 3)
            return min(self.max_delay_s, rng.uniform(low, high))
        if mode == "proportional":
            return min(self.max_delay_s, capped * (1.0 + rng.uniform(0.0, 0.1)))
        return capped

    def __repr__(self) -> str:
        return (
            f"Backoff(base_delay_s={self.base_delay_s}, max_delay_s={self.max_delay_s}, "
            f"multiplier={self.multiplier}, jitter={self.jitter!r})"
        )
