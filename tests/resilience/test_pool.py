"""The bounded resource pool: lazy creation, limits, reuse and broken resources."""

from __future__ import annotations

import asyncio
import itertools
import threading
from contextlib import ExitStack

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.errors import BulkheadFull
from phalanx.resilience.pool import (
    ACQUIRE_TIMEOUT_S_MAX,
    POOL_SIZE_MAX,
    WAITING_CALLERS_MAX,
    BoundedPool,
)

JOIN_S = 30.0


class Conn:
    """A fake connection that knows whether it was closed."""

    ids = itertools.count()

    def __init__(self) -> None:
        self.id = next(self.ids)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def make_pool(**kwargs: object) -> tuple[BoundedPool[Conn], list[Conn]]:
    made: list[Conn] = []

    def factory() -> Conn:
        conn = Conn()
        made.append(conn)
        return conn

    kwargs.setdefault("close", Conn.close)
    return BoundedPool(factory, **kwargs), made  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_size": 0}, "max_size"),
        ({"max_idle": -1}, "max_idle"),
        ({"max_size": 2, "max_idle": 3}, "max_idle"),
        ({"acquire_timeout_s": -1}, "acquire_timeout_s"),
        ({"max_waiting": -1}, "max_waiting"),
        ({"broken_on": (ValueError, 3)}, "broken_on"),
        ({"close": 5}, "close"),
        ({"afactory": "connect"}, "afactory"),
    ],
)
def test_bad_configuration_is_rejected_naming_the_field(kwargs: dict[str, object], field: str):
    with pytest.raises(ValueError, match=field):
        make_pool(**kwargs)


@pytest.mark.parametrize(
    ("field", "limit", "limit_name"),
    [
        ("max_size", POOL_SIZE_MAX, "POOL_SIZE_MAX"),
        ("max_waiting", WAITING_CALLERS_MAX, "WAITING_CALLERS_MAX"),
        ("acquire_timeout_s", ACQUIRE_TIMEOUT_S_MAX, "ACQUIRE_TIMEOUT_S_MAX"),
    ],
)
def test_each_setting_has_a_named_upper_limit(field: str, limit: float, limit_name: str):
    pool, _ = make_pool(**{field: limit})
    assert getattr(pool, field) == limit
    with pytest.raises(ValueError, match=f"{field}: .*{limit_name}"):
        make_pool(**{field: limit + 1})


def test_a_pool_of_the_largest_size_lends_that_many_resources_and_no_more():
    pool, made = make_pool(max_size=POOL_SIZE_MAX, acquire_timeout_s=0)
    with ExitStack() as stack:
        lent = [stack.enter_context(pool.acquire()) for _ in range(POOL_SIZE_MAX)]
        with pytest.raises(BulkheadFull), pool.acquire():
            pass
        assert pool.statistics().in_use == POOL_SIZE_MAX
    assert len(lent) == len(made) == POOL_SIZE_MAX
    assert pool.statistics().idle == POOL_SIZE_MAX


def test_factory_must_be_callable():
    with pytest.raises(ValueError, match="factory"):
        BoundedPool(42)  # type: ignore[arg-type]


def test_resources_are_created_lazily_and_reused():
    pool, made = make_pool(max_size=3)
    assert made == []
    with pool.acquire() as first:
        pass
    with pool.acquire() as again:
        assert again is first
    assert len(made) == 1
    stats = pool.statistics()
    assert (stats.created, stats.idle, stats.in_use, stats.acquired) == (1, 1, 0, 2)


def test_max_size_is_reached_then_callers_are_rejected_after_the_timeout():
    pool, made = make_pool(max_size=2, acquire_timeout_s=0.01, name="database")
    with pool.acquire() as a, pool.acquire() as b:
        assert a is not b
        with pytest.raises(BulkheadFull, match="database"), pool.acquire():
            pass
        assert pool.statistics().in_use == 2
    stats = pool.statistics()
    assert (stats.created, stats.rejected, stats.idle, stats.peak_in_use) == (2, 1, 2, 2)
    assert len(made) == 2


def test_zero_timeout_fails_at_once():
    pool, _ = make_pool(max_size=1, acquire_timeout_s=0)
    with pool.acquire(), pytest.raises(BulkheadFull), pool.acquire():
        pass


def test_a_resource_whose_block_raised_a_broken_error_is_closed_not_reused():
    pool, made = make_pool(max_size=1, broken_on=(ConnectionError,))
    with pytest.raises(ConnectionError), pool.acquire():
        raise ConnectionError("reset by peer")
    assert made[0].closed
    with pytest.raises(KeyError), pool.acquire():
        raise KeyError("application error: the connection is fine")
    with pool.acquire() as conn:
        assert conn is made[1]
        assert not conn.closed
    stats = pool.statistics()
    assert (stats.broken, stats.closed, stats.created, stats.in_use) == (1, 1, 2, 0)


def test_by_default_any_error_breaks_the_resource_and_discard_marks_it():
    pool, made = make_pool(max_size=1)
    with pytest.raises(KeyError), pool.acquire():
        raise KeyError("x")
    with pool.acquire() as conn:
        pool.discard(conn)
    assert [c.closed for c in made] == [True, True]
    assert pool.statistics().broken == 2


def test_surplus_idle_resources_are_closed():
    pool, made = make_pool(max_size=3, max_idle=1)
    with pool.acquire(), pool.acquire(), pool.acquire():
        pass
    assert sum(c.closed for c in made) == 2
    assert pool.statistics().idle == 1


def test_a_failing_factory_does_not_leak_a_slot():
    calls = itertools.count()

    def flaky() -> Conn:
        if next(calls) == 0:
            raise OSError("refused")
        return Conn()

    pool = BoundedPool(flaky, max_size=1, acquire_timeout_s=0)
    with pytest.raises(OSError, match="refused"), pool.acquire():
        pass
    with pool.acquire() as conn:
        assert isinstance(conn, Conn)
    assert pool.statistics().created == 1


def test_close_closes_idle_now_and_lent_ones_on_return():
    pool, made = make_pool(max_size=2)
    with pool.acquire():
        pass
    with pool, pool.acquire() as lent:
        pass
    assert made[0].closed
    assert lent.closed
    with pytest.raises(RuntimeError, match="closed"), pool.acquire():
        pass
    assert pool.statistics().in_use == 0


class BadConn(Conn):
    """A connection whose close raises when it is its turn to, as a dead socket's might."""

    turns = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.close_fails = next(self.turns) % 2 == 1  # every second one

    def close(self) -> None:
        if self.close_fails:
            raise OSError(f"close {self.id} failed")
        self.closed = True


def bad_pool(**kwargs: object) -> tuple[BoundedPool[BadConn], list[BadConn]]:
    BadConn.turns = itertools.count()
    made: list[BadConn] = []

    def factory() -> BadConn:
        made.append(BadConn())
        return made[-1]

    return BoundedPool(factory, close=BadConn.close, **kwargs), made  # type: ignore[arg-type]


def test_discard_of_a_resource_not_lent_out_is_refused():
    pool, made = make_pool(max_size=2, max_idle=0)
    with pool.acquire() as returned:
        pass
    with pytest.raises(ValueError, match=r"^discard: .* is not lent out by pool 'pool'"):
        pool.discard(returned)
    with pytest.raises(ValueError, match=r"^discard:"):
        pool.discard(Conn())
    # Nothing stale is left behind: the next block that succeeds keeps its resource healthy.
    with pool.acquire():
        pass
    assert pool.statistics().broken == 0
    assert len(made) == 2


def test_discard_marks_are_bounded_by_the_resources_lent_out():
    pool, _ = make_pool(max_size=2)
    for _ in range(1000):
        with pytest.raises(ValueError):
            pool.discard(Conn())
    with pool.acquire() as first, pool.acquire() as second:
        pool.discard(first)
        pool.discard(first)  # twice is still one mark
        pool.discard(second)
        assert len(pool._discarded) == 2
    assert len(pool._discarded) == 0
    assert len(pool._lent) == 0
    assert pool.statistics().broken == 2


def test_close_closes_every_idle_resource_even_when_some_close_calls_raise():
    pool, made = bad_pool(max_size=4)
    with ExitStack() as stack:
        for _ in range(4):
            stack.enter_context(pool.acquire())
    assert pool.statistics().idle == 4
    with pytest.raises(ExceptionGroup) as caught:
        pool.close()
    assert caught.value.message == "pool 'pool': 2 of 4 idle resources failed to close"
    assert sorted(str(e) for e in caught.value.exceptions) == sorted(
        f"close {c.id} failed" for c in made if c.close_fails
    )
    assert [c.closed for c in made] == [not c.close_fails for c in made]
    stats = pool.statistics()
    assert (stats.idle, stats.closed, stats.close_failures) == (0, 2, 2)


def test_a_failing_close_does_not_replace_the_blocks_exception():
    pool, made = bad_pool(max_size=1)
    with pool.acquire() as healthy:
        pool.discard(healthy)
    with pytest.raises(KeyError, match="application error") as caught, pool.acquire() as conn:
        assert conn is made[1]
        assert conn.close_fails
        raise KeyError("application error")
    assert any("closing the resource also failed" in note for note in caught.value.__notes__)
    stats = pool.statistics()
    assert (stats.broken, stats.closed, stats.close_failures) == (2, 1, 1)


def test_a_failing_close_after_a_successful_block_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
):
    pool, made = bad_pool(max_size=2, max_idle=0)
    with (
        caplog.at_level("WARNING", logger="phalanx.resilience.pool"),
        pool.acquire(),
        pool.acquire(),
    ):
        pass
    assert [c.closed for c in made] == [True, False]
    assert [r.message for r in caplog.records] == ["pool 'pool': closing a dropped resource failed"]
    stats = pool.statistics()
    assert (stats.closed, stats.close_failures, stats.in_use) == (1, 1, 0)


def test_leaving_the_pools_block_with_an_error_keeps_that_error():
    pool, _ = bad_pool(max_size=2)
    with pytest.raises(KeyError) as caught, pool:
        with pool.acquire(), pool.acquire():
            pass
        raise KeyError("application error")
    assert any("closing the pool also failed" in note for note in caught.value.__notes__)


async def test_async_acquire_uses_the_async_factory_and_waits_for_a_return():
    made: list[Conn] = []

    async def afactory() -> Conn:
        await asyncio.sleep(0)
        conn = Conn()
        made.append(conn)
        return conn

    pool = BoundedPool(Conn, afactory=afactory, max_size=1, acquire_timeout_s=JOIN_S)
    order: list[str] = []

    async def user(label: str) -> None:
        async with pool.aacquire() as conn:
            order.append(f"{label}:{conn.id}")
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(user("a"), user("b"), user("c")), JOIN_S)
    assert len(made) == 1
    assert [entry.split(":")[0] for entry in order] == ["a", "b", "c"]
    assert pool.statistics().acquired == 3


async def test_cancelling_a_block_breaks_its_resource():
    pool, made = make_pool(max_size=1, acquire_timeout_s=JOIN_S)
    entered = asyncio.Event()

    async def user() -> None:
        async with pool.aacquire():
            entered.set()
            await asyncio.sleep(JOIN_S)

    task = asyncio.create_task(user())
    await asyncio.wait_for(entered.wait(), JOIN_S)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert made[0].closed
    stats = pool.statistics()
    assert (stats.in_use, stats.broken) == (0, 1)


@settings(max_examples=25, deadline=None)
@given(max_size=st.integers(1, 4), threads=st.integers(1, 8), uses=st.integers(1, 5))
def test_never_more_than_max_size_resources_exist(max_size: int, threads: int, uses: int):
    lock = threading.Lock()
    alive = 0
    peak = 0

    def factory() -> Conn:
        nonlocal alive, peak
        with lock:
            alive += 1
            peak = max(peak, alive)
        return Conn()

    def close(_conn: Conn) -> None:
        nonlocal alive
        with lock:
            alive -= 1

    pool = BoundedPool(
        factory,
        close=close,
        max_size=max_size,
        max_idle=1,
        max_waiting=threads,
        acquire_timeout_s=JOIN_S,
    )

    def worker() -> None:
        for _ in range(uses):
            with pool.acquire():
                pass

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(JOIN_S)
        assert not thread.is_alive()
    assert peak <= max_size
    stats = pool.statistics()
    assert stats.acquired == threads * uses
    assert (stats.in_use, stats.rejected) == (0, 0)
    assert stats.idle <= 1
