"""Fencing: the protected resource's side of a distributed lock.

A lock holder can lose its lock without knowing it: a process paused (garbage collection, a
stopped VM, a swapped-out page) while its lease expired wakes up still believing it holds the
lock, and its next write races the new holder's. The lock cannot prevent that; the resource
can. Every holder carries a *fencing token* (:attr:`phalanx.client.lock.Held.fencing_token`,
strictly increasing from one holder to the next), sends it with each write, and the resource
remembers the highest token it has accepted and refuses any older one with
:class:`StaleToken`. The paused holder's late write carries an older token than the new
holder's first write, so it is refused.

Two resources ship here:

- :class:`FencedResource`: a value in memory, guarded by a token check (tests, single-process
  services, and the model of the rule);
- :class:`SqliteFencedResource`: a SQLite database whose ``phalanx_fence`` table holds the
  highest token per resource name; the check, the token update and the caller's write run in
  one ``BEGIN IMMEDIATE`` transaction, so they commit or roll back together even across
  processes sharing the file.

Errors::

    Rejected
    └── Conflict
        └── StaleToken     a write carried a token older than one already accepted
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, Generic, TypeVar

from phalanx.errors import BadRequest, Conflict

__all__ = ["FENCE_TABLE", "FencedResource", "SqliteFencedResource", "StaleToken", "check_token"]

T = TypeVar("T")
R = TypeVar("R")

#: The table :class:`SqliteFencedResource` keeps its highest accepted tokens in.
FENCE_TABLE: Final = "phalanx_fence"
#: How long a SQLite write waits for another writer's transaction before giving up.
SQLITE_BUSY_TIMEOUT_S: Final = 5.0


class StaleToken(Conflict):
    """A write carried fencing token ``token`` but ``highest`` was already accepted: its
    holder lost the lock (maybe without knowing). The write had no effect."""

    def __init__(self, message: str = "", *, token: int = 0, highest: int = 0) -> None:
        super().__init__(message)
        self.token = token
        self.highest = highest


def check_token(token: int, highest: int, resource: str) -> None:
    """The fencing rule: raise :class:`StaleToken` when ``token < highest``.

    An equal token is the same holder writing again, and is accepted.
    """
    if token < 1:
        raise BadRequest(f"fencing token must be >= 1, got {token}")
    if token < highest:
        raise StaleToken(
            f"{resource}: fencing token {token} is older than {highest}; its holder lost the lock",
            token=token,
            highest=highest,
        )


class FencedResource(Generic[T]):
    """A value of type ``T`` in memory that only the current lock holder may change.

    :meth:`write` checks the token, applies ``update`` and records the token, all under one
    mutex (so it is safe from threads and atomic for asyncio tasks: it never awaits).
    """

    def __init__(self, value: T, *, name: str = "resource") -> None:
        self.name = name
        self._value = value
        self._highest = 0
        self._mutex = threading.Lock()
        self._accepted = 0
        self._refused = 0

    @property
    def highest_token(self) -> int:
        """The highest token accepted so far (0: none yet)."""
        return self._highest

    def read(self) -> T:
        return self._value

    def write(self, token: int, update: Callable[[T], T]) -> T:
        """Replace the value with ``update(value)`` if ``token`` is not stale; the new value.

        Raises :class:`StaleToken` (nothing changed). If ``update`` raises, nothing changes
        and the token is not recorded.
        """
        with self._mutex:
            try:
                check_token(token, self._highest, self.name)
            except StaleToken:
                self._refused += 1
                raise
            value = update(self._value)
            self._value = value
            self._highest = token
            self._accepted += 1
            return value

    def statistics(self) -> dict[str, int]:
        return {
            "highest_token": self._highest,
            "accepted": self._accepted,
            "refused": self._refused,
        }


class SqliteFencedResource:
    """A SQLite database guarded by fencing tokens.

    ``write(token, apply)`` opens a ``BEGIN IMMEDIATE`` transaction (SQLite's write lock, so
    concurrent writers, threads or processes, queue up), reads the highest token of ``name``
    from the ``phalanx_fence`` table, refuses a stale token, stores the new one, calls
    ``apply(connection)`` for the caller's own statements, and commits all of it together.
    Any exception rolls everything back.

    The connection is opened with ``check_same_thread=False`` and guarded by a mutex, so one
    instance may be shared by threads; each call blocks for the duration of the transaction.
    """

    def __init__(self, path: Path | str, *, name: str = "resource") -> None:
        self.name = name
        self.path = Path(path)
        self._mutex = threading.Lock()
        self._db = sqlite3.connect(
            self.path,
            timeout=SQLITE_BUSY_TIMEOUT_S,
            isolation_level=None,  # transactions are begun and ended explicitly below
            check_same_thread=False,
        )
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {FENCE_TABLE} "
            "(resource TEXT PRIMARY KEY, token INTEGER NOT NULL)"
        )

    @property
    def highest_token(self) -> int:
        with self._mutex:
            return self._highest()

    def _highest(self) -> int:
        row = self._db.execute(
            f"SELECT token FROM {FENCE_TABLE} WHERE resource = ?",  # noqa: S608 - a constant
            (self.name,),
        ).fetchone()
        return int(row[0]) if row else 0

    def write(self, token: int, apply: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``apply(connection)`` in the transaction that checks and records ``token``;
        its result. Raises :class:`StaleToken` (rolled back, ``apply`` not called)."""
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                check_token(token, self._highest(), self.name)
                self._db.execute(
                    f"INSERT INTO {FENCE_TABLE} (resource, token) VALUES (?, ?) "  # noqa: S608
                    "ON CONFLICT(resource) DO UPDATE SET token = excluded.token",
                    (self.name, token),
                )
                result = apply(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def read(self, query: Callable[[sqlite3.Connection], R]) -> R:
        """Run a read-only ``query(connection)`` (no token needed to read)."""
        with self._mutex:
            return query(self._db)

    def close(self) -> None:
        with self._mutex:
            self._db.close()

    def __enter__(self) -> SqliteFencedResource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
