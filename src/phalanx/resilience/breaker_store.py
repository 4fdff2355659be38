"""Shared circuit-breaker state, so that breakers in several processes open together.

This module owns the :class:`BreakerStore` protocol and its two implementations:
:class:`MemoryBreakerStore` (the in-memory twin, shared by breakers in one process, with
fault injection for tests) and :class:`SQLiteBreakerStore` (a SQLite file in WAL mode, shared
by processes on one host).

What is shared is the *decision*, not the counting: each process keeps its own sliding window,
and when one of them trips (or closes after successful probes, or is forced open or reset) it
publishes a :class:`BreakerRecord` with compare-and-set on a version number. The others load
the record every ``refresh_interval_s`` and adopt it when its version is newer than the last
one they saw. A record holds wall-clock time (``open_until_wall_s``) because monotonic clocks
of different processes do not share an origin.

Stores: :class:`MemoryBreakerStore` (one process, tests), :class:`SQLiteBreakerStore` (the
processes of one host), and :class:`~phalanx.resilience.breaker_redis.RedisBreakerStore`
(a fleet), which keeps the same compare-and-set in a Lua script.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from phalanx.resilience.config import require_positive
from phalanx.resilience.sqlite_db import open_database

__all__ = [
    "NAME_CHARS_MAX",
    "BreakerRecord",
    "BreakerStore",
    "MemoryBreakerStore",
    "SQLiteBreakerStore",
]

#: Longest breaker name a store accepts.
NAME_CHARS_MAX = 200

_STATES = frozenset({"closed", "open"})


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """The published state of one named breaker.

    ``state`` is ``"closed"`` or ``"open"`` (half-open is local: every process probes on its
    own once ``open_until_wall_s`` has passed). ``open_until_wall_s`` is the Unix time at
    which an open breaker may start probing, or ``None`` for a breaker forced open until it
    is reset. ``version`` starts at 1 and grows by one with every write.
    """

    state: str
    version: int
    open_until_wall_s: float | None = None
    updated_wall_s: float = 0.0

    def __post_init__(self) -> None:
        if self.state not in _STATES:
            raise ValueError(f"state: expected 'closed' or 'open', got {self.state!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise ValueError(f"version: expected an integer, got {self.version!r}")
        if self.version < 0:
            raise ValueError(f"version: must be >= 0, got {self.version}")
        if self.open_until_wall_s is not None and not math.isfinite(self.open_until_wall_s):
            raise ValueError(f"open_until_wall_s: must be finite, got {self.open_until_wall_s}")


@runtime_checkable
class BreakerStore(Protocol):
    """Where breakers publish and read their shared state. Implementations must be
    thread-safe; the breaker never calls them while holding its own lock."""

    def load(self, name: str) -> BreakerRecord | None:
        """The current record of ``name``, or ``None`` if nothing was published yet."""
        ...

    def compare_and_set(
        self, name: str, expected_version: int, record: BreakerRecord
    ) -> tuple[bool, BreakerRecord]:
        """Write ``record`` with version ``expected_version + 1`` if the stored version is
        ``expected_version`` (0 meaning "no record yet").

        Returns ``(True, written)`` on success, else ``(False, current)`` with the record
        that beat it, which the caller adopts.
        """
        ...


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("name: a breaker name must be a non-empty string")
    if len(name) > NAME_CHARS_MAX:
        raise ValueError(f"name: longer than {NAME_CHARS_MAX} characters")
    return name


class MemoryBreakerStore:
    """The in-memory twin: a dict behind a lock.

    Set ``fail_next`` to make the next *n* operations raise :class:`OSError`, which is how
    tests check that a broken store degrades a breaker to local-only decisions.
    """

    def __init__(self) -> None:
        self._records: dict[str, BreakerRecord] = {}
        self._lock = threading.Lock()
        self.fail_next = 0
        self.operations = 0

    def _maybe_fail(self) -> None:
        self.operations += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise OSError("breaker store unavailable (injected)")

    def load(self, name: str) -> BreakerRecord | None:
        with self._lock:
            self._maybe_fail()
            return self._records.get(_check_name(name))

    def compare_and_set(
        self, name: str, expected_version: int, record: BreakerRecord
    ) -> tuple[bool, BreakerRecord]:
        with self._lock:
            self._maybe_fail()
            current = self._records.get(_check_name(name))
            current_version = 0 if current is None else current.version
            if current is not None and current_version != expected_version:
                return False, current
            if current is None and expected_version != 0:
                # The record vanished (a store reset): start the sequence again.
                expected_version = 0
            written = dataclasses.replace(record, version=expected_version + 1)
            self._records[name] = written
            return True, written


_SCHEMA = """
CREATE TABLE IF NOT EXISTS phalanx_breakers (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    open_until_wall_s REAL,
    updated_wall_s REAL NOT NULL
)
"""


class SQLiteBreakerStore:
    """Breaker records in a SQLite file, one row per breaker name.

    WAL mode lets readers in other processes proceed while one writes; a write is a short
    ``BEGIN IMMEDIATE`` transaction (read version, write if it matches). ``busy_timeout_s``
    bounds how long an operation waits for another process's write lock before raising
    :class:`sqlite3.OperationalError`, which the breaker logs and survives.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 1.0) -> None:
        busy_timeout_s = require_positive("busy_timeout_s", busy_timeout_s)
        self._path = Path(path)
        self._lock = threading.Lock()
        self._conn = open_database(
            str(self._path),
            what="breaker store",
            schema=_SCHEMA,
            busy_timeout_s=busy_timeout_s,
        )

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteBreakerStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _row_to_record(row: tuple[str, int, float | None, float]) -> BreakerRecord:
        return BreakerRecord(
            state=row[0], version=row[1], open_until_wall_s=row[2], updated_wall_s=row[3]
        )

    def load(self, name: str) -> BreakerRecord | None:
        name = _check_name(name)
        with self._lock:
            row = self._conn.execute(
                "SELECT state, version, open_until_wall_s, updated_wall_s "
                "FROM phalanx_breakers WHERE name = ?",
                (name,),
            ).fetchone()
        return None if row is None else self._row_to_record(row)

    def compare_and_set(
        self, name: str, expected_version: int, record: BreakerRecord
    ) -> tuple[bool, BreakerRecord]:
        name = _check_name(name)
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT state, version, open_until_wall_s, updated_wall_s "
                    "FROM phalanx_breakers WHERE name = ?",
                    (name,),
                ).fetchone()
                if row is not None and row[1] != expected_version:
                    conn.execute("COMMIT")
                    return False, self._row_to_record(row)
                version = (0 if row is None else expected_version) + 1
                conn.execute(
                    "INSERT INTO phalanx_breakers "
                    "(name, state, version, open_until_wall_s, updated_wall_s) "
                    "VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET state = excluded.state, "
                    "version = excluded.version, open_until_wall_s = excluded.open_until_wall_s, "
                    "updated_wall_s = excluded.updated_wall_s",
                    (name, record.state, version, record.open_until_wall_s, record.updated_wall_s),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return True, dataclasses.replace(record, version=version)
