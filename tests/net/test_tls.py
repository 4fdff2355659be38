"""TLS and mutual TLS between transports, with a CA made for the test (see ``conftest.certs``)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from phalanx.net.framing import FrameType, Hello, encode_frame
from phalanx.raft.types import Message, MessageType


def heartbeat(src: int, dst: int, commit: int = 0) -> Message:
    return Message(type=MessageType.HEARTBEAT, src=src, dst=dst, term=1, commit=commit)


def server_context(certs: Any, *, mutual: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    if mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(certs.ca)
    return context


def client_context(certs: Any, *, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    if with_cert:
        context.load_cert_chain(certs.cert, certs.key)
    return context


async def _exchange(net: Any, certs: Any, *, mutual: bool) -> None:
    options = {
        "server_ssl": server_context(certs, mutual=mutual),
        "client_ssl": client_context(certs, with_cert=mutual),
    }
    nodes = await net.cluster(3, **options)
    for node in nodes:
        for other in nodes:
            if other is not node:
                for commit in range(20):
                    assert node.transport.send(heartbeat(node.id, other.id, commit))
    await net.wait_until(lambda: all(len(n.received) == 40 for n in nodes))
    for node in nodes:
        for other in nodes:
            if other is not node:
                assert [m.commit for m in node.received if m.src == other.id] == list(range(20))


async def test_tls_round_trip(net: Any, certs: Any) -> None:
    await _exchange(net, certs, mutual=False)


async def test_mutual_tls_round_trip(net: Any, certs: Any) -> None:
    await _exchange(net, certs, mutual=True)


async def test_mutual_tls_refuses_a_client_without_a_certificate(net: Any, certs: Any) -> None:
    a = await net.node(1, server_ssl=server_context(certs, mutual=True))
    intruder = await net.node(2, client_ssl=client_context(certs, with_cert=False))
    a.transport.add_peer(2, ("127.0.0.1", 9))
    intruder.transport.add_peer(1, a.address)
    intruder.transport.send(heartbeat(2, 1))
    await net.wait_until(lambda: intruder.peer(1).connect_failures >= 2)
    assert intruder.peer(1).connects == 0
    assert intruder.unreachable == [1]
    assert a.received == []
    assert a.transport.statistics().inbound_accepted == 0
    # The same by hand: TLS completes on the client side, then the server's refusal arrives.
    reader, writer = await asyncio.open_connection(
        *a.address, ssl=client_context(certs, with_cert=False)
    )
    try:
        writer.write(encode_frame(FrameType.HELLO, Hello("test", src=2, dst=1)))
        async with asyncio.timeout(5.0):
            try:
                data = await reader.read(1024)
            except (ssl.SSLError, ConnectionError):
                data = b""
        assert data == b""
    finally:
        writer.transport.abort()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def test_plain_client_against_a_tls_listener_is_refused(net: Any, certs: Any) -> None:
    a = await net.node(1, server_ssl=server_context(certs, mutual=False))
    plain = await net.node(2)
    a.transport.add_peer(2, ("127.0.0.1", 9))
    plain.transport.add_peer(1, a.address)
    plain.transport.send(heartbeat(2, 1))
    await net.wait_until(lambda: plain.peer(1).connect_failures >= 2)
    assert plain.peer(1).connects == 0
    assert a.received == []
