"""A cluster of ``phalanx node`` processes on this machine: its record and its processes.

:class:`LocalCluster` is what ``phalanx cluster up`` writes to ``<data-dir>/cluster.json``:
the cluster's settings and, per member, its addresses, data directory, log file and the pid of
its process. Node processes are started detached (their own session, stdin from
``/dev/null``, stdout and stderr appended to the member's log file), so they outlive the
command that started them; later commands find them through the record.

Before a pid from the record is signalled, :func:`is_node_process` checks that the process is
still that member's ``phalanx node`` (its command line names the member's data directory), so
a pid reused by the system is never touched.

:func:`collect_status` asks every member for its status at once, each bounded by a timeout:
the numbers ``phalanx cluster status`` and the demo show.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

from phalanx.errors import PhalanxError

if TYPE_CHECKING:
    from phalanx.node.client_protocol import NodeStatus

__all__ = [
    "CLUSTER_FILE",
    "DEFAULT_DATA_DIR",
    "NODES_MAX",
    "ClusterError",
    "LocalCluster",
    "LocalMember",
    "MemberStatus",
    "collect_status",
    "is_alive",
    "is_node_process",
    "node_supports",
    "wait_leader",
]

CLUSTER_FILE: Final = "cluster.json"
DEFAULT_DATA_DIR: Final = ".phalanx"
HOST: Final = "127.0.0.1"
#: Most members a local cluster may have.
NODES_MAX: Final = 9
#: How long one status request may take before the member counts as unreachable.
STATUS_TIMEOUT_S: Final = 1.5
#: How long a graceful stop (SIGTERM) may take before SIGKILL: a leader first hands its
#: leadership over, which takes up to an election timeout.
STOP_WAIT_S_MAX: Final = 10.0
#: How long ``up`` waits for the members to elect a leader (process start included).
LEADER_WAIT_S_MAX: Final = 30.0
#: Committed entries a member may have left to apply and still count as healthy: a status
#: taken while entries commit often finds a few of them not applied yet.
APPLY_LAG_ENTRIES_MAX: Final = 64
_POLL_INTERVAL_S: Final = 0.05
_LOG_TAIL_BYTES: Final = 2000
_RECORD_VERSION: Final = 1


class ClusterError(PhalanxError):
    """A local cluster could not be started, found or stopped; the message says why."""


class LocalMember(msgspec.Struct, kw_only=True):
    """One member of a local cluster. ``pid`` is None while no process runs it; ``join``
    members were added at runtime and start with ``--join``."""

    id: int
    peer: str
    client: str
    data_dir: str
    log: str
    http: str | None = None
    pid: int | None = None
    join: bool = False


class LocalCluster(msgspec.Struct, kw_only=True):
    """The record of a local cluster, kept in ``<root>/cluster.json``."""

    root: str
    cluster_id: str
    tick_ms: int
    fsync: bool
    members: list[LocalMember]
    endpoints: list[str] = msgspec.field(default_factory=list)
    version: int = _RECORD_VERSION

    # -- the record ---------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return Path(self.root) / CLUSTER_FILE

    @classmethod
    def load(cls, root: Path | str) -> LocalCluster:
        """The record in ``root``; ``ClusterError`` when there is none or it is unreadable."""
        path = Path(root) / CLUSTER_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ClusterError(
                f"no local cluster in {root} (no {CLUSTER_FILE}; start one with "
                "`phalanx cluster up`)"
            ) from None
        try:
            record = msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as exc:
            raise ClusterError(f"{path}: not a cluster record: {exc}") from None
        if record.version != _RECORD_VERSION:
            raise ClusterError(
                f"{path}: record version {record.version}, this phalanx reads {_RECORD_VERSION}"
            )
        return record

    def save(self) -> None:
        """Write the record atomically (a temporary file renamed over the old one)."""
        self.endpoints = [m.client for m in self.members]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_bytes(msgspec.json.format(msgspec.json.encode(self), indent=2) + b"\n")
        temporary.replace(self.path)

    def member(self, node_id: int) -> LocalMember:
        for member in self.members:
            if member.id == node_id:
                return member
        known = ", ".join(str(m.id) for m in self.members)
        raise ClusterError(f"no member {node_id} in this cluster (members: {known})")

    def spec(self) -> str:
        """The ``--cluster`` argument naming every member."""
        return ",".join(f"{m.id}={m.peer}/{m.client}" for m in self.members)

    # -- processes ----------------------------------------------------------------------------

    def argv(self, member: LocalMember) -> list[str]:
        """The command line that runs ``member``."""
        args = [
            sys.executable,
            "-m",
            "phalanx.cli.main",
            "node",
            "--id",
            str(member.id),
            "--data-dir",
            member.data_dir,
            "--peer-listen",
            member.peer,
            "--client-listen",
            member.client,
            "--cluster",
            self.spec(),
            "--cluster-id",
            self.cluster_id,
            "--tick-ms",
            str(self.tick_ms),
            "--fsync" if self.fsync else "--no-fsync",
        ]
        if member.http is not None:
            args += ["--http-listen", member.http]
        if member.join:
            args.append("--join")
        return args

    def start(self, member: LocalMember) -> int:
        """Start ``member``'s process, detached; records and returns its pid."""
        if member.pid is not None and is_node_process(member.pid, member.data_dir):
            raise ClusterError(f"member {member.id} already runs (pid {member.pid})")
        Path(member.data_dir).mkdir(parents=True, exist_ok=True)
        member.pid = spawn(self.argv(member), Path(member.log))
        return member.pid

    def alive(self, member: LocalMember) -> bool:
        return member.pid is not None and is_node_process(member.pid, member.data_dir)

    def kill(self, member: LocalMember) -> None:
        """SIGKILL ``member``'s process (no close, nothing flushed) and wait for it to go."""
        if member.pid is not None and self.alive(member):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.pid, signal.SIGKILL)
            wait_exit([member.pid], STOP_WAIT_S_MAX)
        member.pid = None

    def stop(self, members: Sequence[LocalMember], wait_s: float = STOP_WAIT_S_MAX) -> list[int]:
        """SIGTERM ``members``, wait up to ``wait_s``, SIGKILL stragglers; the ids killed."""
        running = [m for m in members if self.alive(m)]
        for member in running:
            assert member.pid is not None  # noqa: S101 - alive() checked it
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.pid, signal.SIGTERM)
        stragglers = set(wait_exit([m.pid for m in running if m.pid is not None], wait_s))
        killed = [m.id for m in running if m.pid in stragglers]
        for member in running:
            if member.pid in stragglers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.pid, signal.SIGKILL)
        wait_exit(list(stragglers), wait_s)
        for member in members:
            member.pid = None
        return killed

    def log_tail(self, member: LocalMember) -> str:
        try:
            with Path(member.log).open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""


def create(
    root: Path | str,
    nodes: int,
    *,
    base_port: int | None = None,
    cluster_id: str = "phalanx",
    tick_ms: int = 100,
    fsync: bool = True,
    http: bool | None = None,
    ports: Sequence[int] | None = None,
) -> LocalCluster:
    """A new record for ``nodes`` members under ``root`` (nothing is started).

    Ports: with ``base_port``, member ``k`` (from 0) gets ``base_port + stride * k`` for its
    peers, the next port for clients and, when the node serves HTTP, the one after; without
    it, ``ports`` (given explicitly, ``stride`` per member), or else ports the system has
    free now.
    """
    if not 1 <= nodes <= NODES_MAX:
        raise ClusterError(f"--nodes: between 1 and {NODES_MAX}, got {nodes}")
    root_path = Path(root).resolve()
    with_http = node_supports("http_listen") if http is None else http
    needed = nodes * (3 if with_http else 2)
    if ports is not None:
        if len(ports) != needed or len(set(ports)) != needed:
            raise ClusterError(
                f"--ports: {needed} distinct ports needed ({'3' if with_http else '2'} per "
                f"member: peer, client{', http' if with_http else ''}), got {len(ports)}"
            )
        ports = list(ports)
        check_free(ports)
    else:
        ports = allocate_ports(needed, base_port)
    members = []
    for k in range(nodes):
        stride = 3 if with_http else 2
        node_id = k + 1
        members.append(
            LocalMember(
                id=node_id,
                peer=f"{HOST}:{ports[stride * k]}",
                client=f"{HOST}:{ports[stride * k + 1]}",
                http=f"{HOST}:{ports[stride * k + 2]}" if with_http else None,
                data_dir=str(root_path / f"n{node_id}"),
                log=str(root_path / f"n{node_id}.log"),
            )
        )
    return LocalCluster(
        root=str(root_path), cluster_id=cluster_id, tick_ms=tick_ms, fsync=fsync, members=members
    )


def new_member(cluster: LocalCluster, *, base_port: int | None = None) -> LocalMember:
    """A member to add to ``cluster``: the next id, free ports (or ports from ``base_port``)."""
    node_id = max((m.id for m in cluster.members), default=0) + 1
    with_http = any(m.http is not None for m in cluster.members)
    ports = allocate_ports(3 if with_http else 2, base_port)
    root = Path(cluster.root)
    return LocalMember(
        id=node_id,
        peer=f"{HOST}:{ports[0]}",
        client=f"{HOST}:{ports[1]}",
        http=f"{HOST}:{ports[2]}" if with_http else None,
        data_dir=str(root / f"n{node_id}"),
        log=str(root / f"n{node_id}.log"),
        join=True,
    )


def node_supports(option: str) -> bool:
    """Whether ``phalanx node`` has the option whose parameter name is ``option``."""
    from phalanx.cli.node import node

    return any(param.name == option for param in node.params)


def allocate_ports(count: int, base_port: int | None) -> list[int]:
    """``count`` ports: consecutive from ``base_port`` (each checked free), else from the OS."""
    if base_port is None:
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
        try:
            for sock in sockets:
                sock.bind((HOST, 0))
            return [int(sock.getsockname()[1]) for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
    if not 1024 <= base_port <= 65535 - count:
        raise ClusterError(f"--base-port: between 1024 and {65535 - count}, got {base_port}")
    ports = list(range(base_port, base_port + count))
    check_free(ports)
    return ports


def check_free(ports: Sequence[int]) -> None:
    """``ClusterError`` naming the first of ``ports`` that cannot be bound on 127.0.0.1."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError as exc:
                raise ClusterError(f"port {port} is not free: {exc.strerror}") from None


# -- processes --------------------------------------------------------------------------------


def spawn(argv: Sequence[str], log: Path) -> int:
    """Start ``argv`` in a new session, stdin from /dev/null, stdout and stderr appended to
    ``log``; returns its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    return os.posix_spawn(
        argv[0],
        list(argv),
        dict(os.environ),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), flags, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` runs; reaps it when it is a child that ended."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: ask the system
    else:
        if reaped == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def is_node_process(pid: int, data_dir: str) -> bool:
    """Whether ``pid`` runs and is the ``phalanx node`` of ``data_dir`` (where ``/proc``
    tells; elsewhere, whether it runs)."""
    if not is_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc on this system: trust the pid
    except OSError:
        return True
    if cmdline == [b""]:
        # Between a spawn and the end of its exec the new image has no arguments yet (the
        # spawner resumes before they are set): a process this young is the one spawned.
        return True
    return b"node" in cmdline and os.fsencode(data_dir) in cmdline


def wait_exit(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Wait until every process of ``pids`` ended or ``timeout_s`` passed; those still alive."""
    waiting = list(pids)
    deadline = time.monotonic() + timeout_s
    while True:
        waiting = [pid for pid in waiting if is_alive(pid)]
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(_POLL_INTERVAL_S)


# -- status -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """What one endpoint said (``status``), or why it said nothing (``error``); ``ready`` is
    the node's ``/ready`` probe (None when it serves no HTTP)."""

    endpoint: str
    status: NodeStatus | None
    error: str | None = None
    ready: bool | None = None

    @property
    def health(self) -> str:
        if self.status is None:
            return "unreachable"
        if self.ready is False:
            return "not ready"
        if self.status.leader == 0:
            return "no leader"
        if self.status.commit_index - self.status.applied_index > APPLY_LAG_ENTRIES_MAX:
            return "catching up"
        return "healthy"


async def collect_status(
    endpoints: Sequence[str],
    *,
    http: Sequence[str | None] | None = None,
    timeout_s: float = STATUS_TIMEOUT_S,
) -> list[MemberStatus]:
    """Every endpoint's status, asked at once, each bounded by ``timeout_s``."""
    from phalanx.cli.endpoints import client_tls
    from phalanx.client import AsyncClient

    https = list(http) if http is not None else [None] * len(endpoints)
    async with AsyncClient(
        endpoints, request_timeout_s=timeout_s, connect_timeout_s=timeout_s, ssl=client_tls()
    ) as client:

        async def one(endpoint: str, http_address: str | None) -> MemberStatus:
            try:
                status = await asyncio.wait_for(client.status(endpoint), timeout_s * 2)
            except (PhalanxError, OSError, TimeoutError) as exc:
                return MemberStatus(endpoint, None, f"{type(exc).__name__}: {exc}")
            ready = None
            if http_address is not None:
                ready = await asyncio.to_thread(_probe_ready, http_address, timeout_s)
            return MemberStatus(endpoint, status, ready=ready)

        return list(
            await asyncio.gather(*(one(e, h) for e, h in zip(endpoints, https, strict=True)))
        )


def _probe_ready(address: str, timeout_s: float) -> bool | None:
    """The node's ``/ready`` answer: True (200), False (another status), None (no answer)."""
    url = f"http://{address}/ready"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as exc:
        return exc.code == 200
    except (OSError, ValueError):
        return None


def wait_leader(cluster: LocalCluster, timeout_s: float = LEADER_WAIT_S_MAX) -> MemberStatus:
    """Wait until a running member says it leads; ``ClusterError`` with the log of a member
    whose process ended, or when no leader emerged within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        for member in cluster.members:
            if member.pid is not None and not cluster.alive(member):
                raise ClusterError(
                    f"member {member.id} exited while starting; its log ({member.log}) "
                    f"ends with:\n{cluster.log_tail(member)}"
                )
        running = [m for m in cluster.members if m.pid is not None]
        statuses = asyncio.run(collect_status([m.client for m in running], timeout_s=0.5))
        for status in statuses:
            if status.status is not None and status.status.role == "leader":
                return status
        if time.monotonic() >= deadline:
            raise ClusterError(f"no leader elected within {timeout_s:.0f} s")
        time.sleep(0.1)
