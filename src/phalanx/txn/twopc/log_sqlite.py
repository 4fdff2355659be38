"""The decision log in a SQLite file: the zero-setup default.

:class:`SqliteDecisionLog` keeps one row per decided transaction and one per coordinator's
run counter. ``decide`` runs ``INSERT ... ON CONFLICT DO NOTHING`` then reads the row back
inside one ``BEGIN IMMEDIATE`` transaction, so coordinators and participants in other
processes that share the file serialize on SQLite's write lock and agree on the first
decision. ``synchronous=FULL`` by default: a decision survives a power cut once ``decide``
returns, which is the promise phase 2 relies on. Ending a transaction is written without an
fsync (see :meth:`SqliteDecisionLog.end`).

The file is a single point of failure of the coordinators that use it: while it is lost or
unreachable, in-doubt participants wait (see ``docs/txn.md``, "The blocking window"). Put the
log on a replicated store to remove that.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

from phalanx.resilience.sqlite_db import open_database
from phalanx.txn.twopc.gid import Gid, check_name
from phalanx.txn.twopc.log import DecisionRecord, commit_records
from phalanx.txn.twopc.types import Decision

__all__ = ["SqliteDecisionLog"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS twopc_decisions (
    coordinator TEXT NOT NULL,
    incarnation INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('commit', 'abort')),
    participants TEXT NOT NULL,
    decided_at_s REAL NOT NULL,
    PRIMARY KEY (coordinator, incarnation, sequence)
);
CREATE TABLE IF NOT EXISTS twopc_incarnations (
    coordinator TEXT PRIMARY KEY,
    incarnation INTEGER NOT NULL
);
"""


class SqliteDecisionLog:
    """A :class:`~phalanx.txn.twopc.log.DecisionLog` in the SQLite file at ``path``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 10.0,
        synchronous: str = "FULL",
    ) -> None:
        self.path = os.fspath(path)
        self.synchronous = synchronous.upper()
        self._conn = open_database(
            self.path,
            what="decision log",
            schema=_SCHEMA,
            busy_timeout_s=busy_timeout_s,
            synchronous=synchronous,
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteDecisionLog:
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
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "INSERT INTO twopc_incarnations VALUES (?, 1) ON CONFLICT (coordinator) "
                    "DO UPDATE SET incarnation = incarnation + 1 RETURNING incarnation",
                    (coordinator,),
                ).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return int(row[0])

    def decide(
        self, gid: Gid, decision: Decision, participants: tuple[str, ...], *, now_s: float
    ) -> Decision:
        key = (gid.coordinator, gid.incarnation, gid.sequence)
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO twopc_decisions VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (*key, decision.value, ",".join(participants), now_s),
                )
                row = conn.execute(
                    "SELECT decision FROM twopc_decisions "
                    "WHERE coordinator = ? AND incarnation = ? AND sequence = ?",
                    key,
                ).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return Decision(row[0])

    def outcome(self, gid: Gid) -> Decision | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT decision FROM twopc_decisions "
                "WHERE coordinator = ? AND incarnation = ? AND sequence = ?",
                (gid.coordinator, gid.incarnation, gid.sequence),
            ).fetchone()
        return None if row is None else Decision(row[0])

    def end(self, gid: Gid) -> None:
        # An end record lost in a power cut only makes recovery commit the branches again
        # (an unknown gid is done) and end the transaction again, so it needs no fsync: the
        # delete is written with synchronous=NORMAL, halving the fsyncs per transaction.
        with self._lock:
            conn = self._conn
            relaxed = self.synchronous in ("FULL", "EXTRA")
            if relaxed:
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                conn.execute(
                    "DELETE FROM twopc_decisions WHERE coordinator = ? AND incarnation = ? "
                    "AND sequence = ? AND decision = 'commit'",
                    (gid.coordinator, gid.incarnation, gid.sequence),
                )
            finally:
                if relaxed:
                    conn.execute(f"PRAGMA synchronous={self.synchronous}")

    def unfinished(self, coordinator: str) -> list[DecisionRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT incarnation, sequence, participants, decided_at_s FROM twopc_decisions "
                "WHERE coordinator = ? AND decision = 'commit' ORDER BY incarnation, sequence",
                (coordinator,),
            ).fetchall()
        return commit_records(coordinator, rows)

    def prune(self, *, before_s: float) -> int:
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM twopc_decisions WHERE decision = 'abort' AND decided_at_s < ?",
                (before_s,),
            )
            return cursor.rowcount
