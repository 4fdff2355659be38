"""Behaviour of the circuit breaker that users rely on: when it trips, what it refuses, how it
recovers, which errors count, and how it is configured. Time is a ManualClock throughout."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from phalanx.clock import ManualClock
from phalanx.errors import CircuitOpen, PhalanxError, Unavailable
from phalanx.resilience.breaker import (
    BreakerConfig,
    BreakerState,
    BreakerStatistics,
    CircuitBreaker,
    Permit,
)
from phalanx.resilience.events import Event

GUIDE_MAPPING = {
    "error_threshold": "50%",
    "consecutive_failures": 10,
    "timeout": "30s",
    "half_open_requests": 3,
}
GUIDE_TEXT = """\
error_threshold: 50%
consecutive_failures: 10
timeout: 30s
half_open_requests: 3
"""


class Down(Exception):
    """The dependency failed."""


def ok() -> str:
    return "ok"


def fail() -> str:
    raise Down("dependency down")


def run(breaker: CircuitBreaker, outcomes: str) -> None:
    """Drive calls: 'S' succeeds, 'F' raises Down (swallowed here)."""
    for outcome in outcomes:
        if outcome == "S":
            assert breaker.call(ok) == "ok"
        else:
            with pytest.raises(Down):
                breaker.call(fail)


def transcript(breaker: CircuitBreaker) -> list[tuple[str, str, str, float]]:
    events: list[tuple[str, str, str, float]] = []

    def listener(event: Event) -> None:
        if event.kind == "state_change":
            events.append(
                (
                    str(event.data["from"]),
                    str(event.data["to"]),
                    str(event.data["reason"]),
                    event.at_s,
                )
            )

    breaker.add_listener(listener)
    return events


def make(clock: ManualClock, **options: Any) -> CircuitBreaker:
    options.setdefault("consecutive_failures", None)
    return CircuitBreaker("dep", clock=clock, **options)


# -- tripping -------------------------------------------------------------------------------------


def test_guide_config_trips_after_ten_consecutive_failures_and_recovers() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker.from_config(GUIDE_MAPPING, name="payments", clock=clock)
    log = transcript(breaker)
    # Twenty successes keep the failure rate of what follows below 50%.
    run(breaker, "S" * 20)
    run(breaker, "FFFFFFFFF")
    assert breaker.state is BreakerState.CLOSED
    clock.advance(1.0)
    run(breaker, "F")
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as caught:
        breaker.call(ok)
    assert caught.value.retry_after_s == 30.0
    clock.advance(30.0)
    run(breaker, "SSS")
    assert breaker.state is BreakerState.CLOSED
    assert log == [
        ("closed", "open", "consecutive_failures", 1.0),
        ("open", "half_open", "open_timeout", 31.0),
        ("half_open", "closed", "probes_succeeded", 31.0),
    ]


def test_failure_rate_waits_for_minimum_calls() -> None:
    clock = ManualClock()
    breaker = make(clock, window_size_calls=10, minimum_calls=5, failure_rate_threshold="50%")
    run(breaker, "FFFF")
    assert breaker.state is BreakerState.CLOSED  # 100% failures, but only 4 calls
    run(breaker, "F")
    assert breaker.state is BreakerState.OPEN


def test_success_that_completes_minimum_calls_can_trip() -> None:
    # Five failures wait for calls; the fifth success brings the window to ten calls at
    # exactly 50%, which trips even though the call itself succeeded.
    clock = ManualClock()
    breaker = make(clock, window_size_calls=10, minimum_calls=10, failure_rate_threshold=0.5)
    log = transcript(breaker)
    run(breaker, "FFFFFSSSS")
    assert breaker.state is BreakerState.CLOSED
    run(breaker, "S")
    assert breaker.state is BreakerState.OPEN
    assert [entry[2] for entry in log] == ["failure_rate"]


def test_success_that_completes_minimum_calls_trips_without_listeners() -> None:
    # Same as above with no listener, so the lock-free success path is in play.
    clock = ManualClock()
    breaker = make(clock, window_size_calls=10, minimum_calls=10, failure_rate_threshold=0.5)
    run(breaker, "SSSFFFFF")
    assert breaker.state is BreakerState.CLOSED
    run(breaker, "S")
    assert breaker.state is BreakerState.CLOSED
    run(breaker, "S")
    assert breaker.state is BreakerState.OPEN


def test_count_window_forgets_old_failures() -> None:
    clock = ManualClock()
    breaker = make(clock, window_size_calls=4, minimum_calls=4, failure_rate_threshold=0.5)
    run(breaker, "FSSS")  # 25%
    run(breaker, "SSSS")  # the failure slid out
    stats = breaker.statistics()
    assert (stats.window_calls, stats.window_failures) == (4, 0)
    run(breaker, "F")
    assert breaker.state is BreakerState.CLOSED
    run(breaker, "F")  # window S S F F: 50%
    assert breaker.state is BreakerState.OPEN


def test_time_window_evicts_seconds_that_slid_out() -> None:
    clock = ManualClock()
    breaker = make(
        clock, window_type="time", window_size_s=10, minimum_calls=3, failure_rate_threshold=0.6
    )
    run(breaker, "FF")
    clock.advance(20.0)  # both failures are now outside the 10 s window
    run(breaker, "SS")
    assert breaker.statistics().window_calls == 2
    run(breaker, "F")  # 1 of 3: no trip
    assert breaker.state is BreakerState.CLOSED
    clock.advance(5.0)
    run(breaker, "F")  # 2 of 4 = 50%: below 60%
    assert breaker.state is BreakerState.CLOSED
    run(breaker, "F")  # 3 of 5 = 60%
    assert breaker.state is BreakerState.OPEN


def test_time_window_without_eviction_counts_everything_in_the_window() -> None:
    clock = ManualClock()
    breaker = make(
        clock, window_type="time", window_size_s=10, minimum_calls=3, failure_rate_threshold=0.6
    )
    run(breaker, "FF")
    clock.advance(9.0)  # still inside the window
    run(breaker, "S")
    assert breaker.state is BreakerState.OPEN  # 2 of 3 = 66%


def test_slow_call_rate_trips() -> None:
    clock = ManualClock()
    breaker = make(
        clock,
        window_size_calls=4,
        minimum_calls=4,
        slow_call_duration_s="1s",
        slow_call_rate_threshold="50%",
    )
    log = transcript(breaker)

    def slow() -> str:
        clock.advance(1.5)
        return "late"

    breaker.call(ok)
    breaker.call(slow)
    breaker.call(ok)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.statistics().window_slow_calls == 1
    breaker.call(slow)
    assert breaker.state is BreakerState.OPEN
    assert log[0][2] == "slow_call_rate"
    assert breaker.statistics().slow_calls == 2


def test_call_at_the_slow_threshold_is_not_slow() -> None:
    clock = ManualClock()
    breaker = make(clock, slow_call_duration_s=1.0, minimum_calls=1, window_size_calls=1)
    permit = breaker.acquire()
    permit.success(duration_s=1.0)
    assert breaker.statistics().slow_calls == 0
    breaker.acquire().success(duration_s=1.001)
    assert breaker.statistics().slow_calls == 1


# -- open and half-open ---------------------------------------------------------------------------


def test_open_breaker_rejects_without_calling_and_counts_down_retry_after() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=2, open_timeout_s=30)
    run(breaker, "FF")
    called: list[int] = []
    clock.advance(10.0)
    with pytest.raises(CircuitOpen) as caught:
        breaker.call(lambda: called.append(1))
    assert called == []
    assert caught.value.retry_after_s == pytest.approx(20.0)
    assert isinstance(caught.value, Unavailable)
    assert isinstance(caught.value, PhalanxError)
    assert breaker.statistics().rejections == 1
    assert breaker.retry_after_s() == pytest.approx(20.0)


def test_half_open_admits_exactly_the_configured_probes() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=1, open_timeout_s=5, half_open_requests=3)
    run(breaker, "F")
    clock.advance(5.0)
    permits = [breaker.acquire() for _ in range(3)]
    assert all(p.probe for p in permits)
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpen) as caught:
        breaker.acquire()
    assert caught.value.retry_after_s is None
    assert breaker.try_acquire() is None
    permits[0].success()
    permits[1].success()
    # Two of three probes succeeded and the third is still out: no new probe, still testing.
    assert breaker.try_acquire() is None
    assert breaker.state is BreakerState.HALF_OPEN
    permits[2].success()
    assert breaker.state is BreakerState.CLOSED


def test_one_failed_probe_reopens_for_a_full_timeout() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=1, open_timeout_s=5, half_open_requests=3)
    log = transcript(breaker)
    run(breaker, "F")
    clock.advance(5.0)
    first = breaker.acquire()
    second = breaker.acquire()
    first.success()
    clock.advance(1.0)
    second.failure(Down())
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after_s() == pytest.approx(5.0)
    assert [(f, t, r) for f, t, r, _ in log] == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "open_timeout"),
        ("half_open", "open", "probe_failed"),
    ]


def test_ignored_probe_frees_its_slot() -> None:
    clock = ManualClock()
    breaker = make(
        clock,
        consecutive_failures=1,
        open_timeout_s=1,
        half_open_requests=1,
        ignore_on=KeyError,
    )
    run(breaker, "F")
    clock.advance(1.0)
    with pytest.raises(KeyError):
        breaker.call(lambda: {}["missing"])
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.call(ok) == "ok"
    assert breaker.state is BreakerState.CLOSED


def test_slow_probe_reopens() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=1, open_timeout_s=1, slow_call_duration_s=0.5)
    run(breaker, "F")
    clock.advance(1.0)
    breaker.acquire().success(duration_s=2.0)
    assert breaker.state is BreakerState.OPEN


def test_result_of_a_call_admitted_before_a_trip_is_not_a_probe_result() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=1, open_timeout_s=1, half_open_requests=1)
    early = breaker.acquire()  # admitted while closed
    run(breaker, "F")
    clock.advance(1.0)
    probe = breaker.acquire()
    early.failure(Down())  # stale: must not reopen the half-open breaker
    assert breaker.state is BreakerState.HALF_OPEN
    probe.success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.statistics().failures == 2


# -- what counts as a failure ---------------------------------------------------------------------


def test_failure_on_types_other_exceptions_count_as_success() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=2, failure_on=ConnectionError)
    for _ in range(5):
        with pytest.raises(ValueError):
            breaker.call(lambda: int("x"))
    assert breaker.state is BreakerState.CLOSED
    stats = breaker.statistics()
    assert (stats.successes, stats.failures) == (5, 0)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(lambda: (_ for _ in ()).throw(ConnectionError()))
    assert breaker.state is BreakerState.OPEN


def test_failure_on_predicate_and_types_combined() -> None:
    clock = ManualClock()

    def is_503(error: BaseException) -> bool:
        return "503" in str(error)

    breaker = make(clock, consecutive_failures=2, failure_on=[TimeoutError, is_503])

    def raise_(error: Exception) -> None:
        raise error

    with pytest.raises(RuntimeError):
        breaker.call(raise_, RuntimeError("404"))
    assert breaker.statistics().failures == 0
    with pytest.raises(RuntimeError):
        breaker.call(raise_, RuntimeError("503"))
    with pytest.raises(TimeoutError):
        breaker.call(raise_, TimeoutError())
    assert breaker.state is BreakerState.OPEN


def test_ignore_on_counts_neither_way_and_wins_over_failure_on() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=2, ignore_on=[LookupError])
    run(breaker, "F")
    for _ in range(3):
        with pytest.raises(KeyError):
            breaker.call(lambda: {}["k"])
    stats = breaker.statistics()
    assert (stats.failures, stats.ignored, stats.consecutive_failures) == (1, 3, 1)
    run(breaker, "F")
    assert breaker.state is BreakerState.OPEN


def test_cancellation_counts_neither_way() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=1)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.statistics().ignored == 1


def test_bad_rule_is_rejected() -> None:
    with pytest.raises(ValueError, match="failure_on"):
        CircuitBreaker(failure_on=[42])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="ignore_on"):
        CircuitBreaker(ignore_on=[lambda e: True])  # type: ignore[list-item]


# -- manual control -------------------------------------------------------------------------------


def test_force_open_refuses_until_reset_whatever_the_time() -> None:
    clock = ManualClock()
    breaker = make(clock, open_timeout_s=1)
    log = transcript(breaker)
    breaker.force_open()
    clock.advance(1000.0)
    with pytest.raises(CircuitOpen) as caught:
        breaker.call(ok)
    assert caught.value.retry_after_s is None
    assert breaker.state is BreakerState.OPEN
    assert breaker.statistics().forced_open
    breaker.reset()
    assert breaker.call(ok) == "ok"
    assert [(f, t, r) for f, t, r, _ in log] == [
        ("closed", "open", "forced_open"),
        ("open", "closed", "reset"),
    ]


def test_disable_admits_everything_and_records_nothing() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=1)
    run(breaker, "F")
    assert breaker.state is BreakerState.OPEN
    breaker.disable()
    run(breaker, "FFFFFFFFFF")
    assert breaker.state is BreakerState.CLOSED
    stats = breaker.statistics()
    assert stats.disabled
    assert stats.window_calls == 0
    breaker.reset()
    run(breaker, "F")
    assert breaker.state is BreakerState.OPEN


def test_reset_clears_the_window() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=3)
    run(breaker, "FF")
    breaker.reset()
    run(breaker, "FF")
    assert breaker.state is BreakerState.CLOSED


# -- events and statistics ------------------------------------------------------------------------


def test_per_call_events_only_while_a_listener_is_registered() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=2)
    events: list[Event] = []
    listener = events.append
    run(breaker, "S")
    breaker.add_listener(listener)
    run(breaker, "SF")
    breaker.call(ok)
    run(breaker, "FF")
    with pytest.raises(CircuitOpen):
        breaker.call(ok)
    kinds = [event.kind for event in events]
    assert kinds == [
        "success",
        "failure",
        "success",
        "failure",
        "failure",
        "state_change",
        "rejected",
    ]
    assert events[1].data["error"] == "Down"
    assert all(event.primitive == "breaker" and event.name == "dep" for event in events)
    breaker.remove_listener(listener)
    breaker.reset()
    run(breaker, "S")
    assert len(events) == 7


def test_a_failing_listener_does_not_break_calls() -> None:
    clock = ManualClock()

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker("dep", clock=clock, listeners=[broken], consecutive_failures=1)
    assert breaker.call(ok) == "ok"
    run(breaker, "F")
    assert breaker.state is BreakerState.OPEN


def test_statistics_snapshot() -> None:
    clock = ManualClock()
    breaker = make(clock, window_size_calls=10, minimum_calls=10)
    run(breaker, "SSSF")
    stats = breaker.statistics()
    assert isinstance(stats, BreakerStatistics)
    assert stats.state is BreakerState.CLOSED
    assert (stats.calls, stats.successes, stats.failures) == (4, 3, 1)
    assert stats.failure_rate == pytest.approx(0.25)
    assert stats.window_calls == 4
    assert stats.transitions == 0
    with pytest.raises(AttributeError):
        stats.calls = 0  # type: ignore[misc]


# -- the ways to call -----------------------------------------------------------------------------


def test_decorator_keeps_the_function_and_shares_state() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=2)

    @breaker
    def add(a: int, b: int = 0) -> int:
        """Adds."""
        return a + b

    @breaker
    def broken() -> None:
        raise Down

    assert add(1, b=2) == 3
    assert add.__name__ == "add"
    assert add.__doc__ == "Adds."
    for _ in range(2):
        with pytest.raises(Down):
            broken()
    with pytest.raises(CircuitOpen):
        add(1)


async def test_async_decorator_acall_and_async_with() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=3, open_timeout_s=1, half_open_requests=1)

    @breaker
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    async def down() -> None:
        await asyncio.sleep(0)
        raise Down

    assert inspect.iscoroutinefunction(fetch)
    assert await fetch(2) == 4
    assert await breaker.acall(fetch, 3) == 6
    with pytest.raises(Down):
        await breaker.acall(down)
    with pytest.raises(Down):
        async with breaker:
            await down()
    with pytest.raises(Down):
        await breaker(down)()
    with pytest.raises(CircuitOpen):
        await fetch(1)
    clock.advance(1.0)
    async with breaker as permit:
        assert permit is not None
        assert permit.probe
    assert breaker.state is BreakerState.CLOSED


def test_with_block_counts_exceptions_leaving_it() -> None:
    clock = ManualClock()
    breaker = make(clock, consecutive_failures=2)
    other = make(clock, consecutive_failures=1)
    with breaker:
        pass
    with pytest.raises(Down), breaker, other:
        raise Down
    assert other.state is BreakerState.OPEN
    assert breaker.statistics().failures == 1
    with pytest.raises(Down), breaker:
        raise Down
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen), breaker:
        pytest.fail("the block must not run while open")


def test_exit_without_enter_is_an_error() -> None:
    breaker = CircuitBreaker()
    with pytest.raises(RuntimeError, match="without __enter__"):
        breaker.__exit__(None, None, None)


def test_permit_reports_once() -> None:
    breaker = CircuitBreaker()
    permit = breaker.acquire()
    assert isinstance(permit, Permit)
    permit.success(0.01)
    with pytest.raises(RuntimeError, match="already"):
        permit.failure()
    permit2 = breaker.try_acquire()
    assert permit2 is not None
    permit2.release()
    assert breaker.statistics().ignored == 1


def test_permit_record_exception_applies_the_rules() -> None:
    breaker = CircuitBreaker(consecutive_failures=1, ignore_on=KeyError)
    breaker.acquire().record_exception(KeyError("k"))
    assert breaker.state is BreakerState.CLOSED
    breaker.acquire().record_exception(Down())
    assert breaker.state is BreakerState.OPEN


# -- configuration --------------------------------------------------------------------------------


def test_guide_example_as_mapping_and_as_text_give_the_same_config() -> None:
    from_mapping = BreakerConfig.from_mapping(GUIDE_MAPPING)
    from_text = CircuitBreaker.from_config(GUIDE_TEXT).config
    assert from_mapping == from_text
    assert from_mapping.failure_rate_threshold == 0.5
    assert from_mapping.consecutive_failures == 10
    assert from_mapping.open_timeout_s == 30.0
    assert from_mapping.half_open_requests == 3
    # The defaults are the guide's example.
    assert BreakerConfig() == from_mapping


def test_text_config_skips_comments_and_blank_lines() -> None:
    config = BreakerConfig.from_mapping(
        "# payments\n\nerror_threshold: 25%\nwindow_type: time\nwindow_size_s: 2m\n"
        "slow_call_duration: 250ms\nconsecutive_failures: off\n"
    )
    assert config.failure_rate_threshold == 0.25
    assert config.window_type == "time"
    assert config.window_size_s == 120
    assert config.slow_call_duration_s == pytest.approx(0.25)
    assert config.consecutive_failures is None


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"error_treshold": "50%"}, "error_treshold"),
        ("timeout: 30s\nretries: 3", "retries"),
        ({"timeout": "30s", "open_timeout_s": 10}, "open_timeout_s"),
        ("timeout: 30s\ntimeout: 40s", "timeout"),
        ("just words", "line 1"),
    ],
)
def test_bad_keys_are_named(config: dict[str, object] | str, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        CircuitBreaker.from_config(config)


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("error_threshold", "50", "failure_rate_threshold"),
        ("error_threshold", "150%", "failure_rate_threshold"),
        ("error_threshold", 1.5, "failure_rate_threshold"),
        ("error_threshold", "0%", "failure_rate_threshold"),
        ("timeout", "30", "open_timeout_s"),
        ("timeout", "-1s", "open_timeout_s"),
        ("timeout", -5, "open_timeout_s"),
        ("timeout", "2d", "open_timeout_s"),
        ("timeout", 10**9, "open_timeout_s"),
        ("consecutive_failures", 0, "consecutive_failures"),
        ("consecutive_failures", "ten", "consecutive_failures"),
        ("half_open_requests", 0, "half_open_requests"),
        ("half_open_requests", 10**6, "half_open_requests"),
        ("window_size_calls", 10**7, "window_size_calls"),
        ("window_size_s", "1.5s", "window_size_s"),
        ("window_size_s", 7200, "window_size_s"),
        ("minimum_calls", 1000, "minimum_calls"),
        ("window_type", "sliding", "window_type"),
        ("slow_call_duration_s", "-2s", "slow_call_duration_s"),
        ("slow_call_rate_threshold", "101%", "slow_call_rate_threshold"),
        ("refresh_interval_s", 0, "refresh_interval_s"),
    ],
)
def test_invalid_values_name_the_field(key: str, value: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CircuitBreaker.from_config({key: value})


def test_constructor_validates_too() -> None:
    with pytest.raises(ValueError, match="open_timeout_s"):
        CircuitBreaker(open_timeout_s=-1)
    with pytest.raises(ValueError, match="name"):
        CircuitBreaker("")
    with pytest.raises(ValueError, match="minimum_calls"):
        CircuitBreaker(window_size_calls=5, minimum_calls=6)
    # A time window has no call count limit, so any minimum is reachable.
    assert CircuitBreaker(window_type="time", minimum_calls=500).config.minimum_calls == 500


def test_config_text_size_is_bounded() -> None:
    with pytest.raises(ValueError, match="config"):
        BreakerConfig.from_mapping("# x\n" * 5000)
