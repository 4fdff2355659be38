"""Fixtures for the transport tests: nodes on 127.0.0.1 with ephemeral ports, and a test CA.

``net`` builds :class:`PeerTransport` nodes that record what they receive and what they are
told, wires them to each other, and closes them all at the end. ``certs`` (the test CA) is a
fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from phalanx.net.transport import PeerTransport
from phalanx.raft.types import Message, MessageType
from phalanx.resilience.backoff import Backoff

FAST_BACKOFF = Backoff(base_delay_s=0.005, max_delay_s=0.05, jitter="full")
WAIT_S = 5.0  # bounds every wait for a condition; nothing asserts how long anything takes


@dataclass
class Node:
    id: int
    received: list[Message] = field(default_factory=list)
    unreachable: list[int] = field(default_factory=list)
    snapshot_status: list[tuple[int, bool]] = field(default_factory=list)
    transport: PeerTransport = field(init=False)

    @property
    def address(self) -> tuple[str, int]:
        return self.transport.listen_address

    def peer(self, peer_id: int) -> Any:
        return self.transport.statistics().peers[peer_id]


def heartbeat(src: int, dst: int, term: int = 1, commit: int = 0) -> Message:
    return Message(type=MessageType.HEARTBEAT, src=src, dst=dst, term=term, commit=commit)


class Net:
    def __init__(self) -> None:
        self.nodes: list[Node] = []

    async def node(self, node_id: int, **options: Any) -> Node:
        """A started node with no peers yet; see :meth:`connect`."""
        node = Node(node_id)
        options.setdefault("cluster_id", "test")
        options.setdefault("reconnect_backoff", FAST_BACKOFF)
        options.setdefault("handshake_timeout_s", 2.0)
        options.setdefault("connect_timeout_s", 2.0)
        options.setdefault("on_unreachable", node.unreachable.append)
        options.setdefault(
            "on_snapshot_status", lambda peer, ok: node.snapshot_status.append((peer, ok))
        )
        on_message = options.pop("on_message", node.received.append)
        listen = options.pop("listen_addr", ("127.0.0.1", 0))
        node.transport = PeerTransport(node_id, listen, {}, on_message, **options)
        await node.transport.start()
        self.nodes.append(node)
        return node

    async def cluster(self, count: int, **options: Any) -> list[Node]:
        nodes = [await self.node(i + 1, **options) for i in range(count)]
        self.connect(*nodes)
        return nodes

    @staticmethod
    def connect(*nodes: Node) -> None:
        for node in nodes:
            for other in nodes:
                if other is not node:
                    node.transport.add_peer(other.id, other.address)

    @staticmethod
    async def wait_until(condition: Callable[[], bool], what: str = "condition") -> None:
        async with asyncio.timeout(WAIT_S):
            while not condition():  # noqa: ASYNC110 - polls plain state, bounded by WAIT_S
                await asyncio.sleep(0.002)
        assert condition(), what

    async def aclose(self) -> None:
        for node in self.nodes:
            await node.transport.aclose()


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    harness = Net()
    try:
        yield harness
    finally:
        await harness.aclose()
