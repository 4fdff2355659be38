"""The PostgreSQL idempotency store: one table that every server of a fleet reaches.

This module owns :class:`PostgresIdempotencyStore`, the multi-machine sibling of
:class:`~.sqlite.SqliteIdempotencyStore` with the same rules (see :mod:`.store`) and the same
bounds. It needs psycopg 3 (``pip install 'phalanx[postgres]'``); the package imports this
module only when the class is first used.

Atomicity. Every claim is one ``READ COMMITTED`` transaction: ``SELECT ... FOR UPDATE`` locks
the key's row when it exists, so a second claimer waits for the first to commit and then sees
its record; when the row does not exist yet, the insert is an ``INSERT ... ON CONFLICT (key)
DO UPDATE ... WHERE <the key is free>``, so of two transactions inserting the same new key the
second blocks on the first's row, re-checks the condition against the committed record, and
does not acquire. Exactly one claimer wins, whichever store object or machine it runs on.
``complete`` and ``release`` are single statements conditioned on ``owner``.

Connections. One connection per store object, in autocommit mode (transactions are exactly
the explicit ones above), shared by the object's threads behind a lock: every process or
worker holds its own store and so its own connection; a pool is future work. When the
connection is lost (server restart, failover, ``pg_terminate_backend``, a network cut) the
call reconnects once and runs again; a second failure propagates. A claim retried after a
lost ``COMMIT`` finds its own record and reports it acquired; a retried ``complete`` finds
its own completed record and reports success. Nothing else is retried: other database errors
(``statement_timeout_s`` reached, permissions) propagate as psycopg errors.

Bounds: at most ``entries_max`` rows, made room for exactly as the SQLite store does
(expired rows first, then the completed rows closest to expiry; in-progress rows never, and
:class:`phalanx.errors.Unavailable` when every row is in progress). Concurrent claims of new
keys do not lock the table, so ``n`` store objects claiming at the same moment may overshoot
the bound by up to ``n - 1`` rows until the next claim of a new key makes room again.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from phalanx.errors import Unavailable, invariant
from phalanx.resilience.config import parse_count, parse_duration_s
from phalanx.resilience.idempotency.store import Claim, IdempotencyRecord, RecordState

try:
    import psycopg
    from psycopg import sql
except ImportError as exc:  # pragma: no cover - only without the optional extra
    raise ImportError(
        "PostgresIdempotencyStore needs psycopg 3: pip install 'phalanx[postgres]'"
    ) from exc

__all__ = [
    "TABLE_NAME_CHARS_MAX",
    "ConnectionFactory",
    "PostgresIdempotencyStore",
]

ConnectionFactory = Callable[[], psycopg.Connection[Any]]

# PostgreSQL truncates identifiers at 63 bytes; the index is named "<table>_expiry", so the
# table name keeps 7 characters free for the suffix.
TABLE_NAME_CHARS_MAX = 56
# Lowercase unquoted identifiers only: the name then means the same table quoted or not.
_IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
CONNECT_TIMEOUT_S_MAX = 600.0
STATEMENT_TIMEOUT_S_MAX = 3600.0

_COLUMNS = (
    "key",
    "fingerprint",
    "state",
    "owner",
    "created_at_s",
    "expires_at_s",
    "lease_expires_at_s",
    "result",
)

T = TypeVar("T")


class _Statements:
    """The store's SQL, composed once for one (validated) table name."""

    def __init__(self, schema: str | None, name: str) -> None:
        table = sql.Identifier(schema, name) if schema else sql.Identifier(name)
        index = sql.Identifier(f"{name}_expiry")
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMNS)
        self.qualified_name = f"{schema}.{name}" if schema else name
        self.create_table = sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {table} (
                key text PRIMARY KEY,
                fingerprint text NOT NULL,
                state text NOT NULL CHECK (state IN ('in_progress', 'completed')),
                owner text NOT NULL,
                created_at_s double precision NOT NULL,
                expires_at_s double precision NOT NULL,
                lease_expires_at_s double precision NOT NULL,
                result bytea
            )
            """
        ).format(table=table)
        self.create_index = sql.SQL(
            "CREATE INDEX IF NOT EXISTS {index} ON {table} (expires_at_s)"
        ).format(index=index, table=table)
        self.check_columns = sql.SQL("SELECT {columns} FROM {table} LIMIT 0").format(
            columns=columns, table=table
        )
        self.select = sql.SQL("SELECT {columns} FROM {table} WHERE key = %(key)s").format(
            columns=columns, table=table
        )
        self.select_for_update = sql.SQL(
            "SELECT {columns} FROM {table} WHERE key = %(key)s FOR UPDATE"
        ).format(columns=columns, table=table)
        # Conditional upsert: the WHERE repeats the claim rules, so a row another store
        # inserted after this transaction's SELECT is only replaced if it is free.
        self.upsert = sql.SQL(
            """
            INSERT INTO {table} AS t ({columns})
            VALUES (%(key)s, %(fingerprint)s, 'in_progress', %(owner)s, %(now_s)s,
                    %(expires_at_s)s, %(lease_at_s)s, NULL)
            ON CONFLICT (key) DO UPDATE SET
                fingerprint = EXCLUDED.fingerprint,
                state = 'in_progress',
                owner = EXCLUDED.owner,
                created_at_s = EXCLUDED.created_at_s,
                expires_at_s = EXCLUDED.expires_at_s,
                lease_expires_at_s = EXCLUDED.lease_expires_at_s,
                result = NULL
            WHERE t.expires_at_s <= %(now_s)s
               OR (t.state = 'in_progress' AND t.lease_expires_at_s <= %(now_s)s
                   AND t.fingerprint = EXCLUDED.fingerprint)
            RETURNING key
            """
        ).format(table=table, columns=columns)
        self.complete = sql.SQL(
            "UPDATE {table} SET state = 'completed', result = %(result)s, "
            "expires_at_s = %(expires_at_s)s "
            "WHERE key = %(key)s AND owner = %(owner)s AND state = 'in_progress' "
            "AND expires_at_s > %(now_s)s"
        ).format(table=table)
        self.release = sql.SQL(
            "DELETE FROM {table} WHERE key = %(key)s AND owner = %(owner)s "
            "AND state = 'in_progress'"
        ).format(table=table)
        self.count = sql.SQL("SELECT count(*) FROM {table}").format(table=table)
        # SKIP LOCKED: rows another transaction is working on are left to it, so two stores
        # purging or making room at once never wait for each other (and never deadlock).
        self.delete_expired = sql.SQL(
            "DELETE FROM {table} WHERE key IN (SELECT key FROM {table} "
            "WHERE expires_at_s <= %(now_s)s FOR UPDATE SKIP LOCKED)"
        ).format(table=table)
        self.evict_completed = sql.SQL(
            "DELETE FROM {table} WHERE key IN (SELECT key FROM {table} "
            "WHERE state = 'completed' ORDER BY expires_at_s LIMIT %(limit)s "
            "FOR UPDATE SKIP LOCKED)"
        ).format(table=table)
        # Serializes table creation between processes starting at once; the number is a
        # stable hash of the table name (never hash(), which differs between processes).
        digest = hashlib.sha256(f"phalanx-idempotency:{self.qualified_name}".encode()).digest()
        self.setup_lock_id = int.from_bytes(digest[:8], "big", signed=True)


def _parse_table(table: object) -> tuple[str | None, str]:
    if not isinstance(table, str):
        raise ValueError(f"table: expected a string, got {table!r}")
    parts = table.split(".")
    if len(parts) > 2:
        raise ValueError(f"table: expected 'name' or 'schema.name', got {table!r}")
    for part in parts:
        if not _IDENTIFIER_RE.match(part):
            raise ValueError(
                f"table: {table!r} is not a plain identifier (lowercase letters, digits and "
                "underscores, not starting with a digit, optionally 'schema.name')"
            )
        if len(part) > TABLE_NAME_CHARS_MAX:
            raise ValueError(
                f"table: each part at most {TABLE_NAME_CHARS_MAX} characters "
                f"(TABLE_NAME_CHARS_MAX), got {len(part)} in {table!r}"
            )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _parse_target(target: object) -> tuple[str | None, ConnectionFactory | None]:
    field = "dsn_or_connection_factory"
    if isinstance(target, str):
        if not target.strip():
            raise ValueError(
                f"{field}: empty connection string; pass e.g. 'host=db.internal dbname=app' "
                "or 'postgresql://db.internal/app'"
            )
        try:
            psycopg.conninfo.conninfo_to_dict(target)
        except psycopg.ProgrammingError:
            # libpq's message may quote part of the string, which can hold a password.
            raise ValueError(f"{field}: malformed connection string") from None
        return target, None
    if callable(target):
        return None, target
    raise ValueError(
        f"{field}: expected a connection string or a callable returning a psycopg "
        f"connection, got {type(target).__name__}"
    )


def _record(row: tuple[Any, ...]) -> IdempotencyRecord:
    return IdempotencyRecord(
        key=row[0],
        fingerprint=row[1],
        state=RecordState(row[2]),
        owner=row[3],
        created_at_s=float(row[4]),
        expires_at_s=float(row[5]),
        lease_expires_at_s=float(row[6]),
        result=None if row[7] is None else bytes(row[7]),
    )


class PostgresIdempotencyStore:
    """An :class:`~.store.IdempotencyStore` in a PostgreSQL table (created when missing).

    ``dsn_or_connection_factory`` is a libpq connection string or URI, or a callable that
    returns a new ``psycopg.Connection`` (for TLS settings, a custom ``prepare_threshold``
    behind a transaction-mode pooler, and so on); it is called again to reconnect. The store
    switches the connection to autocommit and ``READ COMMITTED`` and sets its
    ``statement_timeout``.

    ``connect_timeout_s`` bounds each connection attempt (libpq counts whole seconds, so it
    is rounded up); ``statement_timeout_s`` bounds each statement, including the wait for a
    row another store holds locked.
    """

    def __init__(
        self,
        dsn_or_connection_factory: str | ConnectionFactory,
        *,
        table: str = "phalanx_idempotency",
        entries_max: int | str = 1_000_000,
        connect_timeout_s: float | str = 5.0,
        statement_timeout_s: float | str = 5.0,
    ) -> None:
        self._dsn, self._factory = _parse_target(dsn_or_connection_factory)
        schema, name = _parse_table(table)
        self.table = table
        self.entries_max = parse_count("entries_max", entries_max, minimum=1)
        self.connect_timeout_s = parse_duration_s(
            "connect_timeout_s", connect_timeout_s, maximum_s=CONNECT_TIMEOUT_S_MAX
        )
        self.statement_timeout_s = parse_duration_s(
            "statement_timeout_s", statement_timeout_s, maximum_s=STATEMENT_TIMEOUT_S_MAX
        )
        self.evictions = 0
        self.reconnects = 0
        self._sql = _Statements(schema, name)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        try:
            with self._lock:
                self._call(self._set_up)
        except BaseException:
            self.close()  # nobody else holds the connection yet: close it or it leaks
            raise

    def __repr__(self) -> str:
        return f"PostgresIdempotencyStore(table={self.table!r}, entries_max={self.entries_max})"

    def close(self) -> None:
        """Close the connection; later calls raise ``psycopg.InterfaceError``."""
        with self._lock:
            self._closed = True
            self._discard()

    def __enter__(self) -> PostgresIdempotencyStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __len__(self) -> int:
        def count(conn: psycopg.Connection[Any], _retrying: bool) -> int:
            row = conn.execute(self._sql.count).fetchone()
            invariant(row is not None, "SELECT count(*) returned no row")
            return int(row[0]) if row is not None else 0

        with self._lock:
            return self._call(count)

    def claim(
        self, key: str, fingerprint: str, owner: str, *, now_s: float, lease_s: float, ttl_s: float
    ) -> Claim:
        params = {
            "key": key,
            "fingerprint": fingerprint,
            "owner": owner,
            "now_s": now_s,
            "expires_at_s": now_s + ttl_s,
            "lease_at_s": now_s + lease_s,
        }

        def run(conn: psycopg.Connection[Any], retrying: bool) -> Claim:
            with conn.transaction():
                current = self._select(conn, key, for_update=True)
                took_over = False
                if current is not None and not current.is_expired(now_s):
                    if retrying and _is_own_claim(current, fingerprint, owner, now_s):
                        # The first attempt committed before the connection was lost.
                        return Claim(acquired=True, record=current)
                    if not (current.lease_expired(now_s) and current.fingerprint == fingerprint):
                        return Claim(acquired=False, record=current)
                    took_over = True
                if current is None:
                    self._make_room(conn, now_s)
                if conn.execute(self._sql.upsert, params).fetchone() is None:
                    # Another store inserted the key after our SELECT and holds it; the failed
                    # upsert locked that row, so it is still there to read.
                    held = self._select(conn, key, for_update=False)
                    invariant(held is not None, f"conflicting row of {key!r} vanished")
                    if held is not None:
                        return Claim(acquired=False, record=held)
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

        with self._lock:
            return self._call(run)

    def complete(self, key: str, owner: str, result: bytes, *, now_s: float, ttl_s: float) -> bool:
        payload = bytes(result)
        params = {
            "key": key,
            "owner": owner,
            "result": payload,
            "now_s": now_s,
            "expires_at_s": now_s + ttl_s,
        }

        def run(conn: psycopg.Connection[Any], retrying: bool) -> bool:
            if conn.execute(self._sql.complete, params).rowcount == 1:
                return True
            if not retrying:
                return False
            # The first attempt may have committed before the connection was lost.
            current = self._select(conn, key, for_update=False)
            return (
                current is not None
                and current.owner == owner
                and current.state is RecordState.COMPLETED
                and current.result == payload
            )

        with self._lock:
            return self._call(run)

    def release(self, key: str, owner: str) -> bool:
        def run(conn: psycopg.Connection[Any], _retrying: bool) -> bool:
            return conn.execute(self._sql.release, {"key": key, "owner": owner}).rowcount == 1

        with self._lock:
            return self._call(run)

    def get(self, key: str, *, now_s: float) -> IdempotencyRecord | None:
        def run(conn: psycopg.Connection[Any], _retrying: bool) -> IdempotencyRecord | None:
            return self._select(conn, key, for_update=False)

        with self._lock:
            record = self._call(run)
        if record is None or record.is_expired(now_s):
            return None
        return record

    def purge(self, *, now_s: float) -> int:
        def run(conn: psycopg.Connection[Any], _retrying: bool) -> int:
            return conn.execute(self._sql.delete_expired, {"now_s": now_s}).rowcount

        with self._lock:
            return self._call(run)

    # -- internals (called with the lock held) ---------------------------------------------

    def _call(self, operation: Callable[[psycopg.Connection[Any], bool], T]) -> T:
        """Run ``operation`` on the connection; on a lost connection reconnect once and rerun.

        ``operation`` receives ``retrying=True`` on the second run, when the first may or may
        not have committed.
        """
        if self._closed:
            raise psycopg.InterfaceError(f"idempotency store {self.table!r} is closed")
        retrying = False
        while True:
            conn = self._connection()
            try:
                return operation(conn, retrying)
            except psycopg.OperationalError:
                lost = conn.closed or conn.broken
                if lost:
                    self._discard()
                if not lost or retrying:
                    raise
            retrying = True
            self.reconnects += 1

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None:
            return self._conn
        if self._factory is not None:
            conn = self._factory()
            if not isinstance(conn, psycopg.Connection):
                raise TypeError(
                    "dsn_or_connection_factory: the factory must return a psycopg.Connection, "
                    f"got {type(conn).__name__}"
                )
        else:
            invariant(self._dsn is not None, "neither a DSN nor a factory")
            conn = psycopg.connect(
                self._dsn or "", connect_timeout=math.ceil(self.connect_timeout_s)
            )
        try:
            conn.autocommit = True
            conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)",
                (f"{math.ceil(self.statement_timeout_s * 1000)}ms",),
            )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _set_up(self, conn: psycopg.Connection[Any], _retrying: bool) -> None:
        statements = self._sql
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (statements.setup_lock_id,))
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (statements.qualified_name,)
            ).fetchone()
            # Only create when missing: CREATE ... IF NOT EXISTS still needs the CREATE
            # privilege, which a least-privilege role using an existing table lacks.
            if exists is None or not exists[0]:
                conn.execute(statements.create_table)
                conn.execute(statements.create_index)
        try:
            conn.execute(statements.check_columns)
        except psycopg.errors.UndefinedColumn as exc:
            raise ValueError(
                f"table: {self.table!r} exists but is not an idempotency table ({exc})"
            ) from exc

    def _select(
        self, conn: psycopg.Connection[Any], key: str, *, for_update: bool
    ) -> IdempotencyRecord | None:
        query = self._sql.select_for_update if for_update else self._sql.select
        row = conn.execute(query, {"key": key}).fetchone()
        return None if row is None else _record(row)

    def _make_room(self, conn: psycopg.Connection[Any], now_s: float) -> None:
        # Inside the claim's transaction, before inserting a key that is not present.
        row = conn.execute(self._sql.count).fetchone()
        count = 0 if row is None else int(row[0])
        if count < self.entries_max:
            return
        deleted = conn.execute(self._sql.delete_expired, {"now_s": now_s}).rowcount
        count -= deleted
        if count >= self.entries_max:
            evicted = conn.execute(
                self._sql.evict_completed, {"limit": count - self.entries_max + 1}
            ).rowcount
            deleted += evicted
            count -= evicted
        if count >= self.entries_max:
            # The transaction rolls back, so the deletions above did not happen either.
            raise Unavailable(
                f"idempotency store full: all {self.entries_max} records (entries_max) "
                "are in progress"
            )
        self.evictions += deleted


def _is_own_claim(record: IdempotencyRecord, fingerprint: str, owner: str, now_s: float) -> bool:
    # Owner tokens are unique per execution: an in-progress record with ours, created at this
    # very claim's time, can only be the claim itself.
    return (
        record.owner == owner
        and record.fingerprint == fingerprint
        and record.state is RecordState.IN_PROGRESS
        and record.created_at_s == now_s
    )
