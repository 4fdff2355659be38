"""The client protocol against in-process nodes: answers, redirects, and bad input."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import msgspec
import pytest

from loopback import free_ports
from phalanx.client import AsyncClient
from phalanx.errors import BadRequest, TooLarge
from phalanx.kv import Put
from phalanx.net.framing import WIRE_VERSION, FrameDecoder, FrameType
from phalanx.node import RaftNode
from phalanx.node.client_protocol import (
    CLIENT_FRAME_BYTES_MAX,
    ClientRequest,
    ClientResponse,
    decode_response,
    encode_request,
)

IDS = (1, 2, 3)
TICK_S = 0.02
DEADLINE_S = 5.0


@asynccontextmanager
async def cluster(root: Path) -> AsyncIterator[dict[int, RaftNode]]:
    ports = free_ports(2 * len(IDS))
    peer = {i: ("127.0.0.1", ports[2 * k]) for k, i in enumerate(IDS)}
    client = {i: ("127.0.0.1", ports[2 * k + 1]) for k, i in enumerate(IDS)}
    async with AsyncExitStack() as stack:
        nodes = {}
        for i in IDS:
            node = RaftNode(
                i,
                root / f"n{i}",
                peer[i],
                {j: a for j, a in peer.items() if j != i},
                cluster_id="test-client-server",
                tick_interval_s=TICK_S,
                client_listen=client[i],
                client_addrs=client,
            )
            nodes[i] = await stack.enter_async_context(node)
        yield nodes


async def leader_of(nodes: dict[int, RaftNode]) -> RaftNode:
    async with asyncio.timeout(DEADLINE_S):
        while True:
            leaders = [n for n in nodes.values() if n.is_leader]
            if len(leaders) == 1 and all(n.leader_id == leaders[0].id for n in nodes.values()):
                return leaders[0]
            await asyncio.sleep(TICK_S)


async def exchange(address: tuple[str, int], frames: bytes) -> list[bytes]:
    """Send raw bytes, collect the payloads of every frame until the node closes."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(frames)
        await writer.drain()
        decoder = FrameDecoder(CLIENT_FRAME_BYTES_MAX)
        payloads: list[bytes] = []
        async with asyncio.timeout(DEADLINE_S):
            while data := await reader.read(65536):
                payloads.extend(frame.payload for frame in decoder.feed(data))
        return payloads
    finally:
        writer.close()


def address(node: RaftNode) -> tuple[str, int]:
    assert node.client_address is not None
    return node.client_address


async def test_client_follows_redirects_and_reads(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await leader_of(nodes)
        follower = next(n for n in nodes.values() if n is not leader)
        # Only a follower's endpoint: the client learns the leader from NotLeader.
        async with AsyncClient([address(follower)]) as client:
            assert await client.put(b"a", b"1") == 1
            assert client.leader == address(leader)
            assert await client.get(b"a") == b"1"
            assert await client.get(b"absent") is None
            with pytest.raises(BadRequest):
                await client.put(b"", b"x")  # empty keys are refused by the store
            with pytest.raises(TooLarge):
                await client.put(b"k", b"x" * (1024 * 1024 + 1))

        # A raw request to a follower: NotLeader names the leader's client address.
        request = encode_request(ClientRequest(7, "propose", command=Put(b"b", b"2")))
        reader, writer = await asyncio.open_connection(*address(follower))
        try:
            writer.write(request + encode_request(ClientRequest(8, "scan")))
            decoder = FrameDecoder(CLIENT_FRAME_BYTES_MAX)
            answers: dict[int, ClientResponse] = {}
            async with asyncio.timeout(DEADLINE_S):
                while len(answers) < 2:
                    for frame in decoder.feed(await reader.read(65536)):
                        response = decode_response(frame.payload)
                        answers[response.id] = response
        finally:
            writer.close()
        redirect = answers[7].error
        assert redirect is not None
        assert redirect.type == "NotLeader"
        assert redirect.leader_hint == "{}:{}".format(*address(leader))
        assert redirect.leader_id == leader.id
        assert answers[8].error is not None
        assert answers[8].error.type == "BadRequest"


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "BadRequest"),
        (struct.pack(">BBI", WIRE_VERSION, FrameType.MESSAGE, CLIENT_FRAME_BYTES_MAX), "TooLarge"),
        (struct.pack(">BBI", WIRE_VERSION, FrameType.HELLO, 1) + b"\x90", "BadRequest"),
        (struct.pack(">BBI", WIRE_VERSION, FrameType.MESSAGE, 3) + b"abc", "BadRequest"),
        (
            struct.pack(">BBI", WIRE_VERSION, FrameType.MESSAGE, 2) + msgspec.msgpack.encode([1]),
            "BadRequest",
        ),
    ],
    ids=["http", "too-large", "wrong-frame-type", "not-msgpack", "not-a-request"],
)
async def test_bad_frames_close_only_their_connection(
    tmp_path: Path, frames: bytes, expected: str
) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await leader_of(nodes)
        async with AsyncClient([address(leader)]) as client:
            await client.put(b"k", b"v")
            payloads = await exchange(address(leader), frames)
            assert len(payloads) == 1
            answer = decode_response(payloads[0])
            assert answer.id == 0
            assert answer.error is not None
            assert answer.error.type == expected
            # The node and the client's own connection keep working.
            assert await client.get(b"k") == b"v"
            await client.put(b"k", b"w")


async def test_unreachable_endpoint_is_skipped_even_for_writes(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        dead = ("127.0.0.1", free_ports(1)[0])
        endpoints = [dead, *(address(n) for n in nodes.values())]
        async with AsyncClient(endpoints) as client:
            # The refused connection is a FAILED outcome: the write moves on and succeeds.
            await client.put(b"x", b"1")
            assert await client.get(b"x") == b"1"
