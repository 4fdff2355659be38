"""HealthServer (background thread) and serve() (asyncio) on loopback with ephemeral ports."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from phalanx.health import DEFAULT_PORT, HealthRegistry, HealthServer, serve


def is_running(server: HealthServer) -> bool:
    # A call, so the type checker does not carry the earlier ``assert server.running`` over.
    return server.running


def test_default_port_is_8080() -> None:
    server = HealthServer(HealthRegistry())
    assert DEFAULT_PORT == 8080
    assert server.port == 8080
    assert server.host == "127.0.0.1"
    assert not server.running


def test_serves_probes_from_a_background_thread() -> None:
    registry = HealthRegistry()
    registry.add("db", lambda: True)
    with HealthServer(registry, port=0) as server:
        assert server.running
        assert server.port != 0
        response = httpx.get(f"{server.url}/ready", timeout=5.0, trust_env=False)
        assert response.status_code == 200
        assert response.json()["checks"][0]["name"] == "db"

        registry.set_ready(False)
        assert httpx.get(f"{server.url}/ready", timeout=5.0, trust_env=False).status_code == 503
        assert httpx.get(f"{server.url}/healthz", timeout=5.0, trust_env=False).status_code == 200
        port = server.port
    assert not is_running(server)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0, trust_env=False)


def test_start_stop_explicitly_and_twice_start_is_refused() -> None:
    server = HealthServer(HealthRegistry(), port=0)
    server.start()
    try:
        server.wait_started(timeout_s=5.0)
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
        assert httpx.head(f"{server.url}/startup", timeout=5.0, trust_env=False).status_code == 200
    finally:
        server.stop()
    server.stop()  # idempotent


def test_a_busy_port_fails_in_the_callers_thread() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HealthServer(HealthRegistry(), port=port)
        with pytest.raises(OSError):
            server.start()
        assert not server.running


def test_bad_port_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match=r"^port:"):
        HealthServer(HealthRegistry(), port=70000)
    with pytest.raises(ValueError, match=r"^timeout_s:"):
        HealthServer(HealthRegistry(), port=0).wait_started(timeout_s=0)


def test_wait_started_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        HealthServer(HealthRegistry(), port=0).wait_started()


async def test_serve_runs_on_the_loop_until_cancelled() -> None:
    registry = HealthRegistry()
    registry.add("warm", lambda: False, probes="startup")
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(registry, port=0, on_started=started.set_result))
    port = await asyncio.wait_for(started, 10.0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as http:
        response = await http.get("/healthz")
        assert response.status_code == 503
        assert response.json()["status"] == "starting"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with httpx.AsyncClient(trust_env=False) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/healthz")


async def test_serve_cancelled_before_it_started_never_reports_started() -> None:
    started: list[int] = []
    task = asyncio.create_task(serve(HealthRegistry(), port=0, on_started=started.append))
    await asyncio.sleep(0)  # serve() has bound its socket and launched the server, no more
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert started == []
