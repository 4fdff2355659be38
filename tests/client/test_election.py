"""Leader election against a real in-process 3-node cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node_cluster import cluster, endpoint, leader_of
from phalanx.client import AsyncClient, Client
from phalanx.client.election import Election, Leader, LeadershipLost, SyncElection
from phalanx.errors import Timeout

WAIT_S = 10.0


async def test_failover_passes_leadership_in_order_and_observe_sees_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        endpoints = [endpoint(n) for n in nodes.values()]
        async with (
            AsyncClient(endpoints) as client_a,
            AsyncClient(endpoints) as client_b,
            AsyncClient(endpoints) as client_c,
            AsyncClient(endpoints) as watcher,
        ):
            observed: list[Leader] = []
            enough = asyncio.Event()

            async def observe() -> None:
                async for leader in Election(watcher, "svc").observe():
                    observed.append(leader)
                    if leader.value == b"c":
                        enough.set()

            a = Election(client_a, "svc", ttl_s=2.0)
            b = Election(client_b, "svc", ttl_s=0.5)
            c = Election(client_c, "svc", ttl_s=2.0)
            assert await a.leader() is None
            async with asyncio.timeout(WAIT_S * 2), asyncio.TaskGroup() as group:
                observer = group.create_task(observe())
                won_a = await a.campaign(b"a")
                campaign_b = group.create_task(b.campaign(b"b"))
                # b is queued before c: wait until its key exists.
                while (await client_a.range(a.queue, prefix=True)).count < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                campaign_c = group.create_task(c.campaign(b"c"))
                current = await a.leader()
                assert current is not None
                assert (current.value, current.token) == (b"a", won_a.token)

                await a.proclaim(b"a2")
                await a.resign()
                won_b = await campaign_b
                assert won_b.token > won_a.token
                assert not campaign_c.done()

                # b stops renewing (a crash, a pause): its lease expires, c takes over.
                async def never(lease_id: int) -> float:
                    await asyncio.Event().wait()
                    return 0.0

                monkeypatch.setattr(client_b, "keep_alive", never)
                won_c = await campaign_c
                assert won_c.token > won_b.token
                await won_b.lost.wait()
                with pytest.raises(LeadershipLost):
                    await b.proclaim(b"b2")
                await enough.wait()
                observer.cancel()
            assert [(o.value, o.token) for o in observed] == [
                (b"a", won_a.token),
                (b"a2", won_a.token),
                (b"b", won_b.token),
                (b"c", won_c.token),
            ]
            await c.resign()
            await b.resign()
            assert await c.leader() is None


async def test_campaign_timeout_withdraws_the_candidate(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        async with AsyncClient([endpoint(n) for n in nodes.values()]) as client:
            first = Election(client, "single", ttl_s=2.0)
            second = Election(client, "single", ttl_s=2.0)
            await first.campaign(b"one")
            with pytest.raises(Timeout):
                await second.campaign(b"two", timeout_s=0.3)
            assert (await client.range(first.queue, prefix=True)).count == 1
            with pytest.raises(RuntimeError):
                await second.proclaim(b"two")
            await first.resign()
            won = await second.campaign(b"two", timeout_s=WAIT_S)
            leader = await first.leader()
            assert leader is not None
            assert (leader.value, leader.token) == (b"two", won.token)
            await second.resign()


async def test_sync_election(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        endpoints = [endpoint(n) for n in nodes.values()]

        def blocking() -> None:
            with Client(endpoints) as client, SyncElection(client, "sync", ttl_s=1.0) as first:
                assert first.leader() is None
                won = first.campaign(b"one", timeout_s=WAIT_S)
                first.proclaim(b"uno")
                leader = first.leader()
                assert leader is not None
                assert (leader.value, leader.token) == (b"uno", won.token)
                assert not won.lost.is_set()
                with SyncElection(client, "sync", ttl_s=1.0) as second:
                    first.resign()
                    assert won.lost.is_set()
                    again = second.campaign(b"two", timeout_s=WAIT_S)
                    assert again.token > won.token
                assert first.leader() is None  # closing resigned

        await asyncio.wait_for(asyncio.to_thread(blocking), WAIT_S * 2)
