"""The order flow's services over HTTP, one process each, and the orchestrator's client.

:func:`service_app` is a small ASGI app for one service: ``POST /<operation>`` with a JSON
body and an ``Idempotency-Key`` header runs the operation on the service's own database
(the key is what makes a repeated request harmless), behind a
:class:`~phalanx.resilience.Bulkhead` (more than it takes at once, and a bounded queue, get
503); ``/healthz``, ``/ready`` and
``/startup`` are :class:`phalanx.health.HealthApp` probes, readiness checking the database.
Answers: 200 done, 409 refused (:class:`~phalanx.errors.Rejected`: declined, short),
503 unavailable (:class:`~phalanx.errors.Unavailable`: shipping down), 400 bad request.

:class:`ServiceClient` is what the orchestrator's steps call: each service behind a
:class:`~phalanx.resilience.CircuitBreaker`, a :class:`~phalanx.resilience.Retry` (transient
failures only, safe because every request carries its idempotency key) and a per-request
timeout. 409 becomes ``Rejected``; 503, refused connections and an open breaker become
``Unavailable``; a timeout or a connection lost after sending becomes ``Indeterminate``.

``python -m phalanx.txn.orders.services_http SERVICE DIRECTORY PORT FAULTS`` serves one service.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Final

import httpx

from phalanx.errors import BadRequest, BulkheadFull, Indeterminate, Rejected, Unavailable
from phalanx.health import HealthApp, HealthRegistry, sqlite_check
from phalanx.resilience.breaker import CircuitBreaker
from phalanx.resilience.bulkhead import Bulkhead
from phalanx.resilience.retry import Retry
from phalanx.txn.orders.services import Faults, Inventory, Orders, Payments, Shipping

__all__ = ["SERVICES", "ServiceClient", "service_app"]

SERVICES: Final = ("orders", "inventory", "payments", "shipping")
BODY_BYTES_MAX: Final = 64 * 1024
REQUEST_TIMEOUT_S: Final = 5.0
BULKHEAD_CONCURRENT_MAX: Final = 8
BULKHEAD_QUEUE_MAX: Final = 32
BULKHEAD_WAIT_S: Final = 1.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Operation = Callable[[str, dict[str, Any]], None]


def _operations(service: str, directory: Path, faults: Faults) -> dict[str, Operation]:
    if service == "orders":
        orders = Orders(directory)
        return {
            "create": lambda _key, b: orders.create(
                b["order_id"], b["item"], b["qty"], b["amount"]
            ),
            "status": lambda _key, b: orders.set_status(b["order_id"], b["status"]),
        }
    if service == "inventory":
        inventory = Inventory(directory, faults)
        return {
            "reserve": lambda key, b: inventory.reserve(key, b["order_id"], b["item"], b["qty"]),
            "release": lambda _key, b: inventory.release(b["action_key"]),
        }
    if service == "payments":
        payments = Payments(directory, faults)
        return {
            "charge": lambda key, b: payments.charge(key, b["order_id"], b["amount"]),
            "refund": lambda _key, b: payments.refund(b["action_key"]),
        }
    if service == "shipping":
        shipping = Shipping(directory, faults)
        return {
            "ship": lambda key, b: shipping.ship(key, b["order_id"]),
            "cancel": lambda _key, b: shipping.cancel(b["action_key"]),
        }
    raise ValueError(f"service: one of {SERVICES}, got {service!r}")


def service_app(service: str, directory: Path, faults: Faults) -> Callable[..., Awaitable[None]]:
    """The ASGI app of ``service`` over its database in ``directory``."""
    operations = _operations(service, directory, faults)
    registry = HealthRegistry()
    registry.add("database", sqlite_check(directory / f"{service}.db"))
    health = HealthApp(registry)
    lock = asyncio.Lock()  # one SQLite writer per service process
    # Requests beyond what the service takes at once wait a little, then get 503 instead of
    # piling up (the orchestrator retries them).
    bulkhead = Bulkhead(
        max_concurrent=BULKHEAD_CONCURRENT_MAX,
        max_queue=BULKHEAD_QUEUE_MAX,
        max_wait_s=BULKHEAD_WAIT_S,
        name=f"orders-{service}",
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await health(scope, receive, send)
            return
        name = str(scope["path"]).strip("/")
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > BODY_BYTES_MAX:
                await _answer(send, 413, {"error": "body too large"})
                return
            if not message.get("more_body"):
                break
        operation = operations.get(name)
        key = headers.get("idempotency-key", "")
        if operation is None or not key:
            await _answer(send, 400, {"error": "unknown operation or no Idempotency-Key"})
            return

        async def run() -> None:
            async with lock:
                await asyncio.to_thread(operation, key, json.loads(body or b"{}"))

        try:
            await bulkhead.acall(run)
        except BulkheadFull as exc:
            await _answer(send, 503, {"error": f"busy: {exc}"})
        except Rejected as exc:
            await _answer(send, 409, {"error": str(exc)})
        except Unavailable as exc:
            await _answer(send, 503, {"error": str(exc)})
        except (KeyError, ValueError) as exc:
            await _answer(send, 400, {"error": repr(exc)})
        else:
            await _answer(send, 200, {"ok": True})

    return app


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ServiceClient:
    """Calls one service with a breaker, retries and a timeout (see the module docstring)."""

    def __init__(self, service: str, base_url: str, client: httpx.Client) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.breaker = CircuitBreaker(
            f"orders-{service}", consecutive_failures=5, open_timeout_s=0.5, minimum_calls=20
        )
        self.retry = Retry(
            attempts_max=6,
            base_delay_s=0.02,
            max_delay_s=0.5,
            total_timeout_s=30.0,
            name=f"orders-{service}",
        )

    def call(self, operation: str, key: str, body: dict[str, Any]) -> None:
        self.retry.call(self._once, operation, key, body)

    def _once(self, operation: str, key: str, body: dict[str, Any]) -> None:
        response = self.breaker.call(self._post, operation, key, body)
        if response.status_code == 409:
            raise Rejected(response.json().get("error", "refused"))
        if response.status_code == 400:
            raise BadRequest(response.text)

    def _post(self, operation: str, key: str, body: dict[str, Any]) -> httpx.Response:
        url = f"{self.base_url}/{operation}"
        try:
            response = self.client.post(
                url, json=body, headers={"Idempotency-Key": key}, timeout=REQUEST_TIMEOUT_S
            )
        except httpx.ConnectError as exc:
            raise Unavailable(f"{self.service}: {exc}") from exc  # not sent: no effect
        except httpx.TransportError as exc:
            raise Indeterminate(f"{self.service}: {exc!r}") from exc  # sent, no answer
        if response.status_code == 503:
            raise Unavailable(f"{self.service}: {response.json().get('error', '')}")
        if response.status_code >= 500:
            raise Indeterminate(f"{self.service}: HTTP {response.status_code}")
        return response


def main() -> None:
    import uvicorn

    service, directory, port, faults_json = sys.argv[1:5]
    payment, inventory, shipping, seed = json.loads(faults_json)
    faults = Faults(payment=payment, inventory=inventory, shipping=shipping, seed=seed)
    app = service_app(service, Path(directory), faults)
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
