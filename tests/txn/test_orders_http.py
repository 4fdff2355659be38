"""The order services' ASGI app, in process: answers, idempotency, probes, the bulkhead."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest

from phalanx.txn.orders import services as services_module
from phalanx.txn.orders.services import Faults, Shop
from phalanx.txn.orders.services_http import (
    BULKHEAD_CONCURRENT_MAX,
    BULKHEAD_QUEUE_MAX,
    service_app,
)


def client_for(tmp_path: Path, service: str, faults: Faults) -> httpx.AsyncClient:
    Shop(tmp_path, faults).close()
    app = service_app(service, tmp_path, faults)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


async def test_answers_and_idempotency(tmp_path: Path) -> None:
    faults = Faults(payment=1.0, seed=1)  # every charge declined
    async with client_for(tmp_path, "payments", faults) as client:
        declined = await client.post(
            "/charge", json={"order_id": "o1", "amount": 5}, headers={"Idempotency-Key": "k1"}
        )
        assert declined.status_code == 409
        assert "declined" in declined.json()["error"]
        no_key = await client.post("/charge", json={"order_id": "o1", "amount": 5})
        assert no_key.status_code == 400
        ready = await client.get("/ready")
        assert ready.status_code == 200
    async with client_for(tmp_path / "b", "inventory", Faults()) as client:
        body = {"order_id": "o1", "item": "book", "qty": 2}
        for _ in range(2):  # the same key twice reserves once
            ok = await client.post("/reserve", json=body, headers={"Idempotency-Key": "r1"})
            assert ok.status_code == 200
    shop = Shop(tmp_path / "b", Faults())
    held = shop.inventory.conn.execute("SELECT count(*) FROM reservations").fetchone()
    shop.close()
    assert held == (1,)


async def test_the_bulkhead_refuses_beyond_its_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    original = services_module.Inventory.reserve

    def slow(self: services_module.Inventory, *args: object) -> None:
        gate.wait(10)
        original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(services_module.Inventory, "reserve", slow)
    async with client_for(tmp_path, "inventory", Faults()) as client:
        total = BULKHEAD_CONCURRENT_MAX + BULKHEAD_QUEUE_MAX + 1
        body = {"item": "book", "qty": 1}
        requests = [
            asyncio.ensure_future(
                client.post(
                    "/reserve",
                    json={**body, "order_id": f"o{i}"},
                    headers={"Idempotency-Key": f"k{i}"},
                )
            )
            for i in range(total)
        ]
        done, _ = await asyncio.wait(requests, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop().result()
        assert first.status_code == 503  # the one beyond slots and queue, at once
        assert "busy" in first.json()["error"]
        gate.set()
        answers = [r.status_code for r in await asyncio.gather(*requests)]
    assert answers.count(503) >= 1
    assert answers.count(200) >= BULKHEAD_CONCURRENT_MAX
