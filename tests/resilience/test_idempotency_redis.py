"""The Redis idempotency store where a shared server matters: clients racing for one key,
leases taken over between stores, the executor on two "servers", a second process, the key
layout and its expiry safety net, reruns after a lost reply, and bad configuration.

The store contract itself runs against Redis in ``test_idempotency_store.py``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from phalanx.clock import ManualClock
from phalanx.errors import Unavailable
from phalanx.resilience.idempotency import (
    FingerprintMismatch,
    Idempotency,
    IdempotencyStore,
    KeyInProgress,
    RecordState,
)
from phalanx.resilience.idempotency import redis as redis_store_module
from phalanx.resilience.idempotency.redis import (
    KEY_PREFIX_CHARS_MAX,
    RedisIdempotencyStore,
)
from phalanx.resilience.idempotency.store import Claim

NOW_S = 1_700_000_000.0

StoreFactory = Callable[..., RedisIdempotencyStore]


@pytest.fixture
def url(redis_server: object) -> str:
    return str(redis_server.url)  # type: ignore[attr-defined]


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
def make_store(url: str, prefix: str) -> Iterator[StoreFactory]:
    """Stores on the same prefix, each with its own client: separate servers of one fleet."""
    opened: list[RedisIdempotencyStore] = []

    def factory(**kwargs: object) -> RedisIdempotencyStore:
        store = RedisIdempotencyStore(url, key_prefix=prefix, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def raw(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


def claim(
    store: IdempotencyStore, key: str, owner: str, *, fp: str = "fp", now_s: float = NOW_S
) -> Claim:
    return store.claim(key, fp, owner, now_s=now_s, lease_s=10.0, ttl_s=100.0)


def race(
    stores: list[RedisIdempotencyStore], attempt: Callable[[RedisIdempotencyStore, int], object]
) -> list[object]:
    """Run ``attempt`` on every store in its own thread, released together by a barrier."""
    barrier = threading.Barrier(len(stores))
    outcomes: list[object] = [None] * len(stores)

    def work(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = attempt(stores[index], index)
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def test_clients_racing_for_one_key_exactly_one_wins(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(8)]
    for round_index in range(10):
        key = f"order-{round_index}"
        outcomes = race(stores, lambda store, i, key=key: claim(store, key, f"owner-{i}"))
        claims = [o for o in outcomes if isinstance(o, Claim)]
        assert len(claims) == len(stores), outcomes
        winners = [c for c in claims if c.acquired]
        assert len(winners) == 1
        for loser in claims:
            if not loser.acquired:
                assert loser.record.owner == winners[0].record.owner
                assert loser.record.state is RecordState.IN_PROGRESS


def test_entries_max_holds_exactly_under_concurrent_claims(make_store: StoreFactory) -> None:
    stores = [make_store(entries_max=5) for _ in range(12)]
    outcomes = race(stores, lambda store, i: claim(store, f"k{i}", f"owner-{i}"))
    acquired = [o for o in outcomes if isinstance(o, Claim) and o.acquired]
    full = [o for o in outcomes if isinstance(o, Unavailable)]
    assert len(acquired) == 5
    assert len(full) == 7
    assert len(stores[0]) == 5


def test_lease_takeover_between_two_stores_after_expiry(make_store: StoreFactory) -> None:
    server_a, server_b = make_store(), make_store()
    assert claim(server_a, "k", "a").acquired
    assert not claim(server_b, "k", "b", now_s=NOW_S + 9.999).acquired
    assert not claim(server_b, "k", "b", fp="other", now_s=NOW_S + 10).acquired

    takeover = claim(server_b, "k", "b", now_s=NOW_S + 10)
    assert takeover.acquired
    assert takeover.took_over
    # The first owner lost the key: it can neither complete nor release it.
    assert not server_a.complete("k", "a", b"late", now_s=NOW_S + 11, ttl_s=100.0)
    assert not server_a.release("k", "a")
    assert server_b.complete("k", "b", b"ok", now_s=NOW_S + 11, ttl_s=100.0)
    seen_by_a = server_a.get("k", now_s=NOW_S + 12)
    assert seen_by_a is not None
    assert (seen_by_a.state, seen_by_a.owner, seen_by_a.result) == (
        RecordState.COMPLETED,
        "b",
        b"ok",
    )


class _ClockThatFinishesOnSleep(ManualClock):
    """A manual clock that runs ``on_sleep`` when a waiting duplicate first sleeps."""

    def __init__(self, on_sleep: Callable[[], None]) -> None:
        super().__init__()
        self._on_sleep: Callable[[], None] | None = on_sleep

    def sleep(self, seconds: float) -> None:
        hook, self._on_sleep = self._on_sleep, None
        if hook is not None:
            hook()
        super().sleep(seconds)


def test_executor_cases_across_two_servers(make_store: StoreFactory) -> None:
    clock = ManualClock()
    server_a = Idempotency(make_store(), clock=clock, owner_prefix="a")
    server_b = Idempotency(make_store(), clock=clock, owner_prefix="b")
    calls: list[str] = []

    def charge(amount: int) -> dict[str, int]:
        calls.append(f"charge {amount}")
        return {"charged": amount}

    # 1. The first call runs and stores its result; 2. a duplicate on the other server replays.
    assert server_a.run("order-1", charge, 5) == {"charged": 5}
    assert server_b.run("order-1", charge, 5) == {"charged": 5}
    assert calls == ["charge 5"]
    assert server_b.statistics().hits == 1

    # 3. A duplicate while the first is still running: refused at once with wait_s=0 ...
    ticket = server_a.begin("order-2", "fp-2")
    assert ticket.acquired
    with pytest.raises(KeyInProgress) as caught:
        server_b.begin("order-2", "fp-2")
    assert caught.value.retry_after_s == pytest.approx(60.0)
    # ... or, with wait_s > 0, answered with the result once the first server stores it.
    waiting_clock = _ClockThatFinishesOnSleep(lambda: server_a.finish(ticket, b'"done"'))
    server_c = Idempotency(make_store(), clock=waiting_clock, wait_s=5.0, owner_prefix="c")
    replay = server_c.begin("order-2", "fp-2")
    assert not replay.acquired
    assert server_c.statistics().waits == 1
    assert server_c.run("order-2", charge, 7, fingerprint="fp-2") == "done"

    # 4. The same key with another request is refused.
    with pytest.raises(FingerprintMismatch):
        server_b.run("order-1", charge, 6)
    assert calls == ["charge 5"]


CHILD = textwrap.dedent(
    """
    import os, sys
    from phalanx.clock import ManualClock
    from phalanx.resilience.idempotency import Idempotency, RedisIdempotencyStore

    store = RedisIdempotencyStore(sys.argv[1], key_prefix=sys.argv[2])
    clock = ManualClock(wall_start_s=float(sys.argv[3]))
    guard = Idempotency(store, ttl_s=3600, lease_s=30, clock=clock, owner_prefix="child")
    print(guard.run("order-0", lambda: "from the child", fingerprint="fp-0"), flush=True)

    def charge():
        print("charging", flush=True)
        os._exit(0)  # the process dies mid-operation: no completion, no release

    guard.run("order-1", charge, fingerprint="fp-order-1")
    """
)


def test_a_second_process_shares_the_keys(make_store: StoreFactory, url: str, prefix: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, url, prefix, str(NOW_S)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert child.stdout.split() == ["from", "the", "child", "charging"]

    clock = ManualClock(wall_start_s=NOW_S)
    store = make_store()
    guard = Idempotency(store, ttl_s=3600, lease_s=30, clock=clock)
    # What the child completed is replayed here without running.
    assert guard.run("order-0", lambda: "from the parent", fingerprint="fp-0") == "from the child"
    # What it died in the middle of is held until its lease ends, then taken over.
    record = store.get("order-1", now_s=clock.wall_s())
    assert record is not None
    assert record.state is RecordState.IN_PROGRESS
    assert record.owner.startswith("child:")
    with pytest.raises(KeyInProgress) as caught:
        guard.run("order-1", lambda: "parent", fingerprint="fp-order-1")
    assert caught.value.retry_after_s == pytest.approx(30.0)
    clock.advance(30.0)
    assert guard.run("order-1", lambda: "parent", fingerprint="fp-order-1") == "parent"
    assert guard.statistics().takeovers == 1


def test_key_layout_and_the_expiry_safety_net(
    make_store: StoreFactory, raw: redis.Redis, prefix: str
) -> None:
    store = make_store(expiry_margin_s=60.0)
    assert claim(store, "k", "o").acquired
    record_key = f"{prefix}k:k"
    assert store.record_key("k") == record_key
    fields = raw.hgetall(record_key)
    assert fields[b"state"] == b"in_progress"
    assert fields[b"owner"] == b"o"
    assert b"result" not in fields
    # The Redis expiry is the record's time to live plus the margin, counted by Redis itself.
    assert 159_000 < raw.pttl(record_key) <= 160_000
    assert raw.zscore(f"{prefix}expiry", "k") == NOW_S + 100.0
    assert raw.zcard(f"{prefix}completed") == 0

    assert store.complete("k", "o", b"\x00r\xff", now_s=NOW_S + 1, ttl_s=10.0)
    assert raw.hget(record_key, "result") == b"\x00r\xff"
    assert 69_000 < raw.pttl(record_key) <= 70_000
    assert raw.zscore(f"{prefix}completed", "k") == NOW_S + 11.0

    assert store.purge(now_s=NOW_S + 11.0) == 1
    assert raw.exists(record_key) == 0
    assert raw.zcard(f"{prefix}expiry") == 0
    assert raw.zcard(f"{prefix}completed") == 0


def test_times_read_back_exactly(make_store: StoreFactory) -> None:
    store = make_store()
    now_s = 1_700_000_000.123456789
    claim(store, "k", "o", now_s=now_s)
    record = store.get("k", now_s=now_s)
    assert record is not None
    assert record.created_at_s == now_s
    assert record.expires_at_s == now_s + 100.0
    assert record.lease_expires_at_s == now_s + 10.0


def test_scripts_are_safe_to_rerun_after_a_lost_reply(make_store: StoreFactory) -> None:
    store = make_store()
    first = claim(store, "k", "o")
    rerun = claim(store, "k", "o")  # the same call again: its first run did commit
    assert first.acquired
    assert rerun.acquired
    assert store.complete("k", "o", b"r", now_s=NOW_S + 1, ttl_s=100.0)
    assert store.complete("k", "o", b"r", now_s=NOW_S + 1, ttl_s=100.0)
    # Anything that is not the very same call is still refused.
    assert not claim(store, "k", "o", now_s=NOW_S + 2).acquired
    assert not store.complete("k", "o", b"other", now_s=NOW_S + 1, ttl_s=100.0)


def test_a_full_store_reclaims_entries_whose_records_redis_deleted(
    make_store: StoreFactory, raw: redis.Redis
) -> None:
    store = make_store(entries_max=2)
    claim(store, "a", "o")
    claim(store, "b", "o")
    with pytest.raises(Unavailable, match="entries_max"):
        claim(store, "c", "o")
    # Redis dropped a record on its own (the expiry safety net, maxmemory eviction).
    raw.delete(store.record_key("a"))
    assert claim(store, "c", "o").acquired
    assert len(store) == 2
    assert store.evictions == 0  # a stale index entry is not an eviction
    assert not claim(store, "b", "x").acquired  # the live in-progress record stays


def test_a_failed_full_claim_evicts_nothing(make_store: StoreFactory) -> None:
    store = make_store(entries_max=2)
    claim(store, "running", "o")
    claim(store, "done", "o")
    store.complete("done", "o", b"r", now_s=NOW_S, ttl_s=100.0)
    assert claim(store, "new-1", "o").acquired  # evicts "done"
    assert store.evictions == 1
    with pytest.raises(Unavailable):
        claim(store, "new-2", "o")
    assert store.get("running", now_s=NOW_S) is not None
    assert store.get("new-1", now_s=NOW_S) is not None


def test_purge_runs_in_batches(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch, raw: redis.Redis, prefix: str
) -> None:
    monkeypatch.setattr(redis_store_module, "PURGE_BATCH_MAX", 3)
    store = make_store()
    for index in range(10):
        claim(store, f"k{index}", "o")
    claim(store, "live", "o", now_s=NOW_S + 50)
    assert store.purge(now_s=NOW_S + 100) == 10
    assert len(store) == 1
    assert raw.zrange(f"{prefix}expiry", 0, -1) == [b"live"]


def test_stores_with_different_prefixes_are_apart(url: str) -> None:
    with (
        RedisIdempotencyStore(url, key_prefix=f"test:{uuid.uuid4().hex}:") as one,
        RedisIdempotencyStore(url, key_prefix=f"test:{uuid.uuid4().hex}:") as two,
    ):
        assert claim(one, "k", "a").acquired
        assert claim(two, "k", "b").acquired


def test_redis_down_fails_the_call_and_nothing_runs(redis_server: object) -> None:
    helper = sys.modules["phalanx_tests_redis"]
    down = f"redis://127.0.0.1:{helper.free_port()}/0"
    with RedisIdempotencyStore(down, connect_timeout_s=0.5, socket_timeout_s=0.5) as store:
        guard = Idempotency(store, clock=ManualClock())
        ran: list[int] = []
        with pytest.raises(redis.exceptions.ConnectionError):
            guard.run("order-1", ran.append, 1)
        assert ran == []


def test_a_client_passed_in_is_used_and_left_open(raw: redis.Redis, prefix: str) -> None:
    store = RedisIdempotencyStore(raw, key_prefix=prefix)
    assert store.client is raw
    assert claim(store, "k", "o").acquired
    store.close()
    assert raw.ping()
    assert "entries_max=1000000" in repr(store)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"key_prefix": ""}, "key_prefix"),
        ({"key_prefix": "p" * (KEY_PREFIX_CHARS_MAX + 1)}, "key_prefix"),
        ({"key_prefix": 7}, "key_prefix"),
        ({"entries_max": 0}, "entries_max"),
        ({"entries_max": "many"}, "entries_max"),
        ({"expiry_margin_s": -1}, "expiry_margin_s"),
        ({"expiry_margin_s": "8d"}, "expiry_margin_s"),
        ({"expiry_margin_s": "300"}, "expiry_margin_s"),
        ({"connect_timeout_s": 0}, "connect_timeout_s"),
        ({"connect_timeout_s": 601}, "connect_timeout_s"),
        ({"socket_timeout_s": float("nan")}, "socket_timeout_s"),
        ({"socket_timeout_s": 3601}, "socket_timeout_s"),
    ],
)
def test_bad_options_are_rejected_naming_the_field(
    kwargs: dict[str, object], field: str, url: str
) -> None:
    with pytest.raises(ValueError, match=field):
        RedisIdempotencyStore(url, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", ["", "  ", "http://example.com", 42, None])
def test_bad_targets_are_rejected(target: object) -> None:
    with pytest.raises(ValueError, match="client_or_url"):
        RedisIdempotencyStore(target)  # type: ignore[arg-type]


def test_a_malformed_url_is_reported_without_its_text() -> None:
    with pytest.raises(ValueError, match="client_or_url") as caught:
        RedisIdempotencyStore("postgres://user:s3cret@db/app")
    assert "s3cret" not in str(caught.value)


def test_a_decoding_client_is_rejected(url: str) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisIdempotencyStore(client)
    finally:
        client.close()
