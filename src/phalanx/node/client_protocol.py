"""The client wire protocol: requests and responses carried in peer-style frames.

A client connection reuses the frame codec of :mod:`phalanx.net.framing` (6-byte header,
msgpack payload). Every frame is a ``MESSAGE`` frame; its payload is one
:class:`ClientRequest` (client to node) or one :class:`ClientResponse` (node to client),
encoded as a msgpack map. Requests carry an ``id`` chosen by the client; the response echoes
it, so a client may pipeline requests on one connection and responses may come back in any
order. An error response for a request whose id could not be read uses ``id`` 0.
"""

from __future__ import annotations

from typing import Final

import msgspec

from phalanx.errors import (
    BadRequest,
    BulkheadFull,
    CircuitOpen,
    Conflict,
    DeadlineExceeded,
    Indeterminate,
    NoQuorum,
    NotLeader,
    PhalanxError,
    RateLimited,
    Rejected,
    Timeout,
    TooLarge,
    Unavailable,
)
from phalanx.net.framing import FrameType, MalformedFrame, encode_raw_frame

__all__ = [
    "CLIENT_FRAME_BYTES_MAX",
    "CLIENT_INFLIGHT_MAX",
    "ERROR_TYPES",
    "ClientRequest",
    "ClientResponse",
    "ErrorBody",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "error_body",
    "error_from_body",
]

#: Largest client frame, header included: room for the largest proposal (1.5 MiB by the
#: key-value limits) plus the request's envelope. A longer frame closes the connection.
CLIENT_FRAME_BYTES_MAX: Final = 2 * 1024 * 1024
#: Requests one connection may have in progress at once; further frames wait to be read
#: (backpressure through TCP) until one finishes.
CLIENT_INFLIGHT_MAX: Final = 128

#: The error ``type`` names a node sends, and the exception each becomes on the client.
#: ``Internal`` is an unexpected failure on the node: the outcome is unknown.
ERROR_TYPES: Final[dict[str, type[PhalanxError]]] = {
    "NotLeader": NotLeader,
    "NoQuorum": NoQuorum,
    "CircuitOpen": CircuitOpen,
    "BulkheadFull": BulkheadFull,
    "RateLimited": RateLimited,
    "Unavailable": Unavailable,
    "DeadlineExceeded": DeadlineExceeded,
    "Timeout": Timeout,
    "TooLarge": TooLarge,
    "BadRequest": BadRequest,
    "Conflict": Conflict,
    "Rejected": Rejected,
    "Indeterminate": Indeterminate,
    "Internal": Indeterminate,
}
_BY_CLASS: Final = {cls: name for name, cls in ERROR_TYPES.items() if name != "Internal"}


class ClientRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """``op`` is ``"put"`` or ``"get"``; ``value`` is required for a put; ``linearizable``
    (default true) chooses a ReadIndex read over a local, possibly stale one."""

    id: int
    op: str
    key: bytes
    value: bytes | None = None
    linearizable: bool = True


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """``type`` is a key of :data:`ERROR_TYPES`. For ``NotLeader``, ``leader_hint`` is the
    leader's client address as ``"host:port"`` when the node knows it, and ``leader_id`` its
    node id (0 when no leader is known)."""

    type: str
    message: str = ""
    leader_hint: str | None = None
    leader_id: int = 0


class ClientResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    """Exactly one of ``ok`` (true) and ``error`` is set. A put answers ``revision``; a get
    answers ``value`` (absent when the key is absent)."""

    id: int
    ok: bool = False
    value: bytes | None = None
    revision: int = 0
    error: ErrorBody | None = None


_ENCODER: Final = msgspec.msgpack.Encoder()
_REQUESTS: Final = msgspec.msgpack.Decoder(ClientRequest)
_RESPONSES: Final = msgspec.msgpack.Decoder(ClientResponse)


def encode_request(request: ClientRequest) -> bytes:
    """The frame carrying ``request``; ``FrameTooLarge`` beyond :data:`CLIENT_FRAME_BYTES_MAX`."""
    return encode_raw_frame(FrameType.MESSAGE, _ENCODER.encode(request), CLIENT_FRAME_BYTES_MAX)


def encode_response(response: ClientResponse) -> bytes:
    return encode_raw_frame(FrameType.MESSAGE, _ENCODER.encode(response), CLIENT_FRAME_BYTES_MAX)


def decode_request(payload: bytes) -> ClientRequest:
    """``payload`` as a request; :class:`MalformedFrame` when it is not one."""
    try:
        return _REQUESTS.decode(payload)
    except (msgspec.DecodeError, ValueError) as exc:
        raise MalformedFrame(f"bad client request: {exc}") from None


def decode_response(payload: bytes) -> ClientResponse:
    """``payload`` as a response; :class:`MalformedFrame` when it is not one."""
    try:
        return _RESPONSES.decode(payload)
    except (msgspec.DecodeError, ValueError) as exc:
        raise MalformedFrame(f"bad client response: {exc}") from None


def error_body(
    error: BaseException, *, leader_hint: str | None = None, leader_id: int = 0
) -> ErrorBody:
    """The wire form of ``error``: the most specific known class in its MRO names the type."""
    for cls in type(error).__mro__:
        name = _BY_CLASS.get(cls)
        if name is not None:
            return ErrorBody(name, str(error), leader_hint, leader_id)
    return ErrorBody("Internal", f"{type(error).__name__}: {error}")


def error_from_body(body: ErrorBody) -> PhalanxError:
    """The exception a client raises for ``body`` (unknown types are INDETERMINATE)."""
    cls = ERROR_TYPES.get(body.type, Indeterminate)
    message = body.message or body.type
    if cls is NotLeader:
        return NotLeader(message, leader_hint=body.leader_hint)
    if body.type not in ERROR_TYPES:
        message = f"{body.type}: {message}"
    return cls(message)
