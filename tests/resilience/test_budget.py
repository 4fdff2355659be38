import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.clock import ManualClock
from phalanx.errors import Timeout, Unavailable
from phalanx.resilience.budget import AdaptiveThrottle, RetryBudget
from phalanx.resilience.window import BucketWindow


def test_budget_floor_allows_quiet_clients_to_retry() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_retries_per_s=1.0, window_s=10.0, clock=clock)
    allowed = sum(budget.try_withdraw() for _ in range(50))
    assert allowed == 10  # one per second over a 10 s window


def test_budget_ratio_of_requests() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio="20%", min_retries_per_s=0.0, clock=clock)
    for _ in range(50):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(50)) == 10


def test_budget_recovers_when_the_window_slides() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.5, min_retries_per_s=0.0, window_s=10.0, clock=clock)
    for _ in range(10):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(10)) == 5
    assert not budget.try_withdraw()
    clock.advance(11.0)  # old requests and retries fall out of the window
    assert budget.statistics().requests_in_window == 0
    for _ in range(4):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(10)) == 2


@settings(max_examples=50, deadline=None)
@given(
    ratio=st.floats(min_value=0.0, max_value=1.0),
    ops=st.lists(st.tuples(st.booleans(), st.floats(min_value=0, max_value=3)), max_size=300),
)
def test_budget_never_exceeds_ratio_in_window(ratio: float, ops: list[tuple[bool, float]]) -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=ratio, min_retries_per_s=0.0, window_s=10.0, clock=clock)
    for is_retry, step in ops:
        clock.advance(step)
        if not is_retry:
            budget.deposit()
        elif budget.try_withdraw():
            # Checked when a retry is granted: older requests may slide out of the window
            # before the retries they paid for, as in every windowed budget.
            stats = budget.statistics()
            assert stats.retries_in_window <= ratio * stats.requests_in_window + 1e-9


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": "120%"}, "ratio"),
        ({"min_retries_per_s": -1}, "min_retries_per_s"),
        ({"window_s": 0}, "window_s"),
    ],
)
def test_budget_bad_configuration(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryBudget(**kwargs)  # type: ignore[arg-type]


def test_throttle_probability_is_the_sre_formula() -> None:
    clock = ManualClock()
    throttle = AdaptiveThrottle(k=2.0, clock=clock, rng=random.Random(0))
    assert throttle.reject_probability() == 0.0
    # 100 requests, 10 accepted: p = (100 - 2*10) / (100 + 1)
    for index in range(100):
        throttle._window.add(0, clock.now_s())
        if index < 10:
            throttle._window.add(1, clock.now_s())
    assert throttle.reject_probability() == pytest.approx(80 / 101)


def test_throttle_sheds_load_from_a_failing_backend_and_recovers() -> None:
    clock = ManualClock()
    throttle = AdaptiveThrottle(k=2.0, window_s=60.0, clock=clock, rng=random.Random(1))
    backend_calls = 0

    def failing() -> None:
        nonlocal backend_calls
        backend_calls += 1
        raise Unavailable("overloaded")

    for _ in range(1000):
        with pytest.raises(Unavailable):
            throttle.call(failing)
    # Most requests never reached the backend once it was refusing everything.
    assert backend_calls < 100
    assert throttle.statistics().rejected_locally == 1000 - backend_calls

    clock.advance(61.0)  # the window forgets the outage
    assert throttle.reject_probability() == 0.0
    assert throttle.call(lambda: "ok") == "ok"


def test_throttle_counts_application_errors_as_accepted() -> None:
    throttle = AdaptiveThrottle(clock=ManualClock(), rng=random.Random(0))
    for _ in range(100):
        with pytest.raises(KeyError):
            throttle.call(lambda: {}["missing"])
    assert throttle.reject_probability() == 0.0
    assert throttle.statistics().accepts_in_window == 100


async def test_throttle_async_and_decorator() -> None:
    throttle = AdaptiveThrottle(clock=ManualClock(), rng=random.Random(0))

    @throttle
    async def slow() -> None:
        raise Timeout("slow")

    for _ in range(50):
        with pytest.raises((Timeout, Unavailable)):
            await slow()
    assert throttle.statistics().rejected_locally > 0


def test_throttle_bad_configuration() -> None:
    with pytest.raises(ValueError, match="k"):
        AdaptiveThrottle(k=0.5)
    with pytest.raises(ValueError, match="window_s"):
        AdaptiveThrottle(window_s=-1)
    with pytest.raises(ValueError, match="overload_on"):
        AdaptiveThrottle(overload_on=(1,))  # type: ignore[arg-type]


def test_bucket_window_limits() -> None:
    with pytest.raises(ValueError, match="buckets"):
        BucketWindow(10.0, buckets=10_000)
    window = BucketWindow(10.0, buckets=10, counters=1)
    window.add(0, 0.0, 5)
    window.add(0, 9.5, 1)
    assert window.total(0, 9.9) == 6
    assert window.total(0, 10.5) == 1  # the first bucket slid out
    assert window.total(0, 1000.0) == 0


async def test_throttle_as_a_context_manager() -> None:
    clock = ManualClock()
    throttle = AdaptiveThrottle(clock=clock, rng=random.Random(4))
    with throttle:
        pass
    async with throttle:
        pass
    assert throttle.statistics().accepts_in_window == 2
    rejected = 0
    for _ in range(200):
        try:
            with throttle:
                raise Unavailable("overloaded")
        except Unavailable as error:
            rejected += "rejected locally" in str(error)
    assert rejected > 0
    assert throttle.statistics().rejected_locally == rejected
