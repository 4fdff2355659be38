"""The semaphore bulkhead: a limit on how many calls to one dependency run at once.

This module owns :class:`Bulkhead` and :class:`BulkheadStatistics`. A bulkhead admits at
most ``max_concurrent`` calls; up to ``max_queue`` more wait in FIFO order for at most
``max_wait_s`` (capped by the propagated deadline); anything beyond that fails fast with
:class:`~phalanx.errors.BulkheadFull`, so a slow dependency cannot soak up every caller.

Limits: ``max_concurrent`` at most :data:`CONCURRENT_CALLS_MAX`, ``max_queue`` at most
:data:`QUEUED_CALLS_MAX`, ``max_wait_s`` at most :data:`WAIT_S_MAX`.

One object serves threads and asyncio tasks, on any number of event loops, at the same time.
The state is a counter and a queue of waiters behind one ``threading.Lock`` that is held only
for a few bytecodes, never while the protected call runs. A thread waits on a lock of its own;
a task waits on a future of its own loop, woken with ``loop.call_soon_threadsafe``. A
finishing call hands its slot straight to the oldest waiter, so the count never goes above
the limit and newcomers cannot overtake the queue.

Waiting is measured in real time (threads and futures cannot wait on a virtual clock); the
injected clock only stamps events.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, ParamSpec, TypeVar, cast

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import BulkheadFull
from phalanx.resilience.config import parse_count, parse_duration_s
from phalanx.resilience.deadline import remaining_s
from phalanx.resilience.events import Emitter, Listener
from phalanx.resilience.wrapping import decorate_async

__all__ = [
    "CONCURRENT_CALLS_MAX",
    "QUEUED_CALLS_MAX",
    "WAIT_S_MAX",
    "Bulkhead",
    "BulkheadStatistics",
]

P = ParamSpec("P")
T = TypeVar("T")

#: Largest ``max_concurrent``: more concurrent calls to one dependency is a misconfiguration.
CONCURRENT_CALLS_MAX: Final = 100_000
#: Largest ``max_queue``: each waiter holds a lock or a future, so the queue costs memory.
QUEUED_CALLS_MAX: Final = 1_000_000
#: Longest ``max_wait_s`` (one day); also keeps every wait within what the OS timers accept.
WAIT_S_MAX: Final = 86_400.0

# Waiter states. Every transition happens with the bulkhead's lock held, which is what makes
# "was I handed a slot, or did I give up first?" a question with exactly one answer.
_WAITING = 0
_GRANTED = 1
_ABANDONED = 2


_Number = TypeVar("_Number", int, float)


def _at_most(field: str, value: _Number, limit: _Number, limit_name: str) -> _Number:
    if value > limit:
        raise ValueError(f"{field}: must be <= {limit} ({limit_name}), got {value}")
    return value


class _SyncWaiter:
    """A thread blocked until a slot is handed to it."""

    __slots__ = ("_gate", "state")

    def __init__(self) -> None:
        self.state = _WAITING
        # A plain lock taken up front is the cheapest one-shot signal threading offers.
        self._gate = threading.Lock()
        self._gate.acquire()

    def grant(self) -> bool:
        self.state = _GRANTED
        self._gate.release()
        return True

    def wait(self, timeout_s: float) -> None:
        self._gate.acquire(timeout=timeout_s)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _AsyncWaiter:
    """A task suspended on a future of its own event loop."""

    __slots__ = ("future", "loop", "state")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.state = _WAITING
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def grant(self) -> bool:
        try:
            self.loop.call_soon_threadsafe(_wake, self.future)
        except RuntimeError:
            # The loop is closed: nobody there will ever run, so the slot goes to the next one.
            self.state = _ABANDONED
            return False
        self.state = _GRANTED
        return True


_Waiter = _SyncWaiter | _AsyncWaiter


@dataclass(frozen=True, slots=True)
class BulkheadStatistics:
    """A consistent snapshot of one bulkhead.

    ``active`` calls hold a slot now and ``queued`` wait for one. ``admitted`` counts every
    call that got a slot (at once or after waiting); ``rejected`` every call refused with
    :class:`~phalanx.errors.BulkheadFull`, of which ``timed_out`` waited and gave up.
    ``cancelled`` counts waiting tasks (or interrupted threads) that left the queue.
    """

    name: str
    max_concurrent: int
    max_queue: int
    max_wait_s: float
    active: int
    queued: int
    admitted: int
    rejected: int
    timed_out: int
    cancelled: int
    peak_active: int
    peak_queued: int


class Bulkhead:
    """Admit at most ``max_concurrent`` calls at once; queue up to ``max_queue`` more.

    Parameters:
        max_concurrent: calls allowed to run at the same time (1..``CONCURRENT_CALLS_MAX``).
        max_queue: callers allowed to wait for a slot when all are taken
            (0..``QUEUED_CALLS_MAX``).
        max_wait_s: longest a caller waits in the queue, in seconds or a string such as
            ``"250ms"`` (at most ``WAIT_S_MAX``); ``0`` rejects immediately when no slot is
            free. The propagated
            deadline (:func:`phalanx.resilience.deadline.remaining_s`) shortens it further.
        name: shown in errors, events and statistics.
        clock: stamps events.
        listeners: receive ``"rejected"`` events, and per-call ``"admitted"`` and
            ``"released"`` events (those two cost nothing while no listener is registered).

    Use it as a decorator on ``def`` or ``async def``, through :meth:`call` and :meth:`acall`,
    or as ``with bulkhead:`` / ``async with bulkhead:``.
    """

    __slots__ = (
        "_admitted",
        "_cancelled",
        "_clock",
        "_emitter",
        "_lock",
        "_observed",
        "_peak_active",
        "_peak_queued",
        "_rejected",
        "_timed_out",
        "_waiters",
        "active",
        "max_concurrent",
        "max_queue",
        "max_wait_s",
        "name",
    )

    def __init__(
        self,
        *,
        max_concurrent: int = 10,
        max_queue: int = 0,
        max_wait_s: float | str = 0.0,
        name: str = "bulkhead",
        clock: Clock = SYSTEM_CLOCK,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.max_concurrent = _at_most(
            "max_concurrent",
            parse_count("max_concurrent", max_concurrent, minimum=1),
            CONCURRENT_CALLS_MAX,
            "CONCURRENT_CALLS_MAX",
        )
        self.max_queue = _at_most(
            "max_queue",
            parse_count("max_queue", max_queue, minimum=0),
            QUEUED_CALLS_MAX,
            "QUEUED_CALLS_MAX",
        )
        self.max_wait_s = _at_most(
            "max_wait_s",
            parse_duration_s("max_wait_s", max_wait_s, allow_zero=True),
            WAIT_S_MAX,
            "WAIT_S_MAX",
        )
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: must be a non-empty string, got {name!r}")
        self.name = name
        self._clock = clock
        self._emitter = Emitter("bulkhead", name, listeners)
        # A plain attribute, so the hot path tests a bool instead of calling a property.
        self._observed = self._emitter.active
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self.active = 0
        self._admitted = 0
        self._rejected = 0
        self._timed_out = 0
        self._cancelled = 0
        self._peak_active = 0
        self._peak_queued = 0

    def __repr__(self) -> str:
        return (
            f"Bulkhead(name={self.name!r}, max_concurrent={self.max_concurrent}, "
            f"max_queue={self.max_queue}, max_wait_s={self.max_wait_s})"
        )

    # -- listeners and statistics -------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        # Change and recompute under one lock: otherwise a concurrent remove_listener could
        # store its stale "no listeners" after this add and hide the new listener for good.
        with self._lock:
            self._emitter.add_listener(listener)
            self._observed = self._emitter.active

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            self._emitter.remove_listener(listener)
            self._observed = self._emitter.active

    def statistics(self) -> BulkheadStatistics:
        with self._lock:
            return BulkheadStatistics(
                name=self.name,
                max_concurrent=self.max_concurrent,
                max_queue=self.max_queue,
                max_wait_s=self.max_wait_s,
                active=self.active,
                queued=len(self._waiters),
                admitted=self._admitted,
                rejected=self._rejected,
                timed_out=self._timed_out,
                cancelled=self._cancelled,
                peak_active=self._peak_active,
                peak_queued=self._peak_queued,
            )

    # -- admission ----------------------------------------------------------------------

    def _try_admit_locked(self) -> bool:
        """Take a free slot if there is one and nobody is queued ahead. Lock must be held."""
        active = self.active
        if active < self.max_concurrent and not self._waiters:
            self.active = active + 1
            self._admitted += 1
            if active >= self._peak_active:
                self._peak_active = active + 1
            return True
        return False

    def _wait_budget_s(self) -> float:
        wait_s = self.max_wait_s
        if wait_s > 0:
            left_s = remaining_s()
            if left_s is not None and left_s < wait_s:
                wait_s = left_s
        return wait_s

    def _enqueue_locked(self, waiter: _Waiter) -> None:
        self._waiters.append(waiter)
        queued = len(self._waiters)
        self._peak_queued = max(self._peak_queued, queued)

    def _can_queue_locked(self, wait_s: float) -> bool:
        return wait_s > 0 and len(self._waiters) < self.max_queue

    def _reject(self, reason: str, wait_s: float) -> BulkheadFull:
        if self._emitter.active:
            self._emitter.emit("rejected", self._clock.now_s(), {"reason": reason})
        if reason == "timeout":
            detail = f"no slot freed within {wait_s:.3f}s"
        else:
            detail = f"{self.max_concurrent} running and {self.max_queue} queued"
        return BulkheadFull(f"bulkhead {self.name!r} is full: {detail}")

    def _admitted_event(self) -> None:
        self._emitter.emit("admitted", self._clock.now_s())

    def _enter(self) -> None:
        lock = self._lock
        lock.acquire()
        active = self.active
        if active < self.max_concurrent and not self._waiters:
            self.active = active + 1
            self._admitted += 1
            if active >= self._peak_active:
                self._peak_active = active + 1
            lock.release()
            if self._observed:
                self._admitted_event()
            return
        lock.release()
        self._enter_slow()

    def _enter_slow(self) -> None:
        wait_s = self._wait_budget_s()
        waiter: _SyncWaiter | None = None
        with self._lock:
            if self._try_admit_locked():
                full = False
            elif self._can_queue_locked(wait_s):
                full = False
                waiter = _SyncWaiter()
                self._enqueue_locked(waiter)
            else:
                full = True
                self._rejected += 1
        if full:
            # Raised outside the lock: listeners may call statistics().
            raise self._reject("full", wait_s)
        if waiter is not None:
            try:
                waiter.wait(wait_s)
            except BaseException:
                # Interrupted (KeyboardInterrupt in the main thread): leave without a slot.
                self._leave_queue(waiter, cancelled=True)
                raise
            if not self._leave_queue(waiter, cancelled=False):
                raise self._reject("timeout", wait_s)
        if self._observed:
            self._admitted_event()

    def _leave_queue(self, waiter: _Waiter, *, cancelled: bool) -> bool:
        """Settle a waiter that stopped waiting. True when it owns a slot (and keeps it).

        A cancelled waiter that was granted a slot at the last moment passes it on.
        """
        with self._lock:
            if waiter.state == _GRANTED:
                if not cancelled:
                    self._admitted += 1
                    return True
                granted = True
                self._cancelled += 1
            else:
                granted = False
                waiter.state = _ABANDONED
                self._waiters.remove(waiter)
                if cancelled:
                    self._cancelled += 1
                else:
                    self._rejected += 1
                    self._timed_out += 1
        if granted:
            self._exit()
        return False

    async def _aenter(self) -> None:
        with self._lock:
            admitted = self._try_admit_locked()
        if admitted:
            if self._observed:
                self._admitted_event()
            return
        wait_s = self._wait_budget_s()
        loop = asyncio.get_running_loop()
        waiter: _AsyncWaiter | None = None
        with self._lock:
            if self._try_admit_locked():
                full = False
            elif self._can_queue_locked(wait_s):
                full = False
                waiter = _AsyncWaiter(loop)
                self._enqueue_locked(waiter)
            else:
                full = True
                self._rejected += 1
        if full:
            raise self._reject("full", wait_s)
        if waiter is not None:
            try:
                async with asyncio.timeout(wait_s):
                    await waiter.future
            except TimeoutError:
                if not self._leave_queue(waiter, cancelled=False):
                    raise self._reject("timeout", wait_s) from None
            except BaseException:
                self._leave_queue(waiter, cancelled=True)
                raise
            else:
                # Woken by a hand-off: the slot is already counted in ``active``.
                with self._lock:
                    self._admitted += 1
        if self._observed:
            self._admitted_event()

    def _exit(self) -> None:
        lock = self._lock
        # acquire()/release() rather than ``with``: half the cost on the hot path, and the
        # guarded code cannot raise (hand-off errors are caught inside ``grant``).
        lock.acquire()
        if self._waiters:
            self._hand_off_locked()
        else:
            self.active -= 1
        lock.release()
        if self._observed:
            self._emitter.emit("released", self._clock.now_s())

    def _hand_off_locked(self) -> None:
        """Give the finishing call's slot to the oldest live waiter, or free it."""
        waiters = self._waiters
        while waiters:
            if waiters.popleft().grant():
                return
        self.active -= 1

    # -- the ways to use it -------------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` in a slot, waiting for one as configured."""
        self._enter()
        try:
            return fn(*args, **kwargs)
        finally:
            self._exit()

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` in a slot, waiting for one as configured."""
        await self._aenter()
        try:
            return await fn(*args, **kwargs)
        finally:
            self._exit()

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate a ``def`` or ``async def`` so every call goes through this bulkhead."""
        if inspect.iscoroutinefunction(fn):
            return cast(Callable[P, T], decorate_async(fn, self.acall))

        enter = self._enter
        leave = self._exit

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            enter()
            try:
                return fn(*args, **kwargs)
            finally:
                leave()

        return wrapper

    def __enter__(self) -> Bulkhead:
        self._enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit()

    async def __aenter__(self) -> Bulkhead:
        await self._aenter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit()
