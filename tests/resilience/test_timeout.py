import asyncio
import threading

import pytest

from phalanx.clock import ManualClock
from phalanx.errors import BulkheadFull, DeadlineExceeded, Timeout
from phalanx.resilience.deadline import deadline, remaining_s
from phalanx.resilience.timeout import TimeLimiter


async def test_async_call_is_cancelled_at_the_limit() -> None:
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    limiter = TimeLimiter(0.02)
    with pytest.raises(Timeout) as info:
        await limiter.acall(hang)
    assert not isinstance(info.value, DeadlineExceeded)
    assert cancelled.is_set()
    assert limiter.statistics().timeouts == 1


async def test_async_fast_call_passes_and_sees_its_deadline() -> None:
    clock = ManualClock()

    @TimeLimiter("5s", clock=clock)
    async def fast() -> float | None:
        return remaining_s()

    assert await fast() == 5.0


async def test_callers_deadline_binds_and_is_reported() -> None:
    async def hang() -> None:
        await asyncio.sleep(10)

    limiter = TimeLimiter(30.0)
    with deadline(0.02), pytest.raises(DeadlineExceeded):
        await limiter.acall(hang)


async def test_async_context_manager() -> None:
    limiter = TimeLimiter(0.02)
    with pytest.raises(Timeout):
        async with limiter:
            await asyncio.sleep(10)
    async with limiter as value:
        assert value[0] > 0
    assert limiter.statistics().timeouts == 1


async def test_inner_timeout_error_is_not_ours() -> None:
    async def raises() -> None:
        raise TimeoutError("callee's own")

    with pytest.raises(TimeoutError, match="callee's own"):
        await TimeLimiter(5.0).acall(raises)


def test_sync_thread_mode_returns_on_time() -> None:
    release = threading.Event()
    limiter = TimeLimiter(0.02, workers_max=1)

    def stuck() -> str:
        release.wait(5)
        return "late"

    with pytest.raises(Timeout):
        limiter.call(stuck)
    # The abandoned call still holds the only worker: the next call is refused, not queued.
    with pytest.raises(BulkheadFull):
        limiter.call(lambda: "x")
    assert limiter.statistics().rejected == 1
    release.set()
    limiter.shutdown(wait=True)
    assert limiter.statistics().workers_busy == 0


def test_sync_thread_mode_passes_results_errors_and_deadline() -> None:
    clock = ManualClock()
    limiter = TimeLimiter(4.0, clock=clock)
    assert limiter.call(remaining_s) == 4.0
    with pytest.raises(KeyError):
        limiter.call(lambda: {}["missing"])
    limiter.shutdown(wait=True)


def test_sync_cooperative_mode_publishes_deadline_and_counts_overruns() -> None:
    clock = ManualClock()
    limiter = TimeLimiter(2.0, sync_mode="cooperative", clock=clock)

    def slow() -> float | None:
        left = remaining_s()
        clock.advance(3.0)
        return left

    assert limiter.call(slow) == 2.0
    assert limiter.statistics().overruns == 1
    with limiter:
        assert remaining_s() == 2.0
    assert remaining_s() is None


def test_expired_caller_deadline_refuses_at_once() -> None:
    clock = ManualClock()
    limiter = TimeLimiter(2.0, sync_mode="cooperative", clock=clock)
    with deadline(1.0, clock=clock):
        clock.advance(1.0)
        with pytest.raises(DeadlineExceeded):
            limiter.call(lambda: "never runs")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": "5"}, "timeout_s"),
        ({"timeout_s": 1, "sync_mode": "signal"}, "sync_mode"),
        ({"timeout_s": 1e10}, "timeout_s"),
        ({"timeout_s": 1, "workers_max": 0}, "workers_max"),
        ({"timeout_s": 1, "workers_max": 100_000}, "workers_max"),
    ],
)
def test_bad_configuration(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TimeLimiter(**kwargs)  # type: ignore[arg-type]
