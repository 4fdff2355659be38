"""The peer transport: Raft messages between nodes over persistent TCP (optionally TLS).

Each node keeps **one outbound connection per peer** and sends only on it; what it receives
arrives on the peers' outbound connections, accepted here and identified by a handshake:

1. the connecting side sends HELLO ``(cluster_id, src, dst)``;
2. the accepting side checks that ``cluster_id`` is its own, ``dst`` is itself and ``src`` is
   a known peer, then answers HELLO_ACK ``(cluster_id, src)``, or REJECT ``(reason)`` and
   closes. The connecting side checks the ack names the peer it dialled.

After that the connection carries MESSAGE frames one way (see :mod:`.framing`), and messages
too large for a frame (snapshots) as CHUNK frames, interleaved with the small ones so
heartbeats keep flowing while a snapshot streams.

:meth:`PeerTransport.send` never blocks and never raises for a peer's trouble. Each peer has a
send queue bounded by ``peer_queue_bytes_max`` (queued plus being written); a message that does
not fit is dropped and counted, and ``on_unreachable(peer)`` is called once per episode (Raft
tolerates loss and the leader probes a peer it was told is unreachable). Snapshot messages use a
separate slot per peer, one at a time, bounded by ``snapshot_bytes_max``; each ends in exactly
one ``on_snapshot_status(peer, ok)``: ``True`` once written to the socket, ``False`` if dropped
or cut off with its connection. A writer takes everything queued and writes it at once (one
write per drain). A lost connection is redialled with jittered exponential backoff
(:class:`~phalanx.resilience.backoff.Backoff`), reset after each successful handshake.

Every background loop belongs to one :class:`asyncio.TaskGroup` owned by :meth:`run` (which
:meth:`start` runs in a task that :meth:`aclose` awaits); inbound connections are protocol
objects driven by the event loop, closed by :meth:`aclose`. Callbacks run on the event loop,
``on_unreachable`` and ``on_snapshot_status`` possibly from inside :meth:`send`; exceptions
they raise are logged, never propagated into the transport. Not thread-safe: call from the
loop that runs it.

Errors: a frame that is malformed or too large, a message whose ``src``/``dst`` do not match
the connection, or an exception from ``on_message`` closes that connection only
(:class:`~phalanx.net.framing.FrameError`, logged and counted); the node keeps serving.
:class:`HandshakeRejected` is raised inside the dialling loop when a peer refuses us (wrong
cluster, wrong id) and leads to a retry with backoff, since the peer may be reconfigured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, cast

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import Rejected
from phalanx.net.framing import (
    FRAME_BYTES_MAX,
    HEADER_BYTES,
    Chunk,
    ChunkAssembler,
    Frame,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    FrameType,
    Hello,
    HelloAck,
    MalformedFrame,
    Reject,
    check_frame_bytes_max,
    chunk_data_bytes,
    decode_payload,
    encode_chunk,
    encode_frame,
    encode_message,
    encode_raw_frame,
)
from phalanx.raft.types import Message
from phalanx.resilience.backoff import Backoff

__all__ = [
    "CONNECT_TIMEOUT_S",
    "HANDSHAKE_TIMEOUT_S",
    "INBOUND_CONNECTIONS_MAX",
    "PEER_QUEUE_BYTES_MAX",
    "RECONNECT_BACKOFF",
    "SNAPSHOT_BYTES_MAX",
    "ConnectionClosed",
    "HandshakeRejected",
    "PeerStatistics",
    "PeerTransport",
    "TransportStatistics",
]

_log = logging.getLogger("phalanx.net")

Address = tuple[str, int]

#: Default bound of one peer's send queue (queued plus being written), in bytes.
PEER_QUEUE_BYTES_MAX: Final = 8 * 1024 * 1024
#: Default bound of one snapshot message, encoded; one may be pending per peer.
SNAPSHOT_BYTES_MAX: Final = 512 * 1024 * 1024
#: Default time a new connection has to complete TLS and the HELLO exchange.
HANDSHAKE_TIMEOUT_S: Final = 5.0
#: Default time a TCP connect may take.
CONNECT_TIMEOUT_S: Final = 5.0
#: Default bound of accepted connections open at once (identified or not).
INBOUND_CONNECTIONS_MAX: Final = 1024
#: Default reconnect schedule: 50 ms doubling to 2 s, full jitter.
RECONNECT_BACKOFF: Final = Backoff(base_delay_s=0.05, max_delay_s=2.0, jitter="full")
_CLOSE_WAIT_S: Final = 1.0


class HandshakeRejected(Rejected):
    """The peer refused our HELLO (or acked as someone else); the message says why."""


class ConnectionClosed(ConnectionError):
    """The other side closed the connection."""


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    """Counters for one peer since the transport was built.

    ``queue_bytes`` counts frames queued plus those being written; it never exceeds
    ``peer_queue_bytes_max``. ``messages_dropped`` counts messages refused by :meth:`send`
    (queue full, too large, a snapshot while another is pending, after close).
    ``reconnects`` counts successful connections after the first.
    """

    peer: int
    connected: bool
    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    messages_dropped: int
    queue_bytes: int
    queue_messages: int
    snapshot_bytes_pending: int
    snapshots_sent: int
    snapshots_failed: int
    snapshots_received: int
    connects: int
    reconnects: int
    connect_failures: int


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    peers: dict[int, PeerStatistics]
    inbound_open: int
    inbound_accepted: int
    inbound_rejected: int  # refused handshakes, handshake timeouts, over the connection cap
    inbound_errors: int  # identified connections closed for bad frames or callback errors
    messages_unknown_peer: int  # send() to a node that is not a peer


class _OutgoingStream:
    """A snapshot message waiting in a peer's slot, sent whole or chunk by chunk."""

    __slots__ = ("data", "offset", "started", "stream_id")

    def __init__(self, stream_id: int, data: bytes) -> None:
        self.stream_id = stream_id
        self.data = data
        self.offset = 0
        self.started = False


class _Peer:
    """One peer's queue, slot, connection state and counters."""

    def __init__(self, peer_id: int, address: Address) -> None:
        self.id = peer_id
        self.address = address
        self.frames: deque[bytes] = deque()
        self.queued_bytes = 0
        self.inflight_bytes = 0
        self.snapshot: _OutgoingStream | None = None
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.unreachable_reported = False
        self.messages_sent = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.bytes_received = 0
        self.messages_dropped = 0
        self.snapshots_sent = 0
        self.snapshots_failed = 0
        self.snapshots_received = 0
        self.connects = 0
        self.connect_failures = 0

    def statistics(self) -> PeerStatistics:
        return PeerStatistics(
            peer=self.id,
            connected=self.connected,
            messages_sent=self.messages_sent,
            bytes_sent=self.bytes_sent,
            messages_received=self.messages_received,
            bytes_received=self.bytes_received,
            messages_dropped=self.messages_dropped,
            queue_bytes=self.queued_bytes + self.inflight_bytes,
            queue_messages=len(self.frames),
            snapshot_bytes_pending=0 if self.snapshot is None else len(self.snapshot.data),
            snapshots_sent=self.snapshots_sent,
            snapshots_failed=self.snapshots_failed,
            snapshots_received=self.snapshots_received,
            connects=self.connects,
            reconnects=max(0, self.connects - 1),
            connect_failures=self.connect_failures,
        )


class PeerTransport:
    """Sends Raft messages to peers and hands received ones to ``on_message``.

    ``listen_addr`` may use port 0; :attr:`listen_address` is the bound address after
    :meth:`start`. ``peers`` maps node ids to addresses (not including ``node_id``); change it
    at runtime with :meth:`add_peer` and :meth:`remove_peer`. ``server_ssl`` enables TLS on
    the listener (set ``verify_mode = ssl.CERT_REQUIRED`` on it for mutual TLS);
    ``client_ssl`` enables TLS when dialling peers (load a client certificate into it for
    mutual TLS). Peers are dialled by the host in their address, which is also the name
    their certificate must carry.
    """

    def __init__(
        self,
        node_id: int,
        listen_addr: Address,
        peers: Mapping[int, Address],
        on_message: Callable[[Message], None],
        *,
        cluster_id: str = "phalanx",
        on_unreachable: Callable[[int], None] | None = None,
        on_snapshot_status: Callable[[int, bool], None] | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        peer_queue_bytes_max: int = PEER_QUEUE_BYTES_MAX,
        snapshot_bytes_max: int = SNAPSHOT_BYTES_MAX,
        inbound_connections_max: int = INBOUND_CONNECTIONS_MAX,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        reconnect_backoff: Backoff = RECONNECT_BACKOFF,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        if node_id <= 0:
            raise ValueError(f"node_id: must be > 0, got {node_id}")
        self.frame_bytes_max = check_frame_bytes_max(frame_bytes_max)
        if peer_queue_bytes_max < self.frame_bytes_max:
            raise ValueError(
                f"peer_queue_bytes_max: must be >= frame_bytes_max ({frame_bytes_max}), "
                f"got {peer_queue_bytes_max}"
            )
        if snapshot_bytes_max < 1:
            raise ValueError(f"snapshot_bytes_max: must be >= 1, got {snapshot_bytes_max}")
        if inbound_connections_max < 1:
            raise ValueError(
                f"inbound_connections_max: must be >= 1, got {inbound_connections_max}"
            )
        for name, value in (
            ("connect_timeout_s", connect_timeout_s),
            ("handshake_timeout_s", handshake_timeout_s),
        ):
            if not value > 0:
                raise ValueError(f"{name}: must be > 0, got {value}")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.peer_queue_bytes_max = peer_queue_bytes_max
        self.snapshot_bytes_max = snapshot_bytes_max
        self.inbound_connections_max = inbound_connections_max
        self.connect_timeout_s = connect_timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self._listen_addr = listen_addr
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._backoff = reconnect_backoff
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._chunk_bytes = chunk_data_bytes(self.frame_bytes_max)
        self._peers: dict[int, _Peer] = {}
        for peer_id, address in peers.items():
            self._check_peer(peer_id)
            self._peers[peer_id] = _Peer(peer_id, address)
        self._inbound: set[_Inbound] = set()
        self._server: asyncio.Server | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._listening = asyncio.Event()
        self._running = False
        self._closed = False
        self._next_stream_id = 1
        self._inbound_accepted = 0
        self._inbound_rejected = 0
        self._inbound_errors = 0
        self._messages_unknown_peer = 0

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def listen_address(self) -> Address:
        """The address the listener is bound to (its real port when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the transport is not listening; call start() first")
        host, port = self._server.sockets[0].getsockname()[:2]
        return (str(host), int(port))

    async def start(self) -> None:
        """Bind the listener (bind errors raise here), then run in a task until :meth:`aclose`."""
        if self._runner is not None or self._running or self._closed:
            raise RuntimeError("start(): the transport was already started")
        await self._bind()
        self._runner = asyncio.create_task(self.run(), name=f"phalanx-net-{self.node_id}")

    async def run(self) -> None:
        """Serve until :meth:`aclose` or cancellation; for callers that own the task."""
        if self._running or self._closed:
            raise RuntimeError("run(): the transport is already running or closed")
        self._running = True
        try:
            if self._server is None:
                await self._bind()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for peer in self._peers.values():
                    self._spawn(peer)
                await self._stop.wait()
                for peer in self._peers.values():
                    if peer.task is not None:
                        peer.task.cancel()
        finally:
            self._tg = None
            self._closed = True
            await self._close_connections()

    async def wait_listening(self) -> None:
        """Return once the listener is bound (for callers running :meth:`run` themselves)."""
        await self._listening.wait()

    async def aclose(self) -> None:
        """Stop every loop, close every connection; queued messages are dropped."""
        self._stop.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner
        elif not self._running:
            self._closed = True
            await self._close_connections()

    async def __aenter__(self) -> PeerTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self._listen_addr
        self._server = await loop.create_server(
            lambda: _Inbound(self),
            host,
            port,
            ssl=self._server_ssl,
            ssl_handshake_timeout=self.handshake_timeout_s if self._server_ssl else None,
            reuse_address=True,
        )
        self._listening.set()

    async def _close_connections(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        inbound = list(self._inbound)
        for connection in inbound:
            connection.close(abort=True)
        if inbound:
            await asyncio.wait([c.lost for c in inbound], timeout=_CLOSE_WAIT_S)

    # -- membership ---------------------------------------------------------------------

    def _check_peer(self, peer_id: int) -> None:
        if peer_id <= 0 or peer_id == self.node_id:
            raise ValueError(f"peer id: must be > 0 and not this node's id, got {peer_id}")

    def peers(self) -> dict[int, Address]:
        """The peers this transport talks to, and where."""
        return {peer_id: peer.address for peer_id, peer in self._peers.items()}

    def add_peer(self, peer_id: int, address: Address) -> None:
        """Start talking to ``peer_id`` at ``address`` (a new address redials)."""
        self._check_peer(peer_id)
        old = self._peers.get(peer_id)
        if old is not None:
            if old.address == address:
                return
            self.remove_peer(peer_id)
        peer = _Peer(peer_id, address)
        self._peers[peer_id] = peer
        if self._tg is not None:
            self._spawn(peer)

    def remove_peer(self, peer_id: int) -> None:
        """Stop talking to ``peer_id``: its loop is cancelled, its queue dropped."""
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        if peer.task is not None:
            peer.task.cancel()
        for connection in list(self._inbound):
            if connection.peer is peer:
                connection.close(abort=True)

    def _spawn(self, peer: _Peer) -> None:
        if self._tg is not None and peer.task is None:
            peer.task = self._tg.create_task(
                self._peer_loop(peer), name=f"phalanx-net-{self.node_id}-to-{peer.id}"
            )

    # -- sending ------------------------------------------------------------------------

    def send(self, message: Message) -> bool:
        """Queue ``message`` for ``message.dst``; ``False`` if it was dropped. Never blocks."""
        peer = self._peers.get(message.dst)
        if peer is None:
            self._messages_unknown_peer += 1
            return False
        if self._closed:
            peer.messages_dropped += 1
            return False
        if message.snapshot is not None:
            return self._send_snapshot(peer, message)
        try:
            frame = encode_frame(FrameType.MESSAGE, message, self.frame_bytes_max)
        except FrameTooLarge as exc:
            _log.warning("dropping a message to %d: %s", peer.id, exc)
            return self._drop(peer)
        if peer.queued_bytes + peer.inflight_bytes + len(frame) > self.peer_queue_bytes_max:
            return self._drop(peer)
        peer.frames.append(frame)
        peer.queued_bytes += len(frame)
        peer.ready.set()
        return True

    def _send_snapshot(self, peer: _Peer, message: Message) -> bool:
        data = encode_message(message)
        if len(data) > self.snapshot_bytes_max or peer.snapshot is not None:
            why = "another is pending" if peer.snapshot is not None else "too large"
            _log.warning("dropping a snapshot to %d (%d bytes): %s", peer.id, len(data), why)
            self._drop(peer)
            peer.snapshots_failed += 1
            self._notify_snapshot(peer.id, ok=False)
            return False
        peer.snapshot = _OutgoingStream(self._next_stream_id, data)
        self._next_stream_id += 1
        peer.ready.set()
        return True

    def _drop(self, peer: _Peer) -> bool:
        peer.messages_dropped += 1
        self._notify_unreachable(peer)
        return False

    def _notify_unreachable(self, peer: _Peer) -> None:
        if peer.unreachable_reported or self._on_unreachable is None:
            return
        peer.unreachable_reported = True
        try:
            self._on_unreachable(peer.id)
        except Exception:
            _log.exception("on_unreachable(%d) raised", peer.id)

    def _notify_snapshot(self, peer_id: int, *, ok: bool) -> None:
        if self._on_snapshot_status is None:
            return
        try:
            self._on_snapshot_status(peer_id, ok)
        except Exception:
            _log.exception("on_snapshot_status(%d, %s) raised", peer_id, ok)

    def _fail_snapshot(self, peer: _Peer) -> None:
        if peer.snapshot is not None:
            peer.snapshot = None
            peer.snapshots_failed += 1
            self._notify_snapshot(peer.id, ok=False)

    # -- dialling -----------------------------------------------------------------------

    async def _peer_loop(self, peer: _Peer) -> None:
        retry_index = 0
        delay_s = 0.0
        while True:
            connects = peer.connects
            try:
                await self._connect_and_pump(peer)
            except (OSError, EOFError, FrameError, HandshakeRejected) as error:
                if peer.connects == connects:
                    peer.connect_failures += 1
                    _log.debug("connecting to %d at %s failed: %r", peer.id, peer.address, error)
                else:
                    _log.info("connection to %d lost: %r", peer.id, error)
                if isinstance(error, HandshakeRejected):
                    # Once per run of failures: the peer may stay misconfigured for long.
                    level = logging.WARNING if retry_index == 0 else logging.DEBUG
                    _log.log(level, "peer %d refused the handshake: %s", peer.id, error)
            self._fail_snapshot(peer)
            self._notify_unreachable(peer)
            if peer.connects != connects:
                retry_index = 0
            delay_s = self._backoff.delay_s(retry_index, delay_s, self._rng)
            retry_index += 1
            await self._clock.asleep(delay_s)

    async def _connect_and_pump(self, peer: _Peer) -> None:
        """Dial, shake hands, then write until the connection fails (never returns)."""
        host, port = peer.address
        loop = asyncio.get_running_loop()
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # races with the connect completing, and the loop would outlive aclose().
        async with asyncio.timeout(self.connect_timeout_s):
            _, connection = await loop.create_connection(
                lambda: _Outbound(self.frame_bytes_max, peer.ready),
                host,
                port,
                ssl=self._client_ssl,
                ssl_handshake_timeout=self.handshake_timeout_s if self._client_ssl else None,
            )
        try:
            hello = Hello(cluster_id=self.cluster_id, src=self.node_id, dst=peer.id)
            connection.write(encode_frame(FrameType.HELLO, hello, self.frame_bytes_max))
            async with asyncio.timeout(self.handshake_timeout_s):
                frame = await connection.read_frame()
            self._check_ack(peer, frame)
            peer.connects += 1
            peer.connected = True
            peer.unreachable_reported = False
            await self._write_loop(peer, connection)
        finally:
            peer.connected = False
            peer.inflight_bytes = 0
            connection.abort()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_WAIT_S):
                    await connection.wait_lost()

    def _check_ack(self, peer: _Peer, frame: Frame) -> None:
        if frame.type == FrameType.REJECT:
            raise HandshakeRejected(decode_payload(frame.payload, Reject).reason)
        if frame.type != FrameType.HELLO_ACK:
            raise MalformedFrame(f"expected HELLO_ACK, got {frame.type.name}")
        ack = decode_payload(frame.payload, HelloAck)
        if ack.cluster_id != self.cluster_id or ack.src != peer.id:
            raise HandshakeRejected(
                f"dialled node {peer.id} of cluster {self.cluster_id!r}, "
                f"answered by node {ack.src} of cluster {ack.cluster_id!r}"
            )

    async def _write_loop(self, peer: _Peer, connection: _Outbound) -> None:
        while True:
            await peer.ready.wait()
            connection.check()  # raises once the connection failed (which also sets ready)
            stream = peer.snapshot
            if not peer.frames and stream is None:
                peer.ready.clear()
                continue
            parts = list(peer.frames)
            messages = len(parts)
            peer.frames.clear()
            peer.inflight_bytes, peer.queued_bytes = peer.queued_bytes, 0
            stream_done = False
            if stream is not None:
                stream_done = self._next_piece(stream, parts)
            if stream is None or stream_done:
                peer.ready.clear()
            batch = parts[0] if len(parts) == 1 else b"".join(parts)
            connection.write(batch)
            await connection.drain()
            peer.inflight_bytes = 0
            peer.messages_sent += messages
            peer.bytes_sent += len(batch)
            peer.unreachable_reported = False
            if stream_done and peer.snapshot is stream:
                peer.snapshot = None
                peer.messages_sent += 1
                peer.snapshots_sent += 1
                self._notify_snapshot(peer.id, ok=True)

    def _next_piece(self, stream: _OutgoingStream, parts: list[bytes]) -> bool:
        """Append the stream's next frame to ``parts``; ``True`` if it is the last."""
        data = stream.data
        if not stream.started and HEADER_BYTES + len(data) <= self.frame_bytes_max:
            stream.started = True
            stream.offset = len(data)
            parts.append(encode_raw_frame(FrameType.MESSAGE, data, self.frame_bytes_max))
            return True
        stream.started = True
        piece = data[stream.offset : stream.offset + self._chunk_bytes]
        chunk = Chunk(stream.stream_id, stream.offset, len(data), piece)
        parts.append(encode_chunk(chunk, self.frame_bytes_max))
        stream.offset += len(chunk.data)
        return stream.offset >= len(data)

    # -- accepting ----------------------------------------------------------------------

    def _admit(self, connection: _Inbound) -> bool:
        if self._closed or len(self._inbound) >= self.inbound_connections_max:
            self._inbound_rejected += 1
            return False
        self._inbound.add(connection)
        return True

    def _check_hello(self, hello: Hello) -> str | None:
        if hello.cluster_id != self.cluster_id:
            return f"cluster id mismatch: this is {self.cluster_id!r}, not {hello.cluster_id!r}"
        if hello.dst != self.node_id:
            return f"this is node {self.node_id}, not {hello.dst}"
        if hello.src not in self._peers:
            return f"node {hello.src} is not a peer of node {self.node_id}"
        return None

    def _identified(self, connection: _Inbound, peer_id: int) -> _Peer:
        """``connection`` is now the one ``peer_id`` sends on; an older one is closed."""
        self._inbound_accepted += 1
        peer = self._peers[peer_id]
        for other in list(self._inbound):
            if other is not connection and other.peer is peer:
                other.close(abort=True)
        return peer

    def _receive(self, peer: _Peer, message: Message) -> None:
        if message.src != peer.id or message.dst != self.node_id:
            raise MalformedFrame(
                f"message {message.src}->{message.dst} on the connection of node {peer.id}"
            )
        peer.messages_received += 1
        if message.snapshot is not None:
            peer.snapshots_received += 1
        self._on_message(message)

    # -- statistics ---------------------------------------------------------------------

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            peers={peer_id: peer.statistics() for peer_id, peer in self._peers.items()},
            inbound_open=len(self._inbound),
            inbound_accepted=self._inbound_accepted,
            inbound_rejected=self._inbound_rejected,
            inbound_errors=self._inbound_errors,
            messages_unknown_peer=self._messages_unknown_peer,
        )

    def __repr__(self) -> str:
        return (
            f"PeerTransport(node_id={self.node_id}, cluster_id={self.cluster_id!r}, "
            f"peers={sorted(self._peers)})"
        )


class _Outbound(asyncio.Protocol):
    """One dialled connection: its write side with flow control, and the handshake answer.

    The accepting side sends nothing after HELLO_ACK, so anything more is a protocol error.
    Losing the connection sets ``wake`` (the peer's ready event) so the writer notices at
    once even with nothing to send.
    """

    def __init__(self, frame_bytes_max: int, wake: asyncio.Event) -> None:
        self._decoder = FrameDecoder(frame_bytes_max)
        self._wake = wake
        self._transport: asyncio.Transport | None = None
        self._frames: list[Frame] = []
        self._error: Exception | None = None
        self._paused = False
        loop = asyncio.get_running_loop()
        self._changed: asyncio.Future[None] = loop.create_future()
        self._lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport by create_connection's contract (uvloop's does not subclass
        # asyncio.Transport, so no isinstance check).
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._frames.extend(self._decoder.feed(data))
        except FrameError as exc:
            self._fail(exc)
            return
        self._signal()

    def eof_received(self) -> bool:
        self._fail(ConnectionClosed("closed by the peer"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc if exc is not None else ConnectionClosed("closed by the peer"))
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._signal()

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        if self._transport is not None:
            self._transport.abort()
        self._wake.set()
        self._signal()

    def _signal(self) -> None:
        if not self._changed.done():
            self._changed.set_result(None)

    async def _wait_change(self) -> None:
        await self._changed
        self._changed = asyncio.get_running_loop().create_future()

    def check(self) -> None:
        """Raise why the connection failed, if it did; data after the handshake is an error."""
        if self._error is not None:
            raise self._error
        if self._frames:
            raise MalformedFrame("unexpected data from the accepting side")

    async def read_frame(self) -> Frame:
        """The first frame the other side sends (its handshake answer)."""
        while not self._frames:
            if self._error is not None:
                raise self._error
            await self._wait_change()
        if len(self._frames) > 1 or self._decoder.buffered_bytes:
            raise MalformedFrame("data after the handshake answer")
        return self._frames.pop()

    def write(self, data: bytes) -> None:
        if self._transport is None or self._error is not None:
            self.check()
            raise ConnectionClosed("not connected")
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        while True:
            self.check()
            if not self._paused:
                return
            await self._wait_change()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def wait_lost(self) -> None:
        await self._lost


class _Inbound(asyncio.Protocol):
    """One accepted connection: handshake, then frames decoded straight into callbacks."""

    def __init__(self, owner: PeerTransport) -> None:
        self._owner = owner
        self._decoder = FrameDecoder(owner.frame_bytes_max)
        self._assembler = ChunkAssembler(owner.snapshot_bytes_max)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self.peer: _Peer | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport by create_server's contract (see _Outbound.connection_made).
        self._transport = cast("asyncio.Transport", transport)
        if not self._owner._admit(self):
            self.close(abort=True)
            return
        self._timer = asyncio.get_running_loop().call_later(
            self._owner.handshake_timeout_s, self._handshake_timeout
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            _log.debug("inbound connection lost: %r", exc)
        if self._timer is not None:
            self._timer.cancel()
        self._owner._inbound.discard(self)
        self._assembler.reset()
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self, *, abort: bool = False) -> None:
        self._closing = True
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()

    def is_closing(self) -> bool:
        return self._closing

    def _handshake_timeout(self) -> None:
        if self.peer is None and not self._closing:
            self._owner._inbound_rejected += 1
            self.close(abort=True)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            for frame in self._decoder.feed(data):
                self._handle(frame)
                if self.is_closing():
                    return
        except FrameError as exc:
            self._fail("bad input", exc)
        except Exception as exc:
            self._fail("on_message raised", exc)

    def _fail(self, what: str, exc: Exception) -> None:
        owner = self._owner
        if self.peer is None:
            owner._inbound_rejected += 1
        else:
            owner._inbound_errors += 1
        who = "an unidentified peer" if self.peer is None else f"node {self.peer.id}"
        if isinstance(exc, FrameError):
            _log.warning("closing the connection from %s: %s: %s", who, what, exc)
        else:
            _log.error("closing the connection from %s: %s", who, what, exc_info=exc)
        self.close(abort=True)

    def _handle(self, frame: Frame) -> None:
        owner = self._owner
        peer = self.peer
        if peer is None:
            self._handshake(frame)
            return
        if peer.id not in owner._peers or owner._peers[peer.id] is not peer:
            self.close(abort=True)  # removed while this connection was open
            return
        peer.bytes_received += HEADER_BYTES + len(frame.payload)
        if frame.type == FrameType.MESSAGE:
            owner._receive(peer, decode_payload(frame.payload, Message))
        elif frame.type == FrameType.CHUNK:
            whole = self._assembler.add(decode_payload(frame.payload, Chunk))
            if whole is not None:
                owner._receive(peer, decode_payload(whole, Message))
        else:
            raise MalformedFrame(f"unexpected {frame.type.name} frame after the handshake")

    def _handshake(self, frame: Frame) -> None:
        owner = self._owner
        transport = self._transport
        assert transport is not None  # noqa: S101 - set in connection_made
        if frame.type != FrameType.HELLO:
            raise MalformedFrame(f"expected HELLO, got {frame.type.name}")
        hello = decode_payload(frame.payload, Hello)
        reason = owner._check_hello(hello)
        if reason is not None:
            owner._inbound_rejected += 1
            _log.warning("refusing a connection claiming to be node %d: %s", hello.src, reason)
            transport.write(encode_frame(FrameType.REJECT, Reject(reason), owner.frame_bytes_max))
            self.close()
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.peer = owner._identified(self, hello.src)
        ack = HelloAck(cluster_id=owner.cluster_id, src=owner.node_id)
        transport.write(encode_frame(FrameType.HELLO_ACK, ack, owner.frame_bytes_max))
