"""What applying a command returns: key-values, per-command results, and ``Error``.

Responses are ``msgspec`` structs like the commands: they are cached in client sessions (and
so in snapshots) and sent to clients as they are. A rejected command yields :class:`Error`,
identical on every replica; :meth:`Error.exception` rebuilds the typed exception.
"""

from __future__ import annotations

import enum

import msgspec

from phalanx.errors import BadRequest, PhalanxError, Rejected, TooLarge
from phalanx.kv.errors import (
    Compacted,
    FutureRevision,
    LeaseNotFound,
    SequenceDiscarded,
    SessionBusy,
    SessionExpired,
)

__all__ = [
    "CompactResult",
    "DeleteResult",
    "Error",
    "ErrorCode",
    "KeyValue",
    "LeaseExpireResult",
    "LeaseGrantResult",
    "LeaseKeepAliveResult",
    "LeaseRenewAllResult",
    "LeaseRevokeResult",
    "Noop",
    "OpResult",
    "PutResult",
    "RangeResult",
    "Response",
    "SessionResult",
    "TxnResult",
    "error_response",
]


class KeyValue(msgspec.Struct, frozen=True, array_like=True):
    """One version of a key. A deletion is stored as a tombstone with ``version == 0``."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class PutResult(msgspec.Struct, frozen=True, array_like=True, tag="put"):
    revision: int
    prev_kv: KeyValue | None = None


class DeleteResult(msgspec.Struct, frozen=True, array_like=True, tag="del"):
    revision: int
    deleted: int
    prev_kvs: tuple[KeyValue, ...] = ()


class RangeResult(msgspec.Struct, frozen=True, array_like=True, tag="range"):
    """``kvs`` in key order; ``count`` counts every match; ``more`` says ``kvs`` was cut."""

    revision: int
    kvs: tuple[KeyValue, ...]
    count: int
    more: bool = False


OpResult = PutResult | DeleteResult | RangeResult


class TxnResult(msgspec.Struct, frozen=True, array_like=True, tag="txn"):
    revision: int
    succeeded: bool
    responses: tuple[OpResult, ...] = ()


class CompactResult(msgspec.Struct, frozen=True, array_like=True, tag="compact"):
    revision: int
    compact_revision: int


class LeaseGrantResult(msgspec.Struct, frozen=True, array_like=True, tag="lease_grant"):
    lease_id: int
    ttl_ms: int


class LeaseRevokeResult(msgspec.Struct, frozen=True, array_like=True, tag="lease_revoke"):
    revision: int
    deleted: int


class LeaseKeepAliveResult(msgspec.Struct, frozen=True, array_like=True, tag="lease_keepalive"):
    lease_id: int
    ttl_ms: int


class LeaseExpireResult(msgspec.Struct, frozen=True, array_like=True, tag="lease_expire"):
    revision: int
    expired: tuple[int, ...] = ()


class LeaseRenewAllResult(msgspec.Struct, frozen=True, array_like=True, tag="lease_renew_all"):
    renewed: int


class SessionResult(msgspec.Struct, frozen=True, array_like=True, tag="session"):
    client_id: int


class Noop(msgspec.Struct, frozen=True, array_like=True, tag="noop"):
    """An entry with no command (the leader's empty entry, a membership change)."""


class ErrorCode(enum.IntEnum):
    BAD_REQUEST = 1
    TOO_LARGE = 2
    COMPACTED = 3
    FUTURE_REVISION = 4
    LEASE_NOT_FOUND = 5
    SESSION_EXPIRED = 6
    SEQUENCE_DISCARDED = 7
    SESSION_BUSY = 8
    REJECTED = 9


_CLASSES: dict[ErrorCode, type[Rejected]] = {
    ErrorCode.BAD_REQUEST: BadRequest,
    ErrorCode.TOO_LARGE: TooLarge,
    ErrorCode.COMPACTED: Compacted,
    ErrorCode.FUTURE_REVISION: FutureRevision,
    ErrorCode.LEASE_NOT_FOUND: LeaseNotFound,
    ErrorCode.SESSION_EXPIRED: SessionExpired,
    ErrorCode.SEQUENCE_DISCARDED: SequenceDiscarded,
    ErrorCode.SESSION_BUSY: SessionBusy,
    ErrorCode.REJECTED: Rejected,
}


class Error(msgspec.Struct, frozen=True, array_like=True, tag="error"):
    """A rejected command: it had no effect on the state."""

    code: ErrorCode
    message: str
    compact_revision: int = 0

    def exception(self) -> PhalanxError:
        """The typed exception this error stands for."""
        if self.code == ErrorCode.COMPACTED:
            return Compacted(self.message, compact_revision=self.compact_revision)
        return _CLASSES[self.code](self.message)


def error_response(exc: Rejected) -> Error:
    """The :class:`Error` value of a rejection (the most specific known class wins)."""
    compact_revision = exc.compact_revision if isinstance(exc, Compacted) else 0
    for klass in type(exc).__mro__:
        for code, known in _CLASSES.items():
            if known is klass:
                return Error(code, str(exc), compact_revision)
    return Error(ErrorCode.REJECTED, str(exc))  # pragma: no cover - Rejected is in the table


Response = (
    PutResult
    | DeleteResult
    | RangeResult
    | TxnResult
    | CompactResult
    | LeaseGrantResult
    | LeaseRevokeResult
    | LeaseKeepAliveResult
    | LeaseExpireResult
    | LeaseRenewAllResult
    | SessionResult
    | Noop
    | Error
)
