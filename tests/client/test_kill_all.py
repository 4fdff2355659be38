"""Every node of a cluster SIGKILLed at once loses no acknowledged write.

Three ``phalanx node`` processes (fsync on) take writes from several clients; while writes
are in flight all three get SIGKILL, within microseconds of each other: no close, no flush
beyond what was fsynced. Restarted from their data directories, they elect a leader and
every write a client saw acknowledged reads back, linearizably and from every node's own
state. Writes whose outcome was unknown when the nodes died may be there or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loopback import free_ports
from phalanx.cli.local_cluster import LocalCluster, collect_status, create, wait_exit
from phalanx.client import AsyncClient
from phalanx.client.client import SESSION_WINDOW
from phalanx.errors import Indeterminate, PhalanxError, Timeout

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and subprocesses")

NODES = 3
TICK_MS = 20
WRITERS = 6
WRITES_BEFORE_KILL = 120
DEADLINE_S = 20.0


@contextlib.asynccontextmanager
async def running(root: Path) -> AsyncIterator[tuple[LocalCluster, list[int]]]:
    """The cluster and every pid it ever ran (all SIGKILLed at the end)."""
    cluster = create(
        root, NODES, tick_ms=TICK_MS, cluster_id="kill-all", http=False, ports=free_ports(2 * NODES)
    )
    pids: list[int] = []
    try:
        pids.extend(cluster.start(member) for member in cluster.members)
        yield cluster, pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_exit(pids, DEADLINE_S)


async def wait_leader(cluster: LocalCluster) -> int:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for status in await collect_status([m.client for m in cluster.members], timeout_s=0.5):
            if status.status is not None and status.status.role == "leader":
                return status.status.node_id
        await asyncio.sleep(0.05)
    pytest.fail(f"no leader within {DEADLINE_S} s")


async def test_sigkill_of_every_node_at_once_keeps_acknowledged_writes(tmp_path: Path) -> None:
    acknowledged: dict[bytes, bytes] = {}
    unknown: set[bytes] = set()
    counter = iter(range(1_000_000))
    stop = asyncio.Event()
    enough = asyncio.Event()

    async with running(tmp_path) as (cluster, started):
        endpoints = [m.client for m in cluster.members]
        await wait_leader(cluster)

        async def writer() -> None:
            # One client per writer: each client makes its calls one at a time.
            async with AsyncClient(endpoints, total_timeout_s=2.0) as client:
                while not stop.is_set():
                    n = next(counter)
                    key, value = f"k{n:06d}".encode(), f"v{n}".encode()
                    try:
                        await client.put(key, value)
                    except (Timeout, Indeterminate):
                        unknown.add(key)
                    except PhalanxError:
                        pass  # FAILED: definitely not applied
                    else:
                        acknowledged[key] = value
                        if len(acknowledged) >= WRITES_BEFORE_KILL:
                            enough.set()

        async with asyncio.TaskGroup() as group:
            for _ in range(WRITERS):
                group.create_task(writer())
            async with asyncio.timeout(DEADLINE_S):
                await enough.wait()
            # Every node at once, with writes in flight.
            for member in cluster.members:
                assert member.pid is not None
                os.kill(member.pid, signal.SIGKILL)
            stop.set()
        pids = [m.pid for m in cluster.members if m.pid is not None]
        assert wait_exit(pids, DEADLINE_S) == []
        assert len(acknowledged) >= WRITES_BEFORE_KILL

        for member in cluster.members:
            member.pid = None
            started.append(cluster.start(member))
        await wait_leader(cluster)

        async with AsyncClient(endpoints, total_timeout_s=DEADLINE_S) as client:
            everything = await client.range(b"k", prefix=True)
            held = {kv.key: kv.value for kv in everything.kvs}
            missing = [k for k, v in acknowledged.items() if held.get(k) != v]
            assert missing == [], f"{len(missing)} acknowledged writes lost: {missing[:5]}"
            # Nothing appears that no client wrote.
            assert set(held) <= set(acknowledged) | unknown
            for key in list(acknowledged)[:: max(1, len(acknowledged) // 20)]:
                assert await client.get(key) == acknowledged[key]
            commit = (await client.status()).commit_index

        for member in cluster.members:
            await assert_local_state_holds(member.client, acknowledged, commit)


async def assert_local_state_holds(
    endpoint: str, acknowledged: dict[bytes, bytes], commit: int
) -> None:
    """The node's own state holds every acknowledged write once it applied ``commit``."""
    async with AsyncClient([endpoint], total_timeout_s=DEADLINE_S) as direct:
        deadline = time.monotonic() + DEADLINE_S
        while (await direct.status(endpoint)).applied_index < commit:
            assert time.monotonic() < deadline, f"{endpoint} did not catch up"
            await asyncio.sleep(0.05)
        local = await direct.range(b"k", prefix=True, linearizable=False)
    held = {kv.key: kv.value for kv in local.kvs}
    assert [k for k, v in acknowledged.items() if held.get(k) != v] == []


# -- client bugs found on the way, fixed --------------------------------------------------------


async def test_concurrent_first_calls_leave_no_connection_behind() -> None:
    handlers: list[asyncio.Task[None]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await reader.read()  # accept, never answer
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = AsyncClient([f"127.0.0.1:{port}"], request_timeout_s=0.2, attempts_max=1)
    before = asyncio.all_tasks()
    results = await asyncio.gather(
        *(client.status(f"127.0.0.1:{port}") for _ in range(8)), return_exceptions=True
    )
    assert all(isinstance(r, Timeout) for r in results)
    await client.aclose()
    leaked = [
        t
        for t in asyncio.all_tasks() - before
        if not t.done() and getattr(t.get_coro(), "__qualname__", "") == "Connection._receive"
    ]
    # Clean up what leaked, so that the failure is the assertion and not a warning.
    for task in leaked:
        connection = task.get_coro().cr_frame.f_locals.get("self")  # type: ignore[union-attr]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if connection is not None:
            await connection.aclose()
    for handler in handlers:
        handler.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    server.close()
    await server.wait_closed()
    assert leaked == []


async def test_one_slow_request_does_not_fail_the_session_s_other_writes(tmp_path: Path) -> None:
    cluster = create(tmp_path, 1, tick_ms=TICK_MS, http=False, ports=free_ports(2))
    pid = cluster.start(cluster.members[0])
    try:
        await wait_leader(cluster)
        async with AsyncClient([cluster.members[0].client], total_timeout_s=DEADLINE_S) as client:
            await client.put(b"warm", b"up")  # opens the session
            # A request of this session still in flight, e.g. retrying through a failover.
            stuck = await client._take_seq()
            done: list[int] = []

            async def writes() -> None:
                for n in range(80):
                    await client.put(f"k{n}".encode(), b"v")
                    done.append(n)

            writer = asyncio.create_task(writes())
            # The window holds the newer writes back instead of letting them fail.
            for _ in range(1000):
                if len(done) == SESSION_WINDOW - 1:
                    break
                await asyncio.sleep(0.01)
            assert len(done) == SESSION_WINDOW - 1
            assert not writer.done()
            async with client._window:  # the slow request is answered at last
                client._outstanding.discard(stuck)
                client._window.notify_all()
            await writer
            assert len(done) == 80
    finally:
        os.kill(pid, signal.SIGKILL)
        wait_exit([pid], DEADLINE_S)
