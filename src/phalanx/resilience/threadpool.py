"""The thread-pool bulkhead: a dedicated, bounded set of worker threads per dependency.

This module owns :class:`ThreadPoolBulkhead` and :class:`ThreadPoolStatistics`. Where the
semaphore :class:`~phalanx.resilience.bulkhead.Bulkhead` limits calls made on the caller's own
thread, this one runs them on ``max_workers`` threads that belong to the dependency alone
("Payment service: 20 threads"), so a hung dependency can exhaust only its own pool. At most
``max_workers`` calls run and ``max_queue`` more wait inside the pool; a submission beyond
that raises :class:`~phalanx.errors.BulkheadFull` at once instead of growing a queue without
bound (the plain ``ThreadPoolExecutor`` queue has no limit).

A call that times out keeps running on its worker: Python cannot stop a thread. The caller
gets :class:`~phalanx.errors.Timeout` (outcome INDETERMINATE) and the worker stays busy until
the function returns, which is exactly the isolation a bulkhead is for. Workers are daemon
threads, so a call that never returns does not keep the process from exiting. Calls run in
a copy of the submitter's context: the propagated deadline and idempotency key follow them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import BulkheadFull, Timeout
from phalanx.resilience.config import parse_count, parse_duration_s
from phalanx.resilience.deadline import remaining_s
from phalanx.resilience.events import Emitter, Listener
from phalanx.resilience.workers import DaemonThreadPool

__all__ = ["QUEUE_MAX", "WORKERS_MAX", "ThreadPoolBulkhead", "ThreadPoolStatistics"]

#: Most worker threads one pool may own.
WORKERS_MAX = 1024
#: Most calls one pool may hold waiting for a worker.
QUEUE_MAX = 1_000_000

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ThreadPoolStatistics:
    """A snapshot of one thread-pool bulkhead.

    ``in_flight`` = ``running`` + ``queued``, never above ``max_workers + max_queue``.
    ``submitted`` counts accepted work, ``rejected`` refused work, ``completed`` work that
    returned and ``failed`` work that raised; ``cancelled`` work was cancelled before it ran.
    ``timed_out`` counts :meth:`ThreadPoolBulkhead.call` waits that gave up.
    """

    name: str
    max_workers: int
    max_queue: int
    running: int
    queued: int
    in_flight: int
    submitted: int
    rejected: int
    completed: int
    failed: int
    cancelled: int
    timed_out: int
    peak_in_flight: int


class ThreadPoolBulkhead:
    """Run calls to one dependency on its own ``max_workers`` threads, with a bounded queue.

    Parameters:
        max_workers: threads in the pool (>= 1); also the most calls running at once.
        max_queue: accepted calls allowed to wait for a free worker (>= 0).
        call_timeout_s: how long :meth:`call` and :meth:`acall` wait for the result, in
            seconds or a string such as ``"2s"``; ``None`` waits as long as the propagated
            deadline allows (forever if there is none).
        name: shown in thread names, errors, events and statistics.
        clock: stamps events.
        listeners: receive ``"rejected"`` and ``"timeout"`` events.
    """

    def __init__(
        self,
        *,
        max_workers: int = 10,
        max_queue: int = 0,
        call_timeout_s: float | str | None = None,
        name: str = "thread-pool",
        clock: Clock = SYSTEM_CLOCK,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.max_workers = parse_count("max_workers", max_workers, minimum=1)
        if self.max_workers > WORKERS_MAX:
            raise ValueError(f"max_workers: at most {WORKERS_MAX} (WORKERS_MAX), got {max_workers}")
        self.max_queue = parse_count("max_queue", max_queue, minimum=0)
        if self.max_queue > QUEUE_MAX:
            raise ValueError(f"max_queue: at most {QUEUE_MAX} (QUEUE_MAX), got {max_queue}")
        self.call_timeout_s = (
            None if call_timeout_s is None else parse_duration_s("call_timeout_s", call_timeout_s)
        )
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: must be a non-empty string, got {name!r}")
        self.name = name
        self._clock = clock
        self._emitter = Emitter("thread_pool", name, listeners)
        self._capacity = self.max_workers + self.max_queue
        self._executor = DaemonThreadPool(self.max_workers, name=f"phalanx-{name}")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._running = 0
        self._submitted = 0
        self._rejected = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._timed_out = 0
        self._peak_in_flight = 0
        self._shut_down = False

    def __repr__(self) -> str:
        return (
            f"ThreadPoolBulkhead(name={self.name!r}, max_workers={self.max_workers}, "
            f"max_queue={self.max_queue})"
        )

    def statistics(self) -> ThreadPoolStatistics:
        with self._lock:
            return ThreadPoolStatistics(
                name=self.name,
                max_workers=self.max_workers,
                max_queue=self.max_queue,
                running=self._running,
                queued=self._in_flight - self._running,
                in_flight=self._in_flight,
                submitted=self._submitted,
                rejected=self._rejected,
                completed=self._completed,
                failed=self._failed,
                cancelled=self._cancelled,
                timed_out=self._timed_out,
                peak_in_flight=self._peak_in_flight,
            )

    def add_listener(self, listener: Listener) -> None:
        self._emitter.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._emitter.remove_listener(listener)

    # -- submission -----------------------------------------------------------------------

    def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """The body every worker runs: counts the call as running, then frees its place."""
        with self._lock:
            self._running += 1
        ok = False
        try:
            result = fn(*args, **kwargs)
            ok = True
            return result
        finally:
            # Freed here, before the future resolves, so a caller that resubmits as soon as
            # it sees the result never finds its own finished call still holding the place.
            with self._lock:
                self._running -= 1
                self._in_flight -= 1
                if ok:
                    self._completed += 1
                else:
                    self._failed += 1

    def _on_done(self, future: concurrent.futures.Future[Any]) -> None:
        # Only a call cancelled before it started never ran ``_run``; free its place here.
        if future.cancelled():
            with self._lock:
                self._in_flight -= 1
                self._cancelled += 1

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on the pool and return its future.

        Raises :class:`~phalanx.errors.BulkheadFull` when ``max_workers + max_queue`` calls
        are already in flight, and ``RuntimeError`` after :meth:`shutdown`.
        """
        with self._lock:
            if self._shut_down:
                raise RuntimeError(f"thread pool {self.name!r} is shut down")
            full = self._in_flight >= self._capacity
            if full:
                self._rejected += 1
            else:
                self._in_flight += 1
                self._submitted += 1
                self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        if full:
            if self._emitter.active:
                self._emitter.emit("rejected", self._clock.now_s())
            raise BulkheadFull(
                f"thread pool {self.name!r} is full: {self.max_workers} running and "
                f"{self.max_queue} queued"
            )
        try:
            run_in_context: Callable[..., T] = contextvars.copy_context().run
            future: concurrent.futures.Future[T] = self._executor.submit(
                run_in_context, self._run, fn, *args, **kwargs
            )
        except BaseException:
            with self._lock:
                self._in_flight -= 1
                self._submitted -= 1
            raise
        future.add_done_callback(self._on_done)
        return future

    def _wait_budget_s(self) -> float | None:
        timeout_s = self.call_timeout_s
        left_s = remaining_s()
        if left_s is not None and (timeout_s is None or left_s < timeout_s):
            timeout_s = max(left_s, 0.0)
        return timeout_s

    def _timed_out_error(self, timeout_s: float | None) -> Timeout:
        with self._lock:
            self._timed_out += 1
        if self._emitter.active:
            self._emitter.emit("timeout", self._clock.now_s())
        return Timeout(f"thread pool {self.name!r}: no result within {timeout_s}s")

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the pool and wait for its result (or its exception).

        Waits at most ``call_timeout_s`` and the propagated deadline, then raises
        :class:`~phalanx.errors.Timeout`; a call that has not started by then is cancelled.
        """
        timeout_s = self._wait_budget_s()
        future = self.submit(fn, *args, **kwargs)
        # Wait, then look: a TimeoutError raised by ``fn`` itself must reach the caller as is.
        done, _ = concurrent.futures.wait((future,), timeout=timeout_s)
        if not done:
            future.cancel()
            raise self._timed_out_error(timeout_s)
        return future.result()

    async def acall(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the synchronous ``fn`` on the pool from async code and await its result.

        Cancelling the awaiting task cancels the call if it has not started yet.
        """
        timeout_s = self._wait_budget_s()
        future = asyncio.wrap_future(self.submit(fn, *args, **kwargs))
        scope = asyncio.timeout(timeout_s)
        try:
            async with scope:
                return await future
        except TimeoutError:
            if scope.expired():
                raise self._timed_out_error(timeout_s) from None
            raise

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate a plain function so each call runs on the pool (via :meth:`call`)."""
        if inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"{fn!r} is a coroutine function; a thread pool runs blocking functions. "
                "Use the semaphore Bulkhead to limit async calls."
            )

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return self.call(fn, *args, **kwargs)

        return wrapper

    # -- lifetime -------------------------------------------------------------------------

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """Refuse new work; optionally cancel queued calls; optionally wait for the rest."""
        with self._lock:
            self._shut_down = True
        self._executor.shutdown(wait=wait, cancel_futures=cancel_pending)

    def __enter__(self) -> ThreadPoolBulkhead:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown(wait=True)
