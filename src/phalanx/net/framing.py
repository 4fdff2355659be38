"""The peer wire format: length-prefixed frames with msgpack payloads, sans-I/O.

Every frame is a fixed 6-byte header followed by its payload::

    +---------+------+----------------+-------------------+
    | version | type | payload length | payload (msgpack) |
    | 1 byte  | 1 B  | 4 bytes, BE    | length bytes      |
    +---------+------+----------------+-------------------+

``version`` is :data:`WIRE_VERSION` (``0xA1``: the high nibble is a magic ``0xA``, the low one
the protocol version), so a stray client (HTTP, TLS on a plain port) is refused at its first
byte. A whole frame, header included, is at most ``frame_bytes_max`` bytes; the decoder checks
the header as soon as it has its 6 bytes, so an oversized frame is refused before its payload
is buffered, and the decoder never holds more than one frame's worth of input.

This module owns no sockets. :class:`FrameDecoder` is fed bytes and returns complete frames;
``encode_*`` build frames; :class:`ChunkAssembler` rebuilds a message that was too large for one
frame from its chunks. Everything wrong with the input raises a :class:`FrameError`, after which
the connection that produced it must be closed (the decoder stays failed):

* :class:`MalformedFrame` (also a :class:`~phalanx.errors.BadRequest`): wrong version byte,
  unknown frame type, a payload that is not what its type says, chunks out of order;
* :class:`FrameTooLarge` (also a :class:`~phalanx.errors.TooLarge`): a frame longer than
  ``frame_bytes_max``, or a chunked message longer than its own limit.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple, TypeVar

import msgspec

from phalanx.errors import BadRequest, Rejected, TooLarge
from phalanx.raft.types import Message

__all__ = [
    "CHUNK_OVERHEAD_BYTES",
    "FRAME_BYTES_MAX",
    "FRAME_BYTES_MIN",
    "HEADER_BYTES",
    "WIRE_VERSION",
    "Chunk",
    "ChunkAssembler",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameTooLarge",
    "FrameType",
    "Hello",
    "HelloAck",
    "MalformedFrame",
    "Reject",
    "chunk_data_bytes",
    "decode_payload",
    "encode_chunk",
    "encode_frame",
    "encode_message",
    "encode_raw_frame",
    "split_chunks",
]

#: The first byte of every frame: magic ``0xA`` in the high nibble, protocol version 1.
WIRE_VERSION: Final = 0xA1
_HEADER: Final = struct.Struct(">BBI")
HEADER_BYTES: Final = _HEADER.size
#: Default largest frame, header included: 4 MiB (larger messages travel in chunks).
FRAME_BYTES_MAX: Final = 4 * 1024 * 1024
#: The smallest ``frame_bytes_max`` accepted: room for a handshake and a useful chunk.
FRAME_BYTES_MIN: Final = 1024
#: The largest ``frame_bytes_max`` accepted (the length field is 32 bits).
_FRAME_BYTES_LIMIT: Final = 2**31
#: Bytes a chunk's msgpack envelope adds to its data, at most (array, three ints, bin header).
CHUNK_OVERHEAD_BYTES: Final = 64


class FrameType(enum.IntEnum):
    HELLO = 1  # client -> server, first frame of a connection: who I am, whom I want
    HELLO_ACK = 2  # server -> client: identity accepted
    REJECT = 3  # server -> client: identity refused (then the server closes)
    MESSAGE = 4  # one Raft Message
    CHUNK = 5  # a piece of a Message too large for one frame (snapshots)


_BY_CODE: Final = {int(t): t for t in FrameType}


class FrameError(Rejected):
    """The byte stream is not a valid frame sequence; close the connection that sent it."""


class MalformedFrame(FrameError, BadRequest):
    """A frame that is not well formed, or not allowed at this point of the conversation."""


class FrameTooLarge(FrameError, TooLarge):
    """A frame (or a chunked message) longer than its documented maximum."""


class Hello(msgspec.Struct, frozen=True, array_like=True):
    """The handshake: ``src`` introduces itself to ``dst`` as a member of ``cluster_id``."""

    cluster_id: str
    src: int
    dst: int


class HelloAck(msgspec.Struct, frozen=True, array_like=True):
    """The server's answer to an accepted :class:`Hello`, naming itself."""

    cluster_id: str
    src: int


class Reject(msgspec.Struct, frozen=True, array_like=True):
    """Why the server refuses the connection; it closes right after sending this."""

    reason: str


class Chunk(msgspec.Struct, frozen=True, array_like=True):
    """``data`` is bytes ``[offset, offset + len(data))`` of a ``total_bytes`` long message.

    Chunks of one stream share ``stream_id`` and arrive in order on one connection;
    interleaving with MESSAGE frames is allowed, interleaving two streams is not.
    """

    stream_id: int
    offset: int
    total_bytes: int
    data: bytes


class Frame(NamedTuple):
    type: FrameType
    payload: bytes


def check_frame_bytes_max(frame_bytes_max: int) -> int:
    """``frame_bytes_max`` if it is within ``[FRAME_BYTES_MIN, 2**31]``, else ValueError."""
    if not isinstance(frame_bytes_max, int) or not (
        FRAME_BYTES_MIN <= frame_bytes_max <= _FRAME_BYTES_LIMIT
    ):
        raise ValueError(
            f"frame_bytes_max: must be an int in [{FRAME_BYTES_MIN}, {_FRAME_BYTES_LIMIT}], "
            f"got {frame_bytes_max!r}"
        )
    return frame_bytes_max


def chunk_data_bytes(frame_bytes_max: int) -> int:
    """How many message bytes one CHUNK frame carries with this ``frame_bytes_max``."""
    return check_frame_bytes_max(frame_bytes_max) - HEADER_BYTES - CHUNK_OVERHEAD_BYTES


# -- encoding ---------------------------------------------------------------------------

_ENCODER: Final = msgspec.msgpack.Encoder()


def encode_frame(
    frame_type: FrameType, payload: object, frame_bytes_max: int = FRAME_BYTES_MAX
) -> bytes:
    """One frame holding ``payload`` (a msgspec struct) encoded as msgpack.

    Raises :class:`FrameTooLarge` when the frame would exceed ``frame_bytes_max``.
    """
    buffer = bytearray()
    # Encode straight after a header-sized gap, then fill the header in: one copy.
    _ENCODER.encode_into(payload, buffer, HEADER_BYTES)
    length = len(buffer) - HEADER_BYTES
    if len(buffer) > frame_bytes_max:
        raise FrameTooLarge(
            f"{frame_type.name} frame of {len(buffer)} bytes exceeds "
            f"frame_bytes_max={frame_bytes_max}"
        )
    _HEADER.pack_into(buffer, 0, WIRE_VERSION, frame_type, length)
    return bytes(buffer)


def encode_raw_frame(
    frame_type: FrameType, payload: bytes, frame_bytes_max: int = FRAME_BYTES_MAX
) -> bytes:
    """One frame around an already encoded ``payload``."""
    if HEADER_BYTES + len(payload) > frame_bytes_max:
        raise FrameTooLarge(
            f"{frame_type.name} frame of {HEADER_BYTES + len(payload)} bytes exceeds "
            f"frame_bytes_max={frame_bytes_max}"
        )
    return _HEADER.pack(WIRE_VERSION, frame_type, len(payload)) + payload


def encode_message(message: Message) -> bytes:
    """The msgpack encoding of ``message``: a MESSAGE frame's payload, or a chunked stream."""
    return _ENCODER.encode(message)


def encode_chunk(chunk: Chunk, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """The CHUNK frame carrying ``chunk``."""
    return encode_frame(FrameType.CHUNK, chunk, frame_bytes_max)


def split_chunks(stream_id: int, data: bytes, chunk_bytes: int) -> list[Chunk]:
    """``data`` cut into chunks of at most ``chunk_bytes`` bytes (one chunk if it is empty)."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes: must be >= 1, got {chunk_bytes}")
    view = memoryview(data)
    total = len(data)
    return [
        Chunk(stream_id, offset, total, bytes(view[offset : offset + chunk_bytes]))
        for offset in range(0, max(total, 1), chunk_bytes)
    ]


# -- decoding ---------------------------------------------------------------------------

T = TypeVar("T")

_DECODERS: Final[dict[type[object], msgspec.msgpack.Decoder[object]]] = {
    kind: msgspec.msgpack.Decoder(kind) for kind in (Hello, HelloAck, Reject, Chunk, Message)
}


def decode_payload(payload: bytes | memoryview, kind: type[T]) -> T:
    """``payload`` decoded as ``kind``; :class:`MalformedFrame` if it is not one."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise ValueError(f"no wire decoder for {kind!r}")
    try:
        value = decoder.decode(payload)
    except (msgspec.DecodeError, ValueError) as exc:
        raise MalformedFrame(f"bad {kind.__name__} payload: {exc}") from None
    if not isinstance(value, kind):  # pragma: no cover - msgspec guarantees the type
        raise MalformedFrame(f"bad {kind.__name__} payload")
    return value


class FrameDecoder:
    """Turns a byte stream into frames. Feed it whatever the socket returned.

    After it raises a :class:`FrameError` it stays failed: every later :meth:`feed` raises
    the same error, because the stream has lost its framing and cannot be trusted again.
    """

    __slots__ = ("_buffer", "_error", "frame_bytes_max")

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX) -> None:
        self.frame_bytes_max = check_frame_bytes_max(frame_bytes_max)
        self._buffer = bytearray()
        self._error: FrameError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet part of a returned frame (< ``frame_bytes_max``)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Append ``data``; return every frame it completes, in order."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        position = 0
        available = len(buffer)
        try:
            while available - position >= HEADER_BYTES:
                version, kind, length = _HEADER.unpack_from(buffer, position)
                self._check_header(version, kind, length)
                end = position + HEADER_BYTES + length
                if end > available:
                    break
                frames.append(Frame(_BY_CODE[kind], bytes(buffer[position + HEADER_BYTES : end])))
                position = end
        except FrameError as exc:
            self._error = exc
            buffer.clear()
            raise
        if position:
            del buffer[:position]
        return frames

    def _check_header(self, version: int, kind: int, length: int) -> None:
        if version != WIRE_VERSION:
            raise MalformedFrame(f"bad version byte 0x{version:02x}, expected 0x{WIRE_VERSION:02x}")
        if kind not in _BY_CODE:
            raise MalformedFrame(f"unknown frame type {kind}")
        if HEADER_BYTES + length > self.frame_bytes_max:
            raise FrameTooLarge(
                f"frame of {HEADER_BYTES + length} bytes exceeds "
                f"frame_bytes_max={self.frame_bytes_max}"
            )


class ChunkAssembler:
    """Rebuilds chunked messages of at most ``message_bytes_max`` bytes, one stream at a time.

    :meth:`add` returns the whole message when its last chunk arrives, else ``None``. A
    stream that announces more than ``message_bytes_max`` bytes is refused at its first chunk
    (:class:`FrameTooLarge`), so memory stays bounded by that limit; gaps, overlaps, a changed
    total or a second stream starting before the first ends raise :class:`MalformedFrame`.
    """

    __slots__ = ("_buffer", "_stream_id", "_total_bytes", "message_bytes_max")

    def __init__(self, message_bytes_max: int) -> None:
        if message_bytes_max < 1:
            raise ValueError(f"message_bytes_max: must be >= 1, got {message_bytes_max}")
        self.message_bytes_max = message_bytes_max
        self._buffer = bytearray()
        self._stream_id: int | None = None
        self._total_bytes = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def add(self, chunk: Chunk) -> bytes | None:
        if self._stream_id is None:
            if chunk.offset != 0:
                raise MalformedFrame(f"stream {chunk.stream_id} starts at offset {chunk.offset}")
            if not 0 <= chunk.total_bytes <= self.message_bytes_max:
                raise FrameTooLarge(
                    f"chunked message of {chunk.total_bytes} bytes exceeds "
                    f"message_bytes_max={self.message_bytes_max}"
                )
            self._stream_id = chunk.stream_id
            self._total_bytes = chunk.total_bytes
        elif chunk.stream_id != self._stream_id:
            raise MalformedFrame(
                f"stream {chunk.stream_id} interleaved with unfinished stream {self._stream_id}"
            )
        elif chunk.total_bytes != self._total_bytes:
            raise MalformedFrame(f"stream {chunk.stream_id} changed its total size")
        if chunk.offset != len(self._buffer):
            raise MalformedFrame(
                f"stream {chunk.stream_id}: chunk at offset {chunk.offset}, "
                f"expected {len(self._buffer)}"
            )
        if len(self._buffer) + len(chunk.data) > self._total_bytes:
            raise MalformedFrame(f"stream {chunk.stream_id} overruns its total size")
        if not chunk.data and self._total_bytes:
            raise MalformedFrame(f"stream {chunk.stream_id}: empty chunk")
        self._buffer += chunk.data
        if len(self._buffer) < self._total_bytes:
            return None
        message = bytes(self._buffer)
        self.reset()
        return message

    def reset(self) -> None:
        """Forget an unfinished stream (its connection closed)."""
        self._buffer = bytearray()
        self._stream_id = None
        self._total_bytes = 0
