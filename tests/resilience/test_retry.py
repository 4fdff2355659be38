import asyncio
import random
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.clock import ManualClock
from phalanx.errors import (
    BadRequest,
    CircuitOpen,
    Indeterminate,
    RetryError,
    Timeout,
    Unavailable,
)
from phalanx.resilience.budget import RetryBudget
from phalanx.resilience.deadline import deadline, remaining_s
from phalanx.resilience.events import Event
from phalanx.resilience.keys import idempotency_key
from phalanx.resilience.retry import Retry


def flaky(failures: int, error: BaseException | None = None) -> Callable[[], str]:
    """A function that fails ``failures`` times, then returns "ok"."""
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise error if error is not None else Unavailable("down")
        return "ok"

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def test_guide_schedule_1_2_4_8_16() -> None:
    clock = ManualClock()
    retry = Retry(
        attempts_max=6,
        base_delay_s="1s",
        max_delay_s="60s",
        jitter="none",
        total_timeout_s="120s",
        clock=clock,
    )
    assert retry.call(flaky(5)) == "ok"
    assert clock.sleeps_s == [1.0, 2.0, 4.0, 8.0, 16.0]
    stats = retry.statistics()
    assert (stats.calls, stats.attempts, stats.retries, stats.gave_up) == (1, 6, 5, 0)
    assert stats.retry_delay_s_total == 31.0


def test_success_first_time_never_sleeps() -> None:
    clock = ManualClock()
    retry = Retry(clock=clock)
    assert retry(lambda: 42)() == 42
    assert clock.sleeps_s == []
    assert retry.statistics().attempts == 1


def test_gives_up_after_attempts_max_and_reraises_with_a_note() -> None:
    clock = ManualClock()
    fn = flaky(10)
    retry = Retry(attempts_max=3, jitter="none", base_delay_s=1.0, clock=clock)
    with pytest.raises(Unavailable) as info:
        retry.call(fn)
    assert fn.calls["n"] == 3  # type: ignore[attr-defined]
    assert any("attempts_max reached" in note for note in info.value.__notes__)
    assert retry.statistics().gave_up_by_reason == {"attempts": 1}


def test_reraise_false_wraps_in_retry_error() -> None:
    retry = Retry(attempts_max=2, clock=ManualClock(), reraise=False)
    with pytest.raises(RetryError) as info:
        retry.call(flaky(5))
    assert info.value.attempts == 2
    assert isinstance(info.value.last_exception, Unavailable)


def test_not_retryable_errors_propagate_at_once() -> None:
    clock = ManualClock()
    fn = flaky(5, BadRequest("bad"))
    with pytest.raises(BadRequest):
        Retry(clock=clock).call(fn)
    assert fn.calls["n"] == 1  # type: ignore[attr-defined]
    assert clock.sleeps_s == []


def test_value_error_is_not_retried_by_default_but_can_be() -> None:
    clock = ManualClock()
    with pytest.raises(ValueError, match="nope"):
        Retry(clock=clock).call(flaky(1, ValueError("nope")))
    assert Retry(retry_on=(ValueError,), clock=clock).call(flaky(1, ValueError("x"))) == "ok"
    predicate = Retry(retry_on=lambda e: "transient" in str(e), clock=clock)
    assert predicate.call(flaky(2, RuntimeError("transient glitch"))) == "ok"


def test_total_timeout_bounds_the_loop() -> None:
    clock = ManualClock()
    retry = Retry(
        attempts_max=100,
        base_delay_s=1.0,
        max_delay_s=100.0,
        jitter="none",
        total_timeout_s=20.0,
        clock=clock,
    )
    with pytest.raises(Unavailable) as info:
        retry.call(flaky(1000))
    # 1 + 2 + 4 + 8 = 15 s slept; the next 16 s wait would cross the 20 s deadline.
    assert clock.sleeps_s == [1.0, 2.0, 4.0, 8.0]
    assert any("deadline" in note for note in info.value.__notes__)


def test_nested_calls_see_the_remaining_budget() -> None:
    clock = ManualClock()
    seen: list[float | None] = []

    def inner() -> str:
        seen.append(remaining_s())
        clock.advance(3.0)  # the attempt takes 3 s
        raise Unavailable("slow")

    retry = Retry(
        attempts_max=3,
        base_delay_s=1.0,
        jitter="none",
        total_timeout_s=20.0,
        timeout_per_attempt_s=5.0,
        clock=clock,
    )
    with pytest.raises(Unavailable):
        retry.call(inner)
    # Attempt 1 at t=0 gets its 5 s attempt budget; attempt 2 at t=4, attempt 3 at t=9.
    assert seen == [5.0, 5.0, 5.0]
    assert clock.now_s() == 3 + 1 + 3 + 2 + 3


def test_outer_deadline_caps_the_retry() -> None:
    clock = ManualClock()
    seen: list[float | None] = []

    def inner() -> str:
        seen.append(remaining_s())
        raise Unavailable("down")

    retry = Retry(attempts_max=10, base_delay_s=1.0, jitter="none", clock=clock)
    with deadline(2.5, clock=clock), pytest.raises(Unavailable):
        retry.call(inner)
    assert seen == [2.5, 1.5]  # a 2 s wait would pass the caller's deadline


def test_decorated_sync_function_publishes_its_deadline() -> None:
    clock = ManualClock()
    retry = Retry(total_timeout_s=7.0, clock=clock)

    @retry
    def fn() -> float | None:
        return remaining_s()

    assert fn() == 7.0
    with deadline(3.0, clock=clock):
        assert fn() == 3.0


def test_retry_after_hint_is_honoured() -> None:
    clock = ManualClock()
    retry = Retry(base_delay_s=0.1, jitter="none", clock=clock)
    assert retry.call(flaky(1, CircuitOpen("open", retry_after_s=7.5))) == "ok"
    assert clock.sleeps_s == [7.5]


def test_retry_after_longer_than_allowed_gives_up() -> None:
    clock = ManualClock()
    retry = Retry(retry_after_max_s=10.0, clock=clock)
    with pytest.raises(Unavailable) as info:
        retry.call(flaky(1, Unavailable("busy", retry_after_s=3600)))
    assert clock.sleeps_s == []
    assert any("retry_after_max_s" in note for note in info.value.__notes__)


def test_custom_retry_after_extractor() -> None:
    class Http503(Exception):
        def __init__(self) -> None:
            super().__init__("unavailable")
            self.headers = {"Retry-After": "4"}

    clock = ManualClock()
    retry = Retry(
        retry_on=(Http503,),
        retry_after=lambda e: float(e.headers["Retry-After"]),  # type: ignore[attr-defined]
        jitter="none",
        base_delay_s=0.5,
        clock=clock,
    )
    assert retry.call(flaky(1, Http503())) == "ok"
    assert clock.sleeps_s == [4.0]


def test_result_predicate() -> None:
    clock = ManualClock()
    results = iter([None, None, "done"])
    retry = Retry(retry_if_result=lambda r: r is None, clock=clock)
    assert retry.call(lambda: next(results)) == "done"
    never = Retry(attempts_max=3, retry_if_result=lambda r: True, clock=clock)
    with pytest.raises(RetryError) as info:
        never.call(lambda: "still bad")
    assert info.value.last_result == "still bad"
    assert info.value.last_exception is None


def test_non_idempotent_call_is_not_retried_after_an_indeterminate_failure() -> None:
    clock = ManualClock()
    retry = Retry(idempotent=False, clock=clock)
    fn = flaky(1, Timeout("no answer"))
    with pytest.raises(Timeout) as info:
        retry.call(fn)
    assert fn.calls["n"] == 1  # type: ignore[attr-defined]
    assert any("not idempotent" in note for note in info.value.__notes__)


def test_non_idempotent_call_is_retried_when_the_failure_had_no_effect() -> None:
    retry = Retry(idempotent=False, clock=ManualClock())
    assert retry.call(flaky(2, Unavailable("refused before doing anything"))) == "ok"


def test_non_idempotent_call_is_retried_with_an_idempotency_key() -> None:
    retry = Retry(idempotent=False, clock=ManualClock())
    with idempotency_key("order-42"):
        assert retry.call(flaky(2, Indeterminate("lost reply"))) == "ok"


def test_budget_stops_a_retry_storm() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.1, min_retries_per_s=0.0, window_s=10.0, clock=clock)
    retry = Retry(attempts_max=5, budget=budget, clock=clock)
    for _ in range(100):
        with pytest.raises(Unavailable):
            retry.call(flaky(1000))
    # 100 requests allow 10 retries, however many each call wanted.
    assert retry.statistics().retries == 10
    # Every call ended on a refused withdrawal: the budget, not attempts_max, stopped them.
    assert budget.statistics().retries_refused == 100
    assert retry.statistics().gave_up_by_reason == {"budget": 100}


def test_events_are_emitted() -> None:
    events: list[Event] = []
    retry = Retry(attempts_max=2, clock=ManualClock(), listeners=(events.append,), name="db")
    with pytest.raises(Unavailable):
        retry.call(flaky(5))
    assert [(e.primitive, e.name, e.kind) for e in events] == [
        ("retry", "db", "retry"),
        ("retry", "db", "gave_up"),
    ]
    assert events[1].data["reason"] == "attempts"


def test_a_failing_listener_does_not_break_the_call() -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    retry = Retry(clock=ManualClock(), listeners=(broken,))
    assert retry.call(flaky(1)) == "ok"


def test_keyboard_interrupt_is_never_retried() -> None:
    fn = flaky(1, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        Retry(retry_on=(BaseException,), clock=ManualClock()).call(fn)
    assert fn.calls["n"] == 1  # type: ignore[attr-defined]
    assert remaining_s() is None  # the deadline scope was closed on the way out


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"attempts_max": 0}, "attempts_max"),
        ({"attempts_max": 10**6}, "attempts_max"),
        ({"total_timeout_s": -5}, "total_timeout_s"),
        ({"total_timeout_s": float("inf")}, "total_timeout_s"),
        ({"total_timeout_s": "20"}, "total_timeout_s"),
        ({"timeout_per_attempt_s": 0}, "timeout_per_attempt_s"),
        ({"jitter": "random"}, "jitter"),
        ({"base_delay_s": "1 second"}, "base_delay_s"),
        ({"retry_on": (int,)}, "retry_on"),
        ({"retry_on": 3}, "retry_on"),
        ({"retry_if_result": "yes"}, "retry_if_result"),
        ({"retry_after": 5}, "retry_after"),
        ({"budget": "x"}, "budget"),
        ({"multiplier": 1e6}, "multiplier"),
        ({"total_timeout_s": "30d"}, "total_timeout_s"),
        ({"total_timeout_s": 1e9}, "total_timeout_s"),
        ({"timeout_per_attempt_s": 1e9}, "timeout_per_attempt_s"),
        ({"max_delay_s": "48h"}, "max_delay_s"),
        ({"retry_after_max_s": 1e7}, "retry_after_max_s"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Retry(**kwargs)  # type: ignore[arg-type]


def test_thread_safe_statistics() -> None:
    retry = Retry(clock=ManualClock())
    fn = retry(lambda: None)

    def hammer() -> None:
        for _ in range(2000):
            fn()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert retry.statistics().calls == 16_000


# -- async -----------------------------------------------------------------------------


async def test_async_decorator_retries() -> None:
    clock = ManualClock()
    calls = 0

    @Retry(base_delay_s=1.0, jitter="none", clock=clock)
    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("reset")
        return "ok"

    assert await fetch() == "ok"
    assert clock.sleeps_s == [1.0, 2.0]


async def test_async_per_attempt_timeout_cancels_and_retries() -> None:
    calls = 0

    async def slow_then_fast() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)  # cancelled by the 50 ms attempt timeout
        return "fast"

    retry = Retry(timeout_per_attempt_s=0.05, base_delay_s=0.0, max_delay_s=0.0)
    assert await retry.acall(slow_then_fast) == "fast"
    assert calls == 2


async def test_async_attempt_timeout_gives_up_with_timeout() -> None:
    async def hang() -> None:
        await asyncio.sleep(10)

    retry = Retry(attempts_max=2, timeout_per_attempt_s=0.02, base_delay_s=0.0, max_delay_s=0.0)
    with pytest.raises(Timeout):
        await retry.acall(hang)


async def test_async_inner_timeout_error_is_not_mistaken_for_ours() -> None:
    async def raises_timeout() -> None:
        raise TimeoutError("from the callee")

    retry = Retry(attempts_max=2, timeout_per_attempt_s=5.0, clock=ManualClock())
    with pytest.raises(TimeoutError, match="from the callee"):
        await retry.acall(raises_timeout)


async def test_async_sees_budget_and_result_predicate() -> None:
    clock = ManualClock()
    values = iter([0, 0, 7])
    seen: list[float | None] = []

    async def fn() -> int:
        seen.append(remaining_s())
        return next(values)

    retry = Retry(
        total_timeout_s=9.0,
        base_delay_s=1.0,
        jitter="none",
        retry_if_result=lambda v: v == 0,
        clock=clock,
    )
    assert await retry.acall(fn) == 7
    assert seen == [9.0, 8.0, 6.0]


# -- properties --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    failures=st.integers(min_value=0, max_value=30),
    attempts_max=st.integers(min_value=1, max_value=12),
    total_timeout_s=st.floats(min_value=0.5, max_value=100.0),
    seed=st.integers(min_value=0, max_value=1000),
    jitter=st.sampled_from(["full", "equal", "decorrelated", "proportional", "none"]),
)
def test_never_exceeds_attempts_or_deadline(
    failures: int, attempts_max: int, total_timeout_s: float, seed: int, jitter: str
) -> None:
    clock = ManualClock()
    fn = flaky(failures)
    retry = Retry(
        attempts_max=attempts_max,
        total_timeout_s=total_timeout_s,
        base_delay_s=0.5,
        max_delay_s=10.0,
        jitter=jitter,
        clock=clock,
        rng=random.Random(seed),
    )
    try:
        result = retry.call(fn)
    except Unavailable:
        result = None
    calls = fn.calls["n"]  # type: ignore[attr-defined]
    assert calls <= attempts_max
    assert clock.now_s() < total_timeout_s
    if result == "ok":
        assert calls == failures + 1


def test_light_mode_skips_publishing_on_first_attempts_but_keeps_bounds() -> None:
    clock = ManualClock()
    retry = Retry(
        attempts_max=10,
        base_delay_s=1.0,
        jitter="none",
        total_timeout_s=5.0,
        propagate_deadline=False,
        clock=clock,
    )
    seen: list[float | None] = []
    calls = {"n": 0}

    @retry
    def fn() -> str:
        calls["n"] += 1
        seen.append(remaining_s())
        raise Unavailable("down")

    with pytest.raises(Unavailable):
        fn()
    assert seen[0] is None  # the first attempt publishes nothing
    assert seen[1:] == [4.0, 2.0]  # retries run inside the 5 s deadline
    assert calls["n"] == 3
    with deadline(1.5, clock=clock), pytest.raises(Unavailable):
        fn()  # the caller's shorter deadline still bounds the loop
    assert calls["n"] == 5


async def test_async_decorator_publishes_deadline_and_checks_results() -> None:
    clock = ManualClock()
    values = iter([None, 5])
    seen: list[float | None] = []

    @Retry(
        total_timeout_s=6.0,
        base_delay_s=1.0,
        jitter="none",
        retry_if_result=lambda v: v is None,
        clock=clock,
    )
    async def fn() -> int | None:
        seen.append(remaining_s())
        return next(values)

    assert await fn() == 5
    assert seen == [6.0, 5.0]
    assert remaining_s() is None


async def test_async_decorator_closes_its_scope_on_cancellation() -> None:
    @Retry(clock=ManualClock())
    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await cancelled()
    assert remaining_s() is None


def test_attempts_loop_retries_a_block() -> None:
    clock = ManualClock()
    retry = Retry(base_delay_s=1.0, jitter="none", timeout_per_attempt_s=3.0, clock=clock)
    fn = flaky(2)
    seen: list[float | None] = []
    numbers = []
    for attempt in retry.attempts():
        with attempt:
            numbers.append(attempt.number)
            seen.append(remaining_s())
            result = fn()
    assert result == "ok"
    assert numbers == [1, 2, 3]
    assert seen == [3.0, 3.0, 3.0]  # each block runs under its attempt's deadline
    assert clock.sleeps_s == [1.0, 2.0]
    assert remaining_s() is None
    assert retry.statistics().retries == 2


def test_attempts_loop_gives_up_with_the_last_error() -> None:
    retry = Retry(attempts_max=2, clock=ManualClock())
    count = 0
    with pytest.raises(Unavailable) as info:
        for attempt in retry.attempts():
            with attempt:
                count += 1
                raise Unavailable("down")
    assert count == 2
    assert any("attempts_max" in note for note in info.value.__notes__)


def test_attempts_loop_does_not_retry_non_retryable_errors() -> None:
    count = 0
    with pytest.raises(BadRequest):
        for attempt in Retry(clock=ManualClock()).attempts():
            with attempt:
                count += 1
                raise BadRequest("no")
    assert count == 1


async def test_async_attempts_loop() -> None:
    clock = ManualClock()
    fn = flaky(1)
    async for attempt in Retry(base_delay_s=2.0, jitter="none", clock=clock).aattempts():
        with attempt:
            await asyncio.sleep(0)
            value = fn()
    assert value == "ok"
    assert clock.sleeps_s == [2.0]


async def test_per_attempt_timeout_is_capped_by_the_total_deadline() -> None:
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)

    retry = Retry(
        attempts_max=5,
        total_timeout_s=0.05,
        timeout_per_attempt_s=10.0,
        base_delay_s=0.0,
        max_delay_s=0.0,
    )
    with pytest.raises(Timeout):
        await retry.acall(slow)
    # The first attempt was cancelled at the 50 ms total deadline, not its own 10 s limit,
    # and no attempt started after it.
    assert calls == 1


def test_every_call_form_deposits_in_the_budget() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_s=0.0, clock=clock)
    retry = Retry(budget=budget, clock=clock)
    retry.call(lambda: 1)
    retry(lambda: 1)()
    Retry(budget=budget, propagate_deadline=False, clock=clock)(lambda: 1)()
    assert budget.statistics().requests_in_window == 3


async def test_async_call_forms_deposit_and_check_results() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_s=0.0, clock=clock)
    values = iter([0, 1, 0, 2])
    retry = Retry(budget=budget, retry_if_result=lambda v: v == 0, clock=clock)

    async def next_value() -> int:
        return next(values)

    assert await retry.acall(next_value) == 1
    assert await retry(next_value)() == 2
    assert budget.statistics().requests_in_window == 2
    assert retry.statistics().retries == 2


async def test_async_decorator_with_a_per_attempt_timeout() -> None:
    calls = 0

    @Retry(timeout_per_attempt_s=0.02, base_delay_s=0.0, max_delay_s=0.0)
    async def slow_once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return "ok"

    assert await slow_once() == "ok"
    assert calls == 2


def test_sync_decorator_result_predicate_and_light_mode_result_predicate() -> None:
    clock = ManualClock()
    for light in (False, True):
        values = iter([None, 3])
        retry = Retry(
            retry_if_result=lambda v: v is None, propagate_deadline=not light, clock=clock
        )
        assert retry(values.__next__)() == 3


def test_repr_names_the_policy() -> None:
    assert "attempts_max=4" in repr(Retry(name="db"))
    assert "Backoff(" in repr(Retry())
