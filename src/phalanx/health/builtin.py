"""Ready-made checks for the dependencies readiness usually hangs on.

Each factory returns a check function to pass to :meth:`HealthRegistry.add`:

- :func:`ping_check` wraps any ping (sync or async callable, or a callable returning an
  awaitable) and fails when it returns something falsy;
- :func:`sqlite_check` opens a SQLite file read-only and reads its schema;
- :func:`tcp_check` opens (and closes) a TCP connection to ``host:port``;
- :func:`breaker_check` fails while a circuit breaker is open.

The breaker check depends only on :class:`BreakerLike`: an object with a ``state`` whose
``value`` (or the state itself, if it is a string) is ``"closed"``, ``"open"`` or
``"half_open"``. Any breaker with that shape works, Phalanx's or another library's.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from phalanx.health.checks import CheckFailed
from phalanx.resilience.config import require_positive

__all__ = [
    "BreakerLike",
    "BreakerStateLike",
    "breaker_check",
    "breaker_state_name",
    "ping_check",
    "sqlite_check",
    "tcp_check",
]

_BREAKER_STATES = ("closed", "open", "half_open")
_PORT_MAX = 65535


class BreakerStateLike(Protocol):
    """An enum-like state: its ``value`` names it."""

    @property
    def value(self) -> str: ...


class BreakerLike(Protocol):
    """The only thing :func:`breaker_check` needs from a circuit breaker."""

    @property
    def state(self) -> BreakerStateLike | str: ...


def ping_check(ping: Callable[[], object]) -> Callable[[], object]:
    """A check that passes when ``ping()`` (awaited if need be) returns something truthy.

    A coroutine function stays a coroutine function, so the registry awaits it on the loop;
    any other callable runs in a worker thread, as a blocking database driver needs.
    """
    if not callable(ping):
        raise ValueError(f"ping: expected a callable, got {ping!r}")

    def judge(value: object) -> str:
        if not value:
            raise CheckFailed(f"ping returned {value!r}")
        return ""

    if inspect.iscoroutinefunction(ping):
        coroutine_ping: Callable[[], Awaitable[object]] = ping

        async def check_async() -> str:
            return judge(await coroutine_ping())

        return check_async

    def check_sync() -> object:
        value = ping()
        if inspect.isawaitable(value):
            # Awaited by the registry on its loop, after this thread returns.
            return _judged(value, judge)
        return judge(value)

    return check_sync


async def _judged(awaitable: Awaitable[object], judge: Callable[[object], str]) -> str:
    return judge(await awaitable)


def sqlite_check(path: str | Path, *, busy_timeout_s: float = 0.25) -> Callable[[], str]:
    """A check that opens the SQLite file at ``path`` read-only and reads its schema.

    Reading ``sqlite_master`` touches the file's first page, so a file that is not a database
    (or is corrupt at its root) fails, where ``SELECT 1`` would not. The file is never
    created: a missing file fails the check instead of silently producing an empty database.
    ``busy_timeout_s`` bounds the wait for a lock held by a writer.
    """
    busy_s = require_positive("busy_timeout_s", busy_timeout_s)
    target = Path(path)

    def check() -> str:
        if not target.exists():
            raise CheckFailed(f"{target}: no such database file")
        uri = f"{target.resolve().as_uri()}?mode=ro"
        connection = sqlite3.connect(uri, uri=True, timeout=busy_s)
        try:
            (tables,) = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            connection.close()
        return f"schema objects: {tables}"

    return check


def tcp_check(host: str, port: int) -> Callable[[], Awaitable[str]]:
    """A check that connects to ``host:port`` and closes the connection at once.

    The registry's ``timeout_s`` for the check bounds the connect; a refused or unreachable
    address fails with the operating system's reason.
    """
    if not host:
        raise ValueError("host: must not be empty")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= _PORT_MAX:
        raise ValueError(f"port: expected 1..{_PORT_MAX}, got {port!r}")

    async def check() -> str:
        try:
            _reader, writer = await asyncio.open_connection(host, port)
        except OSError as error:
            raise CheckFailed(f"connect {host}:{port}: {_os_reason(error)}") from error
        writer.close()
        await writer.wait_closed()
        return ""

    return check


def _os_reason(error: OSError) -> str:
    """The operating system's words for ``error`` ("Connection refused").

    asyncio re-raises a failed connect as ``OSError(errno, "Connect call failed (...)")``, so
    ``strerror`` is asyncio's text; the errno still names the real reason. Resolver errors carry
    their own message (their codes are not errno values), and an error with no errno (asyncio's
    "Multiple exceptions" for several addresses) is described as it is.
    """
    if isinstance(error, socket.gaierror):
        return error.strerror or str(error)
    if isinstance(error.errno, int) and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(error) or type(error).__name__


def breaker_state_name(breaker: BreakerLike) -> str:
    """``"closed"``, ``"open"`` or ``"half_open"`` (or whatever unknown name it reports)."""
    state = breaker.state
    name = state if isinstance(state, str) else state.value
    return str(name).lower().replace("-", "_")


def breaker_check(breaker: BreakerLike) -> Callable[[], Awaitable[str]]:
    """A check that fails while ``breaker`` is open (or reports a state it cannot read).

    Half-open passes, with a message: the breaker is already letting trial calls through,
    and taking the pod out of rotation would starve those trials of traffic.
    """
    if not hasattr(breaker, "state"):
        raise ValueError(f"breaker: {breaker!r} has no 'state' attribute")

    # Async on purpose: reading an attribute never blocks, so no worker thread is needed.
    async def check() -> str:
        name = breaker_state_name(breaker)
        if name == "open":
            raise CheckFailed("circuit open")
        if name not in _BREAKER_STATES:
            raise CheckFailed(f"unknown breaker state {name!r}")
        return "half-open: trial calls allowed" if name == "half_open" else ""

    return check
