"""A 3-node Phalanx cluster next to 3-node etcd and PySyncObj clusters, in one run.

Run: ``.venv/bin/python benchmarks/bench_cluster.py`` (about six minutes; ``--quick`` for a
smoke run of about two minutes; ``--write docs/benchmarks.md`` rewrites the generated blocks
of the section "Cluster: Phalanx vs etcd vs PySyncObj" there and nothing else).

Every cluster runs as three processes on 127.0.0.1, started here in a temporary directory and
stopped (SIGTERM, then SIGKILL of the process group) before the next one starts:

- ``phalanx-fsync``, ``phalanx-nofsync``: ``phalanx node`` processes, with and without
  ``fdatasync`` of the log (``--no-fsync``);
- ``pysyncobj``, ``pysyncobj-nobatch``: PySyncObj's ``ReplDict`` behind a small TCP front
  (``cluster_pysyncobj_node.py``), with its default batching of appends and without it
  (``appendEntriesUseBatch=False``). PySyncObj never fsyncs;
- ``etcd``: ``/usr/bin/etcd`` (3.4), driven through its v3 JSON gateway. etcd fsyncs.

The same load generator (``cluster_loadgen.py``) drives all of them: closed-loop clients,
one connection and one request in flight each, all sent to the leader, split over worker
processes. For each concurrency level it measures writes (8-byte keys, 256-byte values) and
then linearizable reads of keys written before. Each run is bounded by a warmup plus a
measured window (and an operation budget); the table gives throughput, p50/p99 latency,
errors, the CPU used by the generator and by the three servers inside the window (100% =
one core), how busy the whole machine was, and the 1-minute load average when the run
started. A profile of the Phalanx leader under 16 writing clients (cProfile) follows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import pstats
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import cluster_loadgen  # noqa: E402

__all__ = ["main"]

SECTION = "## Cluster: Phalanx vs etcd vs PySyncObj"
RESULTS_START = "<!-- bench_cluster:start -->"
RESULTS_END = "<!-- bench_cluster:end -->"
PROFILE_START = "<!-- bench_cluster_profile:start -->"
PROFILE_END = "<!-- bench_cluster_profile:end -->"

SYSTEMS = ("phalanx-fsync", "phalanx-nofsync", "pysyncobj", "pysyncobj-nobatch", "etcd")
LEVELS = (1, 16, 256)
KEYSPACE = 1000
ETCD = "/usr/bin/etcd"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Where the processes import phalanx from: None for the installed package (the working
#: tree), else the ``src`` directory of a commit exported by ``--commit``.
PHALANX_SRC: Path | None = None


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    if PHALANX_SRC is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PHALANX_SRC), env.get("PYTHONPATH", "")) if p
        )
    return env


def export_commit(rev: str, into: Path) -> Path:
    """``git archive`` of ``src/`` at ``rev`` into ``into``; returns the ``src`` directory."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "src"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, timeout=60, check=True)
    return into / "src"


# -- processes -------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Server:
    """One server process in its own process group, output to a log file."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=ROOT,
                env=env if env is not None else child_env(),
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        """Ask for a clean exit (SIGTERM to the process group) without waiting."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM (a clean exit, so profiles are written), then SIGKILL of the group."""
        if self.process.poll() is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _cpu_ticks(pid: int) -> int:
    """User + system CPU of a process (all its threads), in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"not within {timeout_s:.0f} s: {what}")


# -- clusters --------------------------------------------------------------------------------


class Cluster:
    name = ""
    servers: list[Server]

    def start(self) -> None:
        raise NotImplementedError

    def endpoints(self) -> list[str]:
        """Client endpoints, the leader's first."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        return [s.pid for s in self.servers]

    def stop(self) -> None:
        for server in self.servers:
            server.terminate()
        for server in self.servers:
            server.stop()

    def check_alive(self) -> None:
        for server in self.servers:
            if not server.alive():
                raise RuntimeError(
                    f"{self.name}: a server exited ({server.process.returncode}):\n" + server.tail()
                )


class PhalanxCluster(Cluster):
    def __init__(
        self,
        root: Path,
        *,
        fsync: bool,
        tick_ms: int,
        profile_dir: Path | None = None,
        profile_clock: str = "wall",
    ) -> None:
        self.name = "phalanx-fsync" if fsync else "phalanx-nofsync"
        self.root = root
        self.fsync = fsync
        self.tick_ms = tick_ms
        self.profile_dir = profile_dir
        self.profile_clock = profile_clock
        self.servers = []
        ports = free_ports(6)
        self.peer = {i: ports[2 * (i - 1)] for i in (1, 2, 3)}
        self.client = {i: ports[2 * (i - 1) + 1] for i in (1, 2, 3)}
        self._leader: str | None = None

    def start(self) -> None:
        spec = ",".join(
            f"{i}=127.0.0.1:{self.peer[i]}/127.0.0.1:{self.client[i]}" for i in (1, 2, 3)
        )
        for i in (1, 2, 3):
            if self.profile_dir is not None:
                head = [
                    sys.executable,
                    str(HERE / "cluster_profiled_node.py"),
                    "--clock",
                    self.profile_clock,
                    str(self.profile_dir / f"node{i}.prof"),
                ]
            else:
                head = [sys.executable, "-m", "phalanx.cli.main"]
            argv = [
                *head,
                "node",
                "--id",
                str(i),
                "--data-dir",
                str(self.root / f"n{i}"),
                "--peer-listen",
                f"127.0.0.1:{self.peer[i]}",
                "--client-listen",
                f"127.0.0.1:{self.client[i]}",
                "--cluster",
                spec,
                "--cluster-id",
                "bench",
                "--tick-ms",
                str(self.tick_ms),
            ]
            if not self.fsync:
                argv.append("--no-fsync")
            self.servers.append(Server(argv, self.root / f"n{i}.log"))
        self._leader = asyncio.run(self._find_leader())

    async def _find_leader(self) -> str:
        from phalanx.client import AsyncClient

        addresses = [f"127.0.0.1:{p}" for p in self.client.values()]
        deadline = time.monotonic() + START_TIMEOUT_S
        async with AsyncClient(addresses, total_timeout_s=START_TIMEOUT_S) as client:
            while True:
                self.check_alive()
                try:
                    await client.put(b"warmup00", b"x")
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
                    continue
                leader = client.leader
                assert leader is not None
                return f"{leader[0]}:{leader[1]}"

    def leader_pid(self) -> int:
        port = int((self._leader or "").rpartition(":")[2])
        node = next(i for i, p in self.client.items() if p == port)
        return self.servers[node - 1].pid

    def leader_id(self) -> int:
        port = int((self._leader or "").rpartition(":")[2])
        return next(i for i, p in self.client.items() if p == port)

    def endpoints(self) -> list[str]:
        assert self._leader is not None
        others = [f"127.0.0.1:{p}" for p in self.client.values()]
        return [self._leader, *(e for e in others if e != self._leader)]


class PySyncObjCluster(Cluster):
    def __init__(self, root: Path, *, batch: bool) -> None:
        self.name = "pysyncobj" if batch else "pysyncobj-nobatch"
        self.root = root
        self.batch = batch
        self.servers = []
        ports = free_ports(6)
        self.raft = {i: ports[2 * (i - 1)] for i in (1, 2, 3)}
        self.front = {i: ports[2 * (i - 1) + 1] for i in (1, 2, 3)}
        self._leader: str | None = None

    def start(self) -> None:
        for i in (1, 2, 3):
            argv = [
                sys.executable,
                str(HERE / "cluster_pysyncobj_node.py"),
                "--self",
                f"127.0.0.1:{self.raft[i]}",
                "--front",
                f"127.0.0.1:{self.front[i]}",
            ]
            for j in (1, 2, 3):
                if j != i:
                    argv += ["--partner", f"127.0.0.1:{self.raft[j]}"]
            if not self.batch:
                argv.append("--no-batch")
            self.servers.append(Server(argv, self.root / f"p{i}.log"))
        self._leader = asyncio.run(self._find_leader())

    async def _find_leader(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            for port in self.front.values():
                conn = cluster_loadgen.PySyncObjConn(f"127.0.0.1:{port}")
                try:
                    is_leader, _ = await conn.call("status", b"", None)
                    if is_leader:
                        await conn.put(b"warmup00", b"x")
                        return f"127.0.0.1:{port}"
                except OSError:
                    pass
                finally:
                    await conn.close()
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name}: no leader within {START_TIMEOUT_S:.0f} s")

    def endpoints(self) -> list[str]:
        assert self._leader is not None
        return [self._leader]


class EtcdCluster(Cluster):
    name = "etcd"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers = []
        ports = free_ports(6)
        self.peer = {i: ports[2 * (i - 1)] for i in (1, 2, 3)}
        self.client = {i: ports[2 * (i - 1) + 1] for i in (1, 2, 3)}
        self._leader: str | None = None

    def start(self) -> None:
        if not Path(ETCD).exists():
            raise RuntimeError(f"{ETCD} is not installed (Debian package etcd-server)")
        initial = ",".join(f"e{i}=http://127.0.0.1:{self.peer[i]}" for i in (1, 2, 3))
        env = {k: v for k, v in child_env().items() if not k.startswith("ETCD")}
        for i in (1, 2, 3):
            client_url = f"http://127.0.0.1:{self.client[i]}"
            peer_url = f"http://127.0.0.1:{self.peer[i]}"
            argv = [
                ETCD,
                "--name",
                f"e{i}",
                "--data-dir",
                str(self.root / f"e{i}"),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "bench",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ]
            self.servers.append(Server(argv, self.root / f"e{i}.log", env=env))
        self._leader = asyncio.run(self._find_leader())

    async def _find_leader(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            for port in self.client.values():
                conn = cluster_loadgen.EtcdConn(f"127.0.0.1:{port}")
                try:
                    status = await conn.post(b"/v3/maintenance/status", {})
                    if status.get("leader") and status["leader"] == status["header"].get(
                        "member_id"
                    ):
                        await conn.put(b"warmup00", b"x")
                        return f"127.0.0.1:{port}"
                except (OSError, cluster_loadgen.HttpError, ValueError):
                    pass
                finally:
                    await conn.close()
            await asyncio.sleep(0.2)
        raise RuntimeError(f"etcd: no leader within {START_TIMEOUT_S:.0f} s")

    def endpoints(self) -> list[str]:
        assert self._leader is not None
        return [self._leader]


def make_cluster(name: str, root: Path, args: argparse.Namespace) -> Cluster:
    if name == "phalanx-fsync":
        return PhalanxCluster(root, fsync=True, tick_ms=args.tick_ms)
    if name == "phalanx-nofsync":
        return PhalanxCluster(root, fsync=False, tick_ms=args.tick_ms)
    if name == "pysyncobj":
        return PySyncObjCluster(root, batch=True)
    if name == "pysyncobj-nobatch":
        return PySyncObjCluster(root, batch=False)
    if name == "etcd":
        return EtcdCluster(root)
    raise ValueError(f"unknown system {name!r}; expected one of {', '.join(SYSTEMS)}")


def _system_kind(name: str) -> str:
    return name.split("-", 1)[0]


# -- one measured run ------------------------------------------------------------------------


@dataclass
class Row:
    system: str
    op: str
    clients: int
    ops: int = 0
    duration_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    misses: int = 0
    gen_cpu: float = 0.0  # percent of one core
    server_cpu: float = 0.0  # percent of one core, the three servers together
    machine_busy: float = 0.0  # percent of the whole machine
    load1: float = 0.0
    workers: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.ops / self.duration_s if self.duration_s else 0.0

    @property
    def server_us_per_op(self) -> float:
        """CPU time of the three servers together per completed operation."""
        if not self.ops:
            return 0.0
        return self.server_cpu / 100.0 * self.duration_s / self.ops * 1e6


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index] / 1000.0


def _readline(stream: Any, deadline: float) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("worker did not answer in time")
        ready, _, _ = select.select([stream], [], [], left)
        if not ready:
            continue
        chunk = os.read(stream.fileno(), 1)
        if not chunk:
            raise RuntimeError("worker exited early")
        line += chunk
    return line


def _spawn_workers(
    cluster: Cluster,
    op: str,
    clients: int,
    args: argparse.Namespace,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """Start the worker processes into ``procs`` (clients split evenly); wait until each is
    connected."""
    workers = max(1, min(args.procs, clients))
    split = [clients // workers + (1 if k < clients % workers else 0) for k in range(workers)]
    for k, share in enumerate(split):
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "cluster_loadgen.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            cwd=ROOT,
            start_new_session=True,
            env=child_env(),
        )
        procs.append(proc)
        config = {
            "system": _system_kind(cluster.name),
            "endpoints": cluster.endpoints(),
            "clients": share,
            "op": op,
            "keyspace": args.keyspace,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "ops_max": args.ops_max,
            "seed": 1000 * clients + 10 * k + (1 if op == "get" else 0),
        }
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(config) + "\n").encode())
    deadline = time.monotonic() + 60.0
    for proc in procs:
        assert proc.stdout is not None
        line = _readline(proc.stdout, deadline)
        if line.strip() != b"ready":
            raise RuntimeError(f"worker said {line!r}")


def _collect(procs: list[subprocess.Popen[bytes]], row: Row) -> list[int]:
    """Every worker's result, merged into ``row``; returns the sorted latencies (us)."""
    latencies: list[int] = []
    gen_cpu_s = 0.0
    for proc in procs:
        out, err = proc.communicate(timeout=60.0)
        if proc.returncode != 0:
            raise RuntimeError(f"worker failed ({proc.returncode}): {err.decode()[-2000:]}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        latencies.extend(result["latencies_us"])
        row.errors += result["errors"]
        row.misses += result["misses"]
        gen_cpu_s += result["cpu_s"]
        if result["error_sample"] and not row.note:
            row.note = result["error_sample"]
    row.gen_cpu = 100.0 * gen_cpu_s / row.duration_s
    latencies.sort()
    return latencies


def measure(
    cluster: Cluster,
    op: str,
    clients: int,
    args: argparse.Namespace,
    on_window: Callable[[bool], None] | None = None,
) -> Row:
    """One closed-loop run of ``clients`` clients doing ``op``, over worker processes.

    ``on_window(True)`` is called when the measured window opens, ``on_window(False)`` when
    it closes."""
    row = Row(cluster.name, op, clients, duration_s=args.duration)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _spawn_workers(cluster, op, clients, args, procs)
        row.workers = len(procs)
        row.load1 = os.getloadavg()[0]
        t0 = time.monotonic() + 0.05
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {t0!r}\n".encode())
        w_start = t0 + args.warmup
        t_end = w_start + args.duration
        time.sleep(max(0.0, w_start - time.monotonic()))
        if on_window is not None:
            on_window(True)  # noqa: FBT003
        server_before = sum(_cpu_ticks(p) for p in cluster.pids())
        busy_before, total_before = _machine_ticks()
        time.sleep(max(0.0, t_end - time.monotonic()))
        server_after = sum(_cpu_ticks(p) for p in cluster.pids())
        busy_after, total_after = _machine_ticks()
        if on_window is not None:
            on_window(False)  # noqa: FBT003
        latencies = _collect(procs, row)
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    row.ops = len(latencies)
    row.p50_ms = _percentile(latencies, 0.50)
    row.p99_ms = _percentile(latencies, 0.99)
    row.server_cpu = 100.0 * (server_after - server_before) / CLK_TCK / args.duration
    total = total_after - total_before
    row.machine_busy = 100.0 * (busy_after - busy_before) / total if total else 0.0
    cluster.check_alive()
    return row


def populate(cluster: Cluster, keyspace: int) -> None:
    """Write every key of the keyspace once, so that reads find a value."""

    async def fill() -> None:
        kind = _system_kind(cluster.name)
        conns = [cluster_loadgen.make_conn(kind, cluster.endpoints()) for _ in range(16)]
        value = b"p" * cluster_loadgen.VALUE_BYTES
        keys = iter(range(keyspace))

        async def writer(conn: cluster_loadgen.Conn) -> None:
            await conn.open()
            for n in keys:
                await conn.put(cluster_loadgen.KEY_FORMAT % n, value)

        try:
            async with asyncio.timeout(120):
                await asyncio.gather(*(writer(c) for c in conns))
        finally:
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    asyncio.run(fill())


def median_rows(runs: list[list[Row]]) -> list[Row]:
    """Per (system, op, clients), the row of median throughput over the runs (in order)."""
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for run in runs:
        for row in run:
            groups.setdefault((row.system, row.op, row.clients), []).append(row)
    merged = []
    for group in groups.values():
        group.sort(key=lambda r: r.throughput)
        merged.append(group[len(group) // 2])
    return merged


@contextlib.contextmanager
def running(cluster: Cluster) -> Iterator[Cluster]:
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def probe_fsync(directory: Path, count: int = 100) -> tuple[float, float]:
    """p50 and p99 (ms) of appending 256 bytes to a file in ``directory`` plus fdatasync."""
    path = directory / "fsync-probe"
    latencies: list[float] = []
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, b"x" * 256)
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[min(count - 1, round(0.99 * count) - 1)]


#: fsync probe per system, measured just before its cluster starts: name -> (p50, p99) ms.
FSYNC_PROBES: dict[str, tuple[float, float]] = {}


def bench_system(name: str, args: argparse.Namespace, base: Path, repeat: int = 0) -> list[Row]:
    rows: list[Row] = []
    root = base / f"{name}-{repeat}"
    root.mkdir()
    FSYNC_PROBES[name] = probe_fsync(root)
    print(
        f"{name}: disk write 256 B + fdatasync p50 {FSYNC_PROBES[name][0]:.2f} ms, "
        f"p99 {FSYNC_PROBES[name][1]:.2f} ms",
        flush=True,
    )
    cluster = make_cluster(name, root, args)
    try:
        with running(cluster):
            populate(cluster, args.keyspace)
            for clients in args.levels:
                for op in ("put", "get"):
                    row = measure(cluster, op, clients, args)
                    _print_row(row)
                    rows.append(row)
    except Exception as exc:
        print(f"{name}: failed: {exc}", file=sys.stderr)
        for server in cluster.servers:
            print(f"--- {server.log.name}\n{server.tail()}", file=sys.stderr)
        rows.append(Row(name, "-", 0, note=f"failed: {type(exc).__name__}: {exc}"[:300]))
    return rows


# -- profile ---------------------------------------------------------------------------------


@dataclass
class Profile:
    row: Row
    leader: int
    window_s: float
    idle_s: float  # the leader's event loop waiting in epoll
    top: list[tuple[str, int, float, float]]  # function, calls, own s, cumulative s
    categories: list[tuple[str, float]]  # (what, own s)
    cpu: dict[str, float]  # node name -> CPU % in the window (all threads)


#: Where a function's own time goes, by its module (first match wins).
_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("phalanx/raft/", "Raft core (`phalanx.raft`)"),
    ("phalanx/storage/", "storage, main-thread part (`phalanx.storage`)"),
    ("phalanx/net/", "peer transport and framing (`phalanx.net`)"),
    ("phalanx/node/client", "client server and protocol (`phalanx.node.client_*`)"),
    ("phalanx/node/", "node driver (`phalanx.node`)"),
    ("phalanx/kv/", "key-value state machine (`phalanx.kv`)"),
    ("phalanx/", "other phalanx code"),
    ("asyncio/", "asyncio event loop, streams, tasks, futures"),
    ("concurrent/", "thread pool hand-off (`asyncio.to_thread`)"),
    ("threading.py", "thread pool hand-off (`asyncio.to_thread`)"),
    ("msgspec", "msgpack encoding (msgspec)"),
)


def _category(where: str) -> str:
    if "epoll" in where:
        return "idle: waiting in epoll"
    if where.startswith(("<method 'send", "<method 'recv")):
        return "socket send/recv system calls"
    if "_queue" in where or "lock" in where.lower() or "Condition" in where:
        return "thread pool hand-off (`asyncio.to_thread`)"
    if "msgspec" in where or "Encoder" in where or "Decoder" in where:
        return "msgpack encoding (msgspec)"
    for needle, name in _CATEGORIES:
        if needle in where:
            return name
    return "other (builtins, standard library)"


def _where(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    path = Path(filename)
    parts = path.parts
    if "phalanx" in parts:
        short = "/".join(parts[parts.index("phalanx") :])
    elif "asyncio" in parts:
        short = "asyncio/" + path.name
    elif "concurrent" in parts:
        short = "concurrent/" + path.name
    else:
        short = path.name
    return f"{short}:{line} {name}"


def profile_phalanx(args: argparse.Namespace, base: Path) -> Profile:
    """Clients writing to an fsync-on cluster whose nodes are profiled during the window."""
    root = base / "profile"
    root.mkdir()
    cluster = PhalanxCluster(
        root, fsync=True, tick_ms=args.tick_ms, profile_dir=root, profile_clock=args.profile_clock
    )
    cpu: dict[str, float] = {}
    with running(cluster):
        populate(cluster, args.keyspace)
        leader = cluster.leader_id()
        ticks: dict[int, int] = {}

        def window(opening: bool) -> None:
            for i, server in enumerate(cluster.servers, start=1):
                os.kill(server.pid, signal.SIGUSR1 if opening else signal.SIGUSR2)
                if opening:
                    ticks[i] = _cpu_ticks(server.pid)
                else:
                    name = f"node {i}" + (" (leader)" if i == leader else "")
                    used = (_cpu_ticks(server.pid) - ticks[i]) / CLK_TCK
                    cpu[name] = 100.0 * used / args.duration

        row = measure(cluster, "put", args.profile_clients, args, on_window=window)
        path = root / f"node{leader}.prof"
        _until(path.exists, STOP_TIMEOUT_S, "the leader's profile file")
        time.sleep(0.5)  # let the file be written completely
    raw: dict[Any, Any] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    idle = 0.0
    by_category: dict[str, float] = {}
    functions = []
    for func, entry in raw.items():
        where = _where(func)
        category = _category(where)
        by_category[category] = by_category.get(category, 0.0) + entry[2]
        if category.startswith("idle"):
            idle += entry[2]
        else:
            functions.append((where, int(entry[1]), float(entry[2]), float(entry[3])))
    functions.sort(key=lambda f: f[2], reverse=True)
    categories = sorted(by_category.items(), key=lambda item: item[1], reverse=True)
    return Profile(row, leader, args.duration, idle, functions[: args.profile_top], categories, cpu)


# -- output ----------------------------------------------------------------------------------


def _print_row(row: Row) -> None:
    print(
        f"{row.system:18} {row.op:3} {row.clients:4} clients: {row.throughput:9,.0f} ops/s "
        f"p50 {row.p50_ms:7.2f} ms p99 {row.p99_ms:7.2f} ms errors {row.errors} "
        f"gen cpu {row.gen_cpu:4.0f}% servers {row.server_cpu:4.0f}% "
        f"machine {row.machine_busy:3.0f}% load {row.load1:.2f}",
        flush=True,
    )


def _label(system: str) -> str:
    return {
        "phalanx-fsync": "Phalanx, fsync",
        "phalanx-nofsync": "Phalanx, no fsync",
        "pysyncobj": "PySyncObj (batching, default)",
        "pysyncobj-nobatch": "PySyncObj, no batching",
        "etcd": "etcd 3.4, fsync",
    }.get(system, system)


def results_table(rows: list[Row]) -> list[str]:
    lines = [
        (
            "| system | op | clients | ops/s | p50 ms | p99 ms | errors | generator CPU | "
            "servers CPU | servers CPU µs/op | machine busy | load 1m |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.op == "-":
            lines.append(
                f"| {_label(r.system)} | — | — | — | — | — | — | — | — | — | — | {r.note} |"
            )
            continue
        op = "write" if r.op == "put" else "read (linearizable)"
        lines.append(
            f"| {_label(r.system)} | {op} | {r.clients} | {r.throughput:,.0f} | "
            f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors + r.misses} | {r.gen_cpu:.0f}% | "
            f"{r.server_cpu:.0f}% | {r.server_us_per_op:,.0f} | {r.machine_busy:.0f}% | "
            f"{r.load1:.2f} |"
        )
    return lines


def _find(rows: list[Row], system: str, op: str, clients: int) -> Row | None:
    return next(
        (r for r in rows if r.system == system and r.op == op and r.clients == clients), None
    )


def _clients(n: int) -> str:
    return f"{n} client" if n == 1 else f"{n} clients"


def targets(rows: list[Row], levels: list[int]) -> list[str]:
    lines: list[str] = []

    def tput(system: str, op: str, clients: int) -> float | None:
        row = _find(rows, system, op, clients)
        return row.throughput if row is not None and row.ops else None

    # >= 2x PySyncObj's write throughput, fsync on (against the faster PySyncObj setting).
    parts = []
    for n in levels:
        ours = tput("phalanx-fsync", "put", n)
        default = tput("pysyncobj", "put", n)
        peers = [t for t in (default, tput("pysyncobj-nobatch", "put", n)) if t]
        if ours and peers:
            ratio = ours / max(peers)
            text = f"{_clients(n)} {ratio:.2f}x ({'met' if ratio >= 2 else 'missed'}"
            if default:
                text += f"; {ours / default:.2f}x its default setting"
            parts.append(text + ")")
    if parts:
        lines.append(
            "- Target >= 2x PySyncObj's write throughput with fsync on (Phalanx, fsync against "
            "the faster of PySyncObj's two settings): " + "; ".join(parts) + "."
        )
    # >= 50% of etcd's throughput at 256 clients.
    parts = []
    top = max(levels) if levels else 0
    for op, what in (("put", "writes"), ("get", "reads")):
        ours = tput("phalanx-fsync", op, top)
        theirs = tput("etcd", op, top)
        if ours and theirs:
            share = ours / theirs
            parts.append(f"{what} {share:.0%} ({'met' if share >= 0.5 else 'missed'})")
    if parts:
        lines.append(
            f"- Target >= 50% of etcd's throughput at {top} clients (Phalanx, fsync): "
            + "; ".join(parts)
            + "."
        )
    row = _find(rows, "phalanx-fsync", "put", 16)
    if row is not None and row.ops:
        lines.append(
            f"- Target p99 write latency < 20 ms at 16 clients (Phalanx, fsync): "
            f"{row.p99_ms:.1f} ms ({'met' if row.p99_ms < 20 else 'missed'})."
        )
    return lines


def _git(*argv: str) -> str:
    try:
        out = subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return out.stdout.strip()


def _phalanx_revision(commit: str | None) -> str:
    if commit is None and PHALANX_SRC is not None:
        return f"the tree in {PHALANX_SRC}"
    if commit is not None:
        return f"commit {_git('rev-parse', '--short', commit) or commit}"
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", "src")
    return f"commit {head}" + (" plus uncommitted changes in src/" if dirty else "")


def _versions() -> str:
    parts = [f"CPython {platform.python_version()}"]
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        parts.append(f"phalanx {version('phalanx')}")
        parts.append(f"PySyncObj {version('pysyncobj')}")
    if Path(ETCD).exists():
        with contextlib.suppress(Exception):
            out = subprocess.run(
                [ETCD, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
            parts.append("etcd " + out.stdout.split()[2])
    return ", ".join(parts)


def _repeats(count: int) -> str:
    if count <= 1:
        return ""
    return f" (each row: the median run by throughput of {count}, systems interleaved)"


def results_block(rows: list[Row], args: argparse.Namespace, started: str, argv: str) -> str:
    lines = [*results_table(rows), ""]
    lines += targets(rows, args.levels)
    lines += [
        (
            f"- Measured: {started} UTC, {args.warmup:g} s warmup then {args.duration:g} s "
            f"measured per row{_repeats(args.repeat)}; load generator in up to {args.procs} "
            f"processes; keyspace "
            f"{args.keyspace} keys, 8-byte keys, 256-byte values; every request to the leader."
        ),
        (
            f"- Machine: {os.cpu_count()} CPUs shared by the three servers and the load generator "
            f"(CPU columns: 100% = one core); Linux {platform.release()}; {_versions()}; "
            f"phalanx at {args.revision}."
        ),
        f"- Rerun: `{argv}`.",
    ]
    if FSYNC_PROBES:
        probes = "; ".join(
            f"before {_label(name)} p50 {p50:.2f} ms, p99 {p99:.2f} ms"
            for name, (p50, p99) in FSYNC_PROBES.items()
        )
        lines.append(
            f"- Disk, 100 appends of 256 bytes each followed by `fdatasync` in the clusters' "
            f"temporary directory: {probes}."
        )
    failed = [r for r in rows if r.note and r.op != "-"]
    for r in failed[:5]:
        lines.append(
            f"- {_label(r.system)}, {r.op} at {r.clients} clients, first error: `{r.note}`"
        )
    return "\n".join(lines)


def profile_block(profile: Profile, args: argparse.Namespace) -> str:
    r = profile.row
    total = sum(own for _, own in profile.categories) or 1.0
    busy = total - profile.idle_s
    cpu = ", ".join(f"{name} {share:.0f}%" for name, share in profile.cpu.items())
    lines = [
        (
            f"{args.profile_clients} clients writing for {args.duration:g} s to the fsync-on "
            f"cluster, every node profiled with cProfile during the measured window only: "
            f"{r.throughput:,.0f} writes/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms while "
            f"profiled (cProfile slows Python code down). CPU in the window (all threads, "
            f"100% = one core): {cpu}; load average {r.load1:.2f}. The leader's event loop "
            f"thread (node {profile.leader}; the fsync worker threads are not profiled) spent "
            f"{profile.idle_s / total:.0%} of {total:.1f} s profiled waiting in epoll and "
            f"{busy:.1f} s running Python, split by module:"
        ),
        "",
        "| where (leader, own time) | share of profiled time |",
        "|---|---:|",
    ]
    for name, own in profile.categories:
        lines.append(f"| {name} | {own / total:.1%} |")
    lines += [
        "",
        "The most expensive functions of the leader (own time; cumulative includes callees):",
        "",
        "| function | calls | own | cumulative |",
        "|---|---:|---:|---:|",
    ]
    for where, calls, own, cum in profile.top:
        lines.append(f"| `{where}` | {calls:,} | {own / total:.1%} | {cum / total:.1%} |")
    return "\n".join(lines)


DEFAULT_SECTION = f"""{SECTION}

Three 3-node clusters on one machine, one after the other, driven by the same load generator:
Phalanx (`phalanx node` processes, with and without fsync), PySyncObj (its `ReplDict` in
three processes) and etcd 3.4. Written by `benchmarks/bench_cluster.py`.

{RESULTS_START}
{RESULTS_END}

### Where Phalanx's time goes

{PROFILE_START}
{PROFILE_END}
"""


def _replace_block(text: str, start: str, end: str, body: str) -> str:
    head, found, rest = text.partition(start)
    if not found:
        raise ValueError(f"marker {start} missing")
    _, found, tail = rest.partition(end)
    if not found:
        raise ValueError(f"marker {end} missing")
    return f"{head}{start}\n{body}\n{end}{tail}"


def write_doc(path: Path, results: str | None, profile: str | None) -> None:
    """Rewrite the generated blocks of this benchmark's section; add the section if missing."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if RESULTS_START not in text or PROFILE_START not in text:
        text = text.rstrip("\n") + "\n\n" + DEFAULT_SECTION
    if results is not None:
        text = _replace_block(text, RESULTS_START, RESULTS_END, results)
    if profile is not None:
        text = _replace_block(text, PROFILE_START, PROFILE_END, profile)
    path.write_text(text)


# -- main ------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, from: {', '.join(SYSTEMS)} (default: all)",
    )
    parser.add_argument(
        "--levels", default=None, help="client counts, comma-separated (default 1,16,256)"
    )
    parser.add_argument("--duration", type=float, help="measured seconds per row (default 5)")
    parser.add_argument("--warmup", type=float, help="seconds before measuring (default 1)")
    parser.add_argument(
        "--ops-max", type=int, default=2_000_000, help="operation budget per row (bound)"
    )
    parser.add_argument("--procs", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every system this many times, interleaved; report the median run per row",
    )
    parser.add_argument("--tick-ms", type=int, default=100, help="Phalanx's Raft tick")
    parser.add_argument(
        "--keyspace", type=int, default=KEYSPACE, help="distinct keys written and read"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    parser.add_argument(
        "--profile-only", action="store_true", help="only the cProfile run of Phalanx"
    )
    parser.add_argument("--profile-clients", type=int, default=16)
    parser.add_argument("--profile-top", type=int, default=20)
    parser.add_argument(
        "--profile-clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cProfile's timer: wall clock (where latency goes) or the thread's CPU time",
    )
    parser.add_argument(
        "--commit",
        help="measure phalanx as of this git revision (src/ exported to a temporary directory) "
        "instead of the working tree",
    )
    parser.add_argument(
        "--phalanx-src",
        type=Path,
        help="measure phalanx imported from this src directory (e.g. a patched copy)",
    )
    parser.add_argument("--write", type=Path, help="rewrite this benchmark's section in FILE")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for name in args.systems:
        if name not in SYSTEMS:
            parser.error(f"unknown system {name!r}; expected one of {', '.join(SYSTEMS)}")
    if args.levels is None:
        args.levels = list(LEVELS)
    else:
        args.levels = [int(v) for v in args.levels.split(",") if v.strip()]
    if args.duration is None:
        args.duration = 1.0 if args.quick else 5.0
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 1.0
    if args.duration <= 0 or args.warmup < 0 or min(args.procs, args.ops_max, args.repeat) < 1:
        parser.error("--duration, --procs, --ops-max and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    command = ".venv/bin/python benchmarks/bench_cluster.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    base = Path(tempfile.mkdtemp(prefix="phalanx-bench-cluster-"))
    global PHALANX_SRC  # noqa: PLW0603 - set once, before any process starts
    if args.commit is not None:
        # Resolved once, before anything runs: HEAD may move while the benchmark runs.
        args.commit = _git("rev-parse", "--verify", f"{args.commit}^{{commit}}") or args.commit
        PHALANX_SRC = export_commit(args.commit, base)
    elif args.phalanx_src is not None:
        PHALANX_SRC = args.phalanx_src.resolve()
    if PHALANX_SRC is not None:
        sys.path.insert(0, str(PHALANX_SRC))
    args.revision = _phalanx_revision(args.commit)
    rows: list[Row] = []
    profile: Profile | None = None
    try:
        if not args.profile_only:
            runs = []
            for repeat in range(args.repeat):
                run: list[Row] = []
                for name in args.systems:
                    run.extend(bench_system(name, args, base, repeat))
                runs.append(run)
            rows = median_rows(runs)
        if not args.no_profile:
            try:
                profile = profile_phalanx(args, base)
            except Exception as exc:
                print(f"profile failed: {exc}", file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results = None
    if rows:
        results = results_block(rows, args, started, command.strip())
        print()
        print(results)
    profile_text = None
    if profile is not None:
        profile_text = profile_block(profile, args)
        print()
        print(profile_text)
    if args.write is not None:
        write_doc(args.write, results, profile_text)
    failed = any(r.op == "-" for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
