"""Breakers sharing their state through Redis: a second process, Redis going down and coming
back, the key layout, and bad configuration.

The store contract, and two breakers sharing a store (trips, force-open and reset, concurrent
trips), run against Redis and SQLite alike in ``test_breaker_store.py``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from phalanx.clock import ManualClock
from phalanx.errors import CircuitOpen
from phalanx.resilience.breaker import BreakerState, CircuitBreaker
from phalanx.resilience.breaker_redis import (
    KEY_PREFIX_CHARS_MAX,
    TIMEOUT_S_MAX,
    RedisBreakerStore,
)
from phalanx.resilience.breaker_store import BreakerRecord, BreakerStore


class Down(Exception):
    pass


def fail() -> None:
    raise Down


StoreFactory = Callable[..., RedisBreakerStore]


@pytest.fixture
def url(redis_server: object) -> str:
    return str(redis_server.url)  # type: ignore[attr-defined]


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
def make_store(url: str, prefix: str) -> Iterator[StoreFactory]:
    """Stores on one prefix, each with its own client: breakers on separate machines."""
    opened: list[RedisBreakerStore] = []

    def factory(**kwargs: object) -> RedisBreakerStore:
        target = kwargs.pop("url", url)
        store = RedisBreakerStore(target, key_prefix=prefix, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


CHILD = textwrap.dedent(
    """
    import sys
    from phalanx.resilience.breaker import CircuitBreaker
    from phalanx.resilience.breaker_redis import RedisBreakerStore

    breaker = CircuitBreaker(
        "payments", store=RedisBreakerStore(sys.argv[1], key_prefix=sys.argv[2]),
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


def test_another_process_opens_the_breaker(make_store: StoreFactory, url: str, prefix: str) -> None:
    clock = ManualClock(wall_start_s=time.time())
    local = CircuitBreaker(
        "payments", store=make_store(), clock=clock, open_timeout_s=60, refresh_interval_s=2.0
    )
    assert local.call(int, "1") == 1
    result = subprocess.run(
        [sys.executable, "-c", CHILD, url, prefix],
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
    assert caught.value.retry_after_s is not None
    assert 30.0 < caught.value.retry_after_s <= 60.0


def test_redis_down_degrades_to_local_decisions_and_catches_up(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    helper = sys.modules["phalanx_tests_redis"]
    server = helper.start_server()
    try:
        own_url = server.url
        clock = ManualClock()
        breaker = CircuitBreaker(
            "dep",
            store=make_store(url=own_url, connect_timeout_s=0.5, socket_timeout_s=0.5),
            clock=clock,
            consecutive_failures=1,
            refresh_interval_s=1.0,
        )
        assert breaker.call(int, "1") == 1
        server.stop()

        clock.advance(1.0)
        assert breaker.call(int, "2") == 2  # the refresh fails; the call still runs
        with pytest.raises(Down):
            breaker.call(fail)  # the publish of "open" fails too
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(CircuitOpen):
            breaker.call(int, "3")  # decided locally
        assert "shared store failed" in caplog.text

        server = helper.start_server(port=server.port)
        clock.advance(1.0)
        with pytest.raises(CircuitOpen):
            breaker.call(int, "4")  # this refresh publishes what was pending
        record = make_store(url=own_url).load("dep")
        assert record is not None
        assert (record.state, record.version) == ("open", 1)
    finally:
        server.stop()


def test_a_breaker_can_start_while_redis_is_down(make_store: StoreFactory) -> None:
    helper = sys.modules["phalanx_tests_redis"]
    down = f"redis://127.0.0.1:{helper.free_port()}/0"
    store = make_store(url=down, connect_timeout_s=0.2, socket_timeout_s=0.2)
    breaker = CircuitBreaker("dep", store=store, consecutive_failures=1)
    assert breaker.call(int, "1") == 1
    with pytest.raises(Down):
        breaker.call(fail)
    with pytest.raises(CircuitOpen):
        breaker.call(int, "2")


def test_key_layout(make_store: StoreFactory, url: str, prefix: str) -> None:
    store = make_store()
    assert store.key("payments") == f"{prefix}payments"
    store.compare_and_set("payments", 0, BreakerRecord("open", 0, 1_700_000_030.123456789, 5.5))
    raw = redis.Redis.from_url(url)
    try:
        fields = raw.hgetall(f"{prefix}payments")
        assert fields == {
            b"state": b"open",
            b"version": b"1",
            b"open_until_wall_s": b"1700000030.1234567",
            b"updated_wall_s": b"5.5",
        }
        assert raw.ttl(f"{prefix}payments") == -1  # no expiry: one hash per breaker name
        # A forced open has no end: the field goes.
        store.compare_and_set("payments", 1, BreakerRecord("open", 0, None, 6.0))
        assert b"open_until_wall_s" not in raw.hgetall(f"{prefix}payments")
    finally:
        raw.close()
    loaded = store.load("payments")
    assert loaded == BreakerRecord("open", 2, None, 6.0)


def test_a_decoding_client_passed_in_works_and_stays_open(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        store = RedisBreakerStore(client, key_prefix=prefix)
        assert isinstance(store, BreakerStore)
        won, written = store.compare_and_set("a", 0, BreakerRecord("open", 0, 100.25, 1.0))
        assert won
        assert store.load("a") == written
        lost, current = store.compare_and_set("a", 0, BreakerRecord("closed", 0, None, 2.0))
        assert not lost
        assert current == written
        store.close()
        assert client.ping()
    finally:
        client.close()


def test_a_vanished_record_starts_the_sequence_again(make_store: StoreFactory, url: str) -> None:
    store = make_store()
    store.compare_and_set("a", 0, BreakerRecord("open", 0, None, 1.0))
    store.client.delete(store.key("a"))
    won, written = store.compare_and_set("a", 1, BreakerRecord("closed", 0, None, 2.0))
    assert won
    assert written.version == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"key_prefix": ""}, "key_prefix"),
        ({"key_prefix": "p" * (KEY_PREFIX_CHARS_MAX + 1)}, "key_prefix"),
        ({"key_prefix": None}, "key_prefix"),
        ({"connect_timeout_s": 0}, "connect_timeout_s"),
        ({"connect_timeout_s": TIMEOUT_S_MAX + 1}, "connect_timeout_s"),
        ({"socket_timeout_s": -1}, "socket_timeout_s"),
        ({"socket_timeout_s": "2h"}, "socket_timeout_s"),
        ({"socket_timeout_s": "fast"}, "socket_timeout_s"),
    ],
)
def test_bad_options_are_rejected_naming_the_field(
    kwargs: dict[str, object], field: str, url: str
) -> None:
    with pytest.raises(ValueError, match=field):
        RedisBreakerStore(url, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", ["", "ftp://cache", 6379, object()])
def test_bad_targets_are_rejected(target: object) -> None:
    with pytest.raises(ValueError, match="client_or_url"):
        RedisBreakerStore(target)  # type: ignore[arg-type]


def test_names_are_checked_before_any_io() -> None:
    with RedisBreakerStore("redis://127.0.0.1:1/0") as store:
        with pytest.raises(ValueError, match="name"):
            store.load("")
        with pytest.raises(ValueError, match="name"):
            store.compare_and_set("x" * 201, 0, BreakerRecord("open", 0))
