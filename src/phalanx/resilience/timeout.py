"""Time limits on calls: the guide's "every external call needs a timeout".

:class:`TimeLimiter` bounds one call to ``timeout_s`` seconds, or less when the caller's
propagated deadline (:mod:`.deadline`) is sooner, and publishes that bound as the deadline of
everything called inside.

* Async calls are cancelled at the limit and raise :class:`~phalanx.errors.Timeout`
  (:class:`~phalanx.errors.DeadlineExceeded` when the caller's deadline was the binding one).
* Sync calls cannot be interrupted in Python. ``sync_mode="thread"`` (default) runs the call
  on a bounded pool of worker threads and stops waiting at the limit: the caller gets
  :class:`~phalanx.errors.Timeout` on time, while the abandoned call finishes in the
  background and keeps its worker until then. When every worker is held,
  new calls are refused with :class:`~phalanx.errors.BulkheadFull` rather than queued.
  Workers are daemon threads: a call that never returns does not block process exit.
  ``sync_mode="cooperative"`` runs the call in the caller's thread and only publishes the
  deadline; nested Phalanx calls and :func:`~phalanx.resilience.deadline.remaining_s` obey
  it. Overruns are counted in ``statistics().overruns``.

The outcome of a timed-out call is INDETERMINATE: it may still take effect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import BulkheadFull, DeadlineExceeded, Timeout
from phalanx.resilience.config import parse_count, parse_duration_s
from phalanx.resilience.deadline import _DEADLINE, Deadline, tighter
from phalanx.resilience.events import Emitter, Listener, Observable
from phalanx.resilience.stats import Counter
from phalanx.resilience.workers import DaemonThreadPool
from phalanx.resilience.wrapping import decorate

__all__ = ["SYNC_MODES", "TimeLimiter", "TimeLimiterStatistics"]

P = ParamSpec("P")
R = TypeVar("R")

SYNC_MODES: Final = ("thread", "cooperative")
WORKERS_MAX_LIMIT: Final = 1024
TIMEOUT_S_MAX: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class TimeLimiterStatistics:
    calls: int
    timeouts: int
    overruns: int
    workers_busy: int
    rejected: int


class TimeLimiter(Observable):
    """Bound calls to ``timeout_s`` seconds. See the module documentation for sync calls."""

    def __init__(
        self,
        timeout_s: float | str,
        *,
        sync_mode: str = "thread",
        workers_max: int = 16,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "timeout",
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.timeout_s = parse_duration_s("timeout_s", timeout_s, maximum_s=TIMEOUT_S_MAX)
        if sync_mode not in SYNC_MODES:
            raise ValueError(f"sync_mode: unknown mode {sync_mode!r}; expected one of {SYNC_MODES}")
        self.sync_mode = sync_mode
        self.workers_max = parse_count("workers_max", workers_max)
        if self.workers_max > WORKERS_MAX_LIMIT:
            raise ValueError(f"workers_max: at most {WORKERS_MAX_LIMIT}, got {workers_max}")
        self.name = name
        self._emitter = Emitter("timeout", name, listeners)
        self._clock = clock
        self._calls = Counter()
        self._lock = threading.Lock()
        self._timeouts = 0
        self._overruns = 0
        self._rejected = 0
        self._busy = 0
        self._executor: DaemonThreadPool | None = None
        self._scopes: contextvars.ContextVar[list[tuple[Any, Any]]] = contextvars.ContextVar(
            f"phalanx_time_limiter_{id(self)}"
        )

    # -- helpers ------------------------------------------------------------------------

    def _bound(self) -> tuple[Deadline, bool, float]:
        """This call's deadline, whether the caller's deadline is the binding one, and the
        seconds left until it."""
        clock = self._clock
        now_s = clock.now_s()
        own_at_s = now_s + self.timeout_s
        current = _DEADLINE.get()
        if current is None or (current[1] is clock and current[0] >= own_at_s):
            return (own_at_s, clock), False, self.timeout_s
        value = tighter(self.timeout_s, clock)
        return value, value[0] < own_at_s, value[0] - value[1].now_s()

    def _expired(self, limit_s: float, inherited: bool) -> Timeout:
        with self._lock:
            self._timeouts += 1
        self._emitter.emit("timeout", self._clock.now_s(), {"limit_s": limit_s})
        if inherited:
            return DeadlineExceeded(f"{self.name}: the caller's deadline ({limit_s:.3f}s) passed")
        return Timeout(f"{self.name}: no answer within {limit_s:.3f}s")

    def _pool(self) -> DaemonThreadPool:
        with self._lock:
            if self._executor is None:
                self._executor = DaemonThreadPool(self.workers_max, name=f"phalanx-{self.name}")
            return self._executor

    # -- sync ---------------------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn`` with this limit (see the module documentation for sync semantics)."""
        self._calls.incr()
        deadline, inherited, limit_s = self._bound()
        if limit_s <= 0:
            raise self._expired(0.0, inherited)
        if self.sync_mode == "cooperative":
            token = _DEADLINE.set(deadline)
            try:
                return fn(*args, **kwargs)
            finally:
                _DEADLINE.reset(token)
                if deadline[1].now_s() > deadline[0]:
                    with self._lock:
                        self._overruns += 1
        return self._call_in_thread(fn, args, kwargs, deadline, limit_s, inherited)

    def _call_in_thread(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: Deadline,
        limit_s: float,
        inherited: bool,
    ) -> R:
        with self._lock:
            if self._busy >= self.workers_max:
                self._rejected += 1
                raise BulkheadFull(
                    f"{self.name}: all {self.workers_max} workers are busy "
                    "(calls that timed out still hold theirs)"
                )
            self._busy += 1
        context = contextvars.copy_context()
        context.run(_DEADLINE.set, deadline)
        future = self._pool().submit(context.run, fn, *args, **kwargs)
        future.add_done_callback(self._release)
        # Wait, then look: a TimeoutError raised by ``fn`` itself must reach the caller as is.
        done, _ = concurrent.futures.wait((future,), timeout=limit_s)
        if not done:
            raise self._expired(limit_s, inherited)
        return future.result()

    def _release(self, _future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._busy -= 1

    # -- async --------------------------------------------------------------------------

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn`` and cancel it at the limit."""
        self._calls.incr()
        deadline, inherited, limit_s = self._bound()
        token = _DEADLINE.set(deadline)
        scope = asyncio.timeout(max(limit_s, 0.0))
        try:
            async with scope:
                return await fn(*args, **kwargs)
        except TimeoutError:
            if scope.expired():
                raise self._expired(limit_s, inherited) from None
            raise
        finally:
            _DEADLINE.reset(token)

    # -- decorator and context managers -------------------------------------------------

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        return decorate(fn, self.call, self.acall)

    def __enter__(self) -> Deadline:
        """Publish the limit as a cooperative deadline for the block (sync code)."""
        self._calls.incr()
        deadline, _, _ = self._bound()
        token = _DEADLINE.set(deadline)
        self._scopes.set([*self._scopes.get([]), (token, deadline)])
        return deadline

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scopes = self._scopes.get()
        token, deadline = scopes[-1]
        self._scopes.set(scopes[:-1])
        _DEADLINE.reset(token)
        if deadline[1].now_s() > deadline[0]:
            with self._lock:
                self._overruns += 1

    async def __aenter__(self) -> Deadline:
        """Cancel the block at the limit (async code)."""
        self._calls.incr()
        deadline, inherited, limit_s = self._bound()
        scope = asyncio.timeout(max(limit_s, 0.0))
        token = _DEADLINE.set(deadline)
        await scope.__aenter__()
        self._scopes.set([*self._scopes.get([]), (token, (scope, limit_s, inherited))])
        return deadline

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        scopes = self._scopes.get()
        token, (scope, limit_s, inherited) = scopes[-1]
        self._scopes.set(scopes[:-1])
        _DEADLINE.reset(token)
        try:
            await scope.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if scope.expired():
                raise self._expired(limit_s, inherited) from None
            raise
        return False

    # -- lifecycle and observation ------------------------------------------------------

    def shutdown(self, *, wait: bool = False) -> None:
        """Release the worker threads (calls still running finish in the background)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)

    def statistics(self) -> TimeLimiterStatistics:
        with self._lock:
            return TimeLimiterStatistics(
                calls=self._calls.value,
                timeouts=self._timeouts,
                overruns=self._overruns,
                workers_busy=self._busy,
                rejected=self._rejected,
            )
