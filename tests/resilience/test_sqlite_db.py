"""The SQLite files behind shared state: set up in WAL mode, refused cleanly when corrupt."""

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from phalanx.resilience.breaker_store import SQLiteBreakerStore
from phalanx.resilience.idempotency import SqliteIdempotencyStore
from phalanx.resilience.sqlite_db import open_database

STORES: list[Callable[[Path], object]] = [SQLiteBreakerStore, SqliteIdempotencyStore]


@pytest.mark.parametrize("store", STORES, ids=["breaker_store", "idempotency_store"])
def test_a_file_that_is_not_a_database_is_refused_and_its_connection_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: Callable[[Path], object]
) -> None:
    path = tmp_path / "not-a-database.db"
    path.write_bytes(b"this is not a SQLite file" * 100)
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def recording_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)  # type: ignore[call-overload]
        opened.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    with pytest.raises(sqlite3.DatabaseError, match=r"not-a-database\.db"):
        store(path)
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")


def test_open_database_uses_wal_and_checks_the_sync_mode(tmp_path: Path) -> None:
    conn = open_database(
        str(tmp_path / "x.db"), what="test", schema="CREATE TABLE t (k TEXT)", busy_timeout_s=1.0
    )
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    with pytest.raises(ValueError, match="synchronous"):
        open_database(
            str(tmp_path / "y.db"), what="test", schema="", busy_timeout_s=1.0, synchronous="fast"
        )
