"""A throwaway Redis server for tests: one per test session, on loopback only.

:func:`start_server` runs ``redis-server`` in the foreground as a child process, listening on
127.0.0.1 at a free port, with persistence off (``--save ""``, ``--appendonly no``) and its
working directory in a fresh temporary directory, then waits until it answers ``PING``.
:meth:`RedisServer.stop` terminates it and deletes the directory. Tests keep apart by giving
each store its own key prefix, so the server is never flushed.

The binary is ``redis-server`` on ``PATH`` (the Debian ``redis-server`` package), or
``PHALANX_REDIS_SERVER`` when set. Its absence raises :class:`RedisUnavailable`, which the
fixture turns into a failure, not a skip: CI installs the package (``.ci/run``).

The readiness probe speaks RESP over a plain socket, so this helper needs no Redis client.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from loopback import free_port

__all__ = ["RedisServer", "RedisUnavailable", "find_binary", "start_server"]

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
PROBE_INTERVAL_S = 0.01
# A free port can be taken by somebody else between probing and binding it: try again.
START_ATTEMPTS_MAX = 3


class RedisUnavailable(RuntimeError):
    """The ``redis-server`` binary is missing or the server would not start."""


def find_binary() -> str:
    """The path of ``redis-server``."""
    override = os.environ.get("PHALANX_REDIS_SERVER")
    found = override if override else shutil.which("redis-server")
    if not found or not Path(found).is_file():
        where = f"at PHALANX_REDIS_SERVER={override}" if override else "on PATH"
        raise RedisUnavailable(
            f"redis-server not found {where}; install it with `apt-get install -y redis-server` "
            "(.ci/run does this), or point PHALANX_REDIS_SERVER at the binary"
        )
    return found


def ping(port: int, *, timeout_s: float = 1.0) -> bool:
    """True when a Redis server on 127.0.0.1:``port`` answers ``PING`` with ``PONG``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A running server: connect with :attr:`url` (database 0, no password)."""

    binary: str
    base_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    start_s: float = 0.0
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """Terminate the server and delete its directory; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=STOP_TIMEOUT_S)
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def _start_once(binary: str, port: int | None) -> RedisServer:
    base_dir = Path(tempfile.mkdtemp(prefix="phalanx-redis-"))
    server = RedisServer(binary=binary, base_dir=base_dir, port=port or free_port())
    try:
        with server.log_path.open("wb") as log:
            server.process = subprocess.Popen(
                [
                    binary,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(server.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(base_dir),
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "yes",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=base_dir,
            )
        deadline_s = time.monotonic() + START_TIMEOUT_S
        while not ping(server.port):
            if server.process.poll() is not None:
                raise RedisUnavailable(
                    f"redis-server exited with {server.process.returncode}:\n{server.log_tail()}"
                )
            if time.monotonic() >= deadline_s:
                raise RedisUnavailable(
                    f"redis-server did not answer PING within {START_TIMEOUT_S:g}s:\n"
                    f"{server.log_tail()}"
                )
            time.sleep(PROBE_INTERVAL_S)
    except BaseException:
        with contextlib.suppress(Exception):
            server.stop()
        raise
    return server


def start_server(port: int | None = None) -> RedisServer:
    """Start a server in a new temporary directory (see the module docstring).

    ``port`` picks the port, for a test that restarts a server where its clients expect it;
    by default a free one is chosen.
    """
    binary = find_binary()
    started = time.monotonic()
    for attempt in range(1, START_ATTEMPTS_MAX + 1):
        try:
            server = _start_once(binary, port)
        except RedisUnavailable:
            if attempt == START_ATTEMPTS_MAX or port is not None:
                raise
            continue
        server.start_s = time.monotonic() - started
        return server
    raise RedisUnavailable("unreachable")  # pragma: no cover - the loop returns or raises
