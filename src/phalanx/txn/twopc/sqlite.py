"""SQLite as a 2PC participant, and exactly what it can and cannot promise.

SQLite has no ``PREPARE TRANSACTION``, so :class:`SqliteParticipant` builds one:

* A branch opens its own connection and ``BEGIN IMMEDIATE`` at once: it holds the database's
  single write lock from the first statement to the outcome. Statements go through
  :meth:`SqliteBranch.execute`, which runs them and also records them (SQL and parameters).
* ``prepare`` writes that record (the redo list) to a side file, ``<database>-2pc``, in a
  committed transaction with ``synchronous=FULL``, while the work stays uncommitted in the
  database under the write lock. That is the yes vote.
* Commit adds a row for the gid to ``twopc_applied`` in the database, inside the same
  transaction as the work, commits it, then deletes the redo record. Rollback discards the
  work and the redo record.
* Recovery (the branch's process died): the work was rolled back by SQLite, but the redo
  record survived. ``commit_prepared`` replays the recorded statements in one transaction
  together with the ``twopc_applied`` row, unless that row shows it was applied already;
  ``rollback_prepared`` deletes the redo record.

What it guarantees:

* Atomicity and durability of a prepared branch across crashes of the process, of the
  machine (with ``synchronous=FULL`` on both files), as long as the replay succeeds.
* Exactly-once application: the ``twopc_applied`` row commits with the work.
* While the branch's process lives, no other writer can change the database between prepare
  and commit (the write lock is held), so the commit cannot fail.

What it does not:

* After a crash of the branch's process the write lock is gone. Until recovery replays the
  branch, other writers may change the rows it touched, and the replay may then produce a
  different result or fail (a constraint). A failed replay stays prepared and recovery
  reports it on every pass: it needs a person. Statements must be deterministic (no
  ``random()``, no ``CURRENT_TIMESTAMP``: pass such values as parameters).
* Reads are not protected after a crash: a branch that read a value and wrote based on it
  replays the write without re-reading (no serializability across a crash).
* One writer at a time: a branch holds the whole database from begin to outcome, so
  concurrent transactions on one SQLite participant run one after another.
* Parameters must be ``None``, ``int``, ``float``, ``str`` or ``bytes``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import TooLarge, invariant
from phalanx.resilience.sqlite_db import open_database
from phalanx.txn.twopc.gid import check_name
from phalanx.txn.twopc.participants import PreparedBranch
from phalanx.txn.twopc.types import Decision

__all__ = ["SqliteBranch", "SqliteParticipant"]

#: Largest encoded redo list of one branch.
REDO_BYTES_MAX: Final = 16 * 1024 * 1024
#: Most statements one branch may record.
STATEMENTS_MAX: Final = 100_000

_SIDE_SCHEMA = """
CREATE TABLE IF NOT EXISTS twopc_prepared (
    gid TEXT PRIMARY KEY,
    redo BLOB NOT NULL,
    prepared_at_s REAL NOT NULL
);
"""
_MAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS twopc_applied (
    gid TEXT PRIMARY KEY,
    applied_at_s REAL NOT NULL
);
"""

Param = None | int | float | str | bytes
_Statement = tuple[str, tuple[Param, ...]]


class SqliteParticipant:
    """The SQLite database at ``path`` as a participant named ``name``."""

    def __init__(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 10.0,
        synchronous: str = "FULL",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._name = check_name("participant", name)
        self.path = os.fspath(path)
        self.side_path = f"{self.path}-2pc"
        self.busy_timeout_s = busy_timeout_s
        self.synchronous = synchronous
        self._clock = clock
        self._lock = threading.Lock()
        self._side = open_database(
            self.side_path,
            what="2pc redo file",
            schema=_SIDE_SCHEMA,
            busy_timeout_s=busy_timeout_s,
            synchronous=synchronous,
        )
        self._main = self.connect()

    @property
    def name(self) -> str:
        return self._name

    def connect(self) -> sqlite3.Connection:
        """A connection to the database (WAL, autocommit, the ``twopc_applied`` table)."""
        return open_database(
            self.path,
            what="2pc participant",
            schema=_MAIN_SCHEMA,
            busy_timeout_s=self.busy_timeout_s,
            synchronous=self.synchronous,
        )

    def close(self) -> None:
        with self._lock:
            self._side.close()
            self._main.close()

    def begin(self, branch_gid: str) -> SqliteBranch:
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            conn.close()
            raise
        return SqliteBranch(self, conn, branch_gid)

    def prepared(self) -> list[PreparedBranch]:
        with self._lock:
            rows = self._side.execute(
                "SELECT gid, prepared_at_s FROM twopc_prepared ORDER BY gid"
            ).fetchall()
        return [PreparedBranch(str(gid), float(at_s)) for gid, at_s in rows]

    def commit_prepared(self, branch_gid: str) -> None:
        with self._lock:
            row = self._side.execute(
                "SELECT redo FROM twopc_prepared WHERE gid = ?", (branch_gid,)
            ).fetchone()
            if row is None:
                return  # unknown: committed (and cleaned up) before
            conn = self._main
            conn.execute("BEGIN IMMEDIATE")
            try:
                applied = conn.execute(
                    "SELECT 1 FROM twopc_applied WHERE gid = ?", (branch_gid,)
                ).fetchone()
                if applied is None:
                    for sql, params in _decode(bytes(row[0])):
                        conn.execute(sql, params)
                    conn.execute(
                        "INSERT INTO twopc_applied VALUES (?, ?)",
                        (branch_gid, self._clock.wall_s()),
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._forget(branch_gid)

    def rollback_prepared(self, branch_gid: str) -> None:
        with self._lock:
            applied = self._main.execute(
                "SELECT 1 FROM twopc_applied WHERE gid = ?", (branch_gid,)
            ).fetchone()
            invariant(applied is None, f"{branch_gid}: rollback of a committed branch")
            self._side.execute("DELETE FROM twopc_prepared WHERE gid = ?", (branch_gid,))

    def _record(self, branch_gid: str, redo: bytes) -> None:
        with self._lock:
            self._side.execute(
                "INSERT INTO twopc_prepared VALUES (?, ?, ?)",
                (branch_gid, redo, self._clock.wall_s()),
            )

    def _forget(self, branch_gid: str) -> None:
        # The redo record first: a crash between the two leaves a harmless applied row.
        self._side.execute("DELETE FROM twopc_prepared WHERE gid = ?", (branch_gid,))
        self._main.execute("DELETE FROM twopc_applied WHERE gid = ?", (branch_gid,))

    def _forget_locked(self, branch_gid: str) -> None:
        with self._lock:
            self._forget(branch_gid)

    def _discard(self, branch_gid: str) -> None:
        with self._lock:
            self._side.execute("DELETE FROM twopc_prepared WHERE gid = ?", (branch_gid,))


class SqliteBranch:
    """One transaction's work on a :class:`SqliteParticipant` (see the module docstring)."""

    def __init__(self, participant: SqliteParticipant, conn: sqlite3.Connection, gid: str) -> None:
        self.participant = participant
        self.gid = gid
        self._conn = conn
        self._statements: list[_Statement] = []
        self._prepared = False
        self._finished = False

    def execute(self, sql: str, params: Sequence[Param] = ()) -> sqlite3.Cursor:
        """Run a writing statement and record it for replay."""
        invariant(not self._prepared and not self._finished, f"{self.gid}: write after prepare")
        if len(self._statements) >= STATEMENTS_MAX:
            raise TooLarge(f"{self.gid}: more than {STATEMENTS_MAX} statements")
        values = tuple(params)
        for value in values:
            if not isinstance(value, (type(None), int, float, str, bytes)):
                raise TypeError(f"parameter {value!r}: only None, int, float, str, bytes")
        cursor = self._conn.execute(sql, values)
        self._statements.append((sql, values))
        return cursor

    def query(self, sql: str, params: Sequence[Param] = ()) -> list[Any]:
        """Run a reading statement (not recorded) and return its rows."""
        return self._conn.execute(sql, tuple(params)).fetchall()

    def prepare(self) -> None:
        invariant(not self._finished, f"{self.gid}: prepare after finish")
        redo = msgspec.msgpack.encode(self._statements)
        if len(redo) > REDO_BYTES_MAX:
            raise TooLarge(f"{self.gid}: redo list of {len(redo)} bytes > {REDO_BYTES_MAX}")
        self.participant._record(self.gid, redo)
        self._prepared = True

    def finish(self, decision: Decision) -> None:
        if self._finished:
            return
        invariant(self._prepared or decision is Decision.ABORT, f"{self.gid}: commit unprepared")
        conn = self._conn
        if decision is Decision.COMMIT:
            conn.execute(
                "INSERT INTO twopc_applied VALUES (?, ?)",
                (self.gid, self.participant._clock.wall_s()),
            )
            conn.execute("COMMIT")
            self._finished = True
            self.participant._forget_locked(self.gid)
            return
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        self._finished = True
        if self._prepared:
            self.participant._discard(self.gid)

    def close(self) -> None:
        # Closing with the transaction open rolls it back; a prepared record stays.
        self._conn.close()


def _decode(redo: bytes) -> list[_Statement]:
    # Untyped decoding: msgpack keeps str and bytes apart, which a typed union cannot.
    raw = msgspec.msgpack.decode(redo)
    statements: list[_Statement] = []
    for sql, params in raw:
        invariant(isinstance(sql, str) and isinstance(params, list), "2pc redo: bad record")
        statements.append((sql, tuple(params)))
    return statements
