"""The IdempotencyStore contract, run against every store (PostgreSQL and Redis on throwaway
servers), plus SQLite durability."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from phalanx.clock import ManualClock
from phalanx.errors import Unavailable
from phalanx.resilience.idempotency import (
    Idempotency,
    IdempotencyStore,
    KeyInProgress,
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RecordState,
    RedisIdempotencyStore,
    SqliteIdempotencyStore,
)

NOW_S = 1_700_000_000.0
StoreFactory = Callable[..., IdempotencyStore]


@pytest.fixture(params=["memory", "sqlite-file", "sqlite-memory", "postgres", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    opened: list[SqliteIdempotencyStore | PostgresIdempotencyStore | RedisIdempotencyStore] = []
    # Each test gets its own PostgreSQL table (or Redis key prefix) on the session's server.
    table = f"idem_{uuid.uuid4().hex[:16]}"

    def factory(**kwargs: int) -> IdempotencyStore:
        store: SqliteIdempotencyStore | PostgresIdempotencyStore | RedisIdempotencyStore
        if request.param == "memory":
            return MemoryIdempotencyStore(**kwargs)
        if request.param == "postgres":
            dsn = str(request.getfixturevalue("postgres_server").dsn)
            store = PostgresIdempotencyStore(dsn, table=table, **kwargs)
        elif request.param == "redis":
            url = str(request.getfixturevalue("redis_server").url)
            store = RedisIdempotencyStore(url, key_prefix=f"test:{table}:", **kwargs)
        else:
            path = ":memory:" if request.param == "sqlite-memory" else tmp_path / "keys.db"
            store = SqliteIdempotencyStore(path, **kwargs)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def claim(store: IdempotencyStore, key: str, owner: str, *, fp: str = "fp", now_s: float = NOW_S):
    return store.claim(key, fp, owner, now_s=now_s, lease_s=10.0, ttl_s=100.0)


def test_stores_satisfy_the_protocol(make_store: StoreFactory) -> None:
    assert isinstance(make_store(), IdempotencyStore)


def test_first_claim_acquires_and_a_second_sees_the_in_progress_record(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    first = claim(store, "k", "a")
    assert first.acquired
    assert first.record.state is RecordState.IN_PROGRESS
    assert first.record.owner == "a"
    assert first.record.lease_expires_at_s == NOW_S + 10.0
    assert first.record.expires_at_s == NOW_S + 100.0

    second = claim(store, "k", "b", now_s=NOW_S + 1)
    assert not second.acquired
    assert second.record.owner == "a"
    assert second.record.state is RecordState.IN_PROGRESS


def test_complete_stores_the_result_for_duplicates(make_store: StoreFactory) -> None:
    store = make_store()
    claim(store, "k", "a")
    assert store.complete("k", "a", b"result", now_s=NOW_S + 5, ttl_s=100.0)
    again = claim(store, "k", "b", now_s=NOW_S + 6)
    assert not again.acquired
    assert again.record.state is RecordState.COMPLETED
    assert again.record.result == b"result"
    # The TTL of a completed record counts from its completion.
    assert again.record.expires_at_s == NOW_S + 105.0
    record = store.get("k", now_s=NOW_S + 6)
    assert record is not None
    assert record.result == b"result"


def test_only_the_owner_completes_or_releases(make_store: StoreFactory) -> None:
    store = make_store()
    claim(store, "k", "a")
    assert not store.complete("k", "intruder", b"x", now_s=NOW_S, ttl_s=100.0)
    assert not store.release("k", "intruder")
    assert store.release("k", "a")
    assert store.get("k", now_s=NOW_S) is None
    assert claim(store, "k", "b").acquired


def test_a_completed_record_is_not_released(make_store: StoreFactory) -> None:
    store = make_store()
    claim(store, "k", "a")
    store.complete("k", "a", b"r", now_s=NOW_S, ttl_s=100.0)
    assert not store.release("k", "a")
    assert store.get("k", now_s=NOW_S) is not None


def test_an_expired_lease_is_taken_over_only_with_the_same_fingerprint(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    claim(store, "k", "crashed")
    before_lease_end = claim(store, "k", "b", now_s=NOW_S + 9.9)
    assert not before_lease_end.acquired

    other_payload = claim(store, "k", "c", fp="other", now_s=NOW_S + 10)
    assert not other_payload.acquired
    assert other_payload.record.owner == "crashed"

    takeover = claim(store, "k", "b", now_s=NOW_S + 10)
    assert takeover.acquired
    assert takeover.took_over
    assert takeover.record.owner == "b"
    # The crashed owner, should it come back, can no longer complete.
    assert not store.complete("k", "crashed", b"late", now_s=NOW_S + 11, ttl_s=100.0)
    assert store.complete("k", "b", b"ok", now_s=NOW_S + 11, ttl_s=100.0)


def test_a_completed_record_is_never_taken_over_before_its_ttl(make_store: StoreFactory) -> None:
    store = make_store()
    claim(store, "k", "a")
    store.complete("k", "a", b"r", now_s=NOW_S, ttl_s=100.0)
    assert not claim(store, "k", "b", now_s=NOW_S + 99.9).acquired
    late = claim(store, "k", "b", now_s=NOW_S + 100.0)
    assert late.acquired
    assert not late.took_over


def test_an_expired_record_is_neither_completed_nor_returned(make_store: StoreFactory) -> None:
    store = make_store()
    claim(store, "k", "a")
    assert store.get("k", now_s=NOW_S + 100) is None
    assert not store.complete("k", "a", b"late", now_s=NOW_S + 100, ttl_s=100.0)


def test_records_expire_after_ttl_s_and_purge_deletes_them(make_store: StoreFactory) -> None:
    store = make_store()
    claim(store, "a", "o")
    claim(store, "b", "o", now_s=NOW_S + 50)
    assert store.get("a", now_s=NOW_S + 100) is None
    assert store.get("b", now_s=NOW_S + 100) is not None
    assert store.purge(now_s=NOW_S + 100) in (0, 1)  # memory store may drop "a" lazily in get
    assert store.purge(now_s=NOW_S + 150) == 1
    assert store.get("b", now_s=NOW_S) is None


def test_entries_max_evicts_completed_records_oldest_first(make_store: StoreFactory) -> None:
    store = make_store(entries_max=2)
    for index, key in enumerate(("a", "b")):
        claim(store, key, "o", now_s=NOW_S + index)
        store.complete(key, "o", key.encode(), now_s=NOW_S + index, ttl_s=100.0)
    assert claim(store, "c", "o", now_s=NOW_S + 2).acquired
    assert store.get("a", now_s=NOW_S + 2) is None  # the oldest completed record went
    assert store.get("b", now_s=NOW_S + 2) is not None
    assert store.get("c", now_s=NOW_S + 2) is not None


def test_entries_max_never_evicts_in_progress_records(make_store: StoreFactory) -> None:
    store = make_store(entries_max=2)
    claim(store, "a", "o")
    claim(store, "b", "o")
    with pytest.raises(Unavailable, match="entries_max"):
        claim(store, "c", "o")
    # Both executions still hold their keys.
    assert not claim(store, "a", "x").acquired
    assert not claim(store, "b", "x").acquired
    # Expired records make room before anything else.
    assert claim(store, "c", "o", now_s=NOW_S + 100).acquired


def test_memory_store_evicts_the_least_recently_used() -> None:
    store = MemoryIdempotencyStore(entries_max=2)
    for key in ("a", "b"):
        claim(store, key, "o")
        store.complete(key, "o", b"r", now_s=NOW_S, ttl_s=100.0)
    store.get("a", now_s=NOW_S)  # "a" is now the most recently used
    claim(store, "c", "o")
    assert store.get("b", now_s=NOW_S) is None
    assert store.get("a", now_s=NOW_S) is not None
    assert store.evictions == 1
    assert len(store) == 2


@pytest.mark.parametrize("entries_max", [0, -1])
def test_bad_entries_max_is_rejected_naming_the_field(entries_max: int, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="entries_max"):
        MemoryIdempotencyStore(entries_max=entries_max)
    with pytest.raises(ValueError, match="entries_max"):
        SqliteIdempotencyStore(tmp_path / "x.db", entries_max=entries_max)


def test_sqlite_bad_options_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="busy_timeout_s"):
        SqliteIdempotencyStore(tmp_path / "x.db", busy_timeout_s=-1)
    with pytest.raises(ValueError, match="synchronous"):
        SqliteIdempotencyStore(tmp_path / "x.db", synchronous="SOMETIMES")


def test_sqlite_uses_wal_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with SqliteIdempotencyStore(path) as store:
        claim(store, "done", "o")
        store.complete("done", "o", b"\x00binary\xff", now_s=NOW_S, ttl_s=100.0)
        claim(store, "running", "o")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with SqliteIdempotencyStore(path) as reopened:
        done = reopened.get("done", now_s=NOW_S + 1)
        assert done is not None
        assert done.state is RecordState.COMPLETED
        assert done.result == b"\x00binary\xff"
        running = reopened.get("running", now_s=NOW_S + 1)
        assert running is not None
        assert running.state is RecordState.IN_PROGRESS
        assert len(reopened) == 2


def test_sqlite_executor_replays_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    calls: list[int] = []

    def charge(amount: int) -> dict[str, int]:
        calls.append(amount)
        return {"charged": amount}

    with SqliteIdempotencyStore(path) as store:
        assert Idempotency(store, clock=ManualClock()).run("order-1", charge, 5) == {"charged": 5}
    with SqliteIdempotencyStore(path) as store:
        assert Idempotency(store, clock=ManualClock()).run("order-1", charge, 5) == {"charged": 5}
    assert calls == [5]


CHILD = textwrap.dedent(
    """
    import os, sys
    from phalanx.clock import ManualClock
    from phalanx.resilience.idempotency import Idempotency, SqliteIdempotencyStore

    store = SqliteIdempotencyStore(sys.argv[1])
    clock = ManualClock(wall_start_s=float(sys.argv[2]))
    guard = Idempotency(store, ttl_s=3600, lease_s=30, clock=clock, owner_prefix="child")

    def charge():
        print("charging", flush=True)
        os._exit(0)  # the process dies mid-operation: no completion, no release

    guard.run("order-1", charge, fingerprint="fp-order-1")
    """
)


def test_a_key_claimed_by_a_dead_process_is_taken_over_after_its_lease(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(NOW_S)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert child.stdout.strip() == "charging"

    clock = ManualClock(wall_start_s=NOW_S)
    with SqliteIdempotencyStore(path) as store:
        record = store.get("order-1", now_s=clock.wall_s())
        assert record is not None
        assert record.state is RecordState.IN_PROGRESS
        assert record.owner.startswith("child:")

        guard = Idempotency(store, ttl_s=3600, lease_s=30, clock=clock)
        with pytest.raises(KeyInProgress) as caught:
            guard.run("order-1", lambda: "parent", fingerprint="fp-order-1")
        assert caught.value.retry_after_s == pytest.approx(30.0)

        clock.advance(30.0)
        assert guard.run("order-1", lambda: "parent", fingerprint="fp-order-1") == "parent"
        assert guard.statistics().takeovers == 1
        done = store.get("order-1", now_s=clock.wall_s())
        assert done is not None
        assert done.state is RecordState.COMPLETED


def test_sqlite_two_connections_race_for_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with SqliteIdempotencyStore(path) as one, SqliteIdempotencyStore(path) as two:
        first = claim(one, "k", "one")
        second = claim(two, "k", "two")
        assert first.acquired
        assert not second.acquired
        assert second.record.owner == "one"


def test_busy_timeout_s_bounds_the_wait_for_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with SqliteIdempotencyStore(path, busy_timeout_s=0) as store:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                claim(store, "k", "o")
            other.execute("ROLLBACK")
            assert claim(store, "k", "o").acquired
        finally:
            other.close()
