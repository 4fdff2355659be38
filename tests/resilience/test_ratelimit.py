"""Token bucket and GCRA rate limiters, driven by a manual clock."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.clock import ManualClock
from phalanx.errors import RateLimited, Unavailable
from phalanx.resilience.deadline import deadline
from phalanx.resilience.events import Event
from phalanx.resilience.ratelimit import (
    BURST_PERMITS_MAX,
    RATE_PER_S_MAX,
    RATE_PER_S_MIN,
    WAIT_S_MAX,
    Gcra,
    RateLimiter,
    TokenBucket,
)

ALGORITHMS: list[type[RateLimiter]] = [TokenBucket, Gcra]


@pytest.fixture(params=ALGORITHMS, ids=lambda cls: cls.__name__)
def algorithm(request: pytest.FixtureRequest) -> type[RateLimiter]:
    return request.param  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate_per_s": 0}, "rate_per_s"),
        ({"rate_per_s": -1}, "rate_per_s"),
        ({"rate_per_s": float("inf")}, "rate_per_s"),
        ({"rate_per_s": float("nan")}, "rate_per_s"),
        ({"rate_per_s": "10"}, "rate_per_s"),
        ({"rate_per_s": 1, "burst": 0}, "burst"),
        ({"rate_per_s": 1, "burst": 2.5}, "burst"),
        ({"rate_per_s": 1, "max_wait_s": -1}, "max_wait_s"),
        ({"rate_per_s": 1, "name": ""}, "name"),
    ],
)
def test_bad_configuration_is_rejected_naming_the_field(
    algorithm: type[RateLimiter], kwargs: dict[str, object], field: str
):
    with pytest.raises(ValueError, match=field):
        algorithm(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field", "limit_name"),
    [
        ({"rate_per_s": RATE_PER_S_MAX * 2}, "rate_per_s", "RATE_PER_S_MAX"),
        ({"rate_per_s": 1e308}, "rate_per_s", "RATE_PER_S_MAX"),
        ({"rate_per_s": RATE_PER_S_MIN / 2}, "rate_per_s", "RATE_PER_S_MIN"),
        ({"rate_per_s": 1e-320}, "rate_per_s", "RATE_PER_S_MIN"),
        ({"rate_per_s": 1, "burst": BURST_PERMITS_MAX + 1}, "burst", "BURST_PERMITS_MAX"),
        ({"rate_per_s": 1, "burst": 10**30}, "burst", "BURST_PERMITS_MAX"),
        ({"rate_per_s": 1, "max_wait_s": WAIT_S_MAX + 1}, "max_wait_s", "WAIT_S_MAX"),
    ],
)
def test_settings_beyond_their_named_limits_are_rejected(
    algorithm: type[RateLimiter], kwargs: dict[str, object], field: str, limit_name: str
):
    with pytest.raises(ValueError, match=f"{field}: .*{limit_name}"):
        algorithm(**kwargs)  # type: ignore[arg-type]


def test_the_fastest_rate_and_largest_burst_are_honoured(algorithm: type[RateLimiter]):
    clock = ManualClock()
    limiter = algorithm(
        rate_per_s=RATE_PER_S_MAX, burst=BURST_PERMITS_MAX, max_wait_s=WAIT_S_MAX, clock=clock
    )
    assert limiter.try_acquire(BURST_PERMITS_MAX)
    assert not limiter.try_acquire()
    clock.advance(BURST_PERMITS_MAX / RATE_PER_S_MAX)
    assert limiter.try_acquire(BURST_PERMITS_MAX)
    assert limiter.statistics().permits == 2 * BURST_PERMITS_MAX


def test_the_slowest_rate_refuses_a_wait_longer_than_the_longest_allowed(
    algorithm: type[RateLimiter],
):
    clock = ManualClock()
    limiter = algorithm(rate_per_s=RATE_PER_S_MIN, max_wait_s=WAIT_S_MAX, clock=clock)
    assert limiter.try_acquire()
    with pytest.raises(RateLimited) as caught:
        limiter.acquire()
    assert caught.value.retry_after_s == pytest.approx(1 / RATE_PER_S_MIN)
    with pytest.raises(ValueError, match=r"max_wait_s: .*WAIT_S_MAX"):
        limiter.acquire(max_wait_s=WAIT_S_MAX * 2)
    clock.advance(1 / RATE_PER_S_MIN)
    assert limiter.acquire(max_wait_s=WAIT_S_MAX) == 0.0


def test_bad_request_sizes_are_rejected(algorithm: type[RateLimiter]):
    limiter = algorithm(rate_per_s=1, burst=3, clock=ManualClock())
    for n in (0, -1, 4, True):
        with pytest.raises(ValueError, match="n:"):
            limiter.try_acquire(n)
    with pytest.raises(ValueError, match="max_wait_s"):
        limiter.acquire(max_wait_s=-1)


def test_burst_then_refill_at_the_rate(algorithm: type[RateLimiter]):
    clock = ManualClock()
    limiter = algorithm(rate_per_s=10, burst=5, clock=clock)
    assert [limiter.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    for _ in range(10):
        clock.advance(0.01)  # 0.1 s in float steps: exactly one token must be back
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    clock.advance(10.0)  # a long quiet period refills only up to the burst
    assert limiter.try_acquire(5)
    assert not limiter.try_acquire()
    stats = limiter.statistics()
    assert (stats.admitted, stats.permits, stats.rejected) == (7, 11, 3)
    assert stats.algorithm == algorithm.algorithm


def test_acquire_waits_with_the_clock_and_returns_the_wait(algorithm: type[RateLimiter]):
    clock = ManualClock()
    limiter = algorithm(rate_per_s=2, burst=1, max_wait_s=1.0, clock=clock)
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == pytest.approx(0.5)
    assert clock.sleeps_s == [pytest.approx(0.5)]
    assert clock.now_s() == pytest.approx(0.5)
    stats = limiter.statistics()
    assert (stats.waited, stats.wait_s_total) == (1, pytest.approx(0.5))


def test_acquire_rejects_with_retry_after_when_the_wait_is_too_long(
    algorithm: type[RateLimiter],
):
    clock = ManualClock()
    events: list[Event] = []
    limiter = algorithm(
        rate_per_s=1, burst=2, max_wait_s=0.5, clock=clock, name="api", listeners=(events.append,)
    )
    limiter.acquire(2)
    with pytest.raises(RateLimited, match="api") as info:
        limiter.acquire()
    assert isinstance(info.value, Unavailable)
    assert info.value.retry_after_s == pytest.approx(1.0)
    assert clock.sleeps_s == []  # a refusal never sleeps
    assert limiter.acquire(max_wait_s=1.0) == pytest.approx(1.0)
    assert [e.kind for e in events] == ["rejected", "waited"]
    assert events[0].data["retry_after_s"] == pytest.approx(1.0)


def test_waiting_callers_queue_behind_each_other(algorithm: type[RateLimiter]):
    clock = ManualClock()
    limiter = algorithm(rate_per_s=1, burst=1, clock=clock, max_wait_s=5)
    limiter.acquire()
    # Reservations stack: the second caller waits 1 s, a third (same instant) would wait 2 s.
    assert limiter._reserve(1, 5.0) == pytest.approx(1.0)
    assert limiter._reserve(1, 5.0) == pytest.approx(2.0)
    assert limiter.statistics().available == pytest.approx(-2.0)
    assert not limiter.try_acquire()


def test_the_propagated_deadline_caps_the_wait(algorithm: type[RateLimiter]):
    clock = ManualClock()
    limiter = algorithm(rate_per_s=1, burst=1, max_wait_s=10, clock=clock)
    limiter.acquire()
    with deadline(0.5, clock=clock), pytest.raises(RateLimited):
        limiter.acquire()
    assert clock.sleeps_s == []


async def test_async_acquire_and_decorators(algorithm: type[RateLimiter]):
    clock = ManualClock()
    limiter = algorithm(rate_per_s=4, burst=1, max_wait_s=1, clock=clock)

    @limiter
    async def fetch(x: int) -> int:
        return x + 1

    @limiter
    def compute(x: int) -> int:
        return x * 2

    assert await fetch(1) == 2
    assert compute(3) == 6
    assert await limiter.acall(fetch.__wrapped__, 5) == 6  # type: ignore[attr-defined]
    assert limiter.call(compute.__wrapped__, 5) == 10  # type: ignore[attr-defined]
    assert await limiter.aacquire(max_wait_s=0.25) == pytest.approx(0.25)
    assert clock.sleeps_s == [pytest.approx(0.25)] * 4
    with pytest.raises(RateLimited):
        await limiter.aacquire(max_wait_s=0)


def test_many_threads_never_get_more_than_the_burst_at_one_instant(
    algorithm: type[RateLimiter],
):
    limiter = algorithm(rate_per_s=1, burst=7, clock=ManualClock())
    admitted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            ok = limiter.try_acquire()
            with lock:
                admitted.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(admitted) == 7
    assert len(admitted) == 80


Operation = tuple[str, float, int]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0, 3), st.just(0)),
        st.tuples(st.just("try"), st.just(0.0), st.integers(1, 4)),
        st.tuples(st.just("acquire"), st.floats(0, 2), st.integers(1, 4)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    rate_per_s=st.floats(0.5, 50),
    burst=st.integers(4, 10),
    ops=operations,
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    algorithm: type[RateLimiter], rate_per_s: float, burst: int, ops: list[Operation]
):
    clock = ManualClock(start_s=100.0)
    limiter = algorithm(rate_per_s=rate_per_s, burst=burst, clock=clock)
    admissions: list[tuple[float, int]] = []
    refusals: list[tuple[float, float | None]] = []
    for op, amount, n in ops:
        if op == "advance":
            clock.advance(amount)
        elif op == "try":
            if limiter.try_acquire(n):
                admissions.append((clock.now_s(), n))
        else:
            try:
                limiter.acquire(n, max_wait_s=amount)
            except RateLimited as exc:
                refusals.append((amount, exc.retry_after_s))
            else:
                admissions.append((clock.now_s(), n))  # after the (virtual) sleep
    # Over every window between two admissions, permits <= burst + rate * length.
    for i, (start_s, _) in enumerate(admissions):
        permits = 0
        for end_s, n in admissions[i:]:
            permits += n
            assert permits <= burst + rate_per_s * (end_s - start_s) + 1e-6
    # A refusal means the permits were further away than the caller was willing to wait.
    assert all(after is not None and after > allowed for allowed, after in refusals)
    total = sum(n for _, n in admissions)
    assert limiter.statistics().permits == total


@pytest.mark.parametrize("seed", range(50))
def test_token_bucket_and_gcra_admit_the_same_calls(seed: int):
    rng = random.Random(seed)
    rate_per_s, burst = rng.uniform(0.5, 50), rng.randint(1, 10)
    clocks = (ManualClock(), ManualClock())
    bucket = TokenBucket(rate_per_s=rate_per_s, burst=burst, clock=clocks[0])
    gcra = Gcra(rate_per_s=rate_per_s, burst=burst, clock=clocks[1])

    def decide(limiter: RateLimiter, op: str, n: int, wait_s: float) -> object:
        if op == "try":
            return limiter.try_acquire(n)
        try:
            return round(limiter.acquire(n, max_wait_s=wait_s), 6)
        except RateLimited:
            return None

    for step in range(80):
        op, n, amount = (
            rng.choice(["advance", "try", "acquire"]),
            rng.randint(1, burst),
            rng.uniform(0, 2),
        )
        if op == "advance":
            for clock in clocks:
                clock.advance(amount)
            continue
        assert decide(bucket, op, n, amount) == decide(gcra, op, n, amount), (seed, step)
