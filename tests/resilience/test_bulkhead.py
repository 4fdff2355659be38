"""Behaviour of the semaphore bulkhead that callers rely on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from phalanx.clock import ManualClock
from phalanx.errors import BulkheadFull, Unavailable
from phalanx.resilience.bulkhead import (
    CONCURRENT_CALLS_MAX,
    QUEUED_CALLS_MAX,
    WAIT_S_MAX,
    Bulkhead,
    _AsyncWaiter,
)
from phalanx.resilience.deadline import deadline
from phalanx.resilience.events import Emitter, Event

WAIT_S = 5.0  # generous bound on real waits for a condition; never a timing assertion


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a condition another thread will make true; bounded so a bug fails, not hangs."""
    for _ in range(5000):
        if condition():
            return
        time.sleep(0.001)
    raise AssertionError("condition never became true")


async def await_until(condition: Callable[[], bool]) -> None:
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never became true")


class Holder:
    """Occupies bulkhead slots from background threads until released."""

    def __init__(self, bulkhead: Bulkhead) -> None:
        self.bulkhead = bulkhead
        self.gate = threading.Event()
        self.threads: list[threading.Thread] = []

    def hold(self, count: int) -> None:
        for _ in range(count):
            thread = threading.Thread(target=self.bulkhead.call, args=(self.gate.wait, WAIT_S))
            thread.start()
            self.threads.append(thread)
        wait_until(lambda: self.bulkhead.statistics().active >= count)

    def release(self) -> None:
        self.gate.set()
        for thread in self.threads:
            thread.join(WAIT_S)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": -1}, "max_concurrent"),
        ({"max_concurrent": 1.5}, "max_concurrent"),
        ({"max_concurrent": True}, "max_concurrent"),
        ({"max_queue": -1}, "max_queue"),
        ({"max_wait_s": -0.1}, "max_wait_s"),
        ({"max_wait_s": float("inf")}, "max_wait_s"),
        ({"max_wait_s": "10"}, "max_wait_s"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_configuration_is_rejected_naming_the_field(kwargs: dict[str, object], field: str):
    with pytest.raises(ValueError, match=field):
        Bulkhead(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "limit", "limit_name"),
    [
        ("max_concurrent", CONCURRENT_CALLS_MAX, "CONCURRENT_CALLS_MAX"),
        ("max_queue", QUEUED_CALLS_MAX, "QUEUED_CALLS_MAX"),
        ("max_wait_s", WAIT_S_MAX, "WAIT_S_MAX"),
    ],
)
def test_each_setting_has_a_named_upper_limit(field: str, limit: float, limit_name: str):
    assert getattr(Bulkhead(**{field: limit}), field) == limit  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"{field}: .*{limit_name}"):
        Bulkhead(**{field: limit + 1})  # type: ignore[arg-type]


def test_max_concurrent_at_its_limit_admits_that_many_calls_and_no_more():
    bulkhead = Bulkhead(max_concurrent=CONCURRENT_CALLS_MAX)
    for _ in range(CONCURRENT_CALLS_MAX):
        bulkhead.__enter__()
    with pytest.raises(BulkheadFull):
        bulkhead.call(lambda: None)
    for _ in range(CONCURRENT_CALLS_MAX):
        bulkhead.__exit__(None, None, None)
    stats = bulkhead.statistics()
    assert (stats.active, stats.peak_active, stats.rejected) == (0, CONCURRENT_CALLS_MAX, 1)


def test_a_caller_allowed_the_longest_wait_waits_and_gets_the_slot():
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1, max_wait_s=WAIT_S_MAX)
    holder = Holder(bulkhead)
    holder.hold(1)
    results: list[object] = []

    def waiter() -> None:
        try:
            results.append(bulkhead.call(lambda: "ran"))
        except BaseException as exc:  # the test inspects whatever escaped
            results.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until(lambda: bulkhead.statistics().queued == 1)
    holder.release()
    thread.join(WAIT_S)
    assert results == ["ran"]
    assert bulkhead.statistics().active == 0


def test_durations_accept_units():
    assert Bulkhead(max_wait_s="250ms").max_wait_s == pytest.approx(0.25)


def test_call_returns_result_and_frees_the_slot():
    bulkhead = Bulkhead(max_concurrent=2)
    assert bulkhead.call(lambda x, y=0: x + y, 1, y=2) == 3
    stats = bulkhead.statistics()
    assert (stats.active, stats.admitted, stats.peak_active) == (0, 1, 1)


def test_exception_in_call_frees_the_slot():
    bulkhead = Bulkhead(max_concurrent=1)

    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        bulkhead.call(boom)
    assert bulkhead.statistics().active == 0
    assert bulkhead.call(lambda: "ok") == "ok"


def test_full_bulkhead_without_queue_rejects_at_once():
    events: list[Event] = []
    bulkhead = Bulkhead(max_concurrent=2, name="payment", listeners=(events.append,))
    holder = Holder(bulkhead)
    holder.hold(2)
    try:
        with pytest.raises(BulkheadFull, match="payment") as info:
            bulkhead.call(lambda: None)
        assert isinstance(info.value, Unavailable)
    finally:
        holder.release()
    stats = bulkhead.statistics()
    assert (stats.rejected, stats.admitted, stats.active) == (1, 2, 0)
    assert [e.kind for e in events].count("rejected") == 1


def test_queue_bound_is_reached_and_waiters_are_served_in_order():
    bulkhead = Bulkhead(max_concurrent=1, max_queue=2, max_wait_s=WAIT_S)
    holder = Holder(bulkhead)
    holder.hold(1)
    order: list[int] = []
    waiters = []
    try:
        for i in range(2):
            thread = threading.Thread(target=bulkhead.call, args=(order.append, i))
            thread.start()
            waiters.append(thread)
            wait_until(lambda i=i: bulkhead.statistics().queued == i + 1)
        with pytest.raises(BulkheadFull):
            bulkhead.call(lambda: None)
        assert bulkhead.statistics().peak_queued == 2
    finally:
        holder.release()
        for thread in waiters:
            thread.join(WAIT_S)
    assert order == [0, 1]
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.admitted, stats.rejected) == (0, 0, 3, 1)


def test_a_waiter_that_times_out_is_rejected_and_leaves_no_trace():
    bulkhead = Bulkhead(max_concurrent=1, max_queue=5, max_wait_s=0.01)
    holder = Holder(bulkhead)
    holder.hold(1)
    try:
        with pytest.raises(BulkheadFull, match="within"):
            bulkhead.call(lambda: None)
        stats = bulkhead.statistics()
        assert (stats.active, stats.queued, stats.timed_out, stats.rejected) == (1, 0, 1, 1)
    finally:
        holder.release()
    assert bulkhead.call(lambda: "free") == "free"


def test_the_propagated_deadline_caps_the_wait():
    bulkhead = Bulkhead(max_concurrent=1, max_queue=5, max_wait_s=60)
    holder = Holder(bulkhead)
    holder.hold(1)
    try:
        started = time.monotonic()
        with deadline(0.02), pytest.raises(BulkheadFull):
            bulkhead.call(lambda: None)
        # 60 s were allowed by the bulkhead; the deadline cut it to 20 ms.
        assert time.monotonic() - started < WAIT_S
        clock = ManualClock()
        with deadline(1.0, clock=clock):
            clock.advance(2.0)  # the budget is already spent: no waiting at all
            with pytest.raises(BulkheadFull, match="running"):
                bulkhead.call(lambda: None)
    finally:
        holder.release()


def test_with_statement_and_decorator_on_plain_functions():
    bulkhead = Bulkhead(max_concurrent=1)

    @bulkhead
    def double(x: int) -> int:
        """Doubles."""
        assert bulkhead.statistics().active == 1
        return 2 * x

    assert double(4) == 8
    assert double.__doc__ == "Doubles."
    with bulkhead as entered:
        assert entered is bulkhead
        assert bulkhead.statistics().active == 1
        with pytest.raises(BulkheadFull):
            bulkhead.call(lambda: None)
    assert bulkhead.statistics().active == 0


async def test_async_decorator_acall_and_async_with():
    bulkhead = Bulkhead(max_concurrent=1)

    @bulkhead
    async def triple(x: int) -> int:
        await asyncio.sleep(0)
        return 3 * x

    assert await triple(2) == 6
    assert await bulkhead.acall(triple.__wrapped__, 3) == 9  # type: ignore[attr-defined]
    async with bulkhead:
        with pytest.raises(BulkheadFull):
            await bulkhead.acall(asyncio.sleep, 0)
    stats = bulkhead.statistics()
    assert (stats.active, stats.admitted, stats.rejected) == (0, 3, 1)


async def test_async_waiters_are_woken_in_order():
    bulkhead = Bulkhead(max_concurrent=1, max_queue=3, max_wait_s=WAIT_S)
    order: list[int] = []

    async def worker(i: int) -> None:
        async with bulkhead:
            order.append(i)
            await asyncio.sleep(0)

    async with bulkhead:
        tasks = [asyncio.create_task(worker(i)) for i in range(3)]
        await await_until(lambda: bulkhead.statistics().queued == 3)
        with pytest.raises(BulkheadFull):
            await bulkhead.acall(asyncio.sleep, 0)
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert order == [0, 1, 2]


async def test_async_waiter_times_out_without_leaking():
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1, max_wait_s=0.01)
    async with bulkhead:
        with pytest.raises(BulkheadFull, match="within"):
            await bulkhead.acall(asyncio.sleep, 0)
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.timed_out) == (0, 0, 1)


async def test_cancelling_a_waiting_task_frees_its_place_in_the_queue():
    bulkhead = Bulkhead(max_concurrent=1, max_queue=3, max_wait_s=WAIT_S)
    ran: list[int] = []

    async def worker(i: int) -> None:
        async with bulkhead:
            ran.append(i)

    async with bulkhead:
        tasks = [asyncio.create_task(worker(i)) for i in range(3)]
        await await_until(lambda: bulkhead.statistics().queued == 3)
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        assert bulkhead.statistics().queued == 2
    await asyncio.wait_for(asyncio.gather(tasks[0], tasks[2]), WAIT_S)
    assert ran == [0, 2]
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.cancelled) == (0, 0, 1)


async def test_a_task_cancelled_right_after_being_handed_a_slot_passes_it_on():
    bulkhead = Bulkhead(max_concurrent=1, max_queue=2, max_wait_s=WAIT_S)
    ran: list[str] = []

    async def worker(label: str) -> None:
        async with bulkhead:
            ran.append(label)

    await bulkhead._aenter()
    first = asyncio.create_task(worker("first"))
    second = asyncio.create_task(worker("second"))
    await await_until(lambda: bulkhead.statistics().queued == 2)
    # The slot is handed to ``first`` (its wake-up is scheduled, not yet run), and ``first``
    # is cancelled before it ever resumes: the slot must move on to ``second``.
    bulkhead._exit()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, WAIT_S)
    assert ran == ["second"]
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.cancelled) == (0, 0, 1)


def test_one_bulkhead_is_shared_by_threads_and_event_loops():
    bulkhead = Bulkhead(max_concurrent=1, max_queue=10, max_wait_s=WAIT_S)
    order: list[str] = []
    holder = Holder(bulkhead)
    holder.hold(1)

    def loop_thread(label: str) -> None:
        async def main() -> None:
            async with bulkhead:
                order.append(label)

        asyncio.run(main())

    threads = [threading.Thread(target=loop_thread, args=(f"loop{i}",)) for i in range(2)]
    threads.append(threading.Thread(target=bulkhead.call, args=(order.append, "thread")))
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: bulkhead.statistics().queued == 3)
    finally:
        holder.release()
        for thread in threads:
            thread.join(WAIT_S)
    assert sorted(order) == ["loop0", "loop1", "thread"]
    assert bulkhead.statistics().active == 0


def test_a_waiter_on_a_closed_loop_is_skipped():
    loop = asyncio.new_event_loop()
    waiter = _AsyncWaiter(loop)
    loop.close()
    assert waiter.grant() is False


def test_per_call_events_only_with_a_listener_and_listeners_may_read_statistics():
    clock = ManualClock(start_s=5.0)
    bulkhead = Bulkhead(max_concurrent=1, name="inventory", clock=clock)
    bulkhead.call(lambda: None)
    seen: list[tuple[str, int]] = []

    def listener(event: Event) -> None:
        # Must not deadlock: events are emitted outside the lock.
        seen.append((event.kind, bulkhead.statistics().active))
        assert (event.primitive, event.name, event.at_s) == ("bulkhead", "inventory", 5.0)

    bulkhead.add_listener(listener)
    with bulkhead, pytest.raises(BulkheadFull):
        bulkhead.call(lambda: None)
    assert seen == [("admitted", 1), ("rejected", 1), ("released", 0)]
    bulkhead.remove_listener(listener)
    bulkhead.call(lambda: None)
    assert len(seen) == 3


class _RecordingLock:
    """The bulkhead's lock, reporting when another thread is about to take it."""

    def __init__(self, about_to_acquire: threading.Event) -> None:
        self._lock = threading.Lock()
        self._about_to_acquire = about_to_acquire
        self._owner_thread = threading.get_ident()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if threading.get_ident() != self._owner_thread:
            self._about_to_acquire.set()
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def test_a_listener_added_while_another_is_removed_still_receives_events():
    # The interleaving that used to hide a new listener: remove_listener reads "no listeners
    # left", then add_listener runs to completion in another thread, then remove_listener
    # stores its stale answer. The other thread now either finishes first (no lock: the bug)
    # or is about to wait on the lock that remove_listener holds (the fix).
    seen: list[str] = []
    leaving: list[Event] = []
    other_thread_done_or_waiting = threading.Event()
    bulkhead = Bulkhead(max_concurrent=1)
    bulkhead._lock = _RecordingLock(other_thread_done_or_waiting)  # type: ignore[assignment]

    def add_new_listener() -> None:
        bulkhead.add_listener(lambda event: seen.append(event.kind))
        other_thread_done_or_waiting.set()

    adder = threading.Thread(target=add_new_listener)

    class RacingEmitter(Emitter):
        __slots__ = ("armed",)

        @property
        def active(self) -> bool:
            answer = super().active
            if getattr(self, "armed", False):
                self.armed = False
                adder.start()
                assert other_thread_done_or_waiting.wait(WAIT_S)
            return answer

    emitter = RacingEmitter("bulkhead", "bulkhead", (leaving.append,))
    bulkhead._emitter = emitter
    bulkhead._observed = True
    emitter.armed = True
    bulkhead.remove_listener(leaving.append)
    adder.join(WAIT_S)
    bulkhead.call(lambda: None)
    assert seen == ["admitted", "released"]
    assert leaving == []
