"""Sliding windows of call outcomes for the circuit breaker.

This module owns the two ways a breaker remembers recent calls:

* :class:`CountWindow` keeps the outcomes of the last ``size_calls`` calls in a ring buffer.
* :class:`TimeWindow` keeps one bucket per whole second for the last ``size_s`` seconds,
  as resilience4j does: a call lands in the bucket of the second it completed in, and a
  bucket is emptied when its second slides out of the window.

Both keep running totals (calls, failures, slow calls), so reading the failure rate costs
O(1) and recording costs O(1) amortised. Neither locks: the breaker serialises access.
Time is an input (``now_s``), never read here.
"""

from __future__ import annotations

import math
from typing import Protocol

from phalanx.errors import invariant

__all__ = [
    "WINDOW_SIZE_CALLS_MAX",
    "WINDOW_SIZE_S_MAX",
    "CountWindow",
    "SlidingWindow",
    "TimeWindow",
]

#: Largest count-based window: 100k outcomes is 100 kB of ring buffer per breaker.
WINDOW_SIZE_CALLS_MAX = 100_000
#: Largest time-based window: one hour of one-second buckets.
WINDOW_SIZE_S_MAX = 3600

_FAILED = 1
_SLOW = 2


class SlidingWindow(Protocol):
    """What the breaker's state machine needs from a window."""

    def add(self, now_s: float, failed: bool, slow: bool) -> None:
        """Record one completed call."""
        ...

    def add_successes(self, count: int, now_s: float) -> None:
        """Record ``count`` fast, successful calls at once."""
        ...

    def totals(self, now_s: float) -> tuple[int, int, int]:
        """``(calls, failures, slow_calls)`` currently inside the window."""
        ...

    def clear(self) -> None:
        """Forget every outcome."""
        ...


class CountWindow:
    """The outcomes of the last ``size_calls`` calls."""

    __slots__ = ("_calls", "_failures", "_index", "_ring", "_size", "_slow")

    def __init__(self, size_calls: int) -> None:
        if isinstance(size_calls, bool) or not isinstance(size_calls, int):
            raise ValueError(f"window_size_calls: expected an integer, got {size_calls!r}")
        if not 1 <= size_calls <= WINDOW_SIZE_CALLS_MAX:
            raise ValueError(
                f"window_size_calls: must be between 1 and {WINDOW_SIZE_CALLS_MAX}, "
                f"got {size_calls}"
            )
        self._size = size_calls
        # One byte per slot: bit 0 = failed, bit 1 = slow. Empty slots hold 0 and are not
        # counted because ``_calls`` stays below ``_size`` until the ring has wrapped.
        self._ring = bytearray(size_calls)
        self._index = 0
        self._calls = 0
        self._failures = 0
        self._slow = 0

    @property
    def size_calls(self) -> int:
        return self._size

    def add(self, now_s: float, failed: bool, slow: bool) -> None:  # noqa: ARG002 - protocol
        flags = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        index = self._index
        if self._calls == self._size:
            old = self._ring[index]
            self._failures -= old & _FAILED
            self._slow -= (old & _SLOW) >> 1
        else:
            self._calls += 1
        self._ring[index] = flags
        self._failures += flags & _FAILED
        self._slow += (flags & _SLOW) >> 1
        index += 1
        self._index = 0 if index == self._size else index

    def add_successes(self, count: int, now_s: float) -> None:  # noqa: ARG002 - protocol
        if count <= 0:
            return
        if count >= self._size:
            # The whole window is now successes: no need to walk it slot by slot.
            self._ring[:] = bytes(self._size)
            self._index = 0
            self._calls = self._size
            self._failures = 0
            self._slow = 0
            return
        for _ in range(count):
            self.add(0.0, failed=False, slow=False)

    def totals(self, now_s: float) -> tuple[int, int, int]:  # noqa: ARG002 - protocol
        return self._calls, self._failures, self._slow

    def clear(self) -> None:
        self._ring[:] = bytes(self._size)
        self._index = 0
        self._calls = 0
        self._failures = 0
        self._slow = 0

    def check(self) -> None:
        """Recount the ring and compare with the running totals (used by tests)."""
        failures = sum(1 for flags in self._ring if flags & _FAILED)
        slow = sum(1 for flags in self._ring if flags & _SLOW)
        invariant(0 <= self._calls <= self._size, "count window: calls out of range")
        invariant(failures == self._failures, "count window: failure total drifted")
        invariant(slow == self._slow, "count window: slow total drifted")


class TimeWindow:
    """The outcomes of the calls that completed during the last ``size_s`` whole seconds."""

    __slots__ = (
        "_bucket_calls",
        "_bucket_failures",
        "_bucket_second",
        "_bucket_slow",
        "_calls",
        "_failures",
        "_head_second",
        "_size",
        "_slow",
    )

    def __init__(self, size_s: int) -> None:
        if isinstance(size_s, bool) or not isinstance(size_s, int):
            raise ValueError(f"window_size_s: expected a whole number of seconds, got {size_s!r}")
        if not 1 <= size_s <= WINDOW_SIZE_S_MAX:
            raise ValueError(
                f"window_size_s: must be between 1 and {WINDOW_SIZE_S_MAX}, got {size_s}"
            )
        self._size = size_s
        self._bucket_calls = [0] * size_s
        self._bucket_failures = [0] * size_s
        self._bucket_slow = [0] * size_s
        # Which whole second each bucket currently describes; -inf marks "never used".
        self._bucket_second: list[float] = [-math.inf] * size_s
        self._head_second = -math.inf
        self._calls = 0
        self._failures = 0
        self._slow = 0

    @property
    def size_s(self) -> int:
        return self._size

    def _slide(self, now_s: float) -> int:
        """Evict buckets that fell out of the window; return the bucket index for ``now_s``."""
        second = math.floor(now_s)
        head = self._head_second
        if second > head:
            # Empty every bucket whose second is now older than the window. At most ``_size``
            # buckets are touched however long the breaker sat idle.
            first = second - self._size + 1
            for index in range(self._size):
                if self._bucket_second[index] < first and self._bucket_calls[index]:
                    self._calls -= self._bucket_calls[index]
                    self._failures -= self._bucket_failures[index]
                    self._slow -= self._bucket_slow[index]
                    self._bucket_calls[index] = 0
                    self._bucket_failures[index] = 0
                    self._bucket_slow[index] = 0
            self._head_second = second
            index = second % self._size
            self._bucket_second[index] = second
            return index
        # Time never runs backwards on a monotonic clock; if a caller's ``now_s`` lags the
        # newest bucket (threads reading the clock in one order and recording in another),
        # charge the call to the newest bucket rather than rewriting history.
        return int(head % self._size)

    def add(self, now_s: float, failed: bool, slow: bool) -> None:
        index = self._slide(now_s)
        self._bucket_calls[index] += 1
        self._calls += 1
        if failed:
            self._bucket_failures[index] += 1
            self._failures += 1
        if slow:
            self._bucket_slow[index] += 1
            self._slow += 1

    def add_successes(self, count: int, now_s: float) -> None:
        if count <= 0:
            return
        index = self._slide(now_s)
        self._bucket_calls[index] += count
        self._calls += count

    def totals(self, now_s: float) -> tuple[int, int, int]:
        self._slide(now_s)
        return self._calls, self._failures, self._slow

    def clear(self) -> None:
        for index in range(self._size):
            self._bucket_calls[index] = 0
            self._bucket_failures[index] = 0
            self._bucket_slow[index] = 0
            self._bucket_second[index] = -math.inf
        self._head_second = -math.inf
        self._calls = 0
        self._failures = 0
        self._slow = 0

    def check(self) -> None:
        """Recount the buckets and compare with the running totals (used by tests)."""
        invariant(sum(self._bucket_calls) == self._calls, "time window: call total drifted")
        invariant(
            sum(self._bucket_failures) == self._failures, "time window: failure total drifted"
        )
        invariant(sum(self._bucket_slow) == self._slow, "time window: slow total drifted")
