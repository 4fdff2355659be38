"""Properties of the semaphore bulkhead under many threads and many asyncio tasks at once."""

from __future__ import annotations

import asyncio
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.errors import BulkheadFull
from phalanx.resilience.bulkhead import Bulkhead

JOIN_S = 30.0  # bound on joining worker threads; a hang fails the test instead of the suite


class Gauge:
    """Counts calls inside the protected function and remembers the highest count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current = 0
        self.peak = 0
        self.completed = 0

    def enter(self) -> None:
        with self._lock:
            self.current += 1
            self.peak = max(self.peak, self.current)

    def leave(self) -> None:
        with self._lock:
            self.current -= 1
            self.completed += 1


def run_mixed_load(
    bulkhead: Bulkhead, gauge: Gauge, *, threads: int, loops: int, tasks_per_loop: int
) -> list[BaseException]:
    """Hammer ``bulkhead`` from plain threads and from tasks on several loops at once."""
    start = threading.Barrier(threads + loops)
    rejections: list[BaseException] = []

    def sync_body() -> None:
        gauge.enter()
        time.sleep(0)  # give up the GIL so other callers interleave
        gauge.leave()

    async def async_body() -> None:
        gauge.enter()
        await asyncio.sleep(0)
        gauge.leave()

    def thread_worker() -> None:
        start.wait(JOIN_S)
        try:
            bulkhead.call(sync_body)
        except BulkheadFull as exc:
            rejections.append(exc)

    def loop_worker() -> None:
        async def one() -> None:
            try:
                await bulkhead.acall(async_body)
            except BulkheadFull as exc:
                rejections.append(exc)

        async def main() -> None:
            start.wait(JOIN_S)
            await asyncio.gather(*(one() for _ in range(tasks_per_loop)))

        asyncio.run(main())

    workers = [threading.Thread(target=thread_worker) for _ in range(threads)]
    workers += [threading.Thread(target=loop_worker) for _ in range(loops)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(JOIN_S)
        assert not worker.is_alive(), "a worker hung"
    return rejections


@settings(max_examples=30, deadline=None)
@given(
    max_concurrent=st.integers(1, 4),
    threads=st.integers(1, 8),
    loops=st.integers(1, 3),
    tasks_per_loop=st.integers(1, 12),
)
def test_never_more_than_max_concurrent_when_everyone_may_wait(
    max_concurrent: int, threads: int, loops: int, tasks_per_loop: int
) -> None:
    total = threads + loops * tasks_per_loop
    bulkhead = Bulkhead(max_concurrent=max_concurrent, max_queue=total, max_wait_s=JOIN_S)
    gauge = Gauge()
    rejections = run_mixed_load(
        bulkhead, gauge, threads=threads, loops=loops, tasks_per_loop=tasks_per_loop
    )
    assert rejections == []
    assert gauge.peak <= max_concurrent
    assert gauge.completed == total
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.admitted, stats.rejected) == (0, 0, total, 0)
    assert stats.peak_active <= max_concurrent


@settings(max_examples=30, deadline=None)
@given(
    max_concurrent=st.integers(1, 3),
    max_queue=st.integers(0, 3),
    threads=st.integers(1, 6),
    loops=st.integers(1, 2),
    tasks_per_loop=st.integers(1, 10),
)
def test_rejections_are_counted_and_the_limit_holds_with_a_short_queue(
    max_concurrent: int, max_queue: int, threads: int, loops: int, tasks_per_loop: int
) -> None:
    total = threads + loops * tasks_per_loop
    bulkhead = Bulkhead(max_concurrent=max_concurrent, max_queue=max_queue, max_wait_s=0.002)
    gauge = Gauge()
    rejections = run_mixed_load(
        bulkhead, gauge, threads=threads, loops=loops, tasks_per_loop=tasks_per_loop
    )
    stats = bulkhead.statistics()
    assert gauge.peak <= max_concurrent
    assert stats.peak_queued <= max_queue
    assert stats.admitted == gauge.completed
    assert stats.rejected == len(rejections)
    assert stats.admitted + stats.rejected == total
    assert (stats.active, stats.queued) == (0, 0)


@settings(max_examples=40, deadline=None)
@given(
    max_concurrent=st.integers(1, 3),
    waiting=st.integers(1, 10),
    data=st.data(),
)
def test_cancelled_waiters_never_leak_slots(
    max_concurrent: int, waiting: int, data: st.DataObject
) -> None:
    cancel = data.draw(st.sets(st.integers(0, waiting - 1)), label="cancelled")
    release_first = data.draw(st.booleans(), label="release before cancelling")

    async def scenario() -> None:
        bulkhead = Bulkhead(max_concurrent=max_concurrent, max_queue=waiting, max_wait_s=JOIN_S)
        gauge = Gauge()

        async def body() -> None:
            gauge.enter()
            await asyncio.sleep(0)
            gauge.leave()

        for _ in range(max_concurrent):
            await bulkhead._aenter()
        tasks = [asyncio.create_task(bulkhead.acall(body)) for _ in range(waiting)]
        for _ in range(1000):
            if bulkhead.statistics().queued == waiting:
                break
            await asyncio.sleep(0)
        if release_first:
            # Hand slots over first, so some cancelled tasks already own one.
            for _ in range(max_concurrent):
                bulkhead._exit()
        for index in cancel:
            tasks[index].cancel()
        if not release_first:
            for _ in range(max_concurrent):
                bulkhead._exit()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), JOIN_S)
        cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
        stats = bulkhead.statistics()
        assert (stats.active, stats.queued) == (0, 0)
        assert gauge.peak <= max_concurrent
        assert gauge.completed == waiting - cancelled
        assert cancelled == len(cancel)
        # Every slot is still usable afterwards.
        for _ in range(max_concurrent):
            await bulkhead._aenter()
        assert bulkhead.statistics().active == max_concurrent

    asyncio.run(scenario())
