"""Networking between Phalanx nodes: the frame codec and the peer transport.

:mod:`phalanx.net.framing` is the sans-I/O wire format (length-prefixed msgpack frames, a
decoder that refuses malformed or oversized input, chunk reassembly); :mod:`phalanx.net.transport`
is the asyncio :class:`PeerTransport` that carries Raft messages between nodes over
persistent TCP or TLS connections with bounded per-peer queues. See ``docs/net.md``.
"""

from phalanx.net.framing import (
    FRAME_BYTES_MAX,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    FrameType,
    MalformedFrame,
)
from phalanx.net.transport import (
    PEER_QUEUE_BYTES_MAX,
    SNAPSHOT_BYTES_MAX,
    HandshakeRejected,
    PeerStatistics,
    PeerTransport,
    TransportStatistics,
)

__all__ = [
    "FRAME_BYTES_MAX",
    "PEER_QUEUE_BYTES_MAX",
    "SNAPSHOT_BYTES_MAX",
    "FrameDecoder",
    "FrameError",
    "FrameTooLarge",
    "FrameType",
    "HandshakeRejected",
    "MalformedFrame",
    "PeerStatistics",
    "PeerTransport",
    "TransportStatistics",
]
