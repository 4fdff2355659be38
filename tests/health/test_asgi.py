"""HealthApp over ASGI: status codes, JSON bodies, HEAD, 404/405, verbose, paths, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from phalanx.clock import ManualClock
from phalanx.health import DEFAULT_PATHS, HealthApp, HealthRegistry, Probe


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def registry(clock: ManualClock) -> HealthRegistry:
    return HealthRegistry(clock=clock)


@pytest.fixture
async def client(registry: HealthRegistry) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=HealthApp(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as http:
        yield http


async def test_default_paths_answer_200_with_json(client: httpx.AsyncClient) -> None:
    for path, probe in (("/healthz", "liveness"), ("/ready", "readiness"), ("/startup", "startup")):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["probe"] == probe
        assert body["status"] == "ok"
        assert body["checks"] == []


async def test_failing_check_gives_503_and_lists_each_check(
    registry: HealthRegistry, client: httpx.AsyncClient
) -> None:
    registry.add("db", lambda: True)
    registry.add("queue", lambda: False)
    response = await client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body == {
        "probe": "readiness",
        "status": "fail",
        "reason": "failing: queue",
        "checks": [
            {"name": "db", "status": "ok", "duration_ms": 0.0, "message": ""},
            {
                "name": "queue",
                "status": "fail",
                "duration_ms": 0.0,
                "message": "check returned False",
            },
        ],
    }


async def test_degraded_is_200(registry: HealthRegistry, client: httpx.AsyncClient) -> None:
    registry.add("cache", lambda: False, critical=False)
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"


async def test_starting_is_503_on_all_three(
    registry: HealthRegistry, client: httpx.AsyncClient
) -> None:
    registry.add("warm", lambda: False, probes="startup")
    for path in ("/healthz", "/ready", "/startup"):
        response = await client.get(path)
        assert response.status_code == 503
        assert response.json()["status"] == "starting"
        assert response.json()["reason"].startswith("starting")


async def test_draining_turns_only_readiness_503(
    registry: HealthRegistry, client: httpx.AsyncClient
) -> None:
    registry.set_ready(False)
    assert (await client.get("/ready")).status_code == 503
    assert (await client.get("/ready")).json()["reason"] == "not ready: draining"
    assert (await client.get("/healthz")).status_code == 200


async def test_verbose_adds_detail(
    registry: HealthRegistry, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    registry.add("db", lambda: True, cache_s=10.0)
    await client.get("/ready")
    clock.advance(2.0)
    plain = (await client.get("/ready")).json()["checks"][0]
    assert set(plain) == {"name", "status", "duration_ms", "message"}
    for query in ("?verbose", "?verbose=1", "?verbose=true"):
        detailed = (await client.get("/ready" + query)).json()["checks"][0]
        assert detailed["critical"] is True
        assert detailed["age_ms"] == 2000.0
        assert detailed["checked_at"].endswith("Z")
    off = (await client.get("/ready?verbose=0")).json()["checks"][0]
    assert "critical" not in off


async def test_head_has_status_and_headers_but_no_body(
    registry: HealthRegistry, client: httpx.AsyncClient
) -> None:
    registry.add("db", lambda: False)
    response = await client.head("/ready")
    assert response.status_code == 503
    assert response.content == b""
    assert int(response.headers["content-length"]) > 0


async def test_unknown_path_is_404(client: httpx.AsyncClient) -> None:
    for path in ("/", "/health", "/ready/", "/readyz"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json() == {"error": "not found"}


async def test_other_methods_are_405_with_allow(client: httpx.AsyncClient) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        response = await client.request(method, "/healthz")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"


async def test_paths_are_configurable(registry: HealthRegistry) -> None:
    app = HealthApp(registry, liveness_path="/livez", readiness_path="/readyz", startup_path="/s")
    assert app.paths == {Probe.LIVENESS: "/livez", Probe.READINESS: "/readyz", Probe.STARTUP: "/s"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as http:
        assert (await http.get("/readyz")).json()["probe"] == "readiness"
        assert (await http.get("/ready")).status_code == 404


def test_bad_paths_are_rejected(registry: HealthRegistry) -> None:
    with pytest.raises(ValueError, match=r"^readiness_path:"):
        HealthApp(registry, readiness_path="ready")
    with pytest.raises(ValueError, match="must all differ"):
        HealthApp(registry, readiness_path="/healthz")


def test_default_paths_are_the_kubernetes_ones() -> None:
    assert DEFAULT_PATHS == {
        Probe.LIVENESS: "/healthz",
        Probe.READINESS: "/ready",
        Probe.STARTUP: "/startup",
    }


async def call(app: HealthApp, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent


async def test_mounted_under_a_prefix_uses_root_path(registry: HealthRegistry) -> None:
    app = HealthApp(registry)
    scope = {"type": "http", "method": "GET", "path": "/ops/ready", "root_path": "/ops"}
    sent = await call(app, scope)
    assert sent[0]["status"] == 200
    # Servers that strip the prefix themselves pass the bare path.
    sent = await call(app, {"type": "http", "method": "GET", "path": "/ready", "root_path": "/ops"})
    assert sent[0]["status"] == 200


async def test_lifespan_is_acknowledged(registry: HealthRegistry) -> None:
    sent = await call(HealthApp(registry), {"type": "lifespan"})
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


async def test_websockets_are_closed(registry: HealthRegistry) -> None:
    sent = await call(HealthApp(registry), {"type": "websocket", "path": "/ready"})
    assert sent == [{"type": "websocket.close", "code": 1000}]
