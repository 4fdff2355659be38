"""A throwaway PostgreSQL server for tests: one per test session, on loopback only.

:func:`start_server` runs ``initdb`` into a fresh temporary directory and starts the server
with ``pg_ctl``, listening on 127.0.0.1 at a free port with its unix socket inside the same
directory and ``trust`` authentication, so nothing outside the machine can reach it and no
password is needed. When the tests run as root (as CI does) PostgreSQL refuses to run, so the
commands run as the ``postgres`` user, who then owns the directory. :meth:`PgServer.stop`
kills the server (``-m immediate``: nothing it holds is worth a clean shutdown) and deletes
the directory.

Durability is switched off (``fsync``, ``synchronous_commit``, ``full_page_writes``): the data
dies with the session anyway, and it keeps start-up and every commit fast.

The binaries come from the Debian ``postgresql`` package (``/usr/lib/postgresql/<v>/bin``),
or from ``PHALANX_PG_BIN`` when set. Their absence raises :class:`PostgresUnavailable`, which
the fixture turns into a failure, not a skip: CI installs the package (``.ci/run``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from loopback import free_port

__all__ = ["PgServer", "PostgresUnavailable", "find_bin_dir", "start_server"]

START_TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 60
SERVER_USER = "postgres"  # the OS user the server runs as when the tests run as root
SUPERUSER = "postgres"  # the database superuser initdb creates


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing or the server would not start."""


def find_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: the newest installed major version."""
    override = os.environ.get("PHALANX_PG_BIN")
    candidates = [Path(override)] if override else Path("/usr/lib/postgresql").glob("*/bin")
    usable = [c for c in candidates if (c / "initdb").is_file()]
    if not usable:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb); "
            "install them with `apt-get install -y postgresql` (.ci/run does this), "
            "or point PHALANX_PG_BIN at the directory holding initdb and pg_ctl"
        )

    def major(path: Path) -> tuple[int, str]:
        version = path.parent.name
        return (int(version) if version.isdigit() else -1, version)

    return max(usable, key=major)


@dataclass
class PgServer:
    """A running server: connect with :attr:`dsn` (database ``postgres``, superuser)."""

    bin_dir: Path
    base_dir: Path
    port: int
    as_user: str | None
    start_s: float = 0.0
    _stopped: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "socket"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / tool), *args]
        if self.as_user is not None:
            command = ["runuser", "-u", self.as_user, "--", *command]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
            cwd=self.base_dir,  # the server user may not be allowed into the caller's cwd
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """Kill the server and delete its directory; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self.run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def start_server() -> PgServer:
    """Initialise and start a server in a new temporary directory (see the module docstring)."""
    bin_dir = find_bin_dir()
    started = time.monotonic()
    as_user = SERVER_USER if os.geteuid() == 0 else None
    base_dir = Path(tempfile.mkdtemp(prefix="phalanx-pg-"))
    server = PgServer(bin_dir=bin_dir, base_dir=base_dir, port=free_port(), as_user=as_user)
    try:
        server.socket_dir.mkdir()
        if as_user is not None:
            try:
                account = pwd.getpwnam(as_user)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, but there is no {as_user!r} user to run PostgreSQL as "
                    "(the postgresql package creates it)"
                ) from None
            for path in (base_dir, server.socket_dir):
                os.chown(path, account.pw_uid, account.pw_gid)
        _check(
            server,
            server.run(
                "initdb",
                "-D",
                str(server.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ),
            "initdb",
        )
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={server.port}",
                f"-c unix_socket_directories={server.socket_dir}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=50",
            ]
        )
        _check(
            server,
            server.run(
                "pg_ctl",
                "start",
                "-D",
                str(server.data_dir),
                "-l",
                str(server.log_path),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
            ),
            "pg_ctl start",
        )
    except BaseException:
        with contextlib.suppress(Exception):
            server.stop()
        raise
    server.start_s = time.monotonic() - started
    return server


def _check(server: PgServer, result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise PostgresUnavailable(
            f"{what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}\n"
            f"server log:\n{server.log_tail()}"
        )
