"""The saga log in a SQLite file: the zero-setup default, shared by local worker processes.

One row per saga in ``sagas`` and its timeline in ``saga_events``. ``claim`` and ``save`` run
in ``BEGIN IMMEDIATE`` transactions, so workers in several processes serialize on SQLite's
write lock: one claim wins each saga, and a save whose fencing token is stale changes
nothing (``UPDATE ... WHERE fence = ?`` matches no row) and raises
:class:`~phalanx.txn.saga.store.LeaseLost`. ``synchronous=FULL`` by default: a transition
that ``save`` returned is on disk before the step after it runs.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import msgspec

from phalanx.errors import invariant
from phalanx.resilience.sqlite_db import open_database
from phalanx.txn.saga.state import EVENTS_PER_SAGA_MAX, SagaEvent, SagaRecord, SagaStatus
from phalanx.txn.saga.store import CLAIM_BATCH_MAX, LIST_MAX, LeaseLost, check_size, record_of_row

__all__ = ["SqliteSagaStore"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sagas (
    saga_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    step INTEGER NOT NULL,
    payload BLOB NOT NULL,
    results BLOB NOT NULL,
    executions INTEGER NOT NULL,
    resumes INTEGER NOT NULL,
    error TEXT NOT NULL,
    resume_status TEXT NOT NULL,
    created_at_s REAL NOT NULL,
    updated_at_s REAL NOT NULL,
    deadline_s REAL NOT NULL,
    owner TEXT,
    lease_until_s REAL NOT NULL,
    fence INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sagas_claimable ON sagas (status, updated_at_s);
CREATE TABLE IF NOT EXISTS saga_events (
    saga_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_s REAL NOT NULL,
    kind TEXT NOT NULL,
    step TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (saga_id, seq)
);
"""
_COLUMN_NAMES = (
    "saga_id, name, status, step, payload, results, executions, resumes, error, "
    "resume_status, created_at_s, updated_at_s, deadline_s, owner, lease_until_s, fence"
)
_COLUMNS = _COLUMN_NAMES
# Built from constants only, never from input.
_INSERT = f"INSERT INTO sagas ({_COLUMN_NAMES}) VALUES ({', '.join('?' * 16)})"  # noqa: S608


def _row(record: SagaRecord) -> tuple[Any, ...]:
    return (
        record.saga_id,
        record.name,
        record.status.value,
        record.step,
        msgspec.json.encode(record.payload),
        msgspec.json.encode(record.results),
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


class SqliteSagaStore:
    """A :class:`~phalanx.txn.saga.store.SagaStore` in the SQLite file at ``path``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 10.0,
        synchronous: str = "FULL",
    ) -> None:
        self.path = os.fspath(path)
        self._conn = open_database(
            self.path,
            what="saga log",
            schema=_SCHEMA,
            busy_timeout_s=busy_timeout_s,
            synchronous=synchronous,
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteSagaStore:
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
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                existing = self._get(record.saga_id)
                if existing is None:
                    conn.execute(_INSERT, _row(record))
                    self._append(record.saga_id, event)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return existing or record

    def claim(self, worker: str, *, now_s: float, lease_s: float, limit: int) -> list[SagaRecord]:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [
                    row[0]
                    for row in conn.execute(
                        "SELECT saga_id FROM sagas WHERE status IN ('running', 'compensating') "
                        "AND (owner IS NULL OR lease_until_s <= ?) "
                        "ORDER BY updated_at_s, saga_id LIMIT ?",
                        (now_s, min(limit, CLAIM_BATCH_MAX)),
                    )
                ]
                for saga_id in ids:
                    conn.execute(
                        "UPDATE sagas SET resumes = resumes + (owner IS NOT NULL), owner = ?, "
                        "lease_until_s = ?, fence = fence + 1 WHERE saga_id = ?",
                        (worker, now_s + lease_s, saga_id),
                    )
                claimed = [self._get(saga_id) for saga_id in ids]
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        return [r for r in claimed if r is not None]

    def save(
        self, record: SagaRecord, events: Sequence[SagaEvent], *, now_s: float, lease_s: float
    ) -> None:
        check_size(record)
        held = record.status.active
        row = _row(record)
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "UPDATE sagas SET status = ?, step = ?, payload = ?, results = ?, "
                    "executions = ?, resumes = ?, error = ?, resume_status = ?, "
                    "updated_at_s = ?, deadline_s = ?, "
                    "owner = CASE WHEN ? THEN owner END, lease_until_s = ? "
                    "WHERE saga_id = ? AND fence = ?",
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
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        if cursor.rowcount != 1:
            raise LeaseLost(f"saga {record.saga_id}: fence {record.fence} is stale")

    def get(self, saga_id: str) -> SagaRecord | None:
        with self._lock:
            return self._get(saga_id)

    def force(self, record: SagaRecord, event: SagaEvent) -> SagaRecord:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = self._get(record.saga_id)
                invariant(current is not None, f"saga {record.saga_id}: forced but missing")
                assert current is not None  # noqa: S101 - narrows for mypy only
                forced = record.evolve(owner=None, lease_until_s=0.0, fence=current.fence + 1)
                conn.execute("DELETE FROM sagas WHERE saga_id = ?", (record.saga_id,))
                conn.execute(_INSERT, _row(forced))
                self._append(record.saga_id, event)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return forced

    def find(self, *, status: SagaStatus | None = None, limit: int = 100) -> list[SagaRecord]:
        where, params = ("WHERE status = ?", (status.value,)) if status else ("", ())
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM sagas {where} ORDER BY created_at_s, saga_id LIMIT ?",  # noqa: S608 - fixed fragments only
                (*params, min(limit, LIST_MAX)),
            ).fetchall()
        return [record_of_row(row) for row in rows]

    def events(self, saga_id: str) -> list[SagaEvent]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT at_s, kind, step, detail FROM saga_events WHERE saga_id = ? ORDER BY seq",
                (saga_id,),
            ).fetchall()
        return [SagaEvent(float(at), kind, step, detail) for at, kind, step, detail in rows]

    def _get(self, saga_id: str) -> SagaRecord | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM sagas WHERE saga_id = ?",  # noqa: S608 - fixed columns
            (saga_id,),
        ).fetchone()
        return None if row is None else record_of_row(row)

    def _append(self, saga_id: str, event: SagaEvent) -> None:
        conn = self._conn
        row = conn.execute(
            "SELECT coalesce(max(seq), 0) FROM saga_events WHERE saga_id = ?", (saga_id,)
        ).fetchone()
        seq = int(row[0]) + 1
        conn.execute(
            "INSERT INTO saga_events VALUES (?, ?, ?, ?, ?, ?)",
            (saga_id, seq, event.at_s, event.kind, event.step, event.detail),
        )
        if seq > EVENTS_PER_SAGA_MAX:  # trim only once there is something to trim
            conn.execute(
                "DELETE FROM saga_events WHERE saga_id = ? AND seq <= ?",
                (saga_id, seq - EVENTS_PER_SAGA_MAX),
            )


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
