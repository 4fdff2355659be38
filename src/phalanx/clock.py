"""Time as an injectable dependency.

Every timing decision in Phalanx reads a :class:`Clock` instead of calling ``time``
directly, so tests and the simulator can run with :class:`ManualClock`: time moves only
when the test says so, and "sleeping" advances it instantly.

``now_s()`` is monotonic seconds (an arbitrary origin; only differences mean something).
``wall_s()`` is Unix time and is used only for records shown to people or stored with a TTL
that must survive a restart.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time, wall time, and the two ways to wait."""

    def now_s(self) -> float:
        """Monotonic seconds."""
        ...

    def wall_s(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``time.time``."""

    __slots__ = ("now_s", "wall_s")

    def __init__(self) -> None:
        # Bound directly to the C functions: no Python frame on the hot path.
        self.now_s = time.monotonic
        self.wall_s = time.time

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told to.

    ``sleep`` and ``asleep`` advance the clock by the requested amount and return at once,
    recording each wait in ``sleeps_s``; tests assert on that list instead of timing anything.
    ``advance`` moves time forward explicitly. Thread-safe.
    """

    def __init__(self, start_s: float = 0.0, *, wall_start_s: float = 1_700_000_000.0) -> None:
        self._now_s = start_s
        self._wall_offset_s = wall_start_s - start_s
        self._lock = threading.Lock()
        self.sleeps_s: list[float] = []

    def now_s(self) -> float:
        return self._now_s

    def wall_s(self) -> float:
        return self._now_s + self._wall_offset_s

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (>= 0) and return the new time."""
        if seconds < 0:
            raise ValueError(f"seconds: cannot move a clock backwards (got {seconds})")
        with self._lock:
            self._now_s += seconds
            return self._now_s

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps_s.append(seconds)
            self._now_s += max(seconds, 0.0)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)  # still yield, so other tasks run as they would

    def __repr__(self) -> str:
        return f"ManualClock(now_s={self._now_s})"
