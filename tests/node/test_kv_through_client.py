"""The key-value API end to end: client -> protocol -> node -> Raft -> state machine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node_cluster import cluster, endpoint, leader_of, until
from phalanx.client import AsyncClient
from phalanx.errors import NoQuorum, Unavailable
from phalanx.kv import Compare, CompareOp, CompareTarget, Put, Range
from phalanx.kv.errors import Compacted, LeaseNotFound


async def test_range_delete_txn_and_compact(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        async with AsyncClient([endpoint(n) for n in nodes.values()]) as client:
            for i in range(5):
                await client.put(b"app/%d" % i, b"v%d" % i)
            await client.put(b"other", b"x")
            listing = await client.range(b"app/", prefix=True)
            assert [kv.key for kv in listing.kvs] == [b"app/%d" % i for i in range(5)]
            assert listing.count == 5
            assert not listing.stale
            limited = await client.range(b"app/", prefix=True, limit=2)
            assert limited.more
            assert len(limited.kvs) == 2
            local = await client.range(b"other", linearizable=False)
            assert local.stale

            assert await client.delete(b"app/", prefix=True) == 5
            assert (await client.range(b"app/", prefix=True)).count == 0
            old = await client.range(b"app/0", revision=listing.revision)
            assert old.value == b"v0"

            swapped = await client.txn(
                [Compare(b"other", CompareTarget.VALUE, CompareOp.EQUAL, b"x")],
                [Put(b"other", b"y")],
                [Range(b"other")],
            )
            assert swapped.succeeded
            refused = await client.txn(
                [Compare(b"other", CompareTarget.VALUE, CompareOp.EQUAL, b"x")],
                [Put(b"other", b"z")],
                [Range(b"other")],
            )
            assert not refused.succeeded
            assert await client.get(b"other") == b"y"

            await client.compact(swapped.revision)
            with pytest.raises(Compacted):
                await client.range(b"app/0", revision=listing.revision)


async def test_leases_expire_on_every_replica(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        async with AsyncClient([endpoint(n) for n in nodes.values()]) as client:
            lease = await client.grant(0.3)
            await client.put(b"ephemeral", b"1", lease=lease)
            assert await client.keep_alive(lease) == pytest.approx(0.3)
            await until(
                lambda: all(n.store.get(b"ephemeral").count == 0 for n in nodes.values()),
                "the leased key to go on every node",
            )
            with pytest.raises(LeaseNotFound):
                await client.keep_alive(lease)
            revoked = await client.grant(30)
            await client.put(b"held", b"1", lease=revoked)
            await client.revoke(revoked)
            assert await client.get(b"held") is None


async def test_retried_session_write_is_applied_once(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await leader_of(nodes)
        async with AsyncClient([endpoint(leader)]) as client:
            await client.put(b"k", b"1")
            session = client.session_id
            assert session > 0
            # The same (session, seq) proposed twice, as a retry after a lost answer would:
            # the second answer is the first one, and the store changed once.
            first = await leader.propose(Put(b"k", b"2"), client_id=session, seq=99)
            again = await leader.propose(Put(b"k", b"3"), client_id=session, seq=99)
            assert again == first
            assert await client.get(b"k") == b"2"


async def test_watch_sees_every_change_across_a_leader_change(tmp_path: Path) -> None:
    async with cluster(tmp_path, (1, 2, 3), transfer_on_close=False) as nodes:
        leader = await leader_of(nodes)
        async with (
            AsyncClient([endpoint(n) for n in nodes.values()]) as writer,
            # The leader's endpoint first: the watch starts on the node that will go away.
            AsyncClient(
                [endpoint(leader)] + [endpoint(n) for n in nodes.values() if n is not leader]
            ) as watcher,
        ):
            seen: list[tuple[str, bytes, bytes]] = []

            async def watch() -> None:
                async for event in watcher.watch(b"w/", prefix=True, start_revision=1):
                    seen.append((event.type, event.key, event.value))
                    if len(seen) == 6:
                        return

            task = asyncio.create_task(watch())
            for i in range(3):
                await writer.put(b"w/%d" % i, b"%d" % i)
            # The watcher's node (the leader) goes away; the watch resumes elsewhere.
            await leader.aclose()
            rest = {i: n for i, n in nodes.items() if n is not leader}
            await leader_of(rest)
            await writer.put(b"w/3", b"3")
            await writer.delete(b"w/0")
            await writer.put(b"w/1", b"again")
            async with asyncio.timeout(10):
                await task
            assert seen == [
                ("put", b"w/0", b"0"),
                ("put", b"w/1", b"1"),
                ("put", b"w/2", b"2"),
                ("put", b"w/3", b"3"),
                ("delete", b"w/0", b""),
                ("put", b"w/1", b"again"),
            ]


async def test_minority_answers_no_quorum_and_catches_up(tmp_path: Path) -> None:
    async with cluster(tmp_path, (1, 2, 3), transfer_on_close=False) as nodes:
        leader = await leader_of(nodes)
        await leader.put(b"k", b"before")
        lonely = next(n for n in nodes.values() if n is not leader)
        others = [n for n in nodes.values() if n is not lonely]
        await until(lambda: lonely.store.applied_index >= leader.store.applied_index, "catch up")
        for node in others:
            await node.aclose()
        with pytest.raises(NoQuorum):
            await lonely.get(b"k")
        with pytest.raises(NoQuorum):
            await until(lambda: lonely.leader_id == 0, "the lonely node to lose its leader")
            await lonely.put(b"k", b"during")
        stale = await lonely.read(Range(b"k"), linearizable=False)
        assert stale.kvs[0].value == b"before"


async def test_status_and_leadership_transfer(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await leader_of(nodes)
        async with AsyncClient([endpoint(n) for n in nodes.values()]) as client:
            status = await client.status(endpoint(leader))
            assert status.role == "leader"
            assert [m.node_id for m in status.members] == [1, 2, 3]
            target = next(i for i in nodes if i != leader.id)
            await client.transfer_leadership(target)
            await until(lambda: nodes[target].is_leader, "the transfer")


async def test_pending_proposals_limit_refuses_before_proposing(tmp_path: Path) -> None:
    async with cluster(tmp_path, pending_proposals_max=2) as nodes:
        leader = await leader_of(nodes)
        results = await asyncio.gather(
            *(leader.put(b"k%d" % i, b"v") for i in range(6)), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, Unavailable)]
        assert len(refused) == 4
        assert all("pending_proposals_max" in str(r) for r in refused)
        assert leader.store.get(b"k", b"l").count == 2


async def test_graceful_close_hands_leadership_over(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await leader_of(nodes)
        await leader.put(b"k", b"v")
        await leader.aclose()
        assert leader.handed_over_to != 0
        rest = {i: n for i, n in nodes.items() if n is not leader}
        successor = await leader_of(rest)
        assert successor.id == leader.handed_over_to
        assert await successor.get(b"k") == b"v"
