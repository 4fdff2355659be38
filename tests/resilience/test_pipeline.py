import asyncio

import pytest

from phalanx.clock import ManualClock
from phalanx.errors import BulkheadFull, CircuitOpen, Timeout, Unavailable
from phalanx.resilience import (
    Bulkhead,
    CircuitBreaker,
    Pipeline,
    Retry,
    TimeLimiter,
    remaining_s,
)


def test_policies_apply_outermost_first() -> None:
    order: list[str] = []

    def tag(label: str):  # type: ignore[no-untyped-def]
        def policy(fn):  # type: ignore[no-untyped-def]
            def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
                order.append(label)
                return fn(*args, **kwargs)

            return wrapper

        return policy

    pipeline = Pipeline(tag("outer"), tag("middle"), tag("inner"))
    assert pipeline.call(lambda: "done") == "done"
    assert order == ["outer", "middle", "inner"]


def test_breaker_outside_retry_counts_one_failure_per_logical_call() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        "dep", consecutive_failures=2, minimum_calls=100, open_timeout_s=30.0, clock=clock
    )
    retry = Retry(attempts_max=3, base_delay_s=1.0, jitter="none", clock=clock)
    calls = 0

    @Pipeline(breaker, retry)
    def down() -> None:
        nonlocal calls
        calls += 1
        raise Unavailable("down")

    for _ in range(2):
        with pytest.raises(Unavailable):
            down()
    assert calls == 6  # two logical calls, three attempts each
    with pytest.raises(CircuitOpen) as info:
        down()
    assert calls == 6  # refused without touching the dependency
    assert info.value.retry_after_s == pytest.approx(30.0)


def test_retry_outside_breaker_waits_out_the_open_state() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        "dep", consecutive_failures=1, half_open_requests=1, open_timeout_s=5.0, clock=clock
    )
    retry = Retry(
        attempts_max=3, base_delay_s=0.1, jitter="none", total_timeout_s=60.0, clock=clock
    )
    results = iter([Unavailable("blip"), "ok"])

    def dependency() -> str:
        value = next(results)
        if isinstance(value, Exception):
            raise value
        return value

    # Attempt 1 fails and opens the breaker; attempt 2 is refused with retry_after_s=5,
    # which the retry honours; attempt 3 is the half-open probe and succeeds.
    assert Pipeline(retry, breaker).call(dependency) == "ok"
    assert clock.sleeps_s == [0.1, pytest.approx(4.9)]
    assert breaker.state.value == "closed"


async def test_full_async_stack_bulkhead_breaker_retry_timeout() -> None:
    bulkhead = Bulkhead(max_concurrent=2, max_queue=0, name="inventory")
    breaker = CircuitBreaker("inventory", consecutive_failures=50)
    retry = Retry(attempts_max=2, base_delay_s=0.0, max_delay_s=0.0)
    limiter = TimeLimiter(0.05)
    pipeline = Pipeline(bulkhead, breaker, retry, limiter)
    gate = asyncio.Event()
    seen: list[float | None] = []

    @pipeline
    async def fetch(item: int) -> int:
        seen.append(remaining_s())
        if item < 0:
            await asyncio.sleep(10)  # always times out
        await gate.wait()
        return item

    first = asyncio.create_task(fetch(1))
    second = asyncio.create_task(fetch(2))
    await asyncio.sleep(0.01)
    with pytest.raises(BulkheadFull):
        await fetch(3)  # two calls hold both slots and nobody may queue
    gate.set()
    assert await asyncio.gather(first, second) == [1, 2]
    with pytest.raises(Timeout):
        await fetch(-1)
    assert all(left is not None and left <= 0.05 for left in seen)
    stats = pipeline.statistics()
    assert list(stats) == ["inventory", "inventory#1", "retry", "timeout"]
    assert retry.statistics().retries == 1


async def test_acall_accepts_plain_callables_returning_awaitables() -> None:
    async def value() -> int:
        return 7

    pipeline = Pipeline(Retry())
    assert await pipeline.acall(lambda: value()) == 7  # noqa: PLW0108 - not a coroutine fn
    with pytest.raises(TypeError, match="acall"):
        pipeline.call(value)  # type: ignore[arg-type]


def test_bad_pipelines() -> None:
    with pytest.raises(ValueError, match="policies"):
        Pipeline()
    with pytest.raises(ValueError, match="policies"):
        Pipeline(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most"):
        Pipeline(*[Retry() for _ in range(17)])
