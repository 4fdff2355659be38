"""In-process clusters of ``RaftNode`` on loopback, for tests of the node and the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from loopback import free_ports
from phalanx.node import RaftNode

TICK_S = 0.02
DEADLINE_S = 10.0

Address = tuple[str, int]


def addresses(ids: tuple[int, ...]) -> tuple[dict[int, Address], dict[int, Address]]:
    """Free loopback peer and client addresses for ``ids``."""
    ports = free_ports(2 * len(ids))
    peer = {i: ("127.0.0.1", ports[2 * k]) for k, i in enumerate(ids)}
    client = {i: ("127.0.0.1", ports[2 * k + 1]) for k, i in enumerate(ids)}
    return peer, client


def make_node(
    node_id: int,
    root: Path,
    peer: dict[int, Address],
    client: dict[int, Address],
    **options: Any,
) -> RaftNode:
    return RaftNode(
        node_id,
        root / f"n{node_id}",
        peer[node_id],
        {j: a for j, a in peer.items() if j != node_id},
        cluster_id="test",
        tick_interval_s=TICK_S,
        client_listen=client[node_id],
        client_addrs=client,
        **options,
    )


@asynccontextmanager
async def cluster(
    root: Path, ids: tuple[int, ...] = (1, 2, 3), **options: Any
) -> AsyncIterator[dict[int, RaftNode]]:
    """Start ``ids`` as one cluster; close every node still open at the end."""
    peer, client = addresses(ids)
    async with AsyncExitStack() as stack:
        nodes = {}
        for i in ids:
            nodes[i] = await stack.enter_async_context(make_node(i, root, peer, client, **options))
        yield nodes


async def until(predicate: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    try:
        async with asyncio.timeout(deadline_s):
            while not predicate():  # noqa: ASYNC110 - polling a condition of other tasks
                await asyncio.sleep(TICK_S)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def leader_of(nodes: dict[int, RaftNode]) -> RaftNode:
    """The leader every running node agrees on."""
    found: list[RaftNode] = []

    def agreed() -> bool:
        running = [n for n in nodes.values() if n.started]
        leaders = [n for n in running if n.is_leader]
        if len(leaders) != 1 or any(n.leader_id != leaders[0].id for n in running):
            return False
        found[:] = leaders
        return True

    await until(agreed, "one agreed leader")
    return found[0]


def endpoint(node: RaftNode) -> str:
    address = node.client_address
    assert address is not None
    return f"{address[0]}:{address[1]}"
