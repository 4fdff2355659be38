"""End to end: a lost reply, a retried POST, and the server running it exactly once."""

import httpx
import pytest

from phalanx.clock import ManualClock
from phalanx.resilience import (
    IdempotencyMiddleware,
    MemoryIdempotencyStore,
    Retry,
    idempotency_key,
)
from phalanx.resilience.idempotency import asend_idempotency_key, send_idempotency_key


class Orders:
    """A tiny ASGI app that counts the orders it creates."""

    def __init__(self) -> None:
        self.created = 0

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        while (await receive()).get("more_body"):
            pass
        self.created += 1
        body = f'{{"order": {self.created}}}'.encode()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": body})


class LoseFirstReply(httpx.AsyncBaseTransport):
    """Delivers every request, but drops the first reply as a reset connection would."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if not self.lost:
            self.lost += 1
            raise httpx.ReadError("connection reset after the server answered", request=request)
        return response


def client_for(app: Orders) -> httpx.AsyncClient:
    server = IdempotencyMiddleware(app, MemoryIdempotencyStore())
    transport = LoseFirstReply(httpx.ASGITransport(app=server))
    return httpx.AsyncClient(
        transport=transport,
        base_url="http://orders",
        event_hooks={"request": [asend_idempotency_key]},
    )


async def test_a_retried_post_with_a_key_runs_once_and_replays() -> None:
    app = Orders()
    retry = Retry(idempotent=False, retry_on=(httpx.TransportError,), clock=ManualClock())
    async with client_for(app) as client:
        with idempotency_key("order-42"):
            response = await retry.acall(client.post, "/orders", json={"sku": "a"})
    assert response.status_code == 201
    assert response.json() == {"order": 1}
    assert response.headers.get("Idempotent-Replayed") == "true"
    assert app.created == 1  # the server ran it once; the retry got the stored answer


async def test_without_a_key_the_non_idempotent_post_is_not_retried() -> None:
    app = Orders()
    retry = Retry(idempotent=False, retry_on=(httpx.TransportError,), clock=ManualClock())
    async with client_for(app) as client:
        with pytest.raises(httpx.ReadError) as info:
            await retry.acall(client.post, "/orders", json={"sku": "a"})
    assert any("not idempotent" in note for note in info.value.__notes__)
    assert app.created == 1  # ran once, and the caller knows the outcome is unknown


def test_sync_hook_sets_the_header_only_inside_a_key_scope() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Idempotency-Key"))
        return httpx.Response(200)

    hooks = {"request": [send_idempotency_key]}
    with httpx.Client(transport=httpx.MockTransport(handler), event_hooks=hooks) as client:
        client.post("http://x/a")
        with idempotency_key("k-1"):
            client.post("http://x/a")
            client.post("http://x/a", headers={"Idempotency-Key": "explicit"})
    assert seen == [None, "k-1", "explicit"]
