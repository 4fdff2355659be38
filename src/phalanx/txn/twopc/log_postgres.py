"""The decision log in PostgreSQL: for coordinators that already run next to a PostgreSQL.

The same rules as :mod:`.log` in two tables, ``phalanx_2pc_decisions`` and
``phalanx_2pc_incarnations``: ``decide`` is ``INSERT ... ON CONFLICT DO NOTHING`` followed
by a read of the row in one transaction, so the first decision wins for every client of the
database. A decision is as durable as the server makes a commit (``synchronous_commit``;
with streaming replication and synchronous standbys, durable on more than one machine,
which shrinks the blocking window of a lost log).
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import psycopg

from phalanx.txn.twopc.gid import Gid, check_name
from phalanx.txn.twopc.log import DecisionRecord, commit_records
from phalanx.txn.twopc.types import Decision

__all__ = ["PostgresDecisionLog"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS phalanx_2pc_decisions (
    coordinator text NOT NULL,
    incarnation bigint NOT NULL,
    sequence bigint NOT NULL,
    decision text NOT NULL CHECK (decision IN ('commit', 'abort')),
    participants text NOT NULL,
    decided_at_s double precision NOT NULL,
    PRIMARY KEY (coordinator, incarnation, sequence)
);
CREATE TABLE IF NOT EXISTS phalanx_2pc_incarnations (
    coordinator text PRIMARY KEY,
    incarnation bigint NOT NULL
);
"""
_KEY = "coordinator = %s AND incarnation = %s AND sequence = %s"


class PostgresDecisionLog:
    """A :class:`~phalanx.txn.twopc.log.DecisionLog` in the database at ``conninfo``."""

    def __init__(self, conninfo: str, *, connect_timeout_s: int = 5) -> None:
        self._conn: psycopg.Connection[Any] = psycopg.connect(
            conninfo, autocommit=True, connect_timeout=connect_timeout_s
        )
        self._lock = threading.Lock()
        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(7302)")
                self._conn.execute(_SCHEMA)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PostgresDecisionLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def new_incarnation(self, coordinator: str) -> int:
        check_name("coordinator", coordinator)
        with self._lock, self._conn.transaction():
            row = self._conn.execute(
                "INSERT INTO phalanx_2pc_incarnations VALUES (%s, 1) ON CONFLICT (coordinator) "
                "DO UPDATE SET incarnation = phalanx_2pc_incarnations.incarnation + 1 "
                "RETURNING incarnation",
                (coordinator,),
            ).fetchone()
        assert row is not None  # noqa: S101 - RETURNING always returns the row
        return int(row[0])

    def decide(
        self, gid: Gid, decision: Decision, participants: tuple[str, ...], *, now_s: float
    ) -> Decision:
        key = (gid.coordinator, gid.incarnation, gid.sequence)
        with self._lock, self._conn.transaction():
            self._conn.execute(
                "INSERT INTO phalanx_2pc_decisions VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (*key, decision.value, ",".join(participants), now_s),
            )
            row = self._conn.execute(
                f"SELECT decision FROM phalanx_2pc_decisions WHERE {_KEY}",  # noqa: S608
                key,
            ).fetchone()
        assert row is not None  # noqa: S101 - inserted or present
        return Decision(row[0])

    def outcome(self, gid: Gid) -> Decision | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT decision FROM phalanx_2pc_decisions WHERE {_KEY}",  # noqa: S608
                (gid.coordinator, gid.incarnation, gid.sequence),
            ).fetchone()
        return None if row is None else Decision(row[0])

    def end(self, gid: Gid) -> None:
        with self._lock:
            self._conn.execute(
                f"DELETE FROM phalanx_2pc_decisions WHERE {_KEY} AND decision = 'commit'",  # noqa: S608
                (gid.coordinator, gid.incarnation, gid.sequence),
            )

    def unfinished(self, coordinator: str) -> list[DecisionRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT incarnation, sequence, participants, decided_at_s "
                "FROM phalanx_2pc_decisions WHERE coordinator = %s AND decision = 'commit' "
                "ORDER BY incarnation, sequence",
                (coordinator,),
            ).fetchall()
        return commit_records(coordinator, rows)

    def prune(self, *, before_s: float) -> int:
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM phalanx_2pc_decisions WHERE decision = 'abort' AND decided_at_s < %s",
                (before_s,),
            )
        return cursor.rowcount
