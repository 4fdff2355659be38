"""The storage contract of idempotency: one record per key, claimed atomically.

This module owns :class:`IdempotencyStore` (the Protocol every backend implements), the
record it keeps per key, and the rules a backend must enforce. The executor
(:mod:`.guard`) and the ASGI middleware (:mod:`.asgi`) only ever talk to a store through
these five methods, so a new backend (PostgreSQL, Redis) is a small class.

A record lives from its claim until ``expires_at_s``. While it is ``IN_PROGRESS`` one
``owner`` holds a lease until ``lease_expires_at_s``; when the lease runs out (the owner
crashed or is too slow) a caller with the same fingerprint may take the key over. Once
``COMPLETED`` the record carries the encoded result and is replayed to duplicates.

All times are passed in by the caller as wall-clock seconds (``Clock.wall_s()``): stores never
read a clock, so they are deterministic under test and records keep their meaning across
restarts and processes.

The rules of :meth:`IdempotencyStore.claim` (atomic, one winner):

* no record, or the record expired (``expires_at_s <= now_s``): a new in-progress record
  owned by the caller replaces it; the claim is acquired;
* an in-progress record whose lease expired and whose fingerprint equals the caller's: the
  caller takes it over (a new owner and lease); the claim is acquired;
* anything else: the claim is not acquired and the live record is returned unchanged, so the
  caller can replay it, wait for it, or report a conflict or a fingerprint mismatch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Claim", "IdempotencyRecord", "IdempotencyStore", "RecordState"]


class RecordState(enum.Enum):
    """Where the execution behind a key stands."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What a store keeps for one idempotency key.

    ``fingerprint`` is a stable hash of the request (see :mod:`.fingerprint`); ``owner`` the
    token of the execution that holds (or last held) the key; ``result`` the encoded result,
    present only when ``state`` is ``COMPLETED``. Times are wall-clock seconds.
    """

    key: str
    fingerprint: str
    state: RecordState
    owner: str
    created_at_s: float
    expires_at_s: float
    lease_expires_at_s: float
    result: bytes | None = None

    def is_expired(self, now_s: float) -> bool:
        """True once the record no longer protects its key."""
        return self.expires_at_s <= now_s

    def lease_expired(self, now_s: float) -> bool:
        """True when an in-progress owner's lease has run out and the key may be taken over."""
        return self.state is RecordState.IN_PROGRESS and self.lease_expires_at_s <= now_s


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer of :meth:`IdempotencyStore.claim`.

    ``acquired`` is True when the caller now owns the key and must run the operation;
    ``record`` is then the caller's fresh in-progress record. When False, ``record`` is the
    live record somebody else holds (in progress or completed). ``took_over`` says the
    acquired key was taken from an owner whose lease had expired.
    """

    acquired: bool
    record: IdempotencyRecord
    took_over: bool = False


@runtime_checkable
class IdempotencyStore(Protocol):
    """Durable (or not) memory of idempotency keys. Every method is atomic per key.

    Implementations: :class:`~.memory.MemoryIdempotencyStore` (one process),
    :class:`~.sqlite.SqliteIdempotencyStore` (one host),
    :class:`~.postgres.PostgresIdempotencyStore` (a fleet, ``INSERT ... ON CONFLICT`` under a
    row lock) and :class:`~.redis.RedisIdempotencyStore` (a fleet, one Lua script per
    method). ``tests/resilience/test_idempotency_store.py`` runs the same contract against
    all of them.
    """

    def claim(
        self, key: str, fingerprint: str, owner: str, *, now_s: float, lease_s: float, ttl_s: float
    ) -> Claim:
        """Atomically take ``key`` for ``owner`` (see the module docstring for the rules).

        A new or taken-over record expires ``ttl_s`` after ``now_s`` and its lease
        ``lease_s`` after ``now_s``. Raises :class:`phalanx.errors.Unavailable` when the store
        is full of in-progress records and cannot make room.
        """
        ...

    def complete(self, key: str, owner: str, result: bytes, *, now_s: float, ttl_s: float) -> bool:
        """Store ``result`` and mark the key completed, if ``owner`` still holds it in progress.

        The completed record expires ``ttl_s`` after ``now_s``. Returns False (and changes
        nothing) when the owner lost the key: its lease expired and another caller took over,
        or the record expired or was evicted.
        """
        ...

    def release(self, key: str, owner: str) -> bool:
        """Delete the in-progress record of ``key`` if ``owner`` holds it; True if deleted.

        Used after a failed execution so that a retry of the same request can run again.
        """
        ...

    def get(self, key: str, *, now_s: float) -> IdempotencyRecord | None:
        """The live record of ``key``, or None when absent or expired."""
        ...

    def purge(self, *, now_s: float) -> int:
        """Delete every expired record; return how many were deleted."""
        ...
