"""Three RaftNodes in one process, on loopback, with their own data directories.

Every wait is bounded by a deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from loopback import free_ports
from phalanx.errors import NotLeader
from phalanx.node import RaftNode

IDS = (1, 2, 3)
TICK_S = 0.02
DEADLINE_S = 5.0


@asynccontextmanager
async def cluster(root: Path, ports: list[int]) -> AsyncIterator[dict[int, RaftNode]]:
    addresses = {i: ("127.0.0.1", port) for i, port in zip(IDS, ports, strict=True)}
    async with AsyncExitStack() as stack:
        nodes = {}
        for i in IDS:
            node = RaftNode(
                i,
                root / f"n{i}",
                addresses[i],
                {j: a for j, a in addresses.items() if j != i},
                cluster_id="test-node",
                tick_interval_s=TICK_S,
                election_ticks=10,
            )
            nodes[i] = await stack.enter_async_context(node)
        yield nodes


async def until(predicate: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                if predicate():
                    return
                await asyncio.sleep(TICK_S)
    except TimeoutError:
        pytest.fail(f"not within {DEADLINE_S} s: {what}")


async def elected(nodes: dict[int, RaftNode]) -> RaftNode:
    """The leader, once one leads and every node knows it."""

    def agreed() -> bool:
        leaders = [n for n in nodes.values() if n.is_leader]
        return len(leaders) == 1 and all(n.leader_id == leaders[0].id for n in nodes.values())

    await until(agreed, "a leader known to every node")
    return next(n for n in nodes.values() if n.is_leader)


async def test_put_replicates_and_survives_restart(tmp_path: Path) -> None:
    ports = free_ports(3)
    async with cluster(tmp_path, ports) as nodes:
        leader = await elected(nodes)
        result = await leader.put(b"k", b"v1")
        assert result.revision == 1

        await until(
            lambda: all(n.store.get(b"k").kvs for n in nodes.values()),
            "the put applied on every node",
        )
        for node in nodes.values():
            assert node.store.get(b"k").kvs[0].value == b"v1"

        follower = next(n for n in nodes.values() if not n.is_leader)
        with pytest.raises(NotLeader) as info:
            await follower.put(b"k", b"v2")
        assert info.value.leader_hint == str(leader.id)

        # Linearizable reads see the acknowledged put, on the leader and through a follower.
        assert await leader.get(b"k") == b"v1"
        assert await follower.get(b"k") == b"v1"
        assert await follower.get(b"absent") is None
        assert await follower.get(b"k", linearizable=False) == b"v1"
        await leader.put(b"k2", b"x")

    # Reopened from the same directories: the log on disk brings the data back.
    async with cluster(tmp_path, ports) as nodes:
        leader = await elected(nodes)
        assert await leader.get(b"k") == b"v1"
        assert await leader.get(b"k2") == b"x"
        await leader.put(b"k", b"v3")
        for node in nodes.values():
            assert await node.get(b"k") == b"v3"
        assert (await leader.put(b"k4", b"y")).revision == 4


async def test_close_is_clean_and_start_once(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    node = RaftNode(
        1, tmp_path / "n1", ("127.0.0.1", port), {}, cluster_id="solo", tick_interval_s=TICK_S
    )
    async with node:
        with pytest.raises(RuntimeError):
            await node.start()
        # A single-node cluster elects itself and commits on its own disk.
        await until(lambda: node.is_leader, "the single node leads")
        assert (await node.put(b"a", b"1")).revision == 1
        assert await node.get(b"a") == b"1"
    with pytest.raises(RuntimeError):
        await node.put(b"a", b"2")
