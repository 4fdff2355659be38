"""A counter that is safe to bump from many threads without a lock.

``next()`` on an ``itertools.count`` is a single C call, so under the GIL it never loses an
increment; reading the value back parses its repr. Increments cost one bound-method call.
"""

from __future__ import annotations

import itertools

__all__ = ["Counter"]


class Counter:
    __slots__ = ("_count", "incr")

    def __init__(self) -> None:
        self._count = itertools.count()
        self.incr = self._count.__next__

    @property
    def value(self) -> int:
        # repr is "count(N)" where N is the number of increments so far.
        return int(repr(self._count)[6:-1])
