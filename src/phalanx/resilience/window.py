"""A sliding window of counters split into time buckets.

Used by retry budgets and adaptive throttling to count events over the last ``window_s``
seconds without keeping one record per event: memory is ``buckets`` integers per counter,
whatever the traffic. Not thread-safe on its own; owners hold their lock around it.
"""

from __future__ import annotations

from phalanx.resilience.config import parse_count, require_positive

__all__ = ["BucketWindow"]

BUCKETS_MAX = 1000


class BucketWindow:
    """``counters`` parallel counts over the last ``window_s`` seconds, in ``buckets`` slices."""

    __slots__ = ("_bucket_s", "_counts", "_epoch", "_totals", "buckets", "window_s")

    def __init__(self, window_s: float, *, buckets: int = 10, counters: int = 2) -> None:
        self.window_s = require_positive("window_s", window_s)
        self.buckets = parse_count("buckets", buckets)
        if self.buckets > BUCKETS_MAX:
            raise ValueError(f"buckets: at most {BUCKETS_MAX}, got {buckets}")
        self._bucket_s = self.window_s / self.buckets
        self._counts = [[0] * self.buckets for _ in range(counters)]
        self._totals = [0] * counters
        self._epoch: int | None = None

    def _roll(self, now_s: float) -> int:
        epoch = int(now_s // self._bucket_s)
        last = self._epoch
        if last is None:
            self._epoch = epoch
        elif epoch > last:
            # Clear every bucket that slid out of the window since the last event.
            for step in range(1, min(epoch - last, self.buckets) + 1):
                slot = (last + step) % self.buckets
                for index, counts in enumerate(self._counts):
                    self._totals[index] -= counts[slot]
                    counts[slot] = 0
            self._epoch = epoch
        # A clock that went backwards (another clock, a restored state) keeps the newest bucket.
        return (self._epoch if self._epoch is not None else epoch) % self.buckets

    def add(self, counter: int, now_s: float, amount: int = 1) -> None:
        slot = self._roll(now_s)
        self._counts[counter][slot] += amount
        self._totals[counter] += amount

    def total(self, counter: int, now_s: float) -> int:
        self._roll(now_s)
        return self._totals[counter]
