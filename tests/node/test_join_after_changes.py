"""A member added at runtime joins correctly whichever member leads, and is promoted only
once it has caught up.

The initial membership is not in the log: it is each initial member's bootstrap state. A
member that joins empty must therefore start from a snapshot, never from log index 1. A
chaos run found the case the first version missed: the leader that added the member had
compacted its first entry, but leadership then moved to a member that had not, which sent
the newcomer entries from index 1; replaying an earlier removal on an empty membership
crashed the newcomer, and promoting the crashed learner later cost the cluster its quorum.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node_cluster import addresses, endpoint, leader_of, make_node, until
from phalanx.client import AsyncClient
from phalanx.errors import Unavailable
from phalanx.node import RaftNode


async def test_a_newcomer_gets_a_snapshot_from_a_leader_that_never_compacted(
    tmp_path: Path,
) -> None:
    ids = (1, 2, 3, 4)
    peer, client_addr = addresses(ids)
    nodes: dict[int, RaftNode] = {}
    try:
        for i in (1, 2, 3):
            initial = {j: a for j, a in peer.items() if j != 4}
            nodes[i] = make_node(i, tmp_path, initial, client_addr, transfer_on_close=False)
            await nodes[i].start()
        leader = await leader_of(nodes)
        async with AsyncClient([endpoint(n) for n in nodes.values()], total_timeout_s=30) as client:
            for k in range(20):
                await client.put(b"k%d" % k, b"v")
            gone, other = (i for i in (1, 2, 3) if i != leader.id)
            await client.remove_member(gone)
            await nodes.pop(gone).aclose()
            # The leader adds the newcomer (and compacts its own first entry) ...
            await client.add_member(4, "{}:{}".format(*peer[4]), "{}:{}".format(*client_addr[4]))
            # ... then hands leadership to the member whose log still starts at index 1.
            assert await leader.transfer_leadership(other) == other
            assert nodes[other]._core_storage().first_index() == 1
            nodes[4] = make_node(4, tmp_path, peer, client_addr, join=True)
            await nodes[4].start()
            await until(
                lambda: nodes[4].store.applied_index >= nodes[other].store.applied_index,
                "the newcomer to catch up through a snapshot",
            )
            await client.promote_member(4)
            await client.put(b"after", b"promotion")
            await until(
                lambda: nodes[4].store.applied_index >= nodes[other].store.applied_index,
                "the newcomer to apply the write after its promotion",
            )
            for node in nodes.values():
                voters = node.status().conf_state.voters
                assert voters == tuple(sorted({leader.id, other, 4})), (node.id, voters)
            got = await client.get(b"after")
            assert got is not None
    finally:
        await asyncio.gather(*(n.aclose() for n in nodes.values()), return_exceptions=True)


async def test_a_learner_that_has_not_caught_up_is_not_promoted(tmp_path: Path) -> None:
    ids = (1, 2, 3, 4)
    peer, client_addr = addresses(ids)
    nodes: dict[int, RaftNode] = {}
    try:
        for i in (1, 2, 3):
            initial = {j: a for j, a in peer.items() if j != 4}
            nodes[i] = make_node(i, tmp_path, initial, client_addr)
            await nodes[i].start()
        leader = await leader_of(nodes)
        await leader.add_member(4, peer[4], client_addr[4])
        # Node 4 never starts: a voter that cannot vote would shrink the margin of quorum.
        with pytest.raises(Unavailable, match="has not caught up"):
            await leader.promote_member(4)
        assert 4 in leader.status().conf_state.learners
    finally:
        await asyncio.gather(*(n.aclose() for n in nodes.values()), return_exceptions=True)
