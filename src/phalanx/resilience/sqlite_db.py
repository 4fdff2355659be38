"""Opening the SQLite files that back shared state (breaker records, idempotency keys).

One connection per store object, shared by its threads behind the store's lock; autocommit
mode, so transactions are exactly the explicit ``BEGIN ... COMMIT`` blocks of the store;
write-ahead logging, so readers in other processes never block the writer.
"""

from __future__ import annotations

import sqlite3

__all__ = ["SYNCHRONOUS_MODES", "open_database"]

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


def open_database(
    path: str, *, what: str, schema: str, busy_timeout_s: float, synchronous: str = "NORMAL"
) -> sqlite3.Connection:
    """Connect to ``path``, switch it to WAL and create ``schema``; close it on any failure.

    ``what`` names the store in error messages. A file that is not a database raises the
    ``sqlite3`` error with the path in its message, and leaves no connection open.
    """
    mode = synchronous.upper()
    if mode not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous: expected one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
    conn = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={mode}")
        conn.executescript(schema)
    except BaseException as exc:
        conn.close()  # nobody else holds it yet: close it here or it leaks a file handle
        if isinstance(exc, sqlite3.Error):
            raise type(exc)(f"{what} {path!r}: cannot set up the database: {exc}") from exc
        raise
    return conn
