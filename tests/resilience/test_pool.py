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
