"""Shared breaker state: the store contract (every implementation), breakers that share a
SQLite file or a Redis prefix, a second real process opening the breaker, and a broken store."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from phalanx.clock import ManualClock
from phalanx.errors import CircuitOpen
from phalanx.resilience.breaker import BreakerState, CircuitBreaker
from phalanx.resilience.breaker_redis import RedisBreakerStore
from phalanx.resilience.breaker_store import (
    BreakerRecord,
    BreakerStore,
    MemoryBreakerStore,
    SQLiteBreakerStore,
)


class Down(Exception):
    pass


def fail() -> None:
    raise Down


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BreakerStore]:
    if request.param == "memory":
        yield MemoryBreakerStore()
    elif request.param == "redis":
        url = str(request.getfixturevalue("redis_server").url)
        with RedisBreakerStore(url, key_prefix=f"test:{uuid.uuid4().hex}:") as redis_store:
            yield redis_store
    else:
        with SQLiteBreakerStore(tmp_path / "breakers.db") as sqlite_store:
            yield sqlite_store


def test_compare_and_set_contract(store: BreakerStore) -> None:
    assert isinstance(store, BreakerStore)
    assert store.load("a") is None
    won, first = store.compare_and_set("a", 0, BreakerRecord("open", 0, 100.0, 1.0))
    assert won
    assert first.version == 1
    assert store.load("a") == first
    # A writer that has not seen version 1 loses and is told what won.
    won, current = store.compare_and_set("a", 0, BreakerRecord("closed", 0, None, 2.0))
    assert not won
    assert current == first
    won, second = store.compare_and_set("a", 1, BreakerRecord("closed", 0, None, 3.0))
    assert won
    assert (second.version, second.state) == (2, "closed")
    # Names are independent rows.
    assert store.load("b") is None


def test_record_and_name_validation(store: BreakerStore) -> None:
    with pytest.raises(ValueError, match="state"):
        BreakerRecord("half_open", 1)
    with pytest.raises(ValueError, match="name"):
        store.load("")
    with pytest.raises(ValueError, match="name"):
        store.load("x" * 201)


def test_sqlite_uses_wal(tmp_path: Path) -> None:

    path = tmp_path / "wal.db"
    with SQLiteBreakerStore(path):
        pass
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


SharedStores = Callable[[], BreakerStore]


@pytest.fixture(params=["sqlite", "redis"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SharedStores]:
    """A factory of stores over one backing (a SQLite file, or a Redis prefix), each store
    with its own connection: breakers in separate processes or on separate machines."""
    opened: list[SQLiteBreakerStore | RedisBreakerStore] = []
    prefix = f"test:{uuid.uuid4().hex}:"

    def factory() -> BreakerStore:
        store: SQLiteBreakerStore | RedisBreakerStore
        if request.param == "redis":
            url = str(request.getfixturevalue("redis_server").url)
            store = RedisBreakerStore(url, key_prefix=prefix)
        else:
            store = SQLiteBreakerStore(tmp_path / "shared.db")
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def _pair(shared: SharedStores, clock: ManualClock) -> tuple[CircuitBreaker, CircuitBreaker]:
    options: dict[str, object] = {
        "consecutive_failures": 2,
        "open_timeout_s": 30,
        "half_open_requests": 1,
        "refresh_interval_s": 1.0,
        "clock": clock,
    }
    first = CircuitBreaker("payments", store=shared(), **options)  # type: ignore[arg-type]
    second = CircuitBreaker("payments", store=shared(), **options)  # type: ignore[arg-type]
    return first, second


def test_two_breakers_sharing_a_store_open_together_within_the_refresh_period(
    shared: SharedStores,
) -> None:
    clock = ManualClock()
    first, second = _pair(shared, clock)
    assert second.call(int, "1") == 1  # reads the (empty) store now; next read at t=1
    for _ in range(2):
        with pytest.raises(Down):
            first.call(fail)
    assert first.state is BreakerState.OPEN
    clock.advance(0.5)
    assert second.call(int, "2") == 2  # not refreshed yet: still closed here
    clock.advance(0.5)
    with pytest.raises(CircuitOpen) as caught:
        second.call(int, "3")
    assert caught.value.retry_after_s == pytest.approx(29.0)
    # Both probe on their own after the timeout; the first to succeed closes both.
    clock.advance(29.0)
    assert first.call(int, "4") == 4
    assert first.state is BreakerState.CLOSED
    clock.advance(1.0)
    assert second.state is BreakerState.CLOSED
    assert second.statistics().store_version == first.statistics().store_version == 2


def test_force_open_and_reset_travel_through_the_store(shared: SharedStores) -> None:
    clock = ManualClock()
    first, second = _pair(shared, clock)
    first.force_open()
    clock.advance(1.0)
    with pytest.raises(CircuitOpen) as caught:
        second.call(int, "1")
    assert caught.value.retry_after_s is None
    clock.advance(10_000.0)
    assert second.state is BreakerState.OPEN  # forced: no timeout
    first.reset()
    clock.advance(1.0)
    assert second.call(int, "2") == 2


def test_concurrent_trips_agree_on_one_version(shared: SharedStores) -> None:
    clock = ManualClock()
    first, second = _pair(shared, clock)
    assert second.call(int, "0") == 0  # refresh now, so the next one is a second away
    for breaker in (first, second):
        for _ in range(2):
            with pytest.raises(Down):
                breaker.call(fail)
    # The second breaker lost the compare-and-set and adopted the first one's record.
    assert first.statistics().store_version == 1
    assert second.statistics().store_version == 1
    assert second.state is BreakerState.OPEN


def test_other_process_opens_the_breaker(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    clock = ManualClock(wall_start_s=time.time())
    local = CircuitBreaker(
        "payments",
        store=SQLiteBreakerStore(path),
        clock=clock,
        open_timeout_s=60,
        refresh_interval_s=2.0,
    )
    assert local.call(int, "1") == 1
    script = textwrap.dedent(
        """
        import sys
        from phalanx.resilience.breaker import CircuitBreaker
        from phalanx.resilience.breaker_store import SQLiteBreakerStore

        breaker = CircuitBreaker(
            "payments", store=SQLiteBreakerStore(sys.argv[1]),
            consecutive_failures=3, open_timeout_s=60,
        )
        def fail():
            raise ConnectionError("down")
        for _ in range(3):
            try:
                breaker.call(fail)
            except ConnectionError:
                pass
        print(breaker.state.value)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "open"
    clock.advance(1.0)
    assert local.call(int, "2") == 2  # within the refresh period: not seen yet
    clock.advance(1.0)
    with pytest.raises(CircuitOpen) as caught:
        local.call(int, "3")
    # Open until about 60 s after the other process tripped, never longer than our timeout.
    assert caught.value.retry_after_s is not None
    assert 30.0 < caught.value.retry_after_s <= 60.0


def test_clock_skew_never_keeps_a_breaker_open_past_its_own_timeout() -> None:
    clock = ManualClock()
    store = MemoryBreakerStore()
    store.compare_and_set("dep", 0, BreakerRecord("open", 0, clock.wall_s() + 10_000.0, 0.0))
    breaker = CircuitBreaker("dep", store=store, clock=clock, open_timeout_s=5)
    with pytest.raises(CircuitOpen) as caught:
        breaker.call(int, "1")
    assert caught.value.retry_after_s == pytest.approx(5.0)


def test_broken_store_degrades_to_local_decisions_and_catches_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    store = MemoryBreakerStore()
    breaker = CircuitBreaker(
        "dep", store=store, clock=clock, consecutive_failures=1, refresh_interval_s=1.0
    )
    store.fail_next = 2
    assert breaker.call(int, "1") == 1  # the refresh fails; the call still runs
    with pytest.raises(Down):
        breaker.call(fail)  # the publish of "open" fails too
    assert breaker.state is BreakerState.OPEN
    assert store.load("dep") is None
    assert "shared store failed" in caplog.text
    clock.advance(1.0)
    with pytest.raises(CircuitOpen):
        breaker.call(int, "2")  # the next refresh publishes what was pending
    record = store.load("dep")
    assert record is not None
    assert record.state == "open"


def test_refresh_reads_the_store_at_most_once_per_period() -> None:
    clock = ManualClock()
    store = MemoryBreakerStore()
    breaker = CircuitBreaker("dep", store=store, clock=clock, refresh_interval_s=1.0)
    for _ in range(100):
        breaker.call(int, "1")
    assert store.operations == 1
    clock.advance(1.0)
    breaker.call(int, "1")
    assert store.operations == 2
    breaker.refresh()
    assert store.operations == 3


def test_disabled_breaker_ignores_the_store() -> None:
    clock = ManualClock()
    store = MemoryBreakerStore()
    store.compare_and_set("dep", 0, BreakerRecord("open", 0, None, 0.0))
    breaker = CircuitBreaker("dep", store=store, clock=clock)
    breaker.disable()
    assert breaker.call(int, "1") == 1
    assert store.operations == 1
