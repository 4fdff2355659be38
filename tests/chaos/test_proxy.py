"""The fault proxy on real loopback sockets: piping, toxics on live connections, limits.

Timing is never measured: toxics that wait run on a ManualClock (its recorded sleeps are the
assertion), or the test waits, bounded, for the close or reset the toxic must cause.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chaos.test_proxy_support import WAIT_S, connect, read_to_eof, upstream_server, wait_for
from chaos.test_toxics import SteppedClock
from phalanx.chaos import proxy as proxy_module
from phalanx.chaos.proxy import Proxy, ProxyConfig, ProxyNotFound, ProxyServer, ProxyUpdate
from phalanx.chaos.proxy_link import reset_transport
from phalanx.chaos.toxics import ToxicSpec, ToxicUpdate
from phalanx.clock import ManualClock
from phalanx.errors import BadRequest, Conflict


@pytest.fixture
async def proxies() -> AsyncIterator[ProxyServer]:
    async with ProxyServer(seed=1) as server:
        yield server


async def make(server: ProxyServer, upstream: str, name: str = "p") -> Proxy:
    return await server.create(ProxyConfig(name=name, listen="127.0.0.1:0", upstream=upstream))


async def test_bytes_pass_both_ways_and_are_counted(proxies: ProxyServer) -> None:
    async with upstream_server() as upstream:
        proxy = await make(proxies, upstream.address)
        assert proxy.listen[1] != 0
        assert proxy.state().listen == f"127.0.0.1:{proxy.listen[1]}"
        payload = bytes(range(256)) * 1000
        async with connect(proxy.listen) as (reader, writer):
            writer.write(payload)
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(len(payload)) == payload
        stats = proxy.statistics()
        assert stats.connections_accepted == 1
        assert stats.bytes_in_upstream == stats.bytes_out_upstream == len(payload)
        assert stats.bytes_in_downstream == stats.bytes_out_downstream == len(payload)
        await wait_for(lambda: proxy.statistics().connections_open == 0, "the link ended")


async def test_reset_peer_resets_the_client_connection(proxies: ProxyServer) -> None:
    async with upstream_server() as upstream:
        proxy = await make(proxies, upstream.address)
        proxy.add_toxic(ToxicSpec(type="reset_peer", stream="upstream"))
        async with connect(proxy.listen) as (reader, writer):
            writer.write(b"hello")
            await writer.drain()
            with pytest.raises(ConnectionResetError):
                await read_to_eof(reader)
        assert upstream.received == b""
        await wait_for(lambda: proxy.statistics().connections_reset == 1, "counted as a reset")


async def test_timeout_swallows_data_then_closes(proxies: ProxyServer) -> None:
    async with upstream_server() as upstream:
        proxy = await make(proxies, upstream.address)
        proxy.add_toxic(ToxicSpec(type="timeout", stream="upstream", attributes={"timeout": 0}))
        async with connect(proxy.listen) as (reader, writer):
            writer.write(b"swallowed")
            await writer.drain()
            await wait_for(lambda: proxy.statistics().bytes_in_upstream == 9, "taken in")
            assert proxy.statistics().bytes_out_upstream == 0
            # A timeout on the open connection: it closes once that passes.
            proxy.update_toxic("timeout_upstream", ToxicUpdate(attributes={"timeout": 20}))
            assert await read_to_eof(reader) == b""
        assert upstream.received == b""
        assert proxy.statistics().connections_cut == 1


async def test_limit_data_closes_after_n_bytes(proxies: ProxyServer) -> None:
    async with upstream_server() as upstream:
        proxy = await make(proxies, upstream.address)
        proxy.add_toxic(ToxicSpec(type="limit_data", attributes={"bytes": 10}))
        async with connect(proxy.listen) as (reader, writer):
            writer.write(b"0123456789abcdefghij" * 5)
            await writer.drain()
            assert await read_to_eof(reader) == b"0123456789"


async def test_toxicity_zero_never_applies_and_one_always_does(proxies: ProxyServer) -> None:
    async with upstream_server() as upstream:
        proxy = await make(proxies, upstream.address)
        cut_at_once = ToxicSpec(type="limit_data", toxicity=0.0, attributes={"bytes": 0})
        proxy.add_toxic(cut_at_once)
        for _ in range(5):
            async with connect(proxy.listen) as (reader, writer):
                writer.write(b"ping")
                await writer.drain()
                async with asyncio.timeout(WAIT_S):
                    assert await reader.readexactly(4) == b"ping"
        proxy.update_toxic("limit_data_downstream", ToxicUpdate(toxicity=1.0))
        async with connect(proxy.listen) as (reader, writer):
            writer.write(b"ping")
            await writer.drain()
            assert await read_to_eof(reader) == b""


async def test_a_toxic_added_reaches_open_connections(proxies: ProxyServer) -> None:
    async with upstream_server() as upstream:
        proxy = await make(proxies, upstream.address)
        async with connect(proxy.listen) as (reader, writer):
            writer.write(b"before")
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(6) == b"before"
            proxy.add_toxic(ToxicSpec(type="limit_data", attributes={"bytes": 3}))
            writer.write(b"after")
            await writer.drain()
            assert await read_to_eof(reader) == b"aft"


async def test_removing_a_toxic_lets_data_through_again(proxies: ProxyServer) -> None:
    async with upstream_server() as upstream:
        proxy = await make(proxies, upstream.address)
        proxy.add_toxic(ToxicSpec(type="timeout", attributes={"timeout": 0}))
        async with connect(proxy.listen) as (reader, writer):
            writer.write(b"lost")
            await writer.drain()
            await wait_for(lambda: proxy.statistics().bytes_in_downstream == 4, "swallowed")
            proxy.remove_toxic("timeout_downstream")
            writer.write(b"kept")
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(4) == b"kept"
        assert bytes(upstream.received) == b"lostkept"


async def test_disabling_closes_connections_and_enabling_reopens_the_same_port(
    proxies: ProxyServer,
) -> None:
    async with upstream_server() as upstream:
        proxy = await make(proxies, upstream.address)
        listen = proxy.listen
        async with connect(listen) as (reader, _writer):
            await proxies.update("p", ProxyUpdate(enabled=False))
            assert await read_to_eof(reader) == b""
        assert not proxy.enabled
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*listen)
        await proxies.update("p", ProxyUpdate(enabled=True))
        assert proxy.listen == listen
        async with connect(listen) as (reader, writer):
            writer.write(b"again")
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(5) == b"again"


async def test_connections_over_the_limit_are_closed_and_counted(
    proxies: ProxyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy_module, "CONNECTIONS_PER_PROXY_MAX", 1)
    async with upstream_server() as upstream:
        proxy = await make(proxies, upstream.address)
        async with connect(proxy.listen) as (reader, writer):
            writer.write(b"first")
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(5) == b"first"
            async with connect(proxy.listen) as (extra_reader, _extra_writer):
                assert await read_to_eof(extra_reader) == b""
        stats = proxy.statistics()
        assert stats.connections_accepted == 2
        assert stats.connections_refused == 1


async def test_an_unreachable_upstream_closes_the_client(proxies: ProxyServer) -> None:
    async with upstream_server() as upstream:
        address = upstream.address
    proxy = await make(proxies, address)  # nothing listens there any more
    async with connect(proxy.listen) as (reader, _writer):
        assert await read_to_eof(reader) == b""
    await wait_for(lambda: proxy.statistics().upstream_failures == 1, "counted")


async def test_bandwidth_asks_for_len_over_rate_through_the_proxy() -> None:
    clock = ManualClock()
    async with ProxyServer(clock=clock) as server, upstream_server() as upstream:
        proxy = await make(server, upstream.address)
        proxy.add_toxic(ToxicSpec(type="bandwidth", attributes={"rate": 100}))  # 100 KB/s
        payload = b"z" * 50_000
        async with connect(proxy.listen) as (reader, writer):
            writer.write(payload)
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(len(payload)) == payload
        assert sum(clock.sleeps_s) == pytest.approx(0.5)  # 50,000 bytes at 100,000 bytes/s
        assert max(clock.sleeps_s) <= 0.1 + 1e-9  # in slices of at most 100 ms


async def test_latency_delays_each_chunk_by_the_latency_in_order() -> None:
    clock = ManualClock()
    async with ProxyServer(clock=clock) as server, upstream_server() as upstream:
        proxy = await make(server, upstream.address)
        proxy.add_toxic(ToxicSpec(type="latency", attributes={"latency": 200}))
        async with connect(proxy.listen) as (reader, writer):
            for n in range(20):
                writer.write(b"%03d" % n)
                await writer.drain()
                async with asyncio.timeout(WAIT_S):
                    assert await reader.readexactly(3) == b"%03d" % n
        # Each reply was read while the clock stood still, so each waits the full latency.
        assert clock.sleeps_s == pytest.approx([0.2] * 20)


async def test_slow_close_delays_the_close() -> None:
    clock = ManualClock()
    async with ProxyServer(clock=clock) as server, upstream_server() as upstream:
        proxy = await make(server, upstream.address)
        proxy.add_toxic(ToxicSpec(type="slow_close", attributes={"delay": 750}))
        async with connect(proxy.listen) as (reader, writer):
            writer.write(b"bye")
            writer.write_eof()  # the echo server then closes, and the close comes back
            assert await read_to_eof(reader) == b"bye"
        assert clock.sleeps_s == pytest.approx([0.75])


async def test_slicer_splits_the_stream_without_changing_it() -> None:
    clock = ManualClock()
    async with ProxyServer(clock=clock, seed=3) as server, upstream_server() as upstream:
        proxy = await make(server, upstream.address)
        attributes = {"average_size": 100, "size_variation": 50, "delay": 1000}
        proxy.add_toxic(ToxicSpec(type="slicer", stream="upstream", attributes=attributes))
        payload = bytes(range(256)) * 40
        async with connect(proxy.listen) as (reader, writer):
            writer.write(payload)
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(len(payload)) == payload
        # At least one 1 ms pause between slices of at most 150 bytes.
        assert len(clock.sleeps_s) >= len(payload) // 150 - 1
        assert clock.sleeps_s == pytest.approx([0.001] * len(clock.sleeps_s))


async def test_removing_a_bandwidth_toxic_passes_held_data_on_at_once() -> None:
    clock = SteppedClock()
    async with ProxyServer(clock=clock) as server, upstream_server() as upstream:
        proxy = await make(server, upstream.address)
        proxy.add_toxic(ToxicSpec(type="bandwidth", attributes={"rate": 4}))  # 16.4 s for 64 KiB
        payload = bytes(range(256)) * 256
        async with connect(proxy.listen) as (reader, writer):
            writer.write(payload)
            await writer.drain()
            await wait_for(lambda: len(clock.sleeps_s) == 1, "the echo waiting in bandwidth")
            clock.advance(0.5)
            proxy.remove_toxic("bandwidth_downstream")
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(len(payload)) == payload
        assert clock.now_s() == 0.5


async def test_a_reset_passes_a_chunk_held_by_latency_on_at_once() -> None:
    clock = SteppedClock()
    async with ProxyServer(clock=clock) as server, upstream_server() as upstream:
        proxy = await make(server, upstream.address)
        proxy.add_toxic(ToxicSpec(type="latency", attributes={"latency": 10_000}))
        async with connect(proxy.listen) as (reader, writer):
            writer.write(b"ping")
            await writer.drain()
            await wait_for(lambda: clock.sleeps_s == [10.0], "the echo waiting in latency")
            clock.advance(0.5)
            await server.reset()  # what the nemesis does when a fault window closes
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(4) == b"ping"
        assert clock.now_s() == 0.5


async def test_slow_close_delays_the_close_of_a_limit_data_before_it() -> None:
    clock = SteppedClock()
    async with ProxyServer(clock=clock) as server, upstream_server() as upstream:
        proxy = await make(server, upstream.address)
        proxy.add_toxic(ToxicSpec(type="limit_data", attributes={"bytes": 10}))
        proxy.add_toxic(ToxicSpec(type="slow_close", attributes={"delay": 2000}))
        async with connect(proxy.listen) as (reader, writer):
            writer.write(b"0123456789abcdefghij")
            await writer.drain()
            await wait_for(lambda: clock.sleeps_s == [2.0], "the close waiting in slow_close")
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(10) == b"0123456789"
            assert not reader.at_eof()
            clock.advance(2.0)
            assert await read_to_eof(reader) == b""
        await wait_for(lambda: proxy.statistics().connections_cut == 1, "counted as a cut")
        assert proxy.statistics().connections_reset == 0


async def test_a_client_reset_reaches_the_upstream(proxies: ProxyServer) -> None:
    async with upstream_server() as upstream:
        proxy = await make(proxies, upstream.address)
        async with connect(proxy.listen) as (reader, writer):
            writer.write(b"x")
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(1) == b"x"
            reset_transport(writer.transport)
        await wait_for(lambda: proxy.statistics().connections_reset == 1, "reset passed on")


# -- configuration and limits ---------------------------------------------------------------


async def test_names_and_addresses_are_validated(proxies: ProxyServer) -> None:
    bad = [
        ProxyConfig(name="", listen="127.0.0.1:0", upstream="127.0.0.1:1"),
        ProxyConfig(name="p", listen="127.0.0.1", upstream="127.0.0.1:1"),
        ProxyConfig(name="p", listen="127.0.0.1:0", upstream="127.0.0.1:0"),
        ProxyConfig(name="p", listen="127.0.0.1:70000", upstream="127.0.0.1:1"),
        ProxyConfig(
            name="p", listen="127.0.0.1:0", upstream="127.0.0.1:1", toxics=[ToxicSpec(type="x")]
        ),
    ]
    for config in bad:
        with pytest.raises(BadRequest):
            await proxies.create(config)
    assert proxies.proxies() == {}


async def test_duplicates_and_unknown_names(proxies: ProxyServer) -> None:
    proxy = await make(proxies, "127.0.0.1:1")
    with pytest.raises(Conflict, match="already exists"):
        await make(proxies, "127.0.0.1:1")
    proxy.add_toxic(ToxicSpec(type="latency"))
    with pytest.raises(Conflict, match="already exists"):
        proxy.add_toxic(ToxicSpec(type="latency"))
    with pytest.raises(ProxyNotFound):
        proxy.remove_toxic("nope")
    with pytest.raises(ProxyNotFound):
        await proxies.delete("nope")


async def test_a_listen_address_in_use_is_a_conflict(proxies: ProxyServer) -> None:
    proxy = await make(proxies, "127.0.0.1:1")
    taken = f"127.0.0.1:{proxy.listen[1]}"
    with pytest.raises(Conflict, match="cannot listen"):
        await proxies.create(ProxyConfig(name="q", listen=taken, upstream="127.0.0.1:1"))
    assert list(proxies.proxies()) == ["p"]


async def test_a_listen_change_that_cannot_bind_leaves_the_proxy_listening(
    proxies: ProxyServer,
) -> None:
    async with upstream_server() as upstream:
        proxy = await make(proxies, upstream.address)
        other = await make(proxies, upstream.address, "q")
        listen = proxy.listen
        taken = f"127.0.0.1:{other.listen[1]}"
        with pytest.raises(Conflict, match="cannot listen"):
            await proxies.update("p", ProxyUpdate(listen=taken))
        assert proxy.enabled
        assert proxy.listen == listen
        async with connect(listen) as (reader, writer):
            writer.write(b"still here")
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(10) == b"still here"


async def test_proxy_and_toxic_limits(
    proxies: ProxyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy_module, "PROXIES_MAX", 2)
    monkeypatch.setattr(proxy_module, "TOXICS_PER_PROXY_MAX", 2)
    proxy = await make(proxies, "127.0.0.1:1", "a")
    await make(proxies, "127.0.0.1:1", "b")
    with pytest.raises(Conflict, match="2 proxies, the most"):
        await make(proxies, "127.0.0.1:1", "c")
    proxy.add_toxic(ToxicSpec(type="latency"))
    proxy.add_toxic(ToxicSpec(type="latency", stream="upstream"))
    with pytest.raises(Conflict, match="2 toxics, the most"):
        proxy.add_toxic(ToxicSpec(type="bandwidth"))


async def test_populate_keeps_unchanged_proxies_and_replaces_changed_ones(
    proxies: ProxyServer,
) -> None:
    first = await proxies.populate(
        [
            ProxyConfig(name="a", listen="127.0.0.1:0", upstream="127.0.0.1:1"),
            ProxyConfig(name="b", listen="127.0.0.1:0", upstream="127.0.0.1:2"),
        ]
    )
    a, b = first
    again = await proxies.populate(
        [
            ProxyConfig(name="a", listen="127.0.0.1:0", upstream="127.0.0.1:1", enabled=False),
            ProxyConfig(
                name="b",
                listen="127.0.0.1:0",
                upstream="127.0.0.1:3",
                toxics=[ToxicSpec(type="latency", attributes={"latency": 5})],
            ),
        ]
    )
    assert again[0] is a
    assert not a.enabled
    assert again[1] is not b
    assert again[1].upstream == ("127.0.0.1", 3)
    assert [t.name for t in again[1].toxics()] == ["latency_downstream"]
    with pytest.raises(Conflict, match="duplicate proxy names"):
        await proxies.populate([ProxyConfig(name="x", listen="127.0.0.1:0", upstream="h:1")] * 2)


async def test_reset_enables_every_proxy_and_removes_every_toxic(proxies: ProxyServer) -> None:
    proxy = await make(proxies, "127.0.0.1:1")
    proxy.add_toxic(ToxicSpec(type="latency"))
    await proxies.update("p", ProxyUpdate(enabled=False))
    await proxies.reset()
    assert proxy.enabled
    assert proxy.toxics() == []


async def test_toxics_of_a_stream_keep_the_order_they_were_added(proxies: ProxyServer) -> None:
    proxy = await make(proxies, "127.0.0.1:1")
    for kind in ("slicer", "latency", "bandwidth"):
        proxy.add_toxic(ToxicSpec(type=kind))
    proxy.add_toxic(ToxicSpec(type="latency", stream="upstream"))
    proxy.update_toxic("latency_downstream", ToxicUpdate(attributes={"latency": 9}))
    names = [t.name for t in proxy.toxics("downstream")]
    assert names == ["slicer_downstream", "latency_downstream", "bandwidth_downstream"]
    assert [t.name for t in proxy.toxics("upstream")] == ["latency_upstream"]


async def test_an_upstream_reset_reaches_the_client(proxies: ProxyServer) -> None:
    async def reset_at_once(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reset_transport(writer.transport)

    server = await asyncio.start_server(reset_at_once, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        proxy = await make(proxies, f"127.0.0.1:{port}")
        async with connect(proxy.listen) as (reader, _writer):
            with pytest.raises(ConnectionResetError):
                await read_to_eof(reader)
        await wait_for(lambda: proxy.statistics().connections_reset == 1, "counted")
    finally:
        server.close()
        await server.wait_closed()
