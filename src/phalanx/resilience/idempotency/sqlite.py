"""The SQLite idempotency store: durable across restarts and shared by local processes.

This module owns :class:`SqliteIdempotencyStore`. One table holds a row per key; the file is
in WAL mode so readers never block the single writer, and every claim runs in a
``BEGIN IMMEDIATE`` transaction, so two processes claiming the same key serialize on SQLite's
write lock and exactly one wins. The claim itself is an ``INSERT ... ON CONFLICT DO UPDATE``,
the statement a PostgreSQL port would use as well.

Bounds: at most ``entries_max`` rows. Making room deletes expired rows first, then the
completed rows closest to expiry (the oldest). In-progress rows are never evicted; when every
row is in progress the claim fails with :class:`phalanx.errors.Unavailable`.
``busy_timeout_s`` bounds how long a call waits for another process's write lock.

Durability: ``synchronous=FULL`` by default, so a completed record survives a power cut; a
lost completion would let a duplicate run again.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

from phalanx.errors import Unavailable
from phalanx.resilience.config import parse_count, parse_duration_s
from phalanx.resilience.idempotency.store import Claim, IdempotencyRecord, RecordState
from phalanx.resilience.sqlite_db import SYNCHRONOUS_MODES, open_database

__all__ = ["SqliteIdempotencyStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('in_progress', 'completed')),
    owner TEXT NOT NULL,
    created_at_s REAL NOT NULL,
    expires_at_s REAL NOT NULL,
    lease_expires_at_s REAL NOT NULL,
    result BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at_s);
"""

_COLUMNS = "key, fingerprint, state, owner, created_at_s, expires_at_s, lease_expires_at_s, result"

# Unconditional upsert: the caller has already decided, inside the same write transaction,
# that the key is free (absent, expired, or a lapsed lease with the same fingerprint).
_UPSERT = """
INSERT INTO idempotency_keys
    (key, fingerprint, state, owner, created_at_s, expires_at_s, lease_expires_at_s, result)
VALUES (:key, :fingerprint, 'in_progress', :owner, :now_s, :expires_at_s, :lease_at_s, NULL)
ON CONFLICT (key) DO UPDATE SET
    fingerprint = excluded.fingerprint,
    state = 'in_progress',
    owner = excluded.owner,
    created_at_s = excluded.created_at_s,
    expires_at_s = excluded.expires_at_s,
    lease_expires_at_s = excluded.lease_expires_at_s,
    result = NULL
"""


class SqliteIdempotencyStore:
    """An :class:`~.store.IdempotencyStore` in a SQLite file (or ``":memory:"``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        entries_max: int = 1_000_000,
        busy_timeout_s: float | str = 5.0,
        synchronous: str = "FULL",
    ) -> None:
        self.entries_max = parse_count("entries_max", entries_max, minimum=1)
        self.busy_timeout_s = parse_duration_s("busy_timeout_s", busy_timeout_s, allow_zero=True)
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous: one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        self.path = os.fspath(path)
        self.evictions = 0
        self._lock = threading.Lock()
        self._conn = open_database(
            self.path,
            what="idempotency store",
            schema=_SCHEMA,
            busy_timeout_s=self.busy_timeout_s,
            synchronous=synchronous,
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteIdempotencyStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __len__(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM idempotency_keys").fetchone()
        return int(row[0])

    def claim(
        self, key: str, fingerprint: str, owner: str, *, now_s: float, lease_s: float, ttl_s: float
    ) -> Claim:
        with self._lock:
            conn = self._conn
            # IMMEDIATE takes the write lock up front: the read and the write below are one
            # atomic step, even against other processes.
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = self._select(key)
                took_over = False
                if current is not None and not current.is_expired(now_s):
                    if not (current.lease_expired(now_s) and current.fingerprint == fingerprint):
                        conn.execute("COMMIT")
                        return Claim(acquired=False, record=current)
                    took_over = True
                if current is None:
                    self._make_room(now_s)
                conn.execute(
                    _UPSERT,
                    {
                        "key": key,
                        "fingerprint": fingerprint,
                        "owner": owner,
                        "now_s": now_s,
                        "expires_at_s": now_s + ttl_s,
                        "lease_at_s": now_s + lease_s,
                    },
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        record = IdempotencyRecord(
            key=key,
            fingerprint=fingerprint,
            state=RecordState.IN_PROGRESS,
            owner=owner,
            created_at_s=now_s,
            expires_at_s=now_s + ttl_s,
            lease_expires_at_s=now_s + lease_s,
        )
        return Claim(acquired=True, record=record, took_over=took_over)

    def complete(self, key: str, owner: str, result: bytes, *, now_s: float, ttl_s: float) -> bool:
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE idempotency_keys SET state = 'completed', result = ?, expires_at_s = ? "
                "WHERE key = ? AND owner = ? AND state = 'in_progress' AND expires_at_s > ?",
                (bytes(result), now_s + ttl_s, key, owner, now_s),
            )
            return cursor.rowcount == 1

    def release(self, key: str, owner: str) -> bool:
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM idempotency_keys "
                "WHERE key = ? AND owner = ? AND state = 'in_progress'",
                (key, owner),
            )
            return cursor.rowcount == 1

    def get(self, key: str, *, now_s: float) -> IdempotencyRecord | None:
        with self._lock:
            record = self._select(key)
        if record is None or record.is_expired(now_s):
            return None
        return record

    def purge(self, *, now_s: float) -> int:
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM idempotency_keys WHERE expires_at_s <= ?", (now_s,)
            )
            return cursor.rowcount

    def _select(self, key: str) -> IdempotencyRecord | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM idempotency_keys WHERE key = ?",  # noqa: S608 - constant
            (key,),
        ).fetchone()
        if row is None:
            return None
        return IdempotencyRecord(
            key=row[0],
            fingerprint=row[1],
            state=RecordState(row[2]),
            owner=row[3],
            created_at_s=row[4],
            expires_at_s=row[5],
            lease_expires_at_s=row[6],
            result=None if row[7] is None else bytes(row[7]),
        )

    def _make_room(self, now_s: float) -> None:
        # Inside the claim's write transaction, before inserting a key that is not present.
        conn = self._conn
        (count,) = conn.execute("SELECT COUNT(*) FROM idempotency_keys").fetchone()
        if count < self.entries_max:
            return
        deleted = conn.execute(
            "DELETE FROM idempotency_keys WHERE expires_at_s <= ?", (now_s,)
        ).rowcount
        count -= deleted
        if count >= self.entries_max:
            deleted_completed = conn.execute(
                "DELETE FROM idempotency_keys WHERE key IN (SELECT key FROM idempotency_keys "
                "WHERE state = 'completed' ORDER BY expires_at_s LIMIT ?)",
                (count - self.entries_max + 1,),
            ).rowcount
            deleted += deleted_completed
            count -= deleted_completed
        self.evictions += deleted
        if count >= self.entries_max:
            raise Unavailable(
                f"idempotency store full: all {self.entries_max} records (entries_max) "
                "are in progress"
            )
