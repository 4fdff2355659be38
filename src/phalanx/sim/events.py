"""The simulator's event queue: what happens next, in virtual time.

Every event is a tuple ``(time_us, seq, kind, node, payload)`` kept in a binary heap. ``seq``
is a counter assigned at scheduling time, so two events at the same virtual microsecond run in
the order they were scheduled: the order never depends on hashing, object identity or the wall
clock, and the same seed replays the same run.

Virtual time is an integer number of microseconds (``_us``): integers add and compare exactly,
so no rounding can reorder two events between machines.

The queue holds at most ``events_max`` pending events; a simulation that schedules more has a
runaway feedback loop (a bug in the simulator or the core), which :class:`QueueFull` reports.
"""

from __future__ import annotations

import enum
import heapq
from typing import Any

from phalanx.errors import PhalanxError

__all__ = ["EVENTS_PENDING_MAX", "Event", "EventKind", "EventQueue", "QueueFull"]

#: Default bound of pending events. A five-node cluster under load keeps a few hundred.
EVENTS_PENDING_MAX = 1_000_000


class QueueFull(PhalanxError):
    """More events are pending than the queue's bound allows."""


class EventKind(enum.IntEnum):
    """What an event does when its time comes."""

    DELIVER = 1  # a message arrives at ``node``; payload: the Message
    TICK = 2  # ``node`` ticks; payload: the node's life number (stale ticks are ignored)
    DISK_SYNC = 3  # ``node``'s fsync completes; payload: the life number
    CLIENT = 4  # a client process acts; payload: the process number
    FAULT = 5  # a fault of the schedule starts; payload: the Fault
    CHECK = 6  # a periodic or final check; payload: a label


#: One scheduled event: (time_us, seq, kind, node, payload).
Event = tuple[int, int, int, int, Any]


class EventQueue:
    """A min-heap of events ordered by (virtual time, scheduling order)."""

    __slots__ = ("_heap", "_seq", "events_max", "now_us", "popped")

    def __init__(self, events_max: int = EVENTS_PENDING_MAX) -> None:
        if events_max < 1:
            raise ValueError("events_max must be at least 1")
        self._heap: list[Event] = []
        self._seq = 0
        self.events_max = events_max
        #: The time of the event popped last: the simulation's "now".
        self.now_us = 0
        #: How many events have been popped so far.
        self.popped = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, time_us: int, kind: int, node: int, payload: Any = None) -> int:
        """Schedule an event at ``time_us`` (never in the past); return its sequence number."""
        if time_us < self.now_us:
            raise ValueError(f"event at {time_us} us is before now ({self.now_us} us)")
        if len(self._heap) >= self.events_max:
            raise QueueFull(f"more than {self.events_max} pending events")
        seq = self._seq
        self._seq = seq + 1
        heapq.heappush(self._heap, (time_us, seq, kind, node, payload))
        return seq

    def pop(self) -> Event:
        """Remove and return the earliest event, advancing ``now_us`` to its time."""
        event = heapq.heappop(self._heap)
        self.now_us = event[0]
        self.popped += 1
        return event

    def peek_time_us(self) -> int | None:
        """The time of the next event, or ``None`` when the queue is empty."""
        return self._heap[0][0] if self._heap else None
