"""The event queue orders by virtual time, then by scheduling order, and has a bound."""

import pytest

from phalanx.sim.events import EventKind, EventQueue, QueueFull


def test_events_pop_in_time_then_scheduling_order() -> None:
    queue = EventQueue()
    queue.push(30, EventKind.TICK, 1, "c")
    queue.push(10, EventKind.TICK, 2, "a")
    queue.push(30, EventKind.DELIVER, 3, "d")
    queue.push(10, EventKind.CLIENT, 4, "b")
    popped = [queue.pop()[4] for _ in range(4)]
    assert popped == ["a", "b", "c", "d"]
    assert queue.now_us == 30
    assert queue.popped == 4
    assert queue.peek_time_us() is None


def test_an_event_cannot_be_scheduled_in_the_past() -> None:
    queue = EventQueue()
    queue.push(100, EventKind.TICK, 1)
    queue.pop()
    with pytest.raises(ValueError, match="before now"):
        queue.push(99, EventKind.TICK, 1)
    queue.push(100, EventKind.TICK, 1)  # "now" itself is fine


def test_the_queue_bound_is_enforced() -> None:
    queue = EventQueue(events_max=3)
    for t in range(3):
        queue.push(t, EventKind.TICK, 1)
    with pytest.raises(QueueFull):
        queue.push(5, EventKind.TICK, 1)
    queue.pop()
    queue.push(5, EventKind.TICK, 1)
    assert len(queue) == 3
    with pytest.raises(ValueError, match="at least 1"):
        EventQueue(events_max=0)
