"""Ready-made checks: ping, SQLite file, TCP connect, circuit breaker."""

from __future__ import annotations

import asyncio
import enum
import errno
import os
import socket
import sqlite3
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import pytest

from phalanx.clock import ManualClock
from phalanx.health import (
    CheckStatus,
    HealthRegistry,
    ProbeStatus,
    breaker_check,
    breaker_state_name,
    ping_check,
    sqlite_check,
    tcp_check,
)


def registry() -> HealthRegistry:
    return HealthRegistry(clock=ManualClock(), cache_s=0.0)


# -- ping --------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "ok"), [(True, True), (1, True), ("pong", True), (0, False)])
async def test_ping_check_judges_truthiness_of_a_sync_ping(value: object, ok: bool) -> None:
    health = registry()
    health.add("db", ping_check(lambda: value))
    result = await health.run_check("db")
    assert result.ok is ok
    if not ok:
        assert result.message == "ping returned 0"


async def test_ping_check_awaits_async_pings_on_the_loop() -> None:
    health = registry()
    answers = [True, None]

    async def ping() -> object:
        return answers.pop(0)

    check = ping_check(ping)
    assert asyncio.iscoroutinefunction(check)
    health.add("db", check)
    assert (await health.run_check("db")).ok
    failed = await health.run_check("db")
    assert failed.status is CheckStatus.FAIL
    assert failed.message == "ping returned None"


async def test_ping_check_awaits_an_awaitable_returned_by_a_plain_callable() -> None:
    health = registry()

    async def ping() -> bool:
        return False

    def plain() -> Awaitable[bool]:
        return ping()

    health.add("db", ping_check(plain))
    result = await health.run_check("db")
    assert result.message == "ping returned False"


async def test_ping_check_that_raises_fails() -> None:
    health = registry()

    def ping() -> bool:
        raise ConnectionRefusedError("db down")

    health.add("db", ping_check(ping))
    assert (await health.run_check("db")).message == "ConnectionRefusedError: db down"


def test_ping_check_needs_a_callable() -> None:
    with pytest.raises(ValueError, match=r"^ping:"):
        ping_check(42)  # type: ignore[arg-type]


# -- sqlite ------------------------------------------------------------------------------


async def test_sqlite_check_passes_on_a_real_database(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()
    health = registry()
    health.add("sqlite", sqlite_check(path))
    result = await health.run_check("sqlite")
    assert result.ok
    assert result.message == "schema objects: 1"


async def test_sqlite_check_fails_on_a_missing_file_without_creating_it(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    health = registry()
    health.add("sqlite", sqlite_check(path))
    result = await health.run_check("sqlite")
    assert result.status is CheckStatus.FAIL
    assert result.message.endswith("no such database file")
    assert not path.exists()


async def test_sqlite_check_fails_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    health = registry()
    health.add("sqlite", sqlite_check(path))
    result = await health.run_check("sqlite")
    assert result.status is CheckStatus.FAIL
    assert "DatabaseError" in result.message


def test_sqlite_check_validates_busy_timeout() -> None:
    with pytest.raises(ValueError, match=r"^busy_timeout_s:"):
        sqlite_check("x.db", busy_timeout_s=0)


# -- tcp ---------------------------------------------------------------------------------


async def test_tcp_check_connects_on_loopback_and_fails_once_closed() -> None:
    accepted: list[int] = []

    async def on_connect(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    health = registry()
    health.add("dep", tcp_check("127.0.0.1", port))
    try:
        assert (await health.run_check("dep")).ok
    finally:
        server.close()
        await server.wait_closed()

    result = await health.run_check("dep")
    assert result.status is CheckStatus.FAIL
    assert result.message == f"connect 127.0.0.1:{port}: {os.strerror(errno.ECONNREFUSED)}"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            OSError(errno.EHOSTUNREACH, "Connect call failed ('10.0.0.9', 5432)"),
            os.strerror(errno.EHOSTUNREACH),
        ),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "Name or service not known",
        ),
        (
            OSError("Multiple exceptions: [Errno 111] refused"),
            "Multiple exceptions: [Errno 111] refused",
        ),
    ],
)
async def test_tcp_check_reports_the_operating_systems_reason(
    monkeypatch: pytest.MonkeyPatch, error: OSError, reason: str
) -> None:
    async def failing_connect(*_args: object, **_kwargs: object) -> object:
        raise error

    monkeypatch.setattr(asyncio, "open_connection", failing_connect)
    health = registry()
    health.add("dep", tcp_check("db.internal", 5432))
    result = await health.run_check("dep")
    assert result.status is CheckStatus.FAIL
    assert result.message == f"connect db.internal:5432: {reason}"


@pytest.mark.parametrize(
    ("host", "port", "field"), [("", 80, "host"), ("h", 0, "port"), ("h", 70000, "port")]
)
def test_tcp_check_validates_its_address(host: str, port: int, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        tcp_check(host, port)


# -- circuit breaker ---------------------------------------------------------------------


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class FakeBreaker:
    state: State


@dataclass
class StringBreaker:
    state: str


async def test_breaker_check_is_unhealthy_only_while_open() -> None:
    breaker = FakeBreaker(State.CLOSED)
    health = registry()
    health.add("breaker", breaker_check(breaker))

    assert (await health.run_probe("readiness")).status is ProbeStatus.OK
    breaker.state = State.OPEN
    report = await health.run_probe("readiness")
    assert report.status is ProbeStatus.FAIL
    assert report.checks[0].message == "circuit open"
    breaker.state = State.HALF_OPEN
    half = await health.run_check("breaker")
    assert half.ok
    assert half.message.startswith("half-open")


async def test_breaker_check_accepts_plain_string_states() -> None:
    breaker = StringBreaker("open")
    health = registry()
    health.add("breaker", breaker_check(breaker))
    assert not (await health.run_check("breaker")).ok
    breaker.state = "closed"
    assert (await health.run_check("breaker")).ok
    breaker.state = "exploded"
    result = await health.run_check("breaker")
    assert result.message == "unknown breaker state 'exploded'"


def test_breaker_state_name_normalises() -> None:
    assert breaker_state_name(FakeBreaker(State.HALF_OPEN)) == "half_open"
    assert breaker_state_name(StringBreaker("HALF-OPEN")) == "half_open"


def test_breaker_check_needs_a_state() -> None:
    with pytest.raises(ValueError, match=r"^breaker:"):
        breaker_check(object())  # type: ignore[arg-type]
