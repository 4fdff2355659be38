"""Rate limiters: how many calls per second may go to a dependency.

This module owns the :class:`RateLimiter` interface and its two algorithms:

- :class:`TokenBucket` keeps a bucket of up to ``burst`` tokens refilled at ``rate_per_s``;
  a call takes ``n`` tokens.
- :class:`Gcra` (generic cell rate algorithm) keeps one number, the theoretical arrival time
  of the next call, and admits a call if it is not more than ``burst`` emission intervals
  early. It admits exactly the same calls as the token bucket with no refill arithmetic.

Both guarantee that over any interval of ``t`` seconds they admit at most
``burst + rate_per_s * t`` permits. The interface is small:

- ``try_acquire(n=1) -> bool`` never blocks;
- ``acquire(n=1, max_wait_s=None)`` and ``await aacquire(...)`` wait with the injected clock's
  ``sleep``/``asleep`` for at most ``max_wait_s`` (the limiter's default when ``None``, and
  never past the propagated deadline), then raise :class:`~phalanx.errors.RateLimited` whose
  ``retry_after_s`` says when the permits would be available;
- ``call``/``acall`` and use as a decorator acquire one permit, then call.

Limits: ``rate_per_s`` between :data:`RATE_PER_S_MIN` and :data:`RATE_PER_S_MAX`, ``burst``
at most :data:`BURST_PERMITS_MAX`, ``max_wait_s`` (the default and the per-call one) at most
:data:`WAIT_S_MAX`.

A waiting caller reserves its permits before it sleeps, so callers are served in arrival
order and the limit holds even when many threads wait at once. A caller cancelled while
sleeping forfeits its reservation: the limiter errs on the side of admitting less.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, Final, ParamSpec, TypeVar

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import RateLimited
from phalanx.resilience.config import parse_count, parse_duration_s, require_positive
from phalanx.resilience.deadline import remaining_s
from phalanx.resilience.events import Emitter, Listener
from phalanx.resilience.wrapping import decorate

__all__ = [
    "BURST_PERMITS_MAX",
    "RATE_PER_S_MAX",
    "RATE_PER_S_MIN",
    "WAIT_S_MAX",
    "Gcra",
    "RateLimiter",
    "RateLimiterStatistics",
    "TokenBucket",
]

P = ParamSpec("P")
T = TypeVar("T")

#: Fastest rate: a million permits a second; beyond that, count in batches with ``n``.
RATE_PER_S_MAX: Final = 1_000_000.0
#: Slowest rate: one permit in about 11.6 days; slower rates overflow the emission interval.
RATE_PER_S_MIN: Final = 1e-6
#: Largest ``burst``: tokens are floats, and their sums must stay exact to well below one.
BURST_PERMITS_MAX: Final = 1_000_000
#: Longest ``max_wait_s`` (one day), for the limiter's default and for a single call.
WAIT_S_MAX: Final = 86_400.0

# Float slack so that, e.g., ten refills of 0.1 s at 10/s add up to one whole token.
_EPSILON = 1e-9


def _wait_s_at_most_max(wait_s: float) -> float:
    if wait_s > WAIT_S_MAX:
        raise ValueError(f"max_wait_s: must be <= {WAIT_S_MAX} (WAIT_S_MAX), got {wait_s}")
    return wait_s


@dataclass(frozen=True, slots=True)
class RateLimiterStatistics:
    """A snapshot of one rate limiter.

    ``available`` is the permits that could be taken right now without waiting (negative
    while waiting callers hold reservations). ``admitted`` counts acquisitions and
    ``permits`` the permits they took; ``waited`` counts acquisitions that had to sleep,
    for ``wait_s_total`` seconds in all; ``rejected`` counts refusals.
    """

    name: str
    algorithm: str
    rate_per_s: float
    burst: int
    available: float
    admitted: int
    permits: int
    rejected: int
    waited: int
    wait_s_total: float


class RateLimiter(abc.ABC):
    """The interface and shared machinery of the rate limiters.

    Parameters:
        rate_per_s: sustained permits per second (``RATE_PER_S_MIN``..``RATE_PER_S_MAX``).
        burst: most permits available at once after a quiet period
            (1..``BURST_PERMITS_MAX``); also the largest ``n`` a single acquisition may ask
            for.
        max_wait_s: default longest wait of :meth:`acquire`, :meth:`aacquire`, :meth:`call`,
            :meth:`acall` and the decorator, in seconds or a string such as ``"500ms"`` (at
            most ``WAIT_S_MAX``); ``0`` never waits.
        name: shown in errors, events and statistics.
        clock: reads time and performs the waits (use :class:`phalanx.clock.ManualClock` in
            tests).
        listeners: receive ``"rejected"`` events and, when registered, ``"waited"`` events.
    """

    algorithm: ClassVar[str]

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int = 1,
        max_wait_s: float | str = 1.0,
        name: str = "rate-limiter",
        clock: Clock = SYSTEM_CLOCK,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.rate_per_s = require_positive("rate_per_s", rate_per_s)
        if not RATE_PER_S_MIN <= self.rate_per_s <= RATE_PER_S_MAX:
            raise ValueError(
                f"rate_per_s: must be between {RATE_PER_S_MIN} (RATE_PER_S_MIN) and "
                f"{RATE_PER_S_MAX} (RATE_PER_S_MAX), got {rate_per_s!r}"
            )
        self.burst = parse_count("burst", burst, minimum=1)
        if self.burst > BURST_PERMITS_MAX:
            raise ValueError(
                f"burst: must be <= {BURST_PERMITS_MAX} (BURST_PERMITS_MAX), got {self.burst}"
            )
        self.max_wait_s = _wait_s_at_most_max(
            parse_duration_s("max_wait_s", max_wait_s, allow_zero=True)
        )
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: must be a non-empty string, got {name!r}")
        self.name = name
        self._clock = clock
        self._emitter = Emitter("rate_limiter", name, listeners)
        self._lock = threading.Lock()
        self._admitted = 0
        self._permits = 0
        self._rejected = 0
        self._waited = 0
        self._wait_s_total = 0.0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, rate_per_s={self.rate_per_s}, "
            f"burst={self.burst})"
        )

    # -- what each algorithm provides -------------------------------------------------------

    @abc.abstractmethod
    def _reserve_locked(self, n: int, now_s: float, max_wait_s: float) -> tuple[bool, float]:
        """Reserve ``n`` permits if they are available within ``max_wait_s``.

        Returns ``(True, wait_s)`` after reserving, or ``(False, retry_after_s)`` without
        changing state. Called with the lock held.
        """

    @abc.abstractmethod
    def _available_locked(self, now_s: float) -> float:
        """Permits that could be taken at ``now_s`` without waiting. Lock held."""

    # -- the shared interface ---------------------------------------------------------------

    def _check_n(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: must be an integer >= 1, got {n!r}")
        if n > self.burst:
            raise ValueError(f"n: {n} permits can never be granted with burst={self.burst}")

    def _budget_s(self, max_wait_s: float | None) -> float:
        if max_wait_s is None:
            budget_s = self.max_wait_s
        else:
            budget_s = require_positive("max_wait_s", max_wait_s) if max_wait_s else 0.0
            _wait_s_at_most_max(budget_s)
        left_s = remaining_s()
        if left_s is not None and left_s < budget_s:
            budget_s = max(left_s, 0.0)
        return budget_s

    def _reserve(self, n: int, max_wait_s: float) -> float:
        """Reserve ``n`` permits; return how long to wait for them or raise RateLimited."""
        with self._lock:
            now_s = self._clock.now_s()
            ok, wait_s = self._reserve_locked(n, now_s, max_wait_s)
            if ok:
                self._admitted += 1
                self._permits += n
                if wait_s > 0:
                    self._waited += 1
                    self._wait_s_total += wait_s
            else:
                self._rejected += 1
        if not ok:
            if self._emitter.active:
                self._emitter.emit("rejected", now_s, {"n": n, "retry_after_s": wait_s})
            raise RateLimited(
                f"rate limiter {self.name!r}: {n} permit(s) available in {wait_s:.3f}s, "
                f"more than the {max_wait_s:.3f}s allowed to wait",
                retry_after_s=wait_s,
            )
        if wait_s > 0 and self._emitter.active:
            self._emitter.emit("waited", now_s, {"n": n, "wait_s": wait_s})
        return wait_s

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` permits if they are available now; never blocks."""
        self._check_n(n)
        with self._lock:
            ok, retry_after_s = self._reserve_locked(n, self._clock.now_s(), 0.0)
            if ok:
                self._admitted += 1
                self._permits += n
            else:
                self._rejected += 1
        if not ok and self._emitter.active:
            self._emitter.emit(
                "rejected", self._clock.now_s(), {"n": n, "retry_after_s": retry_after_s}
            )
        return ok

    def acquire(self, n: int = 1, *, max_wait_s: float | None = None) -> float:
        """Take ``n`` permits, sleeping up to ``max_wait_s`` for them; return seconds slept.

        Raises :class:`~phalanx.errors.RateLimited` (with ``retry_after_s``) when they would
        not be available in time.
        """
        self._check_n(n)
        wait_s = self._reserve(n, self._budget_s(max_wait_s))
        if wait_s > 0:
            self._clock.sleep(wait_s)
        return wait_s

    async def aacquire(self, n: int = 1, *, max_wait_s: float | None = None) -> float:
        """Like :meth:`acquire`, suspending the task instead of blocking the thread."""
        self._check_n(n)
        wait_s = self._reserve(n, self._budget_s(max_wait_s))
        if wait_s > 0:
            await self._clock.asleep(wait_s)
        return wait_s

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Acquire one permit (waiting up to the default ``max_wait_s``), then call ``fn``."""
        self.acquire()
        return fn(*args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Acquire one permit without blocking the loop, then await ``fn``."""
        await self.aacquire()
        return await fn(*args, **kwargs)

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate a ``def`` or ``async def``: each call takes one permit first."""
        return decorate(fn, self.call, self.acall)

    def statistics(self) -> RateLimiterStatistics:
        with self._lock:
            return RateLimiterStatistics(
                name=self.name,
                algorithm=self.algorithm,
                rate_per_s=self.rate_per_s,
                burst=self.burst,
                available=self._available_locked(self._clock.now_s()),
                admitted=self._admitted,
                permits=self._permits,
                rejected=self._rejected,
                waited=self._waited,
                wait_s_total=self._wait_s_total,
            )

    def add_listener(self, listener: Listener) -> None:
        self._emitter.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._emitter.remove_listener(listener)


class TokenBucket(RateLimiter):
    """A bucket of ``burst`` tokens, refilled continuously at ``rate_per_s``; starts full.

    A caller allowed to wait takes its tokens at once, leaving the bucket in debt; the debt
    is what makes later callers wait behind it.
    """

    algorithm = "token_bucket"

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int = 1,
        max_wait_s: float | str = 1.0,
        name: str = "token-bucket",
        clock: Clock = SYSTEM_CLOCK,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        super().__init__(
            rate_per_s=rate_per_s,
            burst=burst,
            max_wait_s=max_wait_s,
            name=name,
            clock=clock,
            listeners=listeners,
        )
        self._tokens = float(self.burst)
        self._refilled_at_s = clock.now_s()

    def _refill_locked(self, now_s: float) -> float:
        elapsed_s = now_s - self._refilled_at_s
        if elapsed_s > 0:
            self._tokens = min(float(self.burst), self._tokens + elapsed_s * self.rate_per_s)
            self._refilled_at_s = now_s
        return self._tokens

    def _reserve_locked(self, n: int, now_s: float, max_wait_s: float) -> tuple[bool, float]:
        tokens = self._refill_locked(now_s)
        missing = n - tokens
        if missing <= _EPSILON:
            self._tokens = tokens - n
            return True, 0.0
        wait_s = missing / self.rate_per_s
        if wait_s <= max_wait_s:
            self._tokens = tokens - n
            return True, wait_s
        return False, wait_s

    def _available_locked(self, now_s: float) -> float:
        return self._refill_locked(now_s)


class Gcra(RateLimiter):
    """The generic cell rate algorithm: one timestamp instead of a token count.

    Each permit is worth an emission interval of ``1 / rate_per_s`` seconds. The state is
    the theoretical arrival time (TAT): when the limiter would be idle again if it admitted
    nothing more. A request for ``n`` permits is admitted now if pushing the TAT forward by
    ``n`` intervals keeps it within ``burst`` intervals of now; otherwise the excess is how
    long it would have to wait.
    """

    algorithm = "gcra"

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int = 1,
        max_wait_s: float | str = 1.0,
        name: str = "gcra",
        clock: Clock = SYSTEM_CLOCK,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        super().__init__(
            rate_per_s=rate_per_s,
            burst=burst,
            max_wait_s=max_wait_s,
            name=name,
            clock=clock,
            listeners=listeners,
        )
        self._interval_s = 1.0 / self.rate_per_s
        self._tolerance_s = self.burst * self._interval_s
        self._tat_s = clock.now_s()

    def _reserve_locked(self, n: int, now_s: float, max_wait_s: float) -> tuple[bool, float]:
        new_tat_s = max(self._tat_s, now_s) + n * self._interval_s
        wait_s = new_tat_s - now_s - self._tolerance_s
        if wait_s <= _EPSILON * self._interval_s:
            self._tat_s = new_tat_s
            return True, 0.0
        if wait_s <= max_wait_s:
            self._tat_s = new_tat_s
            return True, wait_s
        return False, wait_s

    def _available_locked(self, now_s: float) -> float:
        return (self._tolerance_s - (max(self._tat_s, now_s) - now_s)) / self._interval_s
