"""A bounded pool of reusable resources: the connection-pool limit of a bulkhead.

This module owns :class:`BoundedPool` and :class:`PoolStatistics`. A pool creates resources
(connections, sessions, clients) lazily with your ``factory``, never more than ``max_size``
at once, keeps at most ``max_idle`` of them for reuse, and lends them out with
``with pool.acquire() as conn:`` or ``async with pool.aacquire() as conn:``. When all are
lent, a caller waits up to ``acquire_timeout_s`` (and the propagated deadline), then gets
:class:`~phalanx.errors.BulkheadFull`; waiters are served first come, first served, from
threads and asyncio tasks alike.

The limit itself is a :class:`~phalanx.resilience.bulkhead.Bulkhead` of ``max_size`` slots:
holding a slot is the right to hold one resource. A block that raises one of ``broken_on``
(by default any exception, because a connection interrupted mid-protocol is in an unknown
state), is cancelled, or calls :meth:`BoundedPool.discard` returns its resource broken: it is
closed instead of reused, and its slot lets the next caller create a fresh one.

Errors: ``acquire`` raises :class:`~phalanx.errors.BulkheadFull` when no resource frees up in
time, ``RuntimeError`` once the pool is closed, and whatever the factory raises.
:meth:`BoundedPool.discard` of a resource that is not lent out is a ``ValueError``. A ``close``
callback that raises never hides the block's own exception: the failure is attached to it as
a note, or logged on ``phalanx.resilience.pool`` when the block succeeded.
:meth:`BoundedPool.close` closes every idle resource even if some fail, then raises an
``ExceptionGroup`` of the failures.

Limits: ``max_size`` at most :data:`POOL_SIZE_MAX`, ``max_waiting`` at most
:data:`WAITING_CALLERS_MAX`, ``acquire_timeout_s`` at most :data:`ACQUIRE_TIMEOUT_S_MAX`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Generic, TypeVar

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.resilience.bulkhead import (
    CONCURRENT_CALLS_MAX,
    QUEUED_CALLS_MAX,
    WAIT_S_MAX,
    Bulkhead,
)
from phalanx.resilience.config import parse_count, parse_duration_s
from phalanx.resilience.events import Listener

__all__ = [
    "ACQUIRE_TIMEOUT_S_MAX",
    "POOL_SIZE_MAX",
    "WAITING_CALLERS_MAX",
    "BoundedPool",
    "PoolStatistics",
]

R = TypeVar("R")

#: Largest ``max_size``: the bulkhead's limit, since every resource is one of its slots.
POOL_SIZE_MAX: Final = CONCURRENT_CALLS_MAX
#: Largest ``max_waiting``: the bulkhead's queue limit.
WAITING_CALLERS_MAX: Final = QUEUED_CALLS_MAX
#: Longest ``acquire_timeout_s`` (one day).
ACQUIRE_TIMEOUT_S_MAX: Final = WAIT_S_MAX

_log = logging.getLogger("phalanx.resilience.pool")


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of one pool.

    ``in_use`` resources are lent out and ``idle`` ones wait for reuse (``in_use + idle``
    never exceeds ``max_size``); ``waiting`` callers are queued for one. ``created`` and
    ``closed`` count resources over the pool's life (``closed`` only those whose ``close``
    returned), ``close_failures`` those whose ``close`` raised, and ``broken`` those dropped
    because their block failed or discarded them. ``acquired`` counts successful
    acquisitions, ``rejected`` callers that got :class:`~phalanx.errors.BulkheadFull`.
    """

    name: str
    max_size: int
    max_idle: int
    in_use: int
    idle: int
    waiting: int
    created: int
    closed: int
    broken: int
    acquired: int
    rejected: int
    peak_in_use: int
    close_failures: int


def _ignore(_resource: object) -> None:
    return None


class BoundedPool(Generic[R]):
    """Lend out at most ``max_size`` resources made by ``factory``.

    Parameters:
        factory: makes a new resource; called lazily, only when no idle one is available.
        max_size: most resources in existence at once (1..``POOL_SIZE_MAX``).
        max_idle: most idle resources kept for reuse (0..max_size, default ``max_size``);
            extra ones are closed when returned.
        acquire_timeout_s: longest a caller waits for a resource, in seconds or a string
            such as ``"500ms"`` (at most ``ACQUIRE_TIMEOUT_S_MAX``); ``0`` fails at once when
            all are in use.
        max_waiting: most callers waiting at once (0..``WAITING_CALLERS_MAX``); more are
            rejected at once.
        close: releases a resource the pool drops (broken, surplus idle, or pool closed).
            If it raises, the resource is dropped all the same and counted in
            ``close_failures``.
        afactory: used by :meth:`aacquire` instead of ``factory`` when given, so creating a
            connection does not block the event loop.
        broken_on: exception types which, raised inside the block, mean the resource must
            not be reused. Cancellation and other ``BaseException`` always do.
        name, clock, listeners: as for :class:`~phalanx.resilience.bulkhead.Bulkhead`.
    """

    def __init__(
        self,
        factory: Callable[[], R],
        *,
        max_size: int = 10,
        max_idle: int | None = None,
        acquire_timeout_s: float | str = 1.0,
        max_waiting: int = 100,
        close: Callable[[R], object] | None = None,
        afactory: Callable[[], Awaitable[R]] | None = None,
        broken_on: tuple[type[BaseException], ...] = (Exception,),
        name: str = "pool",
        clock: Clock = SYSTEM_CLOCK,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        if not callable(factory):
            raise ValueError(f"factory: must be callable, got {factory!r}")
        self.max_size = parse_count("max_size", max_size, minimum=1)
        if self.max_size > POOL_SIZE_MAX:
            raise ValueError(
                f"max_size: must be <= {POOL_SIZE_MAX} (POOL_SIZE_MAX), got {self.max_size}"
            )
        self.max_idle = (
            self.max_size if max_idle is None else parse_count("max_idle", max_idle, minimum=0)
        )
        if self.max_idle > self.max_size:
            raise ValueError(
                f"max_idle: must be <= max_size ({self.max_size}), got {self.max_idle}"
            )
        self.acquire_timeout_s = parse_duration_s(
            "acquire_timeout_s", acquire_timeout_s, allow_zero=True
        )
        if self.acquire_timeout_s > ACQUIRE_TIMEOUT_S_MAX:
            raise ValueError(
                f"acquire_timeout_s: must be <= {ACQUIRE_TIMEOUT_S_MAX} (ACQUIRE_TIMEOUT_S_MAX), "
                f"got {self.acquire_timeout_s}"
            )
        self.max_waiting = parse_count("max_waiting", max_waiting, minimum=0)
        if self.max_waiting > WAITING_CALLERS_MAX:
            raise ValueError(
                f"max_waiting: must be <= {WAITING_CALLERS_MAX} (WAITING_CALLERS_MAX), "
                f"got {self.max_waiting}"
            )
        if close is not None and not callable(close):
            raise ValueError(f"close: must be callable, got {close!r}")
        if afactory is not None and not callable(afactory):
            raise ValueError(f"afactory: must be callable, got {afactory!r}")
        if not isinstance(broken_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in broken_on
        ):
            raise ValueError(f"broken_on: must be a tuple of exception types, got {broken_on!r}")
        self.name = name
        self._factory = factory
        self._afactory = afactory
        self._close = close if close is not None else _ignore
        self._broken_on = broken_on
        self._slots = Bulkhead(
            max_concurrent=self.max_size,
            max_queue=self.max_waiting,
            max_wait_s=self.acquire_timeout_s,
            name=name,
            clock=clock,
            listeners=listeners,
        )
        self._lock = threading.Lock()
        # LIFO: the most recently used resource is the one most likely still healthy.
        self._idle: list[R] = []
        self._in_use = 0
        self._created = 0
        self._closed_count = 0
        self._broken = 0
        self._peak_in_use = 0
        self._close_failures = 0
        # ids of lent resources (a count, in case a factory hands out one object twice) and
        # the subset marked by discard(); both hold at most max_size entries.
        self._lent: dict[int, int] = {}
        self._discarded: set[int] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"BoundedPool(name={self.name!r}, max_size={self.max_size})"

    def statistics(self) -> PoolStatistics:
        slots = self._slots.statistics()
        with self._lock:
            return PoolStatistics(
                name=self.name,
                max_size=self.max_size,
                max_idle=self.max_idle,
                in_use=self._in_use,
                idle=len(self._idle),
                waiting=slots.queued,
                created=self._created,
                closed=self._closed_count,
                broken=self._broken,
                acquired=slots.admitted,
                rejected=slots.rejected,
                peak_in_use=self._peak_in_use,
                close_failures=self._close_failures,
            )

    # -- lending --------------------------------------------------------------------------

    def _take_idle(self) -> R | None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"pool {self.name!r} is closed")
            resource = self._idle.pop() if self._idle else None
            self._in_use += 1
            self._peak_in_use = max(self._peak_in_use, self._in_use)
            if resource is None:
                self._created += 1
            return resource

    def _creation_failed(self) -> None:
        with self._lock:
            self._in_use -= 1
            self._created -= 1

    def _lend(self, resource: R) -> None:
        with self._lock:
            key = id(resource)
            self._lent[key] = self._lent.get(key, 0) + 1

    def _close_resource(self, resource: R) -> Exception | None:
        """Close one dropped resource; count it, and return what ``close`` raised, if anything."""
        try:
            self._close(resource)
        except Exception as close_error:  # the resource is dropped either way
            with self._lock:
                self._close_failures += 1
            return close_error
        with self._lock:
            self._closed_count += 1
        return None

    def _give_back(self, resource: R, error: BaseException | None) -> None:
        broken = error is not None and (
            isinstance(error, self._broken_on) or not isinstance(error, Exception)
        )
        with self._lock:
            self._in_use -= 1
            key = id(resource)
            lent = self._lent.get(key, 0)
            if lent > 1:
                self._lent[key] = lent - 1
            else:
                self._lent.pop(key, None)
            if key in self._discarded:
                self._discarded.discard(key)
                broken = True
            keep = not broken and not self._closed and len(self._idle) < self.max_idle
            if keep:
                self._idle.append(resource)
            elif broken:
                self._broken += 1
        if keep:
            return
        close_error = self._close_resource(resource)
        if close_error is None:
            return
        if error is not None:
            # The block's exception is the one the caller must see; the close failure rides on it.
            error.add_note(f"pool {self.name!r}: closing the resource also failed: {close_error!r}")
        else:
            _log.warning(
                "pool %r: closing a dropped resource failed", self.name, exc_info=close_error
            )

    def discard(self, resource: R) -> None:
        """Mark a lent resource as broken: it is closed when its block ends, not reused.

        Raises ``ValueError`` if ``resource`` is not lent out by this pool right now (already
        returned, or never borrowed from it).
        """
        with self._lock:
            if id(resource) not in self._lent:
                raise ValueError(
                    f"discard: {resource!r} is not lent out by pool {self.name!r}; "
                    "call it inside the block that acquired the resource"
                )
            self._discarded.add(id(resource))

    @contextmanager
    def acquire(self) -> Iterator[R]:
        """Borrow a resource for the ``with`` block, waiting up to ``acquire_timeout_s``.

        Raises :class:`~phalanx.errors.BulkheadFull` when none frees up in time.
        """
        with self._slots:
            resource = self._take_idle()
            if resource is None:
                try:
                    resource = self._factory()
                except BaseException:
                    self._creation_failed()
                    raise
            self._lend(resource)
            error: BaseException | None = None
            try:
                yield resource
            except BaseException as exc:
                error = exc
                raise
            finally:
                # Back in the idle list before the slot is released, so the next waiter
                # reuses it instead of creating another one.
                self._give_back(resource, error)

    @asynccontextmanager
    async def aacquire(self) -> AsyncIterator[R]:
        """Borrow a resource for the ``async with`` block; see :meth:`acquire`."""
        async with self._slots:
            resource = self._take_idle()
            if resource is None:
                try:
                    if self._afactory is not None:
                        resource = await self._afactory()
                    else:
                        resource = self._factory()
                except BaseException:
                    self._creation_failed()
                    raise
            self._lend(resource)
            error: BaseException | None = None
            try:
                yield resource
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._give_back(resource, error)

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close idle resources now and lent ones when they come back; refuse new borrows.

        Every idle resource gets its ``close`` call even if some raise; the failures are then
        raised together as an ``ExceptionGroup`` (the pool is closed all the same).
        """
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        failures: list[Exception] = []
        for resource in idle:
            close_error = self._close_resource(resource)
            if close_error is not None:
                failures.append(close_error)
        if failures:
            raise ExceptionGroup(
                f"pool {self.name!r}: {len(failures)} of {len(idle)} idle resources "
                "failed to close",
                failures,
            )

    def __enter__(self) -> BoundedPool[R]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except ExceptionGroup as failures:  # the block's own exception is the one to see
            exc.add_note(f"closing the pool also failed: {failures!r}")
