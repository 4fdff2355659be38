"""Distributed locks against a real in-process 3-node cluster, and the fencing resources."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from pathlib import Path

import pytest

from node_cluster import cluster, endpoint, leader_of, until
from phalanx.client import AsyncClient, Client
from phalanx.client.fencing import FencedResource, SqliteFencedResource, StaleToken
from phalanx.client.lock import (
    LEAVE_REVOKES_MAX,
    LOCK_PREFIX,
    Lock,
    NotAcquired,
    SyncLock,
    TooManyContenders,
    lowest,
    predecessor,
    queue_prefix,
)
from phalanx.errors import BadRequest, Outcome, Timeout, Unavailable, outcome_of
from phalanx.kv.responses import KeyValue

WAIT_S = 10.0


def _kv(key: bytes, create_revision: int) -> KeyValue:
    return KeyValue(key, b"", create_revision, create_revision, 1)


def test_the_queue_order_is_by_create_revision() -> None:
    kvs = [_kv(b"q/c", 9), _kv(b"q/a", 12), _kv(b"q/b", 5)]
    assert lowest(kvs) == kvs[2]
    assert predecessor(kvs, 5) is None
    assert predecessor(kvs, 9) == kvs[2]
    assert predecessor(kvs, 12) == kvs[0]
    assert lowest([]) is None


def test_names_cannot_overlap_another_queue() -> None:
    assert queue_prefix(b"/p/", "jobs") == b"/p/jobs/"
    for bad in ("", "a/b", "x" * 300):
        with pytest.raises(BadRequest):
            queue_prefix(b"/p/", bad)


def test_fenced_resource_refuses_older_tokens() -> None:
    resource = FencedResource(0)
    assert resource.write(5, lambda v: v + 1) == 1
    assert resource.write(5, lambda v: v + 1) == 2  # the same holder again
    assert resource.write(9, lambda v: v + 1) == 3
    with pytest.raises(StaleToken) as refused:
        resource.write(5, lambda v: v + 100)
    assert (refused.value.token, refused.value.highest) == (5, 9)
    with pytest.raises(ZeroDivisionError):
        resource.write(12, lambda v: v // 0)
    assert resource.highest_token == 9  # a failed update records nothing
    assert resource.read() == 3
    assert resource.statistics() == {"highest_token": 9, "accepted": 3, "refused": 1}
    with pytest.raises(BadRequest):
        resource.write(0, lambda v: v)


def test_sqlite_fenced_resource_checks_in_the_write_transaction(tmp_path: Path) -> None:
    path = tmp_path / "bank.db"
    with SqliteFencedResource(path, name="accounts") as resource:
        resource.write(1, lambda db: db.execute("CREATE TABLE t (v INTEGER)"))
        resource.write(7, lambda db: db.execute("INSERT INTO t VALUES (7)"))

        def fails(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO t VALUES (8)")
            raise RuntimeError("the write failed half-way")

        with pytest.raises(RuntimeError):
            resource.write(8, fails)
        with pytest.raises(StaleToken):
            resource.write(3, lambda db: db.execute("INSERT INTO t VALUES (3)"))
        assert resource.highest_token == 7
    # Another process (here: another connection) sees the same fence.
    with SqliteFencedResource(path, name="accounts") as again:
        assert again.highest_token == 7
        rows = again.read(lambda db: db.execute("SELECT v FROM t").fetchall())
        assert rows == [(7,)]


async def test_contenders_take_turns_with_increasing_tokens(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        async with AsyncClient([endpoint(n) for n in nodes.values()]) as client:
            counter = FencedResource(0, name="counter")
            inside = [0]
            most_inside = [0]
            tokens: list[int] = []

            async def worker() -> None:
                for _ in range(2):
                    async with Lock(client, "counter", ttl_s=2.0) as held:
                        inside[0] += 1
                        most_inside[0] = max(most_inside[0], inside[0])
                        tokens.append(held.fencing_token)
                        seen = counter.read()
                        for _ in range(3):  # let the other tasks run inside the section
                            await asyncio.sleep(0)
                        counter.write(held.fencing_token, lambda _, seen=seen: seen + 1)
                        inside[0] -= 1

            async with asyncio.timeout(WAIT_S * 2):
                async with asyncio.TaskGroup() as group:
                    for _ in range(5):
                        group.create_task(worker())
            assert counter.read() == 10
            assert most_inside[0] == 1
            assert tokens == sorted(tokens)
            assert len(set(tokens)) == len(tokens)
            left = await client.range(queue_prefix(LOCK_PREFIX, "counter"), prefix=True)
            assert left.count == 0  # every holder released its key


async def test_a_paused_holder_is_fenced_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        endpoints = [endpoint(n) for n in nodes.values()]
        async with AsyncClient(endpoints) as client_a, AsyncClient(endpoints) as client_b:
            memory = FencedResource("", name="report")
            db = SqliteFencedResource(tmp_path / "fenced.db", name="report")
            db.write(1, lambda c: c.execute("CREATE TABLE log (who TEXT)"))

            lock_a = Lock(client_a, "report", ttl_s=0.5)
            held_a = await lock_a.acquire(timeout_s=WAIT_S)
            memory.write(held_a.fencing_token, lambda _: "a1")

            # A pauses (a long GC): its keep-alives stop, so its lease expires.
            paused = asyncio.Event()

            async def never(lease_id: int) -> float:
                await paused.wait()
                return 0.0

            monkeypatch.setattr(client_a, "keep_alive", never)

            lock_b = Lock(client_b, "report", ttl_s=0.5)
            held_b = await lock_b.acquire(timeout_s=WAIT_S)
            assert held_b.fencing_token > held_a.fencing_token
            memory.write(held_b.fencing_token, lambda _: "b1")
            db.write(held_b.fencing_token, lambda c: c.execute("INSERT INTO log VALUES ('b')"))

            # A wakes up still believing it holds; its late writes are refused.
            with pytest.raises(StaleToken):
                memory.write(held_a.fencing_token, lambda _: "a2")
            with pytest.raises(StaleToken):
                db.write(held_a.fencing_token, lambda c: c.execute("INSERT INTO log VALUES ('a')"))
            assert memory.read() == "b1"
            assert db.read(lambda c: c.execute("SELECT who FROM log").fetchall()) == [("b",)]
            # And the lock told A, for code that looks.
            async with asyncio.timeout(WAIT_S):
                await held_a.lost.wait()
            assert not held_b.lost.is_set()
            await lock_a.release()  # the lease is already gone: releasing is still fine
            await lock_b.release()
            assert held_b.lost.is_set()
            db.close()


async def test_the_lock_survives_a_leader_change(tmp_path: Path) -> None:
    async with cluster(tmp_path, transfer_on_close=False) as nodes:
        leader = await leader_of(nodes)
        async with AsyncClient([endpoint(n) for n in nodes.values()]) as client:
            lock = Lock(client, "survivor", ttl_s=3.0)
            held = await lock.acquire(timeout_s=WAIT_S)
            await leader.aclose()
            await leader_of({i: n for i, n in nodes.items() if n is not leader})
            renewed = lock.statistics()["renewals"]
            # Renewals go on through the new leader, and the key is still ours.
            await until(lambda: lock.statistics()["renewals"] >= renewed + 2, "renewals")
            listing = await client.range(held.key)
            assert listing.kvs[0].create_revision == held.fencing_token
            assert listing.kvs[0].lease == held.lease_id
            assert not held.lost.is_set()
            await lock.release()
            assert await client.get(held.key) is None


@pytest.mark.parametrize("failed_revokes", [2, LEAVE_REVOKES_MAX])
async def test_a_failed_revoke_is_sent_again_and_only_then_left_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failed_revokes: int
) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        async with AsyncClient([endpoint(n) for n in nodes.values()]) as client:
            holder = Lock(client, "busy", ttl_s=2.0)
            await holder.acquire()
            waiter = Lock(client, "busy", ttl_s=1.0)
            revoke = client.revoke
            failures = [Unavailable("a leader change")] * failed_revokes

            async def flaky(lease_id: int) -> None:
                if failures:
                    raise failures.pop()
                await revoke(lease_id)

            monkeypatch.setattr(client, "revoke", flaky)
            with pytest.raises(Timeout) as refused:
                await waiter.acquire(timeout_s=0.3)
            monkeypatch.undo()
            if failed_revokes < LEAVE_REVOKES_MAX:  # withdrawn on a later revoke: confirmed
                assert isinstance(refused.value, NotAcquired)
                assert (await client.range(holder.queue, prefix=True)).count == 1
            else:  # never confirmed: the claim's lease ends on its own
                assert outcome_of(refused.value) is Outcome.INDETERMINATE
                assert "lease ends within 1.0 s" in str(refused.value)
            await holder.release()


async def test_acquire_timeout_withdraws_the_claim(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        async with AsyncClient([endpoint(n) for n in nodes.values()]) as client:
            holder = Lock(client, "busy", ttl_s=2.0)
            await holder.acquire()
            waiter = Lock(client, "busy", ttl_s=2.0)
            with pytest.raises(NotAcquired) as refused:
                await waiter.acquire(timeout_s=0.3)
            # Withdrawn and confirmed: a definite failure, still a Timeout to old callers.
            assert outcome_of(refused.value) is Outcome.FAILED
            assert isinstance(refused.value, Timeout)
            queue = await client.range(holder.queue, prefix=True)
            assert queue.count == 1
            # The waiter can try again later.
            await holder.release()
            held = await waiter.acquire(timeout_s=WAIT_S)
            await waiter.release()
            assert held.lost.is_set()


async def test_too_many_contenders(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        async with AsyncClient([endpoint(n) for n in nodes.values()]) as client:
            queue = queue_prefix(LOCK_PREFIX, "crowd")
            lease = await client.grant(5.0)
            for i in range(3):
                await client.put(queue + b"other-%d" % i, b"", lease=lease)
            with pytest.raises(TooManyContenders):
                await Lock(client, "crowd", contenders_max=3).acquire(timeout_s=WAIT_S)
            assert (await client.range(queue, prefix=True)).count == 3  # ours was withdrawn
            await client.revoke(lease)


async def test_sync_lock(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        endpoints = [endpoint(n) for n in nodes.values()]

        def blocking() -> list[int]:
            tokens = []
            with Client(endpoints) as client:
                for _ in range(2):
                    with SyncLock(client, "sync", ttl_s=1.0) as held:
                        tokens.append(held.fencing_token)
                        assert not held.lost.is_set()
                    assert held.lost.is_set()
            return tokens

        tokens = await asyncio.wait_for(asyncio.to_thread(blocking), WAIT_S * 2)
        assert tokens[0] < tokens[1]


def test_the_blocking_client_range_takes_the_async_options() -> None:
    blocking = set(inspect.signature(Client.range).parameters)
    asynchronous = set(inspect.signature(AsyncClient.range).parameters)
    assert asynchronous <= blocking
