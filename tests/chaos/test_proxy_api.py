"""The fault proxy's HTTP admin API: routes, status codes, error bodies, and ProxyAdmin.

Most tests call the ASGI app in memory (httpx's ASGI transport); the proxies it creates
listen on real loopback ports. One test serves the API with uvicorn on a real port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from chaos.test_proxy_support import WAIT_S, connect, upstream_server
from loopback import free_port
from phalanx.chaos.proxy import ProxyConfig, ProxyNotFound, ProxyServer
from phalanx.chaos.proxy_api import ADMIN_BODY_BYTES_MAX, ProxyAdmin, ProxyApiApp, ProxyApiServer
from phalanx.errors import BadRequest, Conflict, TooLarge, Unavailable


@pytest.fixture
async def proxies() -> AsyncIterator[ProxyServer]:
    async with ProxyServer(seed=1) as server:
        yield server


@pytest.fixture
async def http(proxies: ProxyServer) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=ProxyApiApp(proxies))
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        yield client


@pytest.fixture
async def admin(proxies: ProxyServer) -> AsyncIterator[ProxyAdmin]:
    transport = httpx.ASGITransport(app=ProxyApiApp(proxies))
    async with ProxyAdmin("http://proxy", transport=transport) as client:
        yield client


PROXY = {"name": "db", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:5432"}


async def test_create_get_list_and_delete(http: httpx.AsyncClient) -> None:
    created = await http.post("/proxies", json=PROXY)
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "db"
    assert body["enabled"] is True
    assert body["toxics"] == []
    assert body["listen"].startswith("127.0.0.1:")
    assert not body["listen"].endswith(":0")
    assert (await http.get("/proxies/db")).json() == body
    assert (await http.get("/proxies")).json() == {"db": body}
    assert (await http.delete("/proxies/db")).status_code == 204
    assert (await http.get("/proxies")).json() == {}


async def test_toxic_routes(http: httpx.AsyncClient) -> None:
    await http.post("/proxies", json=PROXY)
    added = await http.post(
        "/proxies/db/toxics", json={"type": "latency", "attributes": {"latency": 100}}
    )
    assert added.status_code == 200
    toxic = {
        "type": "latency",
        "name": "latency_downstream",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"latency": 100, "jitter": 0},
    }
    assert added.json() == toxic
    assert (await http.get("/proxies/db/toxics")).json() == [toxic]
    assert (await http.get("/proxies/db/toxics/latency_downstream")).json() == toxic
    assert (await http.get("/proxies/db")).json()["toxics"] == [toxic]
    updated = await http.post(
        "/proxies/db/toxics/latency_downstream", json={"attributes": {"jitter": 10}}
    )
    assert updated.json()["attributes"] == {"latency": 100, "jitter": 10}
    patched = await http.patch("/proxies/db/toxics/latency_downstream", json={"toxicity": 0.5})
    assert patched.json()["toxicity"] == 0.5
    assert (await http.delete("/proxies/db/toxics/latency_downstream")).status_code == 204
    assert (await http.get("/proxies/db/toxics")).json() == []


async def test_update_populate_reset_version_and_statistics(http: httpx.AsyncClient) -> None:
    await http.post("/proxies", json=PROXY)
    disabled = await http.post("/proxies/db", json={"enabled": False})
    assert disabled.status_code == 200
    assert disabled.json()["enabled"] is False
    populated = await http.post(
        "/populate",
        json=[PROXY, {"name": "cache", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:6379"}],
    )
    assert populated.status_code == 201
    assert [p["name"] for p in populated.json()["proxies"]] == ["db", "cache"]
    await http.post("/proxies/cache/toxics", json={"type": "timeout"})
    assert (await http.post("/reset")).status_code == 204
    listing = (await http.get("/proxies")).json()
    assert all(p["enabled"] and p["toxics"] == [] for p in listing.values())
    assert "version" in (await http.get("/version")).json()
    stats = (await http.get("/proxies/db/statistics")).json()
    assert stats["connections_accepted"] == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("POST", "/proxies", b"{not json", 400, "invalid body"),
        ("POST", "/proxies", b'{"name": "x", "listen": "127.0.0.1:0"}', 400, "`upstream`"),
        (
            "POST",
            "/proxies",
            b'{"name": "x", "listen": "a:0", "upstream": "b:1", "z": 1}',
            400,
            "z",
        ),
        (
            "POST",
            "/proxies",
            b'{"name": "x", "listen": "nowhere", "upstream": "b:1"}',
            400,
            "listen",
        ),
        ("POST", "/proxies/db/toxics", b'{"type": "lag"}', 400, "unknown toxic 'lag'"),
        ("POST", "/proxies/db/toxics", b'{"type": "latency", "stream": "up"}', 400, "stream"),
        (
            "POST",
            "/proxies/db/toxics",
            b'{"type": "latency", "attributes": {"rate": 1}}',
            400,
            "no attribute 'rate'",
        ),
        (
            "POST",
            "/proxies/db/toxics",
            b'{"type": "latency", "attributes": {"latency": -5}}',
            400,
            "must be >= 0",
        ),
        ("POST", "/proxies/db/toxics", b'{"type": "latency", "toxicity": 2}', 400, "toxicity"),
        ("POST", "/proxies/db", b'{"name": "other"}', 400, "cannot be changed"),
        ("GET", "/proxies/nope", b"", 404, "proxy 'nope' not found"),
        ("GET", "/proxies/db/toxics/nope", b"", 404, "toxic 'nope' not found"),
        ("DELETE", "/proxies/db/toxics/nope", b"", 404, "toxic 'nope' not found"),
        ("GET", "/nothing/here", b"", 404, "no such path"),
        ("PUT", "/proxies", b"", 405, "not allowed"),
        ("GET", "/reset", b"", 405, "not allowed"),
        (
            "POST",
            "/proxies",
            b'{"name": "db", "listen": "127.0.0.1:0", "upstream": "b:1"}',
            409,
            "already exists",
        ),
    ],
)
async def test_errors_have_a_status_and_a_json_body(
    http: httpx.AsyncClient, method: str, path: str, body: bytes, status: int, error: str
) -> None:
    await http.post("/proxies", json=PROXY)
    response = await http.request(method, path, content=body)
    assert response.status_code == status
    answer = response.json()
    assert answer["status"] == status
    assert error in answer["error"]


async def test_a_duplicate_toxic_is_409_and_a_body_too_large_413(http: httpx.AsyncClient) -> None:
    await http.post("/proxies", json=PROXY)
    await http.post("/proxies/db/toxics", json={"type": "timeout"})
    again = await http.post("/proxies/db/toxics", json={"type": "timeout"})
    assert again.status_code == 409
    assert "already exists" in again.json()["error"]
    huge = await http.post("/populate", content=b" " * (ADMIN_BODY_BYTES_MAX + 1))
    assert huge.status_code == 413


async def test_proxy_admin_drives_everything(admin: ProxyAdmin) -> None:
    created = await admin.create("db", "127.0.0.1:0", "127.0.0.1:5432")
    assert created.enabled
    toxic = await admin.add_toxic("db", "bandwidth", stream="upstream", attributes={"rate": 5})
    assert toxic.name == "bandwidth_upstream"
    updated = await admin.update_toxic("db", "bandwidth_upstream", attributes={"rate": 7})
    assert updated.attributes == {"rate": 7}
    assert [t.name for t in await admin.toxics("db")] == ["bandwidth_upstream"]
    assert not (await admin.disable("db")).enabled
    assert (await admin.enable("db")).enabled
    await admin.remove_toxic("db", "bandwidth_upstream")
    populated = await admin.populate(
        [ProxyConfig(name="cache", listen="127.0.0.1:0", upstream="127.0.0.1:6379")]
    )
    assert [p.name for p in populated] == ["cache"]
    assert sorted(await admin.proxies()) == ["cache", "db"]
    assert (await admin.statistics("db")).connections_accepted == 0
    await admin.reset()
    await admin.delete("cache")
    assert list(await admin.proxies()) == ["db"]
    assert await admin.version()


async def test_proxy_admin_raises_the_error_the_status_means(admin: ProxyAdmin) -> None:
    await admin.create("db", "127.0.0.1:0", "127.0.0.1:5432")
    with pytest.raises(Conflict):
        await admin.create("db", "127.0.0.1:0", "127.0.0.1:5432")
    with pytest.raises(BadRequest, match="unknown toxic"):
        await admin.add_toxic("db", "lag")
    with pytest.raises(ProxyNotFound):
        await admin.delete("nope")
    with pytest.raises(ProxyNotFound):
        await admin.remove_toxic("db", "nope")
    with pytest.raises(TooLarge):
        await admin.populate(
            [ProxyConfig(name="x" * 100, listen="127.0.0.1:0", upstream="h:1")] * 20_000
        )


async def test_proxy_admin_reports_an_unreachable_api_as_unavailable() -> None:
    async with ProxyAdmin(f"http://127.0.0.1:{free_port()}", timeout_s=2.0) as admin:
        with pytest.raises(Unavailable):
            await admin.proxies()


async def test_the_api_served_on_a_real_port(proxies: ProxyServer) -> None:
    async with (
        upstream_server() as upstream,
        ProxyApiServer(proxies, "127.0.0.1", 0) as api,
        ProxyAdmin(api.url) as admin,
    ):
        assert api.address[1] != 0
        state = await admin.create("echo", "127.0.0.1:0", upstream.address)
        host, port = state.listen.rsplit(":", 1)
        async with connect((host, int(port))) as (reader, writer):
            writer.write(b"through")
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(7) == b"through"


def test_a_remote_admin_address_needs_allow_remote() -> None:
    with pytest.raises(BadRequest, match="not a loopback address"):
        ProxyApiServer(ProxyServer(), "0.0.0.0", 0)
    ProxyApiServer(ProxyServer(), "0.0.0.0", 0, allow_remote=True)  # only built, not started
    ProxyApiServer(ProxyServer(), "::1", 0)
    ProxyApiServer(ProxyServer(), "localhost", 0)
