"""A throwaway cluster of ``phalanx node`` processes for one chaos run.

:class:`ChaosCluster` starts every member as a child process in its own process group (so a
signal reaches the node and nothing else), on free loopback ports, with ``--admin`` on a
loopback HTTP port, each logging to ``<root>/n<id>.log``. It is what the nemesis acts on:
:meth:`~ChaosCluster.kill` (SIGKILL), :meth:`~ChaosCluster.start` again from the same data
directory, :meth:`~ChaosCluster.pause`/:meth:`~ChaosCluster.resume` (SIGSTOP/SIGCONT), and
:meth:`~ChaosCluster.faults` (``POST /admin/faults``). :meth:`~ChaosCluster.stop_all`, called
by ``async with`` on the way out whatever happened, resumes and kills every process group
and waits for them (bounded).

``node_command`` is the argument vector that runs ``phalanx node`` (default: this Python
running ``phalanx.cli.main``); the tests give another one to start deliberately weakened nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import msgspec

from phalanx.client import AsyncClient
from phalanx.errors import PhalanxError
from phalanx.node.client_protocol import NodeStatus

__all__ = [
    "ADMIN_TIMEOUT_S",
    "NODES_MAX",
    "ChaosCluster",
    "ClusterStartError",
    "default_node_command",
]

HOST: Final = "127.0.0.1"
#: Most members a chaos cluster may have.
NODES_MAX: Final = 9
#: How long one admin request may take (a paused node never answers).
ADMIN_TIMEOUT_S: Final = 2.0
#: How long stopping waits for a killed process to be reaped.
REAP_TIMEOUT_S: Final = 5.0
#: How long one status request may take while waiting for a leader.
STATUS_TIMEOUT_S: Final = 1.0
_RESPONSE_BYTES_MAX: Final = 1 << 20
_POLL_INTERVAL_S: Final = 0.1


class ClusterStartError(PhalanxError):
    """The cluster did not come up (no leader in time, or a process exited at once)."""


def default_node_command() -> list[str]:
    return [sys.executable, "-c", "from phalanx.cli.main import main; main()"]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class ChaosCluster:
    """``nodes`` members (ids 1..nodes) under ``root``; see the module docstring."""

    def __init__(
        self,
        root: Path,
        nodes: int,
        *,
        tick_ms: int = 20,
        fsync: bool = True,
        node_command: Sequence[str] | None = None,
        cluster_id: str = "chaos",
    ) -> None:
        if not 1 <= nodes <= NODES_MAX:
            raise ValueError(f"nodes: 1..{NODES_MAX}, got {nodes}")
        self.root = root
        self.ids = tuple(range(1, nodes + 1))
        self.tick_ms = tick_ms
        self.fsync = fsync
        self.cluster_id = cluster_id
        self.node_command = list(node_command or default_node_command())
        ports = _free_ports(3 * nodes)
        self.peer = {i: (HOST, ports[3 * k]) for k, i in enumerate(self.ids)}
        self.client = {i: (HOST, ports[3 * k + 1]) for k, i in enumerate(self.ids)}
        self.http = {i: (HOST, ports[3 * k + 2]) for k, i in enumerate(self.ids)}
        self.spec = ",".join(
            f"{i}={self.peer[i][0]}:{self.peer[i][1]}/{self.client[i][0]}:{self.client[i][1]}"
            for i in self.ids
        )
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.paused: set[int] = set()
        self.starts = 0

    # -- addresses ----------------------------------------------------------------------------

    def endpoints(self, first: int | None = None) -> list[str]:
        """Every member's client address, starting with ``first``'s (then in ring order)."""
        ids = list(self.ids)
        if first is not None:
            k = ids.index(first)
            ids = ids[k:] + ids[:k]
        return [f"{self.client[i][0]}:{self.client[i][1]}" for i in ids]

    def node_of(self, endpoint: tuple[str, int] | None) -> int | None:
        return next((i for i, a in self.client.items() if a == endpoint), None)

    def log_path(self, node_id: int) -> Path:
        return self.root / f"n{node_id}.log"

    # -- processes ----------------------------------------------------------------------------

    def alive(self, node_id: int) -> bool:
        process = self.processes.get(node_id)
        return process is not None and process.poll() is None

    def start(self, node_id: int, *, join: bool = False) -> None:
        """Start ``node_id`` (again, from its data directory; with ``join``, as a member
        added at runtime); a no-op when it runs."""
        if self.alive(node_id):
            return
        host, port = self.peer[node_id]
        chost, cport = self.client[node_id]
        hhost, hport = self.http[node_id]
        argv = [
            *self.node_command,
            "node",
            "--id",
            str(node_id),
            "--data-dir",
            str(self.root / f"n{node_id}"),
            "--peer-listen",
            f"{host}:{port}",
            "--client-listen",
            f"{chost}:{cport}",
            "--http-listen",
            f"{hhost}:{hport}",
            "--admin",
            "--cluster",
            self.spec,
            "--cluster-id",
            self.cluster_id,
            "--tick-ms",
            str(self.tick_ms),
            "--fsync" if self.fsync else "--no-fsync",
            *(["--join"] if join else []),
        ]
        with self.log_path(node_id).open("ab") as log:
            self.processes[node_id] = subprocess.Popen(  # noqa: S603 - our own argv
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.paused.discard(node_id)
        self.starts += 1

    def _signal(self, node_id: int, signum: signal.Signals) -> bool:
        process = self.processes.get(node_id)
        if process is None or process.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        return True

    def kill(self, node_id: int) -> bool:
        """SIGKILL ``node_id``'s process group and reap it; False when it was not running."""
        self._signal(node_id, signal.SIGCONT)
        killed = self._signal(node_id, signal.SIGKILL)
        process = self.processes.get(node_id)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=REAP_TIMEOUT_S)
        self.paused.discard(node_id)
        return killed

    def pause(self, node_id: int) -> bool:
        """SIGSTOP ``node_id``: it keeps its sockets but answers nothing."""
        if self._signal(node_id, signal.SIGSTOP):
            self.paused.add(node_id)
            return True
        return False

    def resume(self, node_id: int) -> bool:
        self.paused.discard(node_id)
        return self._signal(node_id, signal.SIGCONT)

    def stop_all(self) -> None:
        """Resume and kill every process group, then reap them (bounded)."""
        for node_id in self.processes:
            self._signal(node_id, signal.SIGCONT)
            self._signal(node_id, signal.SIGKILL)
        deadline = time.monotonic() + REAP_TIMEOUT_S
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.01, deadline - time.monotonic()))
        self.processes.clear()
        self.paused.clear()

    async def __aenter__(self) -> ChaosCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for node_id in self.ids:
                self.start(node_id)
        except BaseException:
            self.stop_all()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    # -- status and faults --------------------------------------------------------------------

    async def leader(self) -> int | None:
        """The leader that a running, unpaused member reports, or None."""
        for node_id in self.ids:
            if not self.alive(node_id) or node_id in self.paused:
                continue
            status = await self._status(node_id)
            if status is not None and status.leader and status.leader in self.ids:
                return int(status.leader)
        return None

    async def _status(self, node_id: int) -> NodeStatus | None:
        client = AsyncClient(
            [self.endpoints(node_id)[0]],
            request_timeout_s=STATUS_TIMEOUT_S,
            connect_timeout_s=STATUS_TIMEOUT_S,
            total_timeout_s=STATUS_TIMEOUT_S,
            attempts_max=1,
        )
        try:
            async with asyncio.timeout(2 * STATUS_TIMEOUT_S):
                return await client.status()
        except (PhalanxError, OSError, TimeoutError):
            return None
        finally:
            await client.aclose()

    async def wait_leader(self, timeout_s: float) -> int:
        """The leader, once one is elected; ``ClusterStartError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node_id, process in self.processes.items():
                code = process.poll()
                if code is not None and self.starts <= len(self.ids):
                    raise ClusterStartError(
                        f"node {node_id} exited with status {code}: see {self.log_path(node_id)}"
                    )
            leader = await self.leader()
            if leader is not None:
                return leader
            await asyncio.sleep(_POLL_INTERVAL_S)
        raise ClusterStartError(f"no leader within {timeout_s:g} s (logs in {self.root})")

    async def faults(self, node_id: int, request: dict[str, Any]) -> dict[str, Any] | None:
        """``POST /admin/faults`` to ``node_id``; its answer, or None when it did not answer
        (killed, paused or slow)."""
        if not self.alive(node_id) or node_id in self.paused:
            return None
        host, port = self.http[node_id]
        body = msgspec.json.encode(request)
        head = (
            f"POST /admin/faults HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(head + body)
                    await writer.drain()
                    data = b""
                    while len(data) <= _RESPONSE_BYTES_MAX:
                        chunk = await reader.read(_RESPONSE_BYTES_MAX)
                        if not chunk:
                            break
                        data += chunk
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError):
            return None
        status_line, _, rest = data.partition(b"\r\n")
        _, _, payload = rest.partition(b"\r\n\r\n")
        if b" 200 " not in status_line + b" ":
            return None
        try:
            answer = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            return None
        return answer if isinstance(answer, dict) else None
