"""The saga log: the :class:`SagaStore` Protocol, its rules, and the in-memory twin.

Rules every store keeps:

* ``create`` is idempotent by saga id: starting a saga that exists returns the existing one
  (a client retrying its start request does not start two).
* ``claim`` hands sagas that are active (running or compensating) and unowned, or whose
  owner's lease expired, to one worker, atomically: it sets the owner and the lease and bumps
  the **fencing token** (``fence``). Taking over an expired lease counts as a resume.
* ``save`` writes a record and its timeline events (one or more transitions at once) only
  if the record's ``fence`` is still the saga's current one; otherwise it raises
  :class:`LeaseLost` and writes nothing. A worker that stalled past its lease therefore
  cannot overwrite the progress of the worker that took the saga over. Each save renews
  the lease; a settled or dead-lettered saga is released.
* ``force`` is the operator's write (``phalanx saga retry/compensate``): it bumps the fence
  and clears the owner, so whoever held the saga loses it.

:class:`~phalanx.txn.saga.store_sqlite.SqliteSagaStore` is the durable default.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from phalanx.errors import Conflict, TooLarge
from phalanx.txn.saga.state import (
    EVENTS_PER_SAGA_MAX,
    PAYLOAD_BYTES_MAX,
    SagaEvent,
    SagaRecord,
    SagaStatus,
)

__all__ = [
    "CLAIM_BATCH_MAX",
    "LIST_MAX",
    "LeaseLost",
    "MemorySagaStore",
    "SagaStore",
    "check_size",
    "record_of_row",
]


#: Most sagas one claim hands out.
CLAIM_BATCH_MAX = 256
#: Most records one ``list`` returns.
LIST_MAX = 10_000


def record_of_row(row: Sequence[Any]) -> SagaRecord:
    """A saga log row (the columns in the order the SQL stores select them) as a record."""
    return SagaRecord(
        saga_id=row[0],
        name=row[1],
        status=SagaStatus(row[2]),
        step=int(row[3]),
        payload=msgspec.json.decode(row[4]),
        results=msgspec.json.decode(row[5]),
        executions=int(row[6]),
        resumes=int(row[7]),
        error=row[8],
        resume_status=SagaStatus(row[9]),
        created_at_s=float(row[10]),
        updated_at_s=float(row[11]),
        deadline_s=float(row[12]),
        owner=row[13],
        lease_until_s=float(row[14]),
        fence=int(row[15]),
    )


class LeaseLost(Conflict):
    """The worker's claim on a saga is stale: another worker or an operator took it."""


def check_size(record: SagaRecord) -> None:
    size = len(msgspec.json.encode(record.payload)) + len(msgspec.json.encode(record.results))
    if size > PAYLOAD_BYTES_MAX:
        raise TooLarge(f"saga {record.saga_id}: payload and results {size} > {PAYLOAD_BYTES_MAX}")


@runtime_checkable
class SagaStore(Protocol):
    """Durable saga records and timelines (see the module docstring)."""

    def create(self, record: SagaRecord, event: SagaEvent) -> SagaRecord: ...

    def claim(
        self, worker: str, *, now_s: float, lease_s: float, limit: int
    ) -> list[SagaRecord]: ...

    def save(
        self, record: SagaRecord, events: Sequence[SagaEvent], *, now_s: float, lease_s: float
    ) -> None: ...

    def get(self, saga_id: str) -> SagaRecord | None: ...

    def force(self, record: SagaRecord, event: SagaEvent) -> SagaRecord: ...


class MemorySagaStore:
    """The in-memory twin of :class:`SagaStore`, plus ``find`` and ``events``. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, SagaRecord] = {}
        self._events: dict[str, list[SagaEvent]] = {}

    def create(self, record: SagaRecord, event: SagaEvent) -> SagaRecord:
        check_size(record)
        with self._lock:
            existing = self._records.get(record.saga_id)
            if existing is not None:
                return existing
            self._records[record.saga_id] = record
            self._events[record.saga_id] = [event]
            return record

    def claim(self, worker: str, *, now_s: float, lease_s: float, limit: int) -> list[SagaRecord]:
        with self._lock:
            free = sorted(
                (
                    r
                    for r in self._records.values()
                    if r.status.active and (r.owner is None or r.lease_until_s <= now_s)
                ),
                key=lambda r: (r.updated_at_s, r.saga_id),
            )[: min(limit, CLAIM_BATCH_MAX)]
            claimed = []
            for r in free:
                taken = r.evolve(
                    owner=worker,
                    lease_until_s=now_s + lease_s,
                    fence=r.fence + 1,
                    resumes=r.resumes + (r.owner is not None),
                )
                self._records[r.saga_id] = taken
                claimed.append(taken)
            return claimed

    def save(
        self, record: SagaRecord, events: Sequence[SagaEvent], *, now_s: float, lease_s: float
    ) -> None:
        check_size(record)
        with self._lock:
            current = self._records.get(record.saga_id)
            if current is None or current.fence != record.fence:
                raise LeaseLost(f"saga {record.saga_id}: fence {record.fence} is stale")
            held = record.status.active
            self._records[record.saga_id] = record.evolve(
                owner=current.owner if held else None,
                lease_until_s=now_s + lease_s if held else 0.0,
            )
            for event in events:
                self._append(record.saga_id, event)

    def get(self, saga_id: str) -> SagaRecord | None:
        with self._lock:
            return self._records.get(saga_id)

    def force(self, record: SagaRecord, event: SagaEvent) -> SagaRecord:
        with self._lock:
            current = self._records[record.saga_id]
            forced = record.evolve(owner=None, lease_until_s=0.0, fence=current.fence + 1)
            self._records[record.saga_id] = forced
            self._append(record.saga_id, event)
            return forced

    def find(self, *, status: SagaStatus | None = None, limit: int = 100) -> list[SagaRecord]:
        with self._lock:
            found = [r for r in self._records.values() if status is None or r.status is status]
        found.sort(key=lambda r: (r.created_at_s, r.saga_id))
        return found[: min(limit, LIST_MAX)]

    def events(self, saga_id: str) -> list[SagaEvent]:
        with self._lock:
            return list(self._events.get(saga_id, []))

    def _append(self, saga_id: str, event: SagaEvent) -> None:
        timeline = self._events.setdefault(saga_id, [])
        timeline.append(event)
        del timeline[:-EVENTS_PER_SAGA_MAX]
