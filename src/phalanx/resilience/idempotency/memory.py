"""The in-memory idempotency store: one process, bounded, LRU.

This module owns :class:`MemoryIdempotencyStore`, the twin used by tests and by single-process
services that accept losing their keys on restart. Records live in an ``OrderedDict`` in
least-recently-used order under one lock, so every method is atomic across threads.

Bounds: at most ``entries_max`` records. Making room evicts expired records first, then the
least recently used *completed* record. In-progress records are never evicted (that would let
a duplicate run while the first execution is still going); when every record is in progress
the claim fails with :class:`phalanx.errors.Unavailable`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace

from phalanx.errors import Unavailable
from phalanx.resilience.config import parse_count
from phalanx.resilience.idempotency.store import Claim, IdempotencyRecord, RecordState

__all__ = ["MemoryIdempotencyStore"]


class MemoryIdempotencyStore:
    """An :class:`~.store.IdempotencyStore` in a dict, bounded by ``entries_max`` records."""

    def __init__(self, *, entries_max: int = 10_000) -> None:
        self.entries_max = parse_count("entries_max", entries_max, minimum=1)
        self._records: OrderedDict[str, IdempotencyRecord] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._records)

    def claim(
        self, key: str, fingerprint: str, owner: str, *, now_s: float, lease_s: float, ttl_s: float
    ) -> Claim:
        with self._lock:
            current = self._records.get(key)
            took_over = False
            if current is not None and not current.is_expired(now_s):
                self._records.move_to_end(key)
                if not (current.lease_expired(now_s) and current.fingerprint == fingerprint):
                    return Claim(acquired=False, record=current)
                took_over = True
            if current is None:
                self._make_room(now_s)
            record = IdempotencyRecord(
                key=key,
                fingerprint=fingerprint,
                state=RecordState.IN_PROGRESS,
                owner=owner,
                created_at_s=now_s,
                expires_at_s=now_s + ttl_s,
                lease_expires_at_s=now_s + lease_s,
            )
            self._records[key] = record
            self._records.move_to_end(key)
            return Claim(acquired=True, record=record, took_over=took_over)

    def complete(self, key: str, owner: str, result: bytes, *, now_s: float, ttl_s: float) -> bool:
        with self._lock:
            current = self._records.get(key)
            if current is None or not _held_by(current, owner, now_s):
                return False
            self._records[key] = replace(
                current,
                state=RecordState.COMPLETED,
                expires_at_s=now_s + ttl_s,
                result=bytes(result),
            )
            self._records.move_to_end(key)
            return True

    def release(self, key: str, owner: str) -> bool:
        with self._lock:
            current = self._records.get(key)
            if (
                current is None
                or current.owner != owner
                or current.state is not RecordState.IN_PROGRESS
            ):
                return False
            del self._records[key]
            return True

    def get(self, key: str, *, now_s: float) -> IdempotencyRecord | None:
        with self._lock:
            current = self._records.get(key)
            if current is None:
                return None
            if current.is_expired(now_s):
                del self._records[key]
                return None
            self._records.move_to_end(key)
            return current

    def purge(self, *, now_s: float) -> int:
        with self._lock:
            expired = [k for k, r in self._records.items() if r.is_expired(now_s)]
            for key in expired:
                del self._records[key]
            return len(expired)

    def _make_room(self, now_s: float) -> None:
        # Called with the lock held, before inserting a key that is not present.
        if len(self._records) < self.entries_max:
            return
        expired = [k for k, r in self._records.items() if r.is_expired(now_s)]
        for key in expired:
            del self._records[key]
        self.evictions += len(expired)
        if len(self._records) < self.entries_max:
            return
        # Oldest first: the first completed record is the least recently used one.
        for key, record in self._records.items():
            if record.state is RecordState.COMPLETED:
                del self._records[key]
                self.evictions += 1
                return
        raise Unavailable(
            f"idempotency store full: all {self.entries_max} records (entries_max) are in progress"
        )


def _held_by(record: IdempotencyRecord, owner: str, now_s: float) -> bool:
    # A lapsed lease still counts as held until somebody actually takes the key over.
    return (
        record.owner == owner
        and record.state is RecordState.IN_PROGRESS
        and not record.is_expired(now_s)
    )
