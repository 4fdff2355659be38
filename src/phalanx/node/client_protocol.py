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
from phalanx.kv.commands import Command, Range
from phalanx.kv.errors import (
    Compacted,
    FutureRevision,
    LeaseNotFound,
    SequenceDiscarded,
    SessionBusy,
    SessionExpired,
    TooManyWatchers,
)
from phalanx.kv.responses import Response
from phalanx.kv.watch import Event
from phalanx.net.framing import FrameType, MalformedFrame, encode_raw_frame

__all__ = [
    "CLIENT_FRAME_BYTES_MAX",
    "CLIENT_INFLIGHT_MAX",
    "ERROR_TYPES",
    "OPS",
    "ClientRequest",
    "ClientResponse",
    "ErrorBody",
    "MemberChange",
    "MemberInfo",
    "NodeStatus",
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
    "Compacted": Compacted,
    "FutureRevision": FutureRevision,
    "LeaseNotFound": LeaseNotFound,
    "SessionExpired": SessionExpired,
    "SequenceDiscarded": SequenceDiscarded,
    "SessionBusy": SessionBusy,
    "TooManyWatchers": TooManyWatchers,
    "Internal": Indeterminate,
}
_BY_CLASS: Final = {cls: name for name, cls in ERROR_TYPES.items() if name != "Internal"}


#: The ops a client may send. ``propose`` carries a command for the log; ``range`` reads;
#: ``watch`` streams events until ``cancel``; ``status`` describes the node; ``member``
#: changes the membership; ``transfer`` hands leadership to another voter.
OPS: Final = ("propose", "range", "watch", "cancel", "status", "member", "transfer")


class MemberChange(msgspec.Struct, frozen=True, omit_defaults=True):
    """``action`` is ``"add"`` (a learner: it catches up without voting), ``"promote"`` (a
    learner becomes a voter), ``"add_voter"`` or ``"remove"``. ``peer`` and ``client`` are
    the new member's addresses as ``"host:port"`` (required to add)."""

    action: str
    node_id: int
    peer: str = ""
    client: str = ""


class ClientRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """One request. Which fields matter depends on ``op`` (see :data:`OPS`):

    - ``propose``: ``command``; with a session, ``client_id``, ``seq`` and ``acked_seq``
      (Raft thesis 6.3: a retried request with the same ``seq`` is applied once);
    - ``range``: ``range``; ``linearizable`` (default true) chooses a ReadIndex read over a
      local one, which may be stale and says so;
    - ``watch``: ``range`` names the key or range and ``range.revision`` the first revision
      wanted (0: from now); the node answers with a stream of responses carrying this
      request's ``id`` until ``cancel`` names it in ``watch_id``;
    - ``member``: ``member``; ``transfer``: ``node_id`` (0: the most up-to-date voter).
    """

    id: int
    op: str
    command: Command | None = None
    client_id: int = 0
    seq: int = 0
    acked_seq: int = 0
    range: Range | None = None
    linearizable: bool = True
    watch_id: int = 0
    member: MemberChange | None = None
    node_id: int = 0


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """``type`` is a key of :data:`ERROR_TYPES`. For ``NotLeader``, ``leader_hint`` is the
    leader's client address as ``"host:port"`` when the node knows it, and ``leader_id`` its
    node id (0 when no leader is known). For ``Compacted``, ``compact_revision``."""

    type: str
    message: str = ""
    leader_hint: str | None = None
    leader_id: int = 0
    compact_revision: int = 0


class MemberInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    node_id: int
    peer: str = ""
    client: str = ""
    learner: bool = False


class NodeStatus(msgspec.Struct, frozen=True, omit_defaults=True):
    """What one node knows of itself and the cluster."""

    node_id: int
    role: str
    term: int
    leader: int
    commit_index: int
    applied_index: int
    last_index: int
    revision: int
    members: tuple[MemberInfo, ...] = ()
    cluster_id: str = ""


class ClientResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    """Exactly one of ``ok`` (true) and ``error`` is set.

    ``result`` is the state machine's answer to a ``propose`` or ``range``; a ``range``
    served without ReadIndex sets ``stale`` (it may miss recent writes). A ``watch`` answers
    first with ``watch_id``, the revision it starts from (``start_revision``) and no events,
    then with batches of ``events`` in revision order;
    a watch that ends by itself sends a last response with ``error`` (``Compacted`` when the
    events it needs are gone). ``status`` answers ``status`` and ``member``.
    """

    id: int
    ok: bool = False
    result: Response | None = None
    stale: bool = False
    watch_id: int = 0
    start_revision: int = 0
    events: tuple[Event, ...] = ()
    status: NodeStatus | None = None
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
    compact_revision = error.compact_revision if isinstance(error, Compacted) else 0
    for cls in type(error).__mro__:
        name = _BY_CLASS.get(cls)
        if name is not None:
            return ErrorBody(name, str(error), leader_hint, leader_id, compact_revision)
    return ErrorBody("Internal", f"{type(error).__name__}: {error}")


def error_from_body(body: ErrorBody) -> PhalanxError:
    """The exception a client raises for ``body`` (unknown types are INDETERMINATE)."""
    cls = ERROR_TYPES.get(body.type, Indeterminate)
    message = body.message or body.type
    if cls is NotLeader:
        return NotLeader(message, leader_hint=body.leader_hint)
    if cls is Compacted:
        return Compacted(message, compact_revision=body.compact_revision)
    if body.type not in ERROR_TYPES:
        message = f"{body.type}: {message}"
    return cls(message)
