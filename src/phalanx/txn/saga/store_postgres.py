"""The saga log in PostgreSQL: for workers on many machines.

:class:`PostgresSagaStore` keeps the same rules as the SQLite store (see :mod:`.store`) in
two tables, ``phalanx_sagas`` and ``phalanx_saga_events``. ``claim`` selects with
``FOR UPDATE SKIP LOCKED``, so concurrent workers take disjoint batches without waiting on
each other; ``save`` is ``UPDATE ... WHERE fence = %s`` in the same transaction as the
timeline insert, and raises :class:`~.store.LeaseLost` when no row matched.

One connection per store object, used behind a lock; give each worker thread its own store
for parallelism. The connection is in autocommit mode and every operation is one explicit
transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import msgspec
import psycopg

from phalanx.errors import invariant
from phalanx.txn.saga.state import EVENTS_PER_SAGA_MAX, SagaEvent, SagaRecord, SagaStatus
from phalanx.txn.saga.store import CLAIM_BATCH_MAX, LIST_MAX, LeaseLost, check_size, record_of_row

__all__ = ["PostgresSagaStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS phalanx_sagas (
    saga_id text PRIMARY KEY,
    name text NOT NULL,
    status text NOT NULL,
    step integer NOT NULL,
    payload text NOT NULL,
    results text NOT NULL,
    executions integer NOT NULL,
    resumes integer NOT NULL,
    error text NOT NULL,
    resume_status text NOT NULL,
    created_at_s double precision NOT NULL,
    updated_at_s double precision NOT NULL,
    deadline_s double precision NOT NULL,
    owner text,
    lease_until_s double precision NOT NULL,
    fence bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS phalanx_sagas_claimable ON phalanx_sagas (status, updated_at_s);
CREATE TABLE IF NOT EXISTS phalanx_saga_events (
    saga_id text NOT NULL,
    seq integer NOT NULL,
    at_s double precision NOT NULL,
    kind text NOT NULL,
    step text NOT NULL,
    detail text NOT NULL,
    PRIMARY KEY (saga_id, seq)
);
"""
_COLUMNS = (
    "saga_id, name, status, step, payload, results, executions, resumes, error, "
    "resume_status, created_at_s, updated_at_s, deadline_s, owner, lease_until_s, fence"
)
# Built from constants only, never from input.
_SELECT = f"SELECT {_COLUMNS} FROM phalanx_sagas"  # noqa: S608
_CLAIM = (
    "UPDATE phalanx_sagas SET resumes = resumes + (owner IS NOT NULL)::int, "  # noqa: S608
    "owner = %s, lease_until_s = %s, fence = fence + 1 WHERE saga_id IN ("
    "SELECT saga_id FROM phalanx_sagas WHERE status IN ('running', 'compensating') "
    "AND (owner IS NULL OR lease_until_s <= %s) "
    "ORDER BY updated_at_s, saga_id LIMIT %s FOR UPDATE SKIP LOCKED) "
    f"RETURNING {_COLUMNS}"
)
_INSERT = f"INSERT INTO phalanx_sagas ({_COLUMNS}) VALUES ({', '.join(['%s'] * 16)})"  # noqa: S608


def _row(record: SagaRecord) -> tuple[Any, ...]:
    return (
        record.saga_id,
        record.name,
        record.status.value,
        record.step,
        msgspec.json.encode(record.payload).decode(),
        msgspec.json.encode(record.results).decode(),
        record.executions,
        record.resumes,
        record.error,
        record.resume_status.value,
        record.created_at_s,
        record.updated_at_s,
        record.deadline_s,
        record.owner,
        record.lease_until_s,
        record.fence,
    )


class PostgresSagaStore:
    """A :class:`~phalanx.txn.saga.store.SagaStore` in the database at ``conninfo``."""

    def __init__(self, conninfo: str, *, connect_timeout_s: int = 5) -> None:
        self._conn: psycopg.Connection[Any] = psycopg.connect(
            conninfo, autocommit=True, connect_timeout=connect_timeout_s
        )
        self._lock = threading.Lock()
        try:
            with self._conn.transaction():
                # Two stores creating the schema at once would race on the catalog.
                self._conn.execute("SELECT pg_advisory_xact_lock(7301)")
                self._conn.execute(_SCHEMA)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PostgresSagaStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def create(self, record: SagaRecord, event: SagaEvent) -> SagaRecord:
        check_size(record)
        with self._lock, self._conn.transaction():
            cursor = self._conn.execute(_INSERT + " ON CONFLICT (saga_id) DO NOTHING", _row(record))
            if cursor.rowcount == 1:
                self._append(record.saga_id, event)
                return record
            existing = self._get(record.saga_id)
        invariant(existing is not None, f"saga {record.saga_id}: conflict but no row")
        assert existing is not None  # noqa: S101 - narrows for mypy only
        return existing

    def claim(self, worker: str, *, now_s: float, lease_s: float, limit: int) -> list[SagaRecord]:
        with self._lock, self._conn.transaction():
            rows = self._conn.execute(
                _CLAIM,
                (worker, now_s + lease_s, now_s, min(limit, CLAIM_BATCH_MAX)),
            ).fetchall()
        return sorted((record_of_row(r) for r in rows), key=lambda r: (r.updated_at_s, r.saga_id))

    def save(
        self, record: SagaRecord, events: Sequence[SagaEvent], *, now_s: float, lease_s: float
    ) -> None:
        check_size(record)
        held = record.status.active
        row = _row(record)
        with self._lock, self._conn.transaction():
            cursor = self._conn.execute(
                "UPDATE phalanx_sagas SET status = %s, step = %s, payload = %s, results = %s, "
                "executions = %s, resumes = %s, error = %s, resume_status = %s, "
                "updated_at_s = %s, deadline_s = %s, "
                "owner = CASE WHEN %s THEN owner END, lease_until_s = %s "
                "WHERE saga_id = %s AND fence = %s",
                (
                    *row[2:10],
                    record.updated_at_s,
                    record.deadline_s,
                    held,
                    now_s + lease_s if held else 0.0,
                    record.saga_id,
                    record.fence,
                ),
            )
            if cursor.rowcount == 1:
                for event in events:
                    self._append(record.saga_id, event)
        if cursor.rowcount != 1:
            raise LeaseLost(f"saga {record.saga_id}: fence {record.fence} is stale")

    def get(self, saga_id: str) -> SagaRecord | None:
        with self._lock:
            return self._get(saga_id)

    def force(self, record: SagaRecord, event: SagaEvent) -> SagaRecord:
        with self._lock, self._conn.transaction():
            row = self._conn.execute(
                "SELECT fence FROM phalanx_sagas WHERE saga_id = %s FOR UPDATE", (record.saga_id,)
            ).fetchone()
            invariant(row is not None, f"saga {record.saga_id}: forced but missing")
            assert row is not None  # noqa: S101 - narrows for mypy only
            forced = record.evolve(owner=None, lease_until_s=0.0, fence=int(row[0]) + 1)
            self._conn.execute("DELETE FROM phalanx_sagas WHERE saga_id = %s", (record.saga_id,))
            self._conn.execute(_INSERT, _row(forced))
            self._append(record.saga_id, event)
        return forced

    def find(self, *, status: SagaStatus | None = None, limit: int = 100) -> list[SagaRecord]:
        where, params = ("WHERE status = %s", (status.value,)) if status else ("", ())
        with self._lock:
            rows = self._conn.execute(
                f"{_SELECT} {where} ORDER BY created_at_s, saga_id LIMIT %s",
                (*params, min(limit, LIST_MAX)),
            ).fetchall()
        return [record_of_row(row) for row in rows]

    def events(self, saga_id: str) -> list[SagaEvent]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT at_s, kind, step, detail FROM phalanx_saga_events "
                "WHERE saga_id = %s ORDER BY seq",
                (saga_id,),
            ).fetchall()
        return [SagaEvent(float(at), kind, step, detail) for at, kind, step, detail in rows]

    def _get(self, saga_id: str) -> SagaRecord | None:
        row = self._conn.execute(f"{_SELECT} WHERE saga_id = %s", (saga_id,)).fetchone()
        return None if row is None else record_of_row(row)

    def _append(self, saga_id: str, event: SagaEvent) -> None:
        row = self._conn.execute(
            "INSERT INTO phalanx_saga_events "
            "SELECT %s, coalesce(max(seq), 0) + 1, %s, %s, %s, %s FROM phalanx_saga_events "
            "WHERE saga_id = %s RETURNING seq",
            (saga_id, event.at_s, event.kind, event.step, event.detail, saga_id),
        ).fetchone()
        assert row is not None  # noqa: S101 - INSERT ... RETURNING always returns the row
        if int(row[0]) > EVENTS_PER_SAGA_MAX:  # trim only once there is something to trim
            self._conn.execute(
                "DELETE FROM phalanx_saga_events WHERE saga_id = %s AND seq <= %s",
                (saga_id, int(row[0]) - EVENTS_PER_SAGA_MAX),
            )
