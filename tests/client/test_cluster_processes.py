"""Three ``phalanx node`` processes on loopback, driven through ``Client``.

The leader is killed with SIGKILL (no close, no flush beyond what was fsynced); every write
the client saw acknowledged must still be readable, linearizably, through the new leader, and
the killed node restarted from its data directory must catch up. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loopback import free_ports
from phalanx.client import Client
from phalanx.errors import Indeterminate, Timeout

IDS = (1, 2, 3)
TICK_MS = 20
DEADLINE_S = 10.0
WRITES = 20


class Cluster:
    def __init__(self, root: Path) -> None:
        ports = free_ports(2 * len(IDS))
        self.root = root
        self.peer = {i: ("127.0.0.1", ports[2 * k]) for k, i in enumerate(IDS)}
        self.client = {i: ("127.0.0.1", ports[2 * k + 1]) for k, i in enumerate(IDS)}
        self.spec = ",".join(
            f"{i}={self.peer[i][0]}:{self.peer[i][1]}/{self.client[i][0]}:{self.client[i][1]}"
            for i in IDS
        )
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def endpoints(self) -> list[str]:
        return [f"{h}:{p}" for h, p in self.client.values()]

    def start(self, node_id: int) -> None:
        host, port = self.peer[node_id]
        chost, cport = self.client[node_id]
        log = (self.root / f"n{node_id}.log").open("ab")
        self.processes[node_id] = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from phalanx.cli.main import main; main()",
                "node",
                "--id",
                str(node_id),
                "--data-dir",
                str(self.root / f"n{node_id}"),
                "--peer-listen",
                f"{host}:{port}",
                "--client-listen",
                f"{chost}:{cport}",
                "--cluster",
                self.spec,
                "--cluster-id",
                "test-processes",
                "--tick-ms",
                str(TICK_MS),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self, node_id: int) -> None:
        process = self.processes.pop(node_id)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=DEADLINE_S)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=DEADLINE_S)
        self.processes.clear()

    def node_of(self, address: tuple[str, int] | None) -> int:
        return next(i for i, a in self.client.items() if a == address)


@contextmanager
def cluster(root: Path) -> Iterator[Cluster]:
    nodes = Cluster(root)
    try:
        for i in IDS:
            nodes.start(i)
        yield nodes
    finally:
        nodes.stop_all()


def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"not within {DEADLINE_S} s: {what}")


def write(client: Client, key: bytes, value: bytes, acknowledged: dict[bytes, bytes]) -> None:
    """Write until acknowledged; an INDETERMINATE outcome is retried (the same value again)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            client.put(key, value)
        except (Timeout, Indeterminate):
            if time.monotonic() > deadline:
                raise
            continue
        acknowledged[key] = value
        return


@pytest.mark.skipif(os.name != "posix", reason="signals and subprocesses")
def test_leader_sigkill_keeps_acknowledged_writes(tmp_path: Path) -> None:
    acknowledged: dict[bytes, bytes] = {}
    with (
        cluster(tmp_path) as nodes,
        Client(nodes.endpoints(), total_timeout_s=DEADLINE_S) as client,
    ):
        for n in range(WRITES):
            write(client, f"k{n:03d}".encode(), f"v{n}".encode(), acknowledged)
        old_leader = nodes.node_of(client.leader)

        nodes.kill(old_leader)
        for n in range(WRITES, 2 * WRITES):
            write(client, f"k{n:03d}".encode(), f"v{n}".encode(), acknowledged)
        new_leader = nodes.node_of(client.leader)
        assert new_leader != old_leader

        for key, value in acknowledged.items():
            assert client.get(key) == value

        # The killed node comes back from its data directory and catches up.
        nodes.start(old_leader)
        write(client, b"after-restart", b"yes", acknowledged)
        with Client([nodes.endpoints()[IDS.index(old_leader)]]) as direct:

            def caught_up() -> bool:
                return direct.get(b"after-restart", linearizable=False) == b"yes"

            until(caught_up, f"node {old_leader} applies the writes made while it was down")
            for key, value in acknowledged.items():
                assert direct.get(key, linearizable=False) == value
                assert direct.get(key) == value

        # SIGTERM: every node closes cleanly and exits 0.
        for process in nodes.processes.values():
            process.send_signal(signal.SIGTERM)
        for node_id, process in nodes.processes.items():
            assert process.wait(timeout=DEADLINE_S) == 0, f"node {node_id}"
