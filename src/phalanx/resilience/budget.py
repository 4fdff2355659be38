"""Limits on retrying as a fleet: retry budgets and client-side adaptive throttling.

Per-call retry limits are not enough: when a dependency fails, every client retries, and
three attempts per call triple the load on something already down. Two remedies:

:class:`RetryBudget` (Finagle and Envoy style)
    Retries may be at most ``ratio`` of the requests seen in the last ``window_s`` seconds,
    plus a floor of ``min_retries_per_s`` so a quiet client can still retry. Share one budget
    between every :class:`~phalanx.resilience.Retry` that talks to the same dependency.

:class:`AdaptiveThrottle` (Google SRE book, "Handling Overload")
    Each client tracks requests and accepts over a window and rejects new requests locally
    with probability ``max(0, (requests - k * accepts) / (requests + 1))``, so a backend that
    refuses most work stops receiving it, and traffic returns gradually as it recovers.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ParamSpec, TypeVar

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import Timeout, Unavailable
from phalanx.resilience.config import parse_ratio, require_non_negative, require_positive
from phalanx.resilience.events import Emitter, Listener, Observable
from phalanx.resilience.window import BucketWindow
from phalanx.resilience.wrapping import decorate

__all__ = ["AdaptiveThrottle", "RetryBudget", "RetryBudgetStatistics", "ThrottleStatistics"]

P = ParamSpec("P")
R = TypeVar("R")

_REQUESTS = 0
_RETRIES = 1
_ACCEPTS = 1


@dataclass(frozen=True, slots=True)
class RetryBudgetStatistics:
    requests_in_window: int
    retries_in_window: int
    balance: float
    retries_allowed: int
    retries_refused: int


class RetryBudget(Observable):
    """A token budget for retries shared by many callers.

    Every first attempt deposits (:meth:`deposit`); every retry must withdraw
    (:meth:`try_withdraw`), which succeeds while
    ``min_retries_per_s * window_s + ratio * requests - retries >= 1`` over the window.
    Thread-safe.
    """

    def __init__(
        self,
        *,
        ratio: float | str = 0.2,
        min_retries_per_s: float = 10.0,
        window_s: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "retry_budget",
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.ratio = parse_ratio("ratio", ratio)
        self.min_retries_per_s = require_non_negative("min_retries_per_s", min_retries_per_s)
        self.window_s = require_positive("window_s", window_s)
        self._clock = clock
        self._window = BucketWindow(self.window_s, counters=2)
        self._lock = threading.Lock()
        self._allowed = 0
        self._refused = 0
        self.name = name
        self._emitter = Emitter("retry_budget", name, listeners)

    def _balance(self, now_s: float) -> float:
        requests = self._window.total(_REQUESTS, now_s)
        retries = self._window.total(_RETRIES, now_s)
        return self.min_retries_per_s * self.window_s + self.ratio * requests - retries

    def deposit(self) -> None:
        """Record one request (a first attempt)."""
        now_s = self._clock.now_s()
        with self._lock:
            self._window.add(_REQUESTS, now_s)

    def try_withdraw(self) -> bool:
        """Take the budget for one retry; ``False`` means the caller must not retry."""
        now_s = self._clock.now_s()
        with self._lock:
            ok = self._balance(now_s) >= 1.0
            if ok:
                self._window.add(_RETRIES, now_s)
                self._allowed += 1
            else:
                self._refused += 1
        if not ok:
            self._emitter.emit("exhausted", now_s)
        return ok

    def statistics(self) -> RetryBudgetStatistics:
        now_s = self._clock.now_s()
        with self._lock:
            return RetryBudgetStatistics(
                requests_in_window=self._window.total(_REQUESTS, now_s),
                retries_in_window=self._window.total(_RETRIES, now_s),
                balance=self._balance(now_s),
                retries_allowed=self._allowed,
                retries_refused=self._refused,
            )


@dataclass(frozen=True, slots=True)
class ThrottleStatistics:
    requests_in_window: int
    accepts_in_window: int
    reject_probability: float
    rejected_locally: int


class AdaptiveThrottle(Observable):
    """Client-side adaptive throttling.

    ``overload_on`` names the exceptions that mean the backend refused the work (by default
    :class:`~phalanx.errors.Unavailable` and :class:`~phalanx.errors.Timeout`); any other
    outcome, including application errors, counts as accepted. Usable as a decorator on
    ``def`` and ``async def``, through :meth:`call` / :meth:`acall`, or by hand with
    :meth:`try_admit` and :meth:`record`.
    """

    def __init__(
        self,
        *,
        k: float = 2.0,
        window_s: float = 120.0,
        overload_on: tuple[type[BaseException], ...] = (Unavailable, Timeout),
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        name: str = "throttle",
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.k = require_positive("k", k)
        if self.k < 1.0:
            raise ValueError(f"k: must be >= 1 (1 rejects as soon as anything fails), got {k}")
        self.window_s = require_positive("window_s", window_s)
        if not isinstance(overload_on, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in overload_on
        ):
            raise ValueError(
                f"overload_on: expected a tuple of exception types, got {overload_on!r}"
            )
        self.overload_on = overload_on
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._window = BucketWindow(self.window_s, counters=2)
        self._lock = threading.Lock()
        self._rejected = 0
        self.name = name
        self._emitter = Emitter("throttle", name, listeners)

    def _probability(self, now_s: float) -> float:
        requests = self._window.total(_REQUESTS, now_s)
        accepts = self._window.total(_ACCEPTS, now_s)
        return max(0.0, (requests - self.k * accepts) / (requests + 1))

    def reject_probability(self) -> float:
        """The probability that the next request is rejected locally."""
        now_s = self._clock.now_s()
        with self._lock:
            return self._probability(now_s)

    def try_admit(self) -> bool:
        """Count a request and decide whether to send it. Raises nothing."""
        now_s = self._clock.now_s()
        with self._lock:
            reject = self._rng.random() < self._probability(now_s)
            self._window.add(_REQUESTS, now_s)
            if reject:
                self._rejected += 1
        if reject:
            self._emitter.emit("rejected", now_s)
        return not reject

    def record(self, error: BaseException | None) -> None:
        """Record the outcome of an admitted request."""
        if error is not None and isinstance(error, self.overload_on):
            return
        now_s = self._clock.now_s()
        with self._lock:
            self._window.add(_ACCEPTS, now_s)

    def _admit_or_raise(self) -> None:
        if not self.try_admit():
            raise Unavailable(f"{self.name}: rejected locally by adaptive throttling")

    def __enter__(self) -> AdaptiveThrottle:
        """Admit the block or raise :class:`~phalanx.errors.Unavailable`; record its outcome."""
        self._admit_or_raise()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.record(exc)

    async def __aenter__(self) -> AdaptiveThrottle:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.record(exc)

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        self._admit_or_raise()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.record(exc)
            raise
        self.record(None)
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        self._admit_or_raise()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.record(exc)
            raise
        self.record(None)
        return result

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        return decorate(fn, self.call, self.acall)

    def statistics(self) -> ThrottleStatistics:
        now_s = self._clock.now_s()
        with self._lock:
            return ThrottleStatistics(
                requests_in_window=self._window.total(_REQUESTS, now_s),
                accepts_in_window=self._window.total(_ACCEPTS, now_s),
                reject_probability=self._probability(now_s),
                rejected_locally=self._rejected,
            )
