"""PostgreSQL servers that accept ``PREPARE TRANSACTION``, for the 2PC tests.

``tests/pg.py`` starts servers with ``max_prepared_transactions`` at its default of 0. This
helper starts one the same way, sets the parameter with ``ALTER SYSTEM`` and restarts it
(``pg_ctl restart`` keeps the original options). :func:`crash` kills the postmaster and all
its children with SIGKILL, as a power cut or an OOM kill would, and :func:`restart` brings
the server back, which runs crash recovery: prepared transactions must survive it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg

import pg  # tests/pg.py (tests/ is on sys.path, see pyproject.toml)

PREPARED_MAX = 64
STOP_WAIT_S = 10.0

PgServer = pg.PgServer


def start_tpc_server() -> Any:
    server = pg.start_server()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET max_prepared_transactions = {PREPARED_MAX}")
        restart(server, "-m", "immediate")
    except BaseException:
        server.stop()
        raise
    return server


def restart(server: Any, *mode: str) -> None:
    data = str(server.data_dir)
    if (server.data_dir / "postmaster.pid").exists():
        command = ("pg_ctl", "restart", "-D", data, *mode, "-w", "-l", str(server.log_path))
    else:
        command = ("pg_ctl", "start", "-D", data, "-w", "-l", str(server.log_path))
    result = server.run(*command)
    if result.returncode != 0:
        raise pg.PostgresUnavailable(f"{command}: {result.stderr}\n{server.log_tail()}")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def crash(server: Any) -> None:
    """SIGKILL the postmaster and every backend, then wait until they are gone."""
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    victims = [pid, *_children(pid)]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + STOP_WAIT_S
    while any(Path(f"/proc/{v}").exists() for v in victims) and time.monotonic() < deadline:
        time.sleep(0.01)


def create_database(server: Any, name: str) -> str:
    """Create database ``name`` (dropping an old one) and return its DSN."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return server.dsn.replace("dbname=postgres", f"dbname={name}")
