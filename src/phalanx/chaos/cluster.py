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

With ``proxied``, one more child process runs ``phalanx chaos proxy serve`` (see
:mod:`phalanx.chaos.proxy`) with one proxy per member, ``peer-<id>``, in front of that
member's peer port: the cluster's member list gives the proxies' addresses, so every Raft
connection to a member passes through its proxy, and byte-stream toxics (bandwidth, resets,
slow closes, black holes) act on real TCP connections. :meth:`~ChaosCluster.add_toxic` and
:meth:`~ChaosCluster.reset_proxies` drive the proxy's HTTP API.

With ``netns`` (root only), every member runs in its own Linux network namespace of a
:class:`~phalanx.chaos.netns.NetnsNetwork`, its peer and client ports on its namespace's
address (the runner reaches them through the network's bridge), and
:meth:`~ChaosCluster.isolate`/:meth:`~ChaosCluster.heal` cut and restore links with
iptables rules in the namespaces instead of the admin endpoint, which stays loopback-only
inside each namespace, out of reach: :meth:`~ChaosCluster.faults` then answers None. The
network is built on ``async with`` and removed on the way out, after the processes.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import msgspec

from phalanx.chaos.netns import NetnsError, NetnsNetwork
from phalanx.client import AsyncClient
from phalanx.errors import PhalanxError
from phalanx.node.client_protocol import NodeStatus
from phalanx.node.cluster_spec import format_address

__all__ = [
    "ADMIN_TIMEOUT_S",
    "NODES_MAX",
    "PROXY_START_S_MAX",
    "SPARES_MAX",
    "ChaosCluster",
    "ClusterFaultError",
    "ClusterStartError",
    "default_node_command",
]

HOST: Final = "127.0.0.1"
#: Most members a chaos cluster may have.
NODES_MAX: Final = 9
#: Most spare member slots one cluster reserves (ids for members that replace others).
SPARES_MAX: Final = 24
#: How long one admin request may take (a paused node never answers).
ADMIN_TIMEOUT_S: Final = 2.0
#: How long stopping waits for a killed process to be reaped.
REAP_TIMEOUT_S: Final = 5.0
#: How long the proxy process may take to answer its admin API after it starts.
PROXY_START_S_MAX: Final = 10.0
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
    """``nodes`` members (ids 1..nodes) under ``root``, and ``spares`` slots (the next ids)
    for members added in the place of removed ones; see the module docstring."""

    def __init__(
        self,
        root: Path,
        nodes: int,
        *,
        tick_ms: int = 20,
        fsync: bool = True,
        node_command: Sequence[str] | None = None,
        cluster_id: str = "chaos",
        proxied: bool = False,
        seed: int = 0,
        netns: bool = False,
        spares: int = 0,
    ) -> None:
        if not 1 <= nodes <= NODES_MAX:
            raise ValueError(f"nodes: 1..{NODES_MAX}, got {nodes}")
        if not 0 <= spares <= SPARES_MAX:
            raise ValueError(f"spares: 0..{SPARES_MAX}, got {spares}")
        if netns and proxied:
            raise ValueError("the peer proxies do not run on network namespaces")
        self.root = root
        #: The current members (changed by :meth:`replace_member`).
        self.ids = tuple(range(1, nodes + 1))
        #: Every member slot: the first members, then ``spares`` ids with addresses (and
        #: proxies, namespaces) ready for members that replace others during the run.
        self.slots = tuple(range(1, nodes + spares + 1))
        self.spares = list(self.slots[nodes:])
        self.tick_ms = tick_ms
        self.fsync = fsync
        self.cluster_id = cluster_id
        self.node_command = list(node_command or default_node_command())
        self.proxied = proxied
        self.seed = seed
        #: The members' namespaces (``netns``), or None: all of them on loopback.
        self.network = NetnsNetwork(self.slots) if netns else None
        #: Why removing the network namespaces failed after a body that raised nothing
        #: (empty: nothing failed, or no ``netns``); the runner records it in its result.
        self.teardown_errors: list[str] = []
        hosts = {i: self.network.address(i) if self.network else HOST for i in self.slots}
        ports = _free_ports(4 * len(self.slots) + 1)
        self.peer = {i: (hosts[i], ports[4 * k]) for k, i in enumerate(self.slots)}
        self.client = {i: (hosts[i], ports[4 * k + 1]) for k, i in enumerate(self.slots)}
        self.http = {i: (HOST, ports[4 * k + 2]) for k, i in enumerate(self.slots)}
        #: Where the other members reach each member's peer port: its proxy, or the port.
        self.peer_advertised = (
            {i: (HOST, ports[4 * k + 3]) for k, i in enumerate(self.slots)}
            if proxied
            else dict(self.peer)
        )
        self.proxy_admin = (HOST, ports[-1])
        self.proxy_process: subprocess.Popen[bytes] | None = None
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.paused: set[int] = set()
        self.starts = 0

    # -- addresses ----------------------------------------------------------------------------

    @property
    def spec(self) -> str:
        """The current members as ``phalanx node --cluster`` takes them."""
        return self.spec_of(self.ids)

    def spec_of(self, ids: Sequence[int]) -> str:
        return ",".join(
            f"{i}={format_address(self.peer_advertised[i])}/{format_address(self.client[i])}"
            for i in ids
        )

    def take_spare(self) -> int:
        """A slot for a new member; ``ClusterFaultError`` when none is left."""
        if not self.spares:
            raise ClusterFaultError("no spare member slot left")
        return self.spares.pop(0)

    def replace_member(self, old: int, new: int) -> None:
        """Record that ``new`` has taken ``old``'s place among the members."""
        self.ids = tuple(sorted((set(self.ids) - {old}) | {new}))

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
            self.spec_of(sorted({*self.ids, node_id})),
            "--cluster-id",
            self.cluster_id,
            "--tick-ms",
            str(self.tick_ms),
            "--fsync" if self.fsync else "--no-fsync",
            *(["--join"] if join else []),
        ]
        if self.network is not None:
            argv = self.network.wrap(node_id, argv)
        self.processes[node_id] = _spawn(argv, self.log_path(node_id))
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
        """Resume and kill every process group (the proxy's too), then reap them (bounded)."""
        for node_id in self.processes:
            self._signal(node_id, signal.SIGCONT)
            self._signal(node_id, signal.SIGKILL)
        processes = list(self.processes.values())
        if self.proxy_process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proxy_process.pid, signal.SIGKILL)
            processes.append(self.proxy_process)
        deadline = time.monotonic() + REAP_TIMEOUT_S
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.01, deadline - time.monotonic()))
        self.processes.clear()
        self.paused.clear()
        self.proxy_process = None

    async def __aenter__(self) -> ChaosCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.network is not None:
            try:
                self.network.setup()
            except NetnsError as exc:
                raise ClusterStartError(f"the network namespaces: {exc}") from exc
        try:
            if self.proxied:
                await self._start_proxy()
            for node_id in self.ids:
                self.start(node_id)
        except BaseException as exc:
            self.stop_all()
            if self.network is not None:
                self.network.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _start_proxy(self) -> None:
        proxies = [
            {
                "name": f"peer-{i}",
                "listen": format_address(self.peer_advertised[i]),
                "upstream": format_address(self.peer[i]),
                "enabled": True,
            }
            for i in self.slots
        ]
        config = self.root / "proxies.json"
        config.write_bytes(msgspec.json.encode(proxies))
        argv = [
            *default_node_command(),
            "chaos",
            "proxy",
            "serve",
            "--listen",
            format_address(self.proxy_admin),
            "--config",
            str(config),
            "--seed",
            str(self.seed),
        ]
        self.proxy_process = _spawn(argv, self.root / "proxy.log")
        deadline = time.monotonic() + PROXY_START_S_MAX
        while time.monotonic() < deadline:
            if self.proxy_process.poll() is not None:
                raise ClusterStartError(f"the proxy exited: see {self.root / 'proxy.log'}")
            status, _ = await _http_json(self.proxy_admin, "GET", "/proxies")
            if status == 200:
                return
            await asyncio.sleep(_POLL_INTERVAL_S)
        raise ClusterStartError(f"the proxy did not answer within {PROXY_START_S_MAX:g} s")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
        if self.network is not None:
            errors = self.network.teardown(raise_errors=False)
            if exc is not None:
                for error in errors:
                    exc.add_note(f"and removing the network namespaces failed: {error}")
            else:
                self.teardown_errors = [str(error) for error in errors]

    # -- status and faults --------------------------------------------------------------------

    async def leader(self) -> int | None:
        """The leader that a running, unpaused member reports, or None."""
        for node_id in self.ids:
            if not self.alive(node_id) or node_id in self.paused:
                continue
            status = await self.status(node_id)
            if status is not None and status.leader and status.leader in self.ids:
                return int(status.leader)
        return None

    async def status(self, node_id: int) -> NodeStatus | None:
        """``node_id``'s own status (role, leader, members), or None when it did not answer."""
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
        (killed, paused or slow; always with ``netns``: out of reach)."""
        if self.network is not None or not self.alive(node_id) or node_id in self.paused:
            return None
        status, answer = await _http_json(self.http[node_id], "POST", "/admin/faults", request)
        return answer if status == 200 and isinstance(answer, dict) else None

    async def isolate(self, cuts: Mapping[int, Sequence[int]]) -> list[int]:
        """Cut each member of ``cuts`` from its peers there (a grudge), in both directions;
        the members that did not answer (none with ``netns``: the rules are in the
        namespaces, which outlive the processes)."""
        if self.network is not None:
            await asyncio.to_thread(self.network.partition, cuts)
            return []
        return await self._post_all({i: {"isolate": list(c)} for i, c in cuts.items() if c})

    async def heal(self) -> list[int]:
        """Restore every link (without ``netns`` also every toxic and clock offset: the
        admin endpoint's ``heal``); the members that did not answer."""
        if self.network is not None:
            await asyncio.to_thread(self.network.heal)
            return []
        return await self._post_all({i: {"heal": True} for i in self.ids})

    async def _post_all(self, requests: Mapping[int, dict[str, Any]]) -> list[int]:
        answers = await asyncio.gather(*(self.faults(i, r) for i, r in requests.items()))
        return sorted(i for i, a in zip(requests, answers, strict=True) if a is None)

    async def add_toxic(self, node_id: int, toxic: dict[str, Any]) -> dict[str, Any]:
        """Add ``toxic`` (Toxiproxy's form: type, stream, attributes, ...) to the proxy in
        front of ``node_id``; ``ClusterFaultError`` when the proxy refuses or is absent."""
        if not self.proxied:
            raise ClusterFaultError("this cluster runs without proxies")
        path = f"/proxies/peer-{node_id}/toxics"
        status, answer = await _http_json(self.proxy_admin, "POST", path, toxic)
        if status != 200 or not isinstance(answer, dict):
            raise ClusterFaultError(f"proxy peer-{node_id}: {status} {answer}")
        return answer

    async def reset_proxies(self) -> bool:
        """Remove every toxic and enable every proxy; False when the proxy did not answer
        (True at once without proxies)."""
        if not self.proxied:
            return True
        status, _ = await _http_json(self.proxy_admin, "POST", "/reset")
        return status in {200, 204}


class ClusterFaultError(PhalanxError):
    """A fault could not be injected (the proxy refused it, or there is no proxy)."""


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """``argv`` as a child in its own process group (so a signal reaches it and nothing
    else), its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - our own argv
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def _http_json(
    address: tuple[str, int], method: str, path: str, request: Any = None
) -> tuple[int, Any]:
    """One HTTP/1.1 request with a JSON body (when ``request`` is not None) to a loopback
    admin endpoint: ``(status, decoded JSON answer or None)``; ``(0, None)`` when nothing
    came back within :data:`ADMIN_TIMEOUT_S`."""
    host, port = address
    body = b"" if request is None else msgspec.json.encode(request)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
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
        return 0, None
    status_line, _, rest = data.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    parts = status_line.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    try:
        return status, msgspec.json.decode(payload) if payload else None
    except msgspec.DecodeError:
        return status, None
