"""The idempotency ASGI middleware against a tiny raw ASGI app that counts its executions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from phalanx.clock import ManualClock
from phalanx.errors import BadRequest
from phalanx.resilience.idempotency import (
    Claim,
    IdempotencyMiddleware,
    MemoryIdempotencyStore,
    RecordState,
    SqliteIdempotencyStore,
    StoredResponse,
    decode_response,
    definitive_status,
    encode_response,
)
from phalanx.resilience.idempotency.asgi import Message, Receive, Scope, Send
from phalanx.resilience.keys import IDEMPOTENCY_KEY_BYTES_MAX

URL = "http://test"


class CountingApp:
    """Echoes the body as JSON, counting executions; can be told to stall or fail."""

    def __init__(self, *, status: int = 201) -> None:
        self.calls = 0
        self.status = status
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.fail = False
        self.body_size = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("handler crashed")
        payload = json.dumps({"call": self.calls, "echo": body.decode()}).encode()
        payload += b" " * self.body_size
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"x-call", str(self.calls).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=URL)


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


@pytest.fixture
def app() -> CountingApp:
    return CountingApp()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store() -> MemoryIdempotencyStore:
    return MemoryIdempotencyStore()


async def test_first_request_runs_and_a_duplicate_is_replayed(
    app: CountingApp, store: MemoryIdempotencyStore, clock: ManualClock
) -> None:
    async with client_for(IdempotencyMiddleware(app, store, clock=clock)) as client:
        first = await client.post("/orders", content=b"book", headers=key("k1"))
        second = await client.post("/orders", content=b"book", headers=key("k1"))
    assert app.calls == 1
    assert first.status_code == second.status_code == 201
    assert first.content == second.content
    assert first.json() == {"call": 1, "echo": "book"}
    assert second.headers["x-call"] == "1"
    assert second.headers["content-type"] == "application/json"
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"


async def test_requests_without_the_header_or_with_other_methods_pass_through(
    app: CountingApp, store: MemoryIdempotencyStore
) -> None:
    async with client_for(IdempotencyMiddleware(app, store)) as client:
        await client.post("/orders", content=b"x")
        await client.post("/orders", content=b"x")
        await client.get("/orders", headers=key("k1"))
        await client.get("/orders", headers=key("k1"))
    assert app.calls == 4
    assert len(store) == 0


async def test_methods_and_header_name_are_configurable(
    app: CountingApp, store: MemoryIdempotencyStore
) -> None:
    middleware = IdempotencyMiddleware(app, store, methods=("POST",), header="X-Request-Id")
    async with client_for(middleware) as client:
        await client.put("/a", content=b"x", headers={"X-Request-Id": "r1"})
        await client.put("/a", content=b"x", headers={"X-Request-Id": "r1"})
        await client.post("/a", content=b"x", headers={"x-request-id": "r1"})
        reply = await client.post("/a", content=b"x", headers={"X-Request-Id": "r1"})
    assert app.calls == 3
    assert reply.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize(
    ("path", "body"),
    [("/orders", b"other body"), ("/refunds", b"book"), ("/orders?coupon=1", b"book")],
)
async def test_reusing_a_key_with_another_payload_is_422(
    app: CountingApp, store: MemoryIdempotencyStore, path: str, body: bytes
) -> None:
    async with client_for(IdempotencyMiddleware(app, store)) as client:
        await client.post("/orders", content=b"book", headers=key("k1"))
        reply = await client.post(path, content=body, headers=key("k1"))
    assert reply.status_code == 422
    assert reply.json()["error"] == "idempotency_key_reused"
    assert "different request" in reply.json()["detail"]
    assert app.calls == 1


async def test_a_concurrent_duplicate_gets_409_with_retry_after(
    app: CountingApp, store: MemoryIdempotencyStore, clock: ManualClock
) -> None:
    app.gate = asyncio.Event()
    middleware = IdempotencyMiddleware(app, store, lease_s=30, clock=clock)
    async with client_for(middleware) as client:
        first = asyncio.create_task(client.post("/orders", content=b"x", headers=key("k1")))
        await app.started.wait()
        duplicate = await client.post("/orders", content=b"x", headers=key("k1"))
        app.gate.set()
        assert (await first).status_code == 201
    assert duplicate.status_code == 409
    assert duplicate.json()["error"] == "idempotency_key_in_progress"
    assert duplicate.headers["retry-after"] == "30"
    assert app.calls == 1
    assert middleware.statistics().conflicts == 1


async def test_a_concurrent_duplicate_waits_and_is_replayed_when_asked(
    app: CountingApp, store: MemoryIdempotencyStore, clock: ManualClock
) -> None:
    app.gate = asyncio.Event()
    middleware = IdempotencyMiddleware(app, store, wait_s=2.0, poll_interval_s=0.5, clock=clock)

    def open_gate_after_a_poll(event: Any) -> None:
        if event.kind == "wait" and app.gate is not None:
            app.gate.set()

    middleware.guard.add_listener(open_gate_after_a_poll)
    async with client_for(middleware) as client:
        first = asyncio.create_task(client.post("/orders", content=b"x", headers=key("k1")))
        await app.started.wait()
        duplicate = await client.post("/orders", content=b"x", headers=key("k1"))
        original = await first
    assert app.calls == 1
    assert duplicate.status_code == 201
    assert duplicate.content == original.content
    assert duplicate.headers["idempotent-replayed"] == "true"
    assert clock.sleeps_s[0] == 0.5
    stats = middleware.statistics()
    assert (stats.waits, stats.hits) == (1, 1)


@pytest.mark.parametrize(
    "value", ["", "   ", "k" * (IDEMPOTENCY_KEY_BYTES_MAX + 1)], ids=["empty", "blank", "long"]
)
async def test_a_malformed_key_is_400(
    app: CountingApp, store: MemoryIdempotencyStore, value: str
) -> None:
    async with client_for(IdempotencyMiddleware(app, store)) as client:
        reply = await client.post("/orders", content=b"x", headers=key(value))
    assert reply.status_code == 400
    assert reply.json()["error"] == "bad_idempotency_key"
    assert app.calls == 0


async def test_a_key_of_exactly_the_limit_is_accepted(
    app: CountingApp, store: MemoryIdempotencyStore
) -> None:
    async with client_for(IdempotencyMiddleware(app, store)) as client:
        reply = await client.post(
            "/orders", content=b"x", headers=key("k" * IDEMPOTENCY_KEY_BYTES_MAX)
        )
    assert reply.status_code == 201


async def test_a_repeated_key_header_is_400(
    app: CountingApp, store: MemoryIdempotencyStore
) -> None:
    async with client_for(IdempotencyMiddleware(app, store)) as client:
        reply = await client.post(
            "/orders",
            content=b"x",
            headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
        )
    assert reply.status_code == 400
    assert app.calls == 0


async def test_a_body_over_body_bytes_max_is_413_and_never_runs(
    app: CountingApp, store: MemoryIdempotencyStore
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        # Streamed without Content-Length: the limit is enforced while buffering.
        for _ in range(3):
            yield b"x" * 4

    async with client_for(IdempotencyMiddleware(app, store, body_bytes_max=10)) as client:
        at_limit = await client.post("/a", content=b"x" * 10, headers=key("k1"))
        declared = await client.post("/a", content=b"x" * 11, headers=key("k2"))
        streamed = await client.post("/a", content=chunks(), headers=key("k3"))
    assert at_limit.status_code == 201
    assert declared.status_code == streamed.status_code == 413
    assert streamed.json()["error"] == "body_too_large"
    assert "body_bytes_max=10" in streamed.json()["detail"]
    assert app.calls == 1


async def test_a_response_over_response_bytes_max_is_delivered_not_stored_and_not_rerun(
    app: CountingApp, store: MemoryIdempotencyStore
) -> None:
    app.body_size = 2_000
    async with client_for(IdempotencyMiddleware(app, store, response_bytes_max=1_000)) as client:
        first = await client.post("/a", content=b"x", headers=key("k1"))
        duplicate = await client.post("/a", content=b"x", headers=key("k1"))
    assert first.status_code == 201
    assert len(first.content) > 2_000
    assert duplicate.status_code == 409
    assert duplicate.json()["error"] == "idempotency_result_unavailable"
    assert app.calls == 1


async def test_response_bytes_max_counts_status_headers_and_body(
    app: CountingApp, store: MemoryIdempotencyStore
) -> None:
    probe = MemoryIdempotencyStore()
    async with client_for(IdempotencyMiddleware(CountingApp(), probe)) as client:
        await client.post("/a", content=b"x", headers=key("k1"))
    record = probe.get("k1", now_s=0.0)
    assert record is not None
    assert record.result is not None
    stored_bytes = len(record.result) - 1  # minus the one-byte tag of the executor
    async with client_for(
        IdempotencyMiddleware(app, store, response_bytes_max=stored_bytes)
    ) as client:
        await client.post("/a", content=b"x", headers=key("fits"))
        replay = await client.post("/a", content=b"x", headers=key("fits"))
    assert replay.headers["idempotent-replayed"] == "true"
    app.calls = 0
    async with client_for(
        IdempotencyMiddleware(app, MemoryIdempotencyStore(), response_bytes_max=stored_bytes - 1)
    ) as client:
        await client.post("/a", content=b"x", headers=key("fits"))
        refused = await client.post("/a", content=b"x", headers=key("fits"))
    assert refused.status_code == 409


async def test_server_errors_and_crashes_release_the_key(
    app: CountingApp, store: MemoryIdempotencyStore
) -> None:
    async with client_for(IdempotencyMiddleware(app, store)) as client:
        app.status = 503
        assert (await client.post("/a", content=b"x", headers=key("k1"))).status_code == 503
        app.fail = True
        with pytest.raises(RuntimeError, match="handler crashed"):
            await client.post("/a", content=b"x", headers=key("k1"))
        app.fail = False
        app.status = 201
        assert (await client.post("/a", content=b"x", headers=key("k1"))).status_code == 201
        replay = await client.post("/a", content=b"x", headers=key("k1"))
    assert app.calls == 3
    assert replay.json()["call"] == 3


async def test_client_errors_are_stored_only_when_definitive(
    store: MemoryIdempotencyStore,
) -> None:
    rejected = CountingApp(status=400)
    async with client_for(IdempotencyMiddleware(rejected, store)) as client:
        await client.post("/a", content=b"x", headers=key("k1"))
        await client.post("/a", content=b"x", headers=key("k1"))
    assert rejected.calls == 2

    definitive = IdempotencyMiddleware(rejected, store, store_if=definitive_status)
    async with client_for(definitive) as client:
        await client.post("/a", content=b"x", headers=key("k2"))
        replay = await client.post("/a", content=b"x", headers=key("k2"))
    assert rejected.calls == 3
    assert replay.status_code == 400
    assert replay.headers["idempotent-replayed"] == "true"
    assert not definitive_status(429)
    assert not definitive_status(500)


async def test_key_scope_keeps_clients_apart(
    app: CountingApp, store: MemoryIdempotencyStore
) -> None:
    def account(scope: Scope) -> str:
        headers = dict(scope["headers"])
        return headers.get(b"x-account", b"").decode()

    async with client_for(IdempotencyMiddleware(app, store, key_scope=account)) as client:
        for who in ("alice", "bob", "alice"):
            await client.post("/a", content=b"x", headers={**key("k1"), "X-Account": who})
    assert app.calls == 2


@pytest.mark.parametrize("scope_name", ["tenant-42", "t" * 10_000])
async def test_a_key_of_the_limit_with_a_scope_is_accepted_and_replayed(
    app: CountingApp, store: MemoryIdempotencyStore, scope_name: str
) -> None:
    middleware = IdempotencyMiddleware(app, store, key_scope=lambda scope: scope_name)
    long_key = "k" * IDEMPOTENCY_KEY_BYTES_MAX
    async with client_for(middleware) as client:
        first = await client.post("/a", content=b"x", headers=key(long_key))
        second = await client.post("/a", content=b"x", headers=key(long_key))
    assert first.status_code == second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert app.calls == 1
    assert len(store) == 1


async def test_a_key_the_executor_rejects_is_400_not_an_error(app: CountingApp) -> None:
    class PickyStore(MemoryIdempotencyStore):
        def claim(
            self,
            key: str,
            fingerprint: str,
            owner: str,
            *,
            now_s: float,
            lease_s: float,
            ttl_s: float,
        ) -> Claim:
            raise BadRequest("idempotency key: refused by the store")

    async with client_for(IdempotencyMiddleware(app, PickyStore())) as client:
        response = await client.post("/a", content=b"x", headers=key("k1"))
    assert response.status_code == 400
    assert response.json()["error"] == "bad_idempotency_key"
    assert app.calls == 0


async def test_a_full_store_is_503(app: CountingApp) -> None:
    app.gate = asyncio.Event()
    middleware = IdempotencyMiddleware(app, MemoryIdempotencyStore(entries_max=1))
    async with client_for(middleware) as client:
        first = asyncio.create_task(client.post("/a", content=b"x", headers=key("k1")))
        await app.started.wait()
        other = await client.post("/a", content=b"x", headers=key("k2"))
        app.gate.set()
        await first
    assert other.status_code == 503
    assert other.json()["error"] == "idempotency_store_full"


async def test_a_request_held_by_a_dead_worker_runs_after_the_lease(
    app: CountingApp, clock: ManualClock, tmp_path: Any
) -> None:
    with SqliteIdempotencyStore(tmp_path / "keys.db") as store:
        dead = IdempotencyMiddleware(app, store, lease_s=10, clock=clock)
        alive = IdempotencyMiddleware(app, store, lease_s=10, clock=clock)
        app.gate = asyncio.Event()
        async with client_for(dead) as client:
            crashed = asyncio.create_task(client.post("/a", content=b"x", headers=key("k1")))
            await app.started.wait()
            # The worker holds the key; it is never heard from again.
            async with client_for(alive) as other:
                assert (await other.post("/a", content=b"x", headers=key("k1"))).status_code == 409
                clock.advance(10)
                app.gate.set()
                taken_over = await other.post("/a", content=b"x", headers=key("k1"))
            late = await crashed
        assert taken_over.status_code == 201
        assert late.status_code == 201  # it answered its client, but could not store
        assert dead.statistics().leases_lost == 1
        record = store.get("k1", now_s=clock.wall_s())
        assert record is not None
        assert record.state is RecordState.COMPLETED
        assert record.result is not None
        assert decode_response(record.result[1:]).body == taken_over.content


async def test_a_client_that_disconnects_still_gets_the_replay_on_retry(
    app: CountingApp, store: MemoryIdempotencyStore
) -> None:
    middleware = IdempotencyMiddleware(app, store)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/a",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"idempotency-key", b"k1")],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"x", "more_body": False}

    async def broken_send(message: Message) -> None:
        raise ConnectionResetError("client went away")

    await middleware(scope, receive, broken_send)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    assert app.calls == 1
    assert sent[0]["status"] == 201
    assert (b"idempotent-replayed", b"true") in sent[0]["headers"]


async def test_a_disconnect_before_the_body_runs_nothing(
    app: CountingApp, store: MemoryIdempotencyStore
) -> None:
    middleware = IdempotencyMiddleware(app, store)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/a",
        "headers": [(b"idempotency-key", b"k1")],
    }

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        raise AssertionError("nothing should be sent")

    await middleware(scope, receive, send)
    assert app.calls == 0
    assert len(store) == 0


async def test_non_http_scopes_pass_through(app: CountingApp) -> None:
    seen: list[str] = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    middleware = IdempotencyMiddleware(lifespan_app, MemoryIdempotencyStore())

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        return None

    await middleware({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]


def test_stored_responses_round_trip() -> None:
    response = StoredResponse(201, [(b"a", b"1"), (b"set-cookie", b"x=\xff")], b"\x00body")
    assert decode_response(encode_response(response)) == response
    assert decode_response(encode_response(StoredResponse(204, [], b""))).status == 204


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("body_bytes_max", 0),
        ("response_bytes_max", -1),
        ("ttl_s", -1),
        ("wait_s", -1),
        ("methods", ()),
        ("methods", "POST"),
        ("methods", ("POST", 5)),
        ("header", " "),
        ("header", 5),
        ("replay_header", b"x"),
        ("store_if", None),
        ("key_scope", "tenant"),
    ],
)
def test_bad_configuration_is_rejected_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        IdempotencyMiddleware(CountingApp(), MemoryIdempotencyStore(), **{field: value})
