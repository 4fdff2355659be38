"""The commands that go into Raft entries, their session envelope, and their validation.

A :class:`Proposal` wraps one command with what the leader decided when it proposed it:
``now_ms`` (the leader's clock: the state machine never reads one) and, for exactly-once
requests (Raft thesis 6.3), the client's session id and sequence number. ``encode_proposal``
makes the bytes of a Raft entry; ``decode_proposal`` reads them back and rejects malformed or
oversized input with :class:`~phalanx.errors.BadRequest` / :class:`~phalanx.errors.TooLarge`.

Ranges follow etcd: ``range_end == b""`` names the single key ``key``; ``range_end == b"\\0"``
means every key ``>= key``; otherwise the half-open interval ``[key, range_end)``.
:func:`prefix_end` gives the ``range_end`` of a prefix.
"""

from __future__ import annotations

import enum

import msgspec

from phalanx.errors import BadRequest, TooLarge
from phalanx.kv.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "Command",
    "Compact",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteRange",
    "LeaseExpire",
    "LeaseGrant",
    "LeaseKeepAlive",
    "LeaseRenewAll",
    "LeaseRevoke",
    "Proposal",
    "Put",
    "Range",
    "RegisterSession",
    "Txn",
    "TxnOp",
    "decode_proposal",
    "encode_proposal",
    "prefix_end",
    "validate",
    "validate_op",
]


class Put(msgspec.Struct, frozen=True, array_like=True, tag="put"):
    """Set ``key`` to ``value``, attached to ``lease`` (0: none)."""

    key: bytes
    value: bytes
    lease: int = 0
    prev_kv: bool = False


class DeleteRange(msgspec.Struct, frozen=True, array_like=True, tag="del"):
    """Delete ``key``, or every key of the range."""

    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


class Range(msgspec.Struct, frozen=True, array_like=True, tag="range"):
    """Read a key or a range at ``revision`` (0: the latest). Only used inside a Txn."""

    key: bytes
    range_end: bytes = b""
    revision: int = 0
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False


TxnOp = Put | DeleteRange | Range


class CompareTarget(enum.IntEnum):
    VALUE = 1
    VERSION = 2
    MOD_REVISION = 3
    CREATE_REVISION = 4


class CompareOp(enum.IntEnum):
    EQUAL = 1
    NOT_EQUAL = 2
    LESS = 3
    GREATER = 4


class Compare(msgspec.Struct, frozen=True, array_like=True):
    """``key``'s ``target`` compared with ``operand`` (bytes for VALUE, else an int).

    A missing key has version and revisions 0; a VALUE compare on a missing key is false.
    """

    key: bytes
    target: CompareTarget
    op: CompareOp
    operand: int | bytes


class Txn(msgspec.Struct, frozen=True, array_like=True, tag="txn"):
    """If every compare holds, run ``success`` else ``failure``, atomically, in one revision."""

    compare: tuple[Compare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()


class Compact(msgspec.Struct, frozen=True, array_like=True, tag="compact"):
    """Forget history below ``revision``; reads below it then fail with ``Compacted``."""

    revision: int


class LeaseGrant(msgspec.Struct, frozen=True, array_like=True, tag="lease_grant"):
    """A lease of ``ttl_ms``; ``lease_id`` 0 lets the state machine pick (the entry index)."""

    ttl_ms: int
    lease_id: int = 0


class LeaseRevoke(msgspec.Struct, frozen=True, array_like=True, tag="lease_revoke"):
    lease_id: int


class LeaseKeepAlive(msgspec.Struct, frozen=True, array_like=True, tag="lease_keepalive"):
    lease_id: int


class LeaseExpire(msgspec.Struct, frozen=True, array_like=True, tag="lease_expire"):
    """Proposed by the leader only: expire these leases if, at ``now_ms``, they are due."""

    lease_ids: tuple[int, ...]


class LeaseRenewAll(msgspec.Struct, frozen=True, array_like=True, tag="lease_renew_all"):
    """Proposed by a new leader only: every lease's deadline becomes at least the command's
    ``now_ms`` plus its TTL, so no lease expires because keep-alives could not reach anyone
    while there was no leader."""


class RegisterSession(msgspec.Struct, frozen=True, array_like=True, tag="session"):
    """Open a client session; its id is the index of the entry that applies this."""


Command = (
    Put
    | DeleteRange
    | Txn
    | Compact
    | LeaseGrant
    | LeaseRevoke
    | LeaseKeepAlive
    | LeaseExpire
    | LeaseRenewAll
    | RegisterSession
)


class Proposal(msgspec.Struct, frozen=True, array_like=True):
    """One command and the leader's decisions about it.

    ``client_id`` 0 means no session (no deduplication). With a session, ``seq`` numbers the
    client's requests from 1 and ``acked_seq`` says every response below it was received, so
    the state machine may forget them.
    """

    command: Command
    now_ms: int = 0
    client_id: int = 0
    seq: int = 0
    acked_seq: int = 0


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Proposal)


def encode_proposal(proposal: Proposal, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The entry bytes of a valid proposal; raises like :func:`validate` otherwise."""
    validate(proposal, limits)
    data = _ENCODER.encode(proposal)
    if len(data) > limits.proposal_bytes_max:
        raise TooLarge(f"proposal of {len(data)} bytes > {limits.proposal_bytes_max}")
    return data


def decode_proposal(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Proposal:
    """Parse and validate entry bytes."""
    if len(data) > limits.proposal_bytes_max:
        raise TooLarge(f"proposal of {len(data)} bytes > {limits.proposal_bytes_max}")
    try:
        proposal = _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed proposal: {exc}") from None
    validate(proposal, limits)
    return proposal


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` covering every key that starts with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every byte is 0xff (or no prefix): the range runs to the end


def _key(key: bytes, limits: Limits, *, empty_ok: bool = False) -> None:
    if not key and not empty_ok:
        raise BadRequest("empty key")
    if len(key) > limits.key_bytes_max:
        raise TooLarge(f"key of {len(key)} bytes > key_bytes_max {limits.key_bytes_max}")


def _range(key: bytes, range_end: bytes, limits: Limits) -> None:
    _key(key, limits, empty_ok=bool(range_end))
    _key(range_end, limits, empty_ok=True)
    if range_end not in (b"", b"\0") and range_end <= key:
        raise BadRequest("range_end must be above key")


def _non_negative(name: str, value: int) -> None:
    if value < 0:
        raise BadRequest(f"{name} must be >= 0, got {value}")


def validate_op(op: TxnOp, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise ``BadRequest``/``TooLarge`` unless one put, delete or range is within limits."""
    if isinstance(op, Put):
        _key(op.key, limits)
        if len(op.value) > limits.value_bytes_max:
            raise TooLarge(
                f"value of {len(op.value)} bytes > value_bytes_max {limits.value_bytes_max}"
            )
        _non_negative("lease", op.lease)
    elif isinstance(op, DeleteRange):
        _range(op.key, op.range_end, limits)
    else:
        _range(op.key, op.range_end, limits)
        _non_negative("revision", op.revision)
        _non_negative("limit", op.limit)
        if op.limit > limits.range_limit_max:
            raise TooLarge(f"limit {op.limit} > range_limit_max {limits.range_limit_max}")


def _txn(txn: Txn, limits: Limits) -> None:
    for name, items in (
        ("compare", txn.compare),
        ("success", txn.success),
        ("failure", txn.failure),
    ):
        if len(items) > limits.txn_ops_max:
            raise TooLarge(f"txn {name} has {len(items)} items > txn_ops_max {limits.txn_ops_max}")
    for cmp in txn.compare:
        _key(cmp.key, limits)
        if (cmp.target == CompareTarget.VALUE) != isinstance(cmp.operand, bytes):
            raise BadRequest("VALUE compares take bytes, the other targets an int")
    for branch in (txn.success, txn.failure):
        for op in branch:
            validate_op(op, limits)
        _no_overlap(branch)


def _in_range(key: bytes, start: bytes, range_end: bytes) -> bool:
    if not range_end:
        return key == start
    return key >= start and (range_end == b"\0" or key < range_end)


def _no_overlap(ops: tuple[TxnOp, ...]) -> None:
    # As in etcd: a txn writes each key at most once, so every key has one version per revision.
    puts = [op.key for op in ops if isinstance(op, Put)]
    if len(set(puts)) != len(puts):
        raise BadRequest("a txn may put each key at most once")
    for op in ops:
        if isinstance(op, DeleteRange) and any(
            _in_range(key, op.key, op.range_end) for key in puts
        ):
            raise BadRequest("a txn may not put a key it also deletes")


def validate(proposal: Proposal, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise ``BadRequest``/``TooLarge`` unless the proposal is within every limit.

    The leader calls this before proposing (a fast, typed error costs no log space); the state
    machine calls it again on apply, so a bad entry is rejected the same way on every replica.
    """
    _non_negative("now_ms", proposal.now_ms)
    _non_negative("client_id", proposal.client_id)
    _non_negative("acked_seq", proposal.acked_seq)
    if proposal.client_id and proposal.seq < 1:
        raise BadRequest("a session request needs seq >= 1")
    cmd = proposal.command
    if isinstance(cmd, Put | DeleteRange):
        validate_op(cmd, limits)
    elif isinstance(cmd, Txn):
        _txn(cmd, limits)
    elif isinstance(cmd, Compact):
        _non_negative("revision", cmd.revision)
    elif isinstance(cmd, LeaseGrant):
        if not 0 < cmd.ttl_ms <= limits.lease_ttl_ms_max:
            raise BadRequest(f"ttl_ms must be in 1..{limits.lease_ttl_ms_max}, got {cmd.ttl_ms}")
        _non_negative("lease_id", cmd.lease_id)
    elif isinstance(cmd, LeaseExpire) and len(cmd.lease_ids) > limits.lease_expire_ids_max:
        raise TooLarge(
            f"{len(cmd.lease_ids)} lease ids > lease_expire_ids_max {limits.lease_expire_ids_max}"
        )
