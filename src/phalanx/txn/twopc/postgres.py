"""PostgreSQL as a 2PC participant: ``PREPARE TRANSACTION`` through psycopg's two-phase API.

A branch is a connection in a two-phase transaction (``tpc_begin`` with the branch gid). The
user's statements run on :attr:`PostgresBranch.connection`; ``prepare`` is ``tpc_prepare``
(``PREPARE TRANSACTION``), after which the work is on disk, holds its row locks, and survives
a crash of the client and of the server until ``COMMIT PREPARED`` or ``ROLLBACK PREPARED``.

Recovery sees the branches in ``pg_prepared_xacts`` (those of this participant's database)
and finishes them from a fresh connection. ``COMMIT PREPARED`` of a gid the server does not
hold raises ``UndefinedObject``: phase 2 treats it as done, since only a commit the log holds
is ever committed and nobody else removes a prepared branch of Phalanx's.

Branch connections are reused: a connection whose branch finished cleanly goes back to a
small idle pool (``idle_connections_max``) instead of being closed, since opening one costs
more than the whole protocol.

The server needs ``max_prepared_transactions`` > 0 (the default is 0): at least the number of
branches that may be prepared at once on it.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import psycopg.errors

from phalanx.errors import invariant
from phalanx.txn.twopc.gid import check_name
from phalanx.txn.twopc.participants import PreparedBranch
from phalanx.txn.twopc.types import Decision

__all__ = ["PostgresBranch", "PostgresParticipant"]


class PostgresParticipant:
    """One PostgreSQL database (``conninfo``) as a participant named ``name``."""

    def __init__(
        self,
        name: str,
        conninfo: str,
        *,
        connect_timeout_s: int = 5,
        idle_connections_max: int = 8,
    ) -> None:
        self._name = check_name("participant", name)
        self.conninfo = conninfo
        self.connect_timeout_s = connect_timeout_s
        if idle_connections_max < 0:
            raise ValueError(f"idle_connections_max: must be >= 0, got {idle_connections_max}")
        self.idle_connections_max = idle_connections_max
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @property
    def name(self) -> str:
        return self._name

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.conninfo, connect_timeout=self.connect_timeout_s, autocommit=autocommit
        )

    def begin(self, branch_gid: str) -> PostgresBranch:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self.connect()
        try:
            conn.tpc_begin(branch_gid)
        except BaseException:
            conn.close()
            raise
        return PostgresBranch(self, conn, branch_gid)

    def prepared(self) -> list[PreparedBranch]:
        with self.connect(autocommit=True) as conn:
            rows = conn.execute(
                "SELECT gid, extract(epoch FROM prepared)::float8 FROM pg_prepared_xacts "
                "WHERE database = current_database() ORDER BY gid"
            ).fetchall()
        return [PreparedBranch(str(gid), float(at_s)) for gid, at_s in rows]

    def commit_prepared(self, branch_gid: str) -> None:
        self._finish(branch_gid, Decision.COMMIT)

    def rollback_prepared(self, branch_gid: str) -> None:
        self._finish(branch_gid, Decision.ABORT)

    def _release(self, conn: psycopg.Connection[Any]) -> None:
        usable = not conn.closed and not conn.broken
        if usable and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            with self._lock:
                if len(self._idle) < self.idle_connections_max:
                    self._idle.append(conn)
                    return
        conn.close()

    def _finish(self, branch_gid: str, decision: Decision) -> None:
        with self.connect(autocommit=True) as conn:
            try:
                if decision is Decision.COMMIT:
                    conn.tpc_commit(branch_gid)
                else:
                    conn.tpc_rollback(branch_gid)
            except psycopg.errors.UndefinedObject:
                return  # unknown gid: finished before (see the module docstring)


class PostgresBranch:
    """One transaction's work on a :class:`PostgresParticipant`: run it on ``connection``."""

    def __init__(
        self, participant: PostgresParticipant, connection: psycopg.Connection[Any], gid: str
    ) -> None:
        self.participant = participant
        self.connection = connection
        self.gid = gid
        self._lock = threading.Lock()
        self._prepared = False
        self._finished = False

    def prepare(self) -> None:
        with self._lock:
            invariant(not self._finished, f"{self.gid}: prepare after finish")
            self.connection.tpc_prepare()
            self._prepared = True

    def finish(self, decision: Decision) -> None:
        with self._lock:
            if self._finished:
                return
            invariant(
                self._prepared or decision is Decision.ABORT, f"{self.gid}: commit unprepared"
            )
            conn = self.connection
            if not self._prepared:
                if not conn.closed:
                    conn.tpc_rollback()
                self._finished = True
                return
            if conn.closed or conn.broken:
                # The branch's own connection is gone: finish by gid from a new one.
                self.participant._finish(self.gid, decision)
            elif decision is Decision.COMMIT:
                conn.tpc_commit()
            else:
                conn.tpc_rollback()
            self._finished = True

    def close(self) -> None:
        # An unprepared branch dies with its connection; a prepared one stays on the server.
        # A finished branch's connection is clean and goes back to the idle pool.
        with self._lock:
            if self._finished:
                self.participant._release(self.connection)
            else:
                self.connection.close()
