"""One proxied TCP connection: two sockets, two pipes, and the toxics between them.

A :class:`Link` joins the client's socket (accepted by the proxy) to one upstream socket
that it opens. Each socket is a :class:`Side` (an asyncio protocol); each direction is a
:class:`Pipe` that reads from one side and writes to the other: ``upstream`` carries the
client's bytes to the server, ``downstream`` the server's bytes to the client.

A side hands what it reads to its pipe as :class:`~phalanx.chaos.toxics.Chunk` s of at most
``READ_CHUNK_BYTES_MAX``; the pipe stops reading from that side while more than
``BUFFERED_BYTES_MAX`` wait (backpressure up to the sender) and waits for the destination
to drain after each write (backpressure from the receiver). The pipe's task takes chunks in
order and passes each through the toxics of its direction. It rebuilds that chain as soon
as it is poked after the proxy's toxics change (:class:`ToxicSource` ``revision``), keeping
the toxics that did not change (and their state). A toxic that left the chain, removed or
replaced by an update, is retired: a chunk it holds passes on at once to the toxics that
now follow its place (an updated toxic's replacement among them, which re-evaluates it),
so a change reaches even a chunk already waiting. Each toxic passes its output to whatever
follows it in the chain at that moment. While idle the pipe also wakes at the earliest
toxic deadline (``timeout``, ``reset_peer``).

A close of one side (FIN) is passed on as a half-close of the other, after the toxics'
``on_close`` (``slow_close``); the link ends when both directions are closed, when a side
is gone, or when a toxic cuts it (:class:`~phalanx.chaos.toxics.StreamCut`). A cut that
closes (``limit_data``, ``timeout``) first passes its close through the toxics after the
one that cut, as a close of the source would; then both sockets are closed. A reset
(``reset_peer``, or a peer that reset its own socket) resets both at once (RST,
``SO_LINGER`` 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import struct
from collections import deque
from typing import Final, Protocol, cast

import msgspec

from phalanx.chaos.toxics import (
    READ_CHUNK_BYTES_MAX,
    Chunk,
    Stream,
    StreamCut,
    Toxic,
    ToxicSpec,
    make_toxic,
)
from phalanx.clock import Clock

__all__ = [
    "BUFFERED_BYTES_MAX",
    "UPSTREAM_CONNECT_TIMEOUT_S",
    "Link",
    "Pipe",
    "ProxyStatistics",
    "Side",
    "ToxicSource",
]

#: Bytes read but not yet passed on, per connection and direction; above it the proxy stops
#: reading from the sender until half of it has been passed on.
BUFFERED_BYTES_MAX: Final = 1024 * 1024
#: How long opening the upstream connection of a new client connection may take.
UPSTREAM_CONNECT_TIMEOUT_S: Final = 10.0
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


class ProxyStatistics(msgspec.Struct, kw_only=True):
    """What one proxy counted since it was created.

    ``connections_refused`` are client connections closed at once because the proxy had
    ``CONNECTIONS_PER_PROXY_MAX`` open; ``upstream_failures`` are client connections closed
    because the upstream could not be reached; ``connections_cut`` ended by a toxic (or a
    reset), ``connections_reset`` of them with a reset. Per direction, ``bytes_in_*`` counts
    the bytes taken from the sender into the toxics and ``bytes_out_*`` the bytes passed on
    to the receiver (fewer when toxics swallow or cut).
    """

    connections_accepted: int = 0
    connections_open: int = 0
    connections_refused: int = 0
    upstream_failures: int = 0
    connections_cut: int = 0
    connections_reset: int = 0
    bytes_in_upstream: int = 0
    bytes_out_upstream: int = 0
    bytes_in_downstream: int = 0
    bytes_out_downstream: int = 0


class ToxicSource(Protocol):
    """Where a pipe reads the current toxics of its direction (the proxy)."""

    @property
    def revision(self) -> int:
        """A number that changes whenever the toxics change."""
        ...

    def toxics(self, stream: Stream) -> list[ToxicSpec]:
        """The toxics of ``stream``, in the order they were added."""
        ...


def reset_transport(transport: asyncio.BaseTransport) -> None:
    """Close ``transport`` with a TCP reset: ``SO_LINGER`` 0, then abort."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()  # type: ignore[attr-defined]


class Side(asyncio.Protocol):
    """One socket of a link: feeds what it reads to ``reader`` and is written by the other
    direction's pipe (with flow control: :meth:`drain`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.reader: Pipe | None = None  # the pipe reading from this side
        self.writer: Pipe | None = None  # the pipe writing to this side
        self.lost = False
        self.reset_by_peer = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport by the contract of create_server / create_connection (uvloop's
        # does not subclass asyncio.Transport, so no isinstance check).
        self.transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.reader is not None:
            self.reader.feed(data)

    def eof_received(self) -> bool:
        if self.reader is not None:
            self.reader.feed_eof()
        return True  # keep the socket open for the other direction's bytes (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reset_by_peer = isinstance(exc, ConnectionResetError)
        self._wake_drain()
        if self.reader is not None:
            self.reader.feed_eof()
        if self.writer is not None:
            self.writer.poke()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark (or lost)."""
        if not self._write_paused or self.lost:
            return
        self._drained = asyncio.get_running_loop().create_future()
        await self._drained

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self, *, reset: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if reset:
            reset_transport(self.transport)
        else:
            self.transport.close()


class Pipe:
    """One direction of a link: reads ``source``, passes chunks through toxics, writes ``dest``."""

    def __init__(
        self,
        stream: Stream,
        source: Side,
        dest: Side,
        toxic_source: ToxicSource,
        statistics: ProxyStatistics,
        *,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.stream = stream
        self.source = source
        self.dest = dest
        self._toxic_source = toxic_source
        self._statistics = statistics
        self._clock = clock
        self._rng = rng
        source.reader = self
        dest.writer = self
        self._buffer: deque[Chunk] = deque()
        self.buffered_bytes = 0
        self._eof = False
        self._reading_paused = False
        self._wakeup = asyncio.Event()
        self._revision: int | None = None
        self._toxics: dict[str, tuple[ToxicSpec, Toxic | None]] = {}
        # The toxics' names in chain order, and each toxic or None (toxicity said no).
        self._names: list[str] = []
        self._places: list[Toxic | None] = []
        self.chain: list[Toxic] = []

    # -- called by the source side ---------------------------------------------------------

    def feed(self, data: bytes) -> None:
        now_s = self._clock.now_s()
        for start in range(0, len(data), READ_CHUNK_BYTES_MAX):
            self._buffer.append(Chunk(data[start : start + READ_CHUNK_BYTES_MAX], now_s))
        self.buffered_bytes += len(data)
        if self.buffered_bytes > BUFFERED_BYTES_MAX and not self._reading_paused:
            self._reading_paused = True
            self.source.pause_reading()
        self._wakeup.set()

    def feed_eof(self) -> None:
        self._eof = True
        self._wakeup.set()

    def poke(self) -> None:
        """Look again at the toxics and the destination (they changed).

        A change of toxics applies at once: toxics that left retire now, ending their waits.
        """
        self._refresh_chain()
        self._wakeup.set()

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Pass chunks on until the source's close has been passed on or ``dest`` is gone.

        Raises :class:`StreamCut` when a toxic (or a reset by the source's peer) ends the link;
        a toxic's close has passed through the toxics after it by then.
        """
        try:
            while not self.dest.lost:
                self._refresh_chain()
                self._expire_due()
                if self._buffer:
                    await self._pass_one()
                elif self._eof:
                    await self._pass_close()
                    return
                else:
                    await self._wait()
        except StreamCut as cut:
            if not cut.reset and cut.toxic is not None:
                await self._close_through(cut.toxic)
            raise

    async def _pass_one(self) -> None:
        chunk = self._buffer.popleft()
        self.buffered_bytes -= len(chunk.data)
        if self._reading_paused and self.buffered_bytes <= BUFFERED_BYTES_MAX // 2:
            self._reading_paused = False
            self.source.resume_reading()
        if self.stream == "upstream":
            self._statistics.bytes_in_upstream += len(chunk.data)
        else:
            self._statistics.bytes_in_downstream += len(chunk.data)
        if self.chain:
            await self._emit_after(None, chunk)
        else:
            await self._write(chunk)

    def _next_toxic(self, after: Toxic | None) -> Toxic | None:
        """The toxic that now takes what ``after`` passes on (``None`` after: the first one;
        ``None`` returned: the destination).

        A retired toxic's output goes to the toxics after the last of those that preceded
        it, which puts an updated toxic's replacement next.
        """
        if after is None:
            start = 0
        elif not after.retired:
            start = self._names.index(after.spec.name) + 1
        else:
            before = set(after.names_before)
            start = 0
            for index, name in enumerate(self._names):
                if name in before:
                    start = index + 1
        for toxic in self._places[start:]:
            if toxic is not None:
                return toxic
        return None

    async def _emit_after(self, after: Toxic | None, chunk: Chunk) -> None:
        toxic = self._next_toxic(after)
        if toxic is None:
            await self._write(chunk)
        else:
            await toxic.on_data(chunk, functools.partial(self._emit_after, toxic))

    async def _write(self, chunk: Chunk) -> None:
        transport = self.dest.transport
        if self.dest.lost or transport is None or transport.is_closing():
            return
        transport.write(chunk.data)
        if self.stream == "upstream":
            self._statistics.bytes_out_upstream += len(chunk.data)
        else:
            self._statistics.bytes_out_downstream += len(chunk.data)
        await self.dest.drain()

    async def _pass_close(self) -> None:
        if self.source.reset_by_peer:
            raise StreamCut(f"{self.source.name} reset the connection", reset=True)
        await self._close_through(None)
        transport = self.dest.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    async def _close_through(self, after: Toxic | None) -> None:
        """Let each toxic after ``after`` have its say on the close (``slow_close``).

        Each step moves further along the chain; only a change of toxics (a retired toxic's
        replacement taking its place) makes a step that does not, so the loop ends.
        """
        since_s = self._clock.now_s()
        toxic = self._next_toxic(after)
        while toxic is not None and not self.dest.lost:
            await toxic.on_close(since_s)
            if not toxic.retired:  # else its replacement counts from when the close got here
                since_s = self._clock.now_s()
            toxic = self._next_toxic(toxic)

    def _refresh_chain(self) -> None:
        revision = self._toxic_source.revision
        if revision == self._revision:
            return
        self._revision = revision
        kept: dict[str, tuple[ToxicSpec, Toxic | None]] = {}
        for spec in self._toxic_source.toxics(self.stream):
            old = self._toxics.get(spec.name)
            if old is not None and old[0] == spec:
                kept[spec.name] = old
            else:
                kept[spec.name] = (spec, make_toxic(spec, self._clock, self._rng))
        for index, (name, (_spec, toxic)) in enumerate(self._toxics.items()):
            if toxic is not None and kept.get(name, (None, None))[1] is not toxic:
                toxic.retire(tuple(self._names[:index]))
        self._toxics = kept
        self._names = list(kept)
        self._places = [toxic for _spec, toxic in kept.values()]
        self.chain = [toxic for toxic in self._places if toxic is not None]

    def _deadline_s(self) -> float | None:
        deadlines = [d for d in (t.deadline_s() for t in self.chain) if d is not None]
        return min(deadlines) if deadlines else None

    def _expire_due(self) -> None:
        deadline_s = self._deadline_s()
        if deadline_s is None or deadline_s > self._clock.now_s():
            return
        now_s = self._clock.now_s()
        for toxic in self.chain:
            due_s = toxic.deadline_s()
            if due_s is not None and due_s <= now_s:
                toxic.expire()

    async def _wait(self) -> None:
        """Until something is fed or poked, or the earliest toxic deadline."""
        self._wakeup.clear()
        deadline_s = self._deadline_s()
        if deadline_s is None:
            await self._wakeup.wait()
            return
        remaining_s = deadline_s - self._clock.now_s()
        if remaining_s <= 0:
            return
        woken = asyncio.ensure_future(self._wakeup.wait())
        slept = asyncio.ensure_future(self._clock.asleep(remaining_s))
        try:
            await asyncio.wait((woken, slept), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            slept.cancel()
            await asyncio.gather(woken, slept, return_exceptions=True)


class Link:
    """A client connection joined to its own upstream connection."""

    def __init__(
        self,
        client: Side,
        upstream: tuple[str, int],
        toxic_source: ToxicSource,
        statistics: ProxyStatistics,
        *,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.client = client
        self.server = Side("upstream")
        self.upstream_address = upstream
        self._statistics = statistics
        self.upstream = Pipe(
            "upstream", client, self.server, toxic_source, statistics, clock=clock, rng=rng
        )
        self.downstream = Pipe(
            "downstream", self.server, client, toxic_source, statistics, clock=clock, rng=rng
        )

    def poke(self) -> None:
        self.upstream.poke()
        self.downstream.poke()

    async def run(self) -> None:
        """Connect upstream, then pipe both ways until the link ends; always closes both."""
        reset = False
        try:
            host, port = self.upstream_address
            try:
                async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_S):
                    await asyncio.get_running_loop().create_connection(
                        lambda: self.server, host, port
                    )
            except (OSError, TimeoutError):
                self._statistics.upstream_failures += 1
                return
            try:
                async with asyncio.TaskGroup() as pipes:
                    pipes.create_task(self.upstream.run())
                    pipes.create_task(self.downstream.run())
            except* StreamCut as group:
                reset = any(isinstance(c, StreamCut) and c.reset for c in group.exceptions)
                self._statistics.connections_cut += 1
                if reset:
                    self._statistics.connections_reset += 1
        finally:
            self.client.close(reset=reset)
            self.server.close(reset=reset)
