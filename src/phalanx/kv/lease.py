"""Leases: TTLs in the leader's time, the keys attached to them, and who is due to expire.

Replicas never decide that a lease expired. The leader calls :meth:`LeaseTable.due` with its
clock and proposes ``LeaseExpire`` for what it returns; applying that command expires a lease
only if its deadline has passed by the ``now_ms`` the command carries, so a keep-alive applied
in between wins and every replica reaches the same decision.

Deadlines are in the state machine's clock, the largest ``now_ms`` applied so far: a later
leader whose clock runs behind cannot move time backwards.
"""

from __future__ import annotations

from phalanx.errors import Rejected
from phalanx.kv.commands import LeaseExpire, Proposal
from phalanx.kv.errors import LeaseNotFound
from phalanx.kv.limits import DEFAULT_LIMITS, Limits

__all__ = ["Lease", "LeaseTable", "expire_proposal"]


class Lease:
    """One lease: its id, granted TTL, deadline and attached keys."""

    __slots__ = ("deadline_ms", "keys", "lease_id", "ttl_ms")

    def __init__(self, lease_id: int, ttl_ms: int, deadline_ms: int) -> None:
        self.lease_id = lease_id
        self.ttl_ms = ttl_ms
        self.deadline_ms = deadline_ms
        self.keys: set[bytes] = set()


class LeaseTable:
    """The live leases of one state machine."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._leases: dict[int, Lease] = {}

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def get(self, lease_id: int) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFound(f"lease {lease_id} not found")
        return lease

    def leases(self) -> list[Lease]:
        """Every lease, by id."""
        return [self._leases[i] for i in sorted(self._leases)]

    def grant(self, lease_id: int, ttl_ms: int, now_ms: int) -> Lease:
        if lease_id in self._leases:
            raise Rejected(f"lease {lease_id} already exists")
        if len(self._leases) >= self._limits.leases_max:
            raise Rejected(f"leases_max {self._limits.leases_max} leases exist")
        lease = Lease(lease_id, ttl_ms, now_ms + ttl_ms)
        self._leases[lease_id] = lease
        return lease

    def restore(self, lease: Lease) -> None:
        self._leases[lease.lease_id] = lease

    def keep_alive(self, lease_id: int, now_ms: int) -> Lease:
        lease = self.get(lease_id)
        lease.deadline_ms = now_ms + lease.ttl_ms
        return lease

    def renew_all(self, now_ms: int) -> int:
        """Push every deadline to at least ``now_ms`` + its TTL; how many leases moved."""
        moved = 0
        for lease in self._leases.values():
            deadline_ms = now_ms + lease.ttl_ms
            if deadline_ms > lease.deadline_ms:
                lease.deadline_ms = deadline_ms
                moved += 1
        return moved

    def remove(self, lease_id: int) -> Lease:
        return self._leases.pop(lease_id)

    def attach(self, lease_id: int, key: bytes) -> None:
        self._leases[lease_id].keys.add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def due(self, now_ms: int, limit: int | None = None) -> list[int]:
        """Leader side: ids of leases whose deadline is at or before ``now_ms``.

        Earliest deadline first (ties by id), at most ``limit`` (default
        ``lease_expire_ids_max``, the most one ``LeaseExpire`` may carry).
        """
        limit = self._limits.lease_expire_ids_max if limit is None else limit
        due = sorted(
            (lease.deadline_ms, lease.lease_id)
            for lease in self._leases.values()
            if lease.deadline_ms <= now_ms
        )
        return [lease_id for _, lease_id in due[:limit]]


def expire_proposal(table: LeaseTable, now_ms: int) -> Proposal | None:
    """Leader side: the ``LeaseExpire`` proposal for the leases due at ``now_ms``, if any."""
    due = table.due(now_ms)
    if not due:
        return None
    return Proposal(LeaseExpire(tuple(due)), now_ms=now_ms)
