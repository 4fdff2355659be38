"""Membership changes at runtime, under a steady write load: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from node_cluster import addresses, endpoint, leader_of, make_node, until
from phalanx.client import AsyncClient
from phalanx.errors import PhalanxError
from phalanx.node import RaftNode


async def writer(client: AsyncClient, acked: list[bytes], stop: asyncio.Event) -> None:
    """Write k0, k1, ... until ``stop``; record every acknowledged key."""
    for i in range(100_000):
        if stop.is_set():
            return
        key = b"k%06d" % i
        with contextlib.suppress(PhalanxError):
            await client.put(key, b"v")
            acked.append(key)


async def test_add_promote_remove_under_load(tmp_path: Path) -> None:
    ids = (1, 2, 3, 4)
    peer, client_addr = addresses(ids)
    nodes: dict[int, RaftNode] = {}
    try:
        for i in (1, 2, 3):
            # The first three know only each other; node 4 is added later.
            nodes[i] = make_node(
                i,
                tmp_path,
                {j: a for j, a in peer.items() if j != 4},
                client_addr,
                transfer_on_close=False,
            )
            await nodes[i].start()
        leader = await leader_of(nodes)
        acked: list[bytes] = []
        stop = asyncio.Event()
        async with AsyncClient([endpoint(n) for n in nodes.values()], total_timeout_s=30) as client:
            load = asyncio.create_task(writer(client, acked, stop))
            await until(lambda: len(acked) >= 20, "writes before the change")

            # Add node 4 as a learner, start it empty with join, promote it once caught up.
            await client.add_member(
                4,
                "{}:{}".format(*peer[4]),
                "{}:{}".format(*client_addr[4]),
            )
            nodes[4] = make_node(4, tmp_path, peer, client_addr, join=True)
            await nodes[4].start()
            await until(
                lambda: nodes[4].store.applied_index >= leader.store.applied_index - 5,
                "the learner to catch up",
            )
            status = await client.promote_member(4)
            assert {m.node_id: m.learner for m in status.members} == {
                1: False,
                2: False,
                3: False,
                4: False,
            }
            await until(lambda: len(acked) >= 60, "writes after the promotion")

            # Remove a follower (not the leader) and stop it.
            gone = next(i for i in (1, 2, 3) if i != leader.id)
            await client.remove_member(gone)
            await nodes[gone].aclose()
            count = len(acked)
            await until(lambda: len(acked) >= count + 20, "writes after the removal")
            stop.set()
            await load

            status = await client.status()
            assert sorted(m.node_id for m in status.members) == sorted({1, 2, 3, 4} - {gone})
            # Every acknowledged write is on every remaining member.
            live = [n for i, n in nodes.items() if i != gone]
            last = max(n.store.applied_index for n in live)
            await until(lambda: all(n.store.applied_index >= last for n in live), "all to apply")
            for node in live:
                present = {kv.key for kv in node.store.get(b"k", b"l").kvs}
                missing = [k for k in acked if k not in present]
                assert not missing, f"node {node.id} lacks {missing[:5]}"
    finally:
        for node in nodes.values():
            with contextlib.suppress(Exception):
                await node.aclose()
