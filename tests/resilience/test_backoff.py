import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phalanx.resilience.backoff import JITTER_MODES, Backoff


def test_guide_schedule_without_jitter() -> None:
    backoff = Backoff(base_delay_s=1.0, max_delay_s=60.0, jitter="none")
    rng = random.Random(0)
    assert [backoff.delay_s(i, 0.0, rng) for i in range(5)] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_schedule_is_capped() -> None:
    backoff = Backoff(base_delay_s=1.0, max_delay_s=5.0, jitter="none")
    assert [backoff.schedule_s(i) for i in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.schedule_s(10_000) == 5.0  # huge indexes do not overflow


def test_proportional_is_the_guide_formula() -> None:
    backoff = Backoff(base_delay_s=1.0, max_delay_s=100.0, jitter="proportional")
    rng = random.Random(3)
    for attempt in range(5):
        delay = backoff.delay_s(attempt, 0.0, rng)
        assert 2**attempt <= delay <= 2**attempt * 1.1


def test_equal_jitter_keeps_at_least_half() -> None:
    backoff = Backoff(base_delay_s=2.0, max_delay_s=100.0, jitter="equal")
    rng = random.Random(1)
    for attempt in range(6):
        capped = backoff.schedule_s(attempt)
        assert capped / 2 <= backoff.delay_s(attempt, 0.0, rng) <= capped


def test_full_jitter_spreads_delays() -> None:
    backoff = Backoff(base_delay_s=1.0, max_delay_s=100.0, jitter="full")
    rng = random.Random(2)
    delays = [backoff.delay_s(3, 0.0, rng) for _ in range(200)]
    assert min(delays) < 2.0
    assert max(delays) > 6.0
    assert all(0 <= d <= 8.0 for d in delays)


@given(
    mode=st.sampled_from(JITTER_MODES),
    base=st.floats(min_value=0.0, max_value=10.0),
    extra=st.floats(min_value=0.0, max_value=100.0),
    attempt=st.integers(min_value=0, max_value=10**9),
    previous=st.floats(min_value=0.0, max_value=1000.0),
    seed=st.integers(min_value=0, max_value=2**32),
    multiplier=st.floats(min_value=1.0, max_value=1000.0),
)
def test_delay_always_within_bounds(
    mode: str,
    base: float,
    extra: float,
    attempt: int,
    previous: float,
    seed: int,
    multiplier: float,
) -> None:
    backoff = Backoff(
        base_delay_s=base, max_delay_s=base + extra, jitter=mode, multiplier=multiplier
    )
    delay = backoff.delay_s(attempt, previous, random.Random(seed))
    assert 0.0 <= delay <= backoff.max_delay_s


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"jitter": "fuzzy"}, "jitter"),
        ({"base_delay_s": -1.0}, "base_delay_s"),
        ({"base_delay_s": 2.0, "max_delay_s": 1.0}, "max_delay_s"),
        ({"multiplier": 0.5}, "multiplier"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Backoff(**kwargs)  # type: ignore[arg-type]
