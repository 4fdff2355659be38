"""The node's HTTP endpoint: probes against a fake node, /metrics, and a real server.

The fake node is only what the checks read (``status()``); the real tests run a one-node
cluster with the server on a loopback port picked by the OS. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from loopback import free_ports
from phalanx.clock import ManualClock
from phalanx.health import HealthRegistry
from phalanx.node import RaftNode
from phalanx.node.http import (
    LOOP_LAG_S_MAX,
    LoopMonitor,
    NodeHttpApp,
    NodeHttpServer,
    node_health,
    node_http_server,
)
from phalanx.node.metrics import PrometheusNodeObserver

DEADLINE_S = 10.0


@dataclasses.dataclass
class FakeStatus:
    term: int = 0
    commit: int = 0
    applied: int = 0
    leader: int = 0


class FakeNode:
    """A node whose status the test sets; ``status()`` raises until ``opened``."""

    def __init__(self) -> None:
        self.opened = False
        self.state = FakeStatus()
        self.startup_commit_index: int | None = None

    @property
    def started(self) -> bool:
        return self.opened

    def status(self) -> FakeStatus:
        if not self.opened:
            raise RuntimeError("the node is not started")
        return dataclasses.replace(self.state)


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def monitor(clock: ManualClock) -> LoopMonitor:
    return LoopMonitor(clock=clock)


@pytest.fixture
def observer() -> PrometheusNodeObserver:
    return PrometheusNodeObserver()


@pytest.fixture
async def http(
    node: FakeNode, monitor: LoopMonitor, observer: PrometheusNodeObserver
) -> AsyncIterator[httpx.AsyncClient]:
    health = node_health(node, monitor, registry=HealthRegistry(cache_s=0))
    app = NodeHttpApp(health, observer.registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        yield client


async def probe(http: httpx.AsyncClient, path: str) -> tuple[int, str, str]:
    """Status code, the probe's status and its one check's message."""
    response = await http.get(path)
    body = response.json()
    message = body["checks"][0]["message"] if body["checks"] else body["reason"]
    return response.status_code, body["status"], message


async def test_startup_waits_for_the_node_to_open_and_replay_its_log(
    http: httpx.AsyncClient, node: FakeNode
) -> None:
    code, status, message = await probe(http, "/startup")
    assert (code, status) == (503, "starting")
    assert message == "node not running"
    # Liveness and readiness are held back until startup completes.
    assert (await http.get("/healthz")).status_code == 503
    assert (await http.get("/ready")).json()["status"] == "starting"

    node.opened = True
    node.state = FakeStatus(term=3, commit=40, applied=10)
    code, _, message = await probe(http, "/startup")
    assert code == 503
    assert message == "replaying the log: applied 10 of 40"

    node.state = FakeStatus(term=3, commit=45, applied=40)  # the target is the first commit seen
    code, status, _ = await probe(http, "/startup")
    assert (code, status) == (200, "ok")


async def test_ready_needs_a_leader_and_the_commit_index_learned_at_start(
    http: httpx.AsyncClient, node: FakeNode
) -> None:
    node.opened = True
    assert (await http.get("/startup")).status_code == 200
    node.state = FakeStatus(term=2)
    code, _, message = await probe(http, "/ready")
    assert code == 503
    assert message == "no leader known in term 2"

    node.state = FakeStatus(term=2, leader=1, commit=0, applied=0)
    code, _, message = await probe(http, "/ready")
    assert code == 503
    assert message == "no commit index learned yet (leader 1)"

    node.startup_commit_index = 30
    node.state = FakeStatus(term=2, leader=1, commit=30, applied=5)
    code, _, message = await probe(http, "/ready")
    assert code == 503
    assert message == "catching up: applied 5 of 30 (leader 1)"

    node.state = FakeStatus(term=2, leader=1, commit=50, applied=30)
    code, status, message = await probe(http, "/ready")
    assert (code, status) == (200, "ok")
    assert message == "leader 1 in term 2; applied 30, commit 50"

    # Caught up once: a later lag does not take the node out of rotation, losing the leader
    # or closing does.
    node.state = FakeStatus(term=2, leader=1, commit=90, applied=60)
    assert (await http.get("/ready")).status_code == 200
    node.state = FakeStatus(term=3, leader=0, commit=90, applied=90)
    assert (await http.get("/ready")).status_code == 503
    node.state = FakeStatus(term=4, leader=2, commit=95, applied=90)
    assert (await http.get("/ready")).status_code == 200
    node.opened = False
    code, _, message = await probe(http, "/ready")
    assert (code, message) == (503, "node not running")


async def test_liveness_follows_the_event_loop_lag(
    http: httpx.AsyncClient, node: FakeNode, monitor: LoopMonitor, clock: ManualClock
) -> None:
    node.opened = True
    assert (await http.get("/startup")).status_code == 200
    code, _, message = await probe(http, "/healthz")
    assert code == 200
    assert message == "event loop: no beat measured yet"

    monitor.record(0.004)
    code, _, message = await probe(http, "/healthz")
    assert code == 200
    assert message == "event loop lag 4.0 ms"

    monitor.record(LOOP_LAG_S_MAX + 1.0)
    code, _, message = await probe(http, "/healthz")
    assert code == 503
    assert "late" in message

    # A monitor that stops beating (its task gone, the loop starved) fails liveness too.
    monitor.record(0.0)
    clock.advance(monitor.interval_s + LOOP_LAG_S_MAX + 1.0)
    code, _, message = await probe(http, "/healthz")
    assert code == 503
    assert "no beat" in message


async def test_metrics_in_text_and_openmetrics(
    http: httpx.AsyncClient, observer: PrometheusNodeObserver
) -> None:
    observer.on_role(5, "leader", 1)
    observer.on_apply(9, 9)
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "phalanx_node_term 5.0" in response.text
    assert "phalanx_node_applied_index 9.0" in response.text

    openmetrics = await http.get(
        "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")

    head = await http.head("/metrics")
    assert head.status_code == 200
    assert head.content == b""
    post = await http.post("/metrics")
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"
    assert (await http.get("/nothing")).status_code == 404


def test_metrics_path_must_not_be_a_probe_path(observer: PrometheusNodeObserver) -> None:
    with pytest.raises(ValueError, match="metrics_path"):
        NodeHttpApp(HealthRegistry(), observer.registry, metrics_path="/ready")


@pytest.mark.parametrize(
    ("field", "kwargs"), [("interval_s", {"interval_s": 0}), ("lag_s_max", {"lag_s_max": -1})]
)
def test_monitor_settings_are_checked(field: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=field):
        LoopMonitor(**kwargs)


# -- a real server and a real node ----------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    try:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {DEADLINE_S} s: {what}")


async def test_a_one_node_cluster_becomes_ready_over_real_http(tmp_path: Path) -> None:
    observer = PrometheusNodeObserver()
    node = RaftNode(
        1, tmp_path / "n1", ("127.0.0.1", 0), {}, cluster_id="http", tick_interval_s=0.02
    )
    server = node_http_server(node, observer.registry, ("127.0.0.1", 0))
    async with server:
        host, port = server.address
        assert port != 0
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", trust_env=False) as http:
            # Served before the node opens: still starting.
            startup = await http.get("/startup")
            assert startup.status_code == 503
            async with node:

                async def ready() -> bool:
                    return (await http.get("/ready")).status_code == 200

                await until(ready, "/ready answers 200")
                assert (await http.get("/startup")).status_code == 200
                assert (await http.get("/healthz")).status_code == 200
                metrics = await http.get("/metrics")
                assert "phalanx_node_event_loop_lag_seconds" in metrics.text
            # A second server cannot take the same port.
            with pytest.raises(OSError):
                await NodeHttpServer(server.app, host, port).start()


async def test_the_monitor_measures_the_running_loop() -> None:
    monitor = LoopMonitor(interval_s=0.01)
    task = asyncio.create_task(monitor.run())
    try:

        async def beaten() -> bool:
            return monitor.lag_s is not None

        await until(beaten, "a beat of the loop monitor")
        assert (await monitor.check()).startswith("event loop lag ")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_node_process_serves_ready_and_metrics_and_logs_json(tmp_path: Path) -> None:
    peer_port, client_port, http_port = free_ports(3)
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from phalanx.cli.main import main; main()",
                "node",
                "--id=1",
                f"--data-dir={tmp_path / 'n1'}",
                f"--peer-listen=127.0.0.1:{peer_port}",
                f"--client-listen=127.0.0.1:{client_port}",
                f"--cluster=1=127.0.0.1:{peer_port}/127.0.0.1:{client_port}",
                "--tick-ms=20",
                f"--http-listen=127.0.0.1:{http_port}",
                "--log-format=json",
                "--log-level=info",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", trust_env=False) as http:
            deadline = time.monotonic() + DEADLINE_S
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/ready").status_code == 200:
                        break
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"/ready not 200 within {DEADLINE_S} s: {stderr_path.read_text()}")
                time.sleep(0.05)
            metrics = http.get("/metrics").text
        assert "phalanx_node_is_leader 1.0" in metrics
        assert "phalanx_node_has_leader 1.0" in metrics
        assert "phalanx_node_fsync_duration_seconds_count" in metrics
        assert "process_resident_memory_bytes" in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=DEADLINE_S)
    records = [json.loads(line) for line in stderr_path.read_text().splitlines()]
    assert records
    assert all(r["node_id"] == 1 and {"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert any("serving health and metrics" in r["msg"] for r in records)
