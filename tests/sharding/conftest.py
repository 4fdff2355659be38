"""Fixtures of the sharding tests: fresh PostgreSQL databases on the session's server; and
the write-fence times of the online moves, listed at the end of the run."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from _pytest.terminal import TerminalReporter


@pytest.fixture
def make_pg_database(postgres_server: Any) -> Callable[[], str]:
    """Create a new database on the session's server and return its conninfo."""

    def create() -> str:
        name = f"shard_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_server.dsn, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return str(postgres_server.dsn).replace("dbname=postgres", f"dbname={name}")

    return create


@pytest.fixture
def pg_dsn(make_pg_database: Callable[[], str]) -> str:
    return make_pg_database()


_FENCES: list[tuple[str, float, int]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" or not report.passed:
        return
    properties = dict(report.user_properties)
    if "write_fence_ms" in properties:
        name = report.nodeid.rpartition("[")[2].rstrip("]")
        writes = int(properties.get("writes_during_move", 0))
        _FENCES.append((name, float(properties["write_fence_ms"]), writes))


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not _FENCES:
        return
    terminalreporter.section("online moves: writes fenced at cut-over")
    for name, fence_ms, writes in sorted(_FENCES):
        terminalreporter.write_line(
            f"{name:24s} {fence_ms:8.1f} ms   ({writes} writes acknowledged)"
        )
