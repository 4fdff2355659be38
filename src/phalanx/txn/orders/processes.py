"""The order flow with each service in its own process, over HTTP.

:func:`run_orders_http` starts the four services (:mod:`.services_http`) as separate
processes on loopback, waits for their readiness probes, and runs the orders as
orchestrated sagas whose steps call the services through :class:`~.services_http.ServiceClient`
(breaker, retries with idempotency keys, timeouts). With ``crash="payment"`` the payment
service process is SIGKILLed in the middle of the run and started again; requests in the
meantime fail over to retries, and to compensation when the retries run out. With
``crash="orchestrator"`` an orchestrator process is SIGKILLed at a seeded step and a new
one resumes its sagas after the lease. Afterwards the invariants are checked on the
services' databases.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

from phalanx.clock import SYSTEM_CLOCK, Clock, ManualClock
from phalanx.txn.orders.invariants import check_invariants
from phalanx.txn.orders.run import OrdersReport, placed_orders
from phalanx.txn.orders.services import Faults, Shop
from phalanx.txn.orders.services_http import SERVICES, ServiceClient
from phalanx.txn.saga import (
    SagaDefinition,
    SagaStatus,
    SagaWorker,
    SqliteSagaStore,
    Step,
    StepContext,
)

__all__ = ["ServiceProcesses", "run_orders_http"]

StepHook = Callable[[str], None]
READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class ServiceProcesses:
    """The four service processes; :meth:`kill` and :meth:`start` one by name."""

    directory: Path
    faults: Faults
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def start(self, service: str) -> None:
        faults = [self.faults.payment, self.faults.inventory, self.faults.shipping]
        args = [
            str(self.directory),
            str(self.ports[service]),
            json.dumps([*faults, self.faults.seed]),
        ]
        self.processes[service] = subprocess.Popen(  # noqa: S603 - our interpreter and module
            [sys.executable, "-m", "phalanx.txn.orders.services_http", service, *args],
            env={**os.environ},
        )

    def wait_ready(self, service: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.processes[service].poll() is not None:
                raise RuntimeError(f"service {service} exited at start")
            try:
                if httpx.get(f"{self.url(service)}/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"service {service} not ready within {READY_TIMEOUT_S} s")

    def kill(self, service: str) -> None:
        process = self.processes[service]
        process.send_signal(signal.SIGKILL)
        process.wait(STOP_TIMEOUT_S)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)


def http_order_saga(
    clients: dict[str, ServiceClient], on_step: StepHook | None = None
) -> SagaDefinition:
    """The order saga with every step an HTTP call to its service."""

    def call(service: str, operation: str) -> Step:
        def action(ctx: StepContext) -> None:
            if on_step is not None:
                on_step(operation)
            body = {"order_id": ctx.saga_id, **dict(ctx.payload)}
            clients[service].call(operation, ctx.idempotency_key, body)

        return Step(operation, action)

    def undo(step: Step, service: str, operation: str, **extra: str) -> Step:
        def compensation(ctx: StepContext) -> None:
            action_key = ctx.idempotency_key.removesuffix(":compensate")
            body = {"order_id": ctx.saga_id, "action_key": action_key, **extra}
            clients[service].call(operation, ctx.idempotency_key, body)

        return Step(step.name, step.action, compensation)

    def complete(ctx: StepContext) -> None:
        body = {"order_id": ctx.saga_id, "status": "completed"}
        clients["orders"].call("status", ctx.idempotency_key, body)

    return SagaDefinition(
        "order",
        [
            undo(call("orders", "create"), "orders", "status", status="cancelled"),
            undo(call("inventory", "reserve"), "inventory", "release"),
            undo(call("payments", "charge"), "payments", "refund"),
            undo(call("shipping", "ship"), "shipping", "cancel"),
            Step("complete", complete),
        ],
    )


def run_orders_http(
    *, orders: int, faults: Faults, crash: str, directory: Path, seed: int = 0
) -> OrdersReport:
    """Run the orchestrated order flow against service processes (see the module docstring)."""
    if crash not in ("none", "payment", "orchestrator"):
        raise ValueError(f"crash: none, payment or orchestrator, got {crash!r}")
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    Shop(directory, faults).close()  # create every database before the services start
    services = ServiceProcesses(directory, faults, dict(zip(SERVICES, _free_ports(4), strict=True)))
    report = OrdersReport("orchestrated, services over HTTP", orders)
    restarts: list[threading.Thread] = []
    try:
        for service in SERVICES:
            services.start(service)
        for service in SERVICES:
            services.wait_ready(service)
        rng = random.Random(f"{seed}:http-crash")
        kill_at = rng.randint(1, max(1, orders // 2)) if crash == "payment" else -1
        charges = {"n": 0}

        def on_step(operation: str) -> None:
            if operation != "charge":
                return
            charges["n"] += 1
            if charges["n"] == kill_at:
                services.kill("payments")
                report.crashes += 1

                def restart() -> None:
                    services.start("payments")
                    services.wait_ready("payments")

                thread = threading.Thread(target=restart, name="restart-payments")
                thread.start()
                restarts.append(thread)

        clock: Clock = SYSTEM_CLOCK
        if crash == "orchestrator":
            urls = {s: services.url(s) for s in SERVICES}
            report.crashes += _kill_orchestrator(directory, faults, orders, seed, urls)
            clock = ManualClock(wall_start_s=time.time() + 61)  # past the dead one's lease
        with httpx.Client() as client:
            clients = {s: ServiceClient(s, services.url(s), client) for s in SERVICES}
            definition = http_order_saga(clients, on_step)
            with SqliteSagaStore(directory / "sagas.db", synchronous="NORMAL") as store:
                worker = SagaWorker(
                    store,
                    [definition],
                    worker_id="orchestrator",
                    lease_s=60,
                    concurrency=4,
                    clock=clock,
                )
                for order_id, item, qty, amount in placed_orders(orders, seed):
                    worker.start("order", order_id, {"item": item, "qty": qty, "amount": amount})
                worker.run_until_idle()
                for thread in restarts:
                    thread.join()
                worker.run_until_idle()
                dead = [r for r in store.find(limit=orders) if r.status is SagaStatus.DEAD_LETTER]
        for thread in restarts:
            thread.join()
    finally:
        services.stop_all()
    _check(directory, faults, [r.saga_id for r in dead], report)
    report.elapsed_s = time.perf_counter() - started
    return report


def _kill_orchestrator(
    directory: Path, faults: Faults, orders: int, seed: int, urls: dict[str, str]
) -> int:
    """Run an orchestrator process against the services; SIGKILL it at a seeded step."""
    kill_at = random.Random(f"{seed}:http-orchestrator").randint(1, 2 * orders)
    spec = {
        "directory": str(directory),
        "orders": orders,
        "seed": seed,
        "faults": [faults.payment, faults.inventory, faults.shipping, faults.seed],
        "kill_at": kill_at,
        "urls": urls,
    }
    child = subprocess.Popen(  # noqa: S603 - our interpreter and module
        [sys.executable, "-m", "phalanx.txn.orders.orchestrator_process", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None  # noqa: S101 - Popen with stdout=PIPE sets it
    try:
        line = child.stdout.readline().strip()
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=STOP_TIMEOUT_S)
    return 1 if line == "STOP" else 0


def _check(directory: Path, faults: Faults, dead: list[str], report: OrdersReport) -> None:
    shop = Shop(directory, faults)
    try:
        for saga_id in dead:
            shop.orders.set_status(saga_id, "dead-letter")
        statuses = dict(shop.orders.conn.execute("SELECT id, status FROM orders").fetchall())
        report.completed = sum(1 for s in statuses.values() if s == "completed")
        report.cancelled = sum(1 for s in statuses.values() if s == "cancelled")
        report.violations = check_invariants(shop)
    finally:
        shop.close()


#: How long the choreographed run may take before the runner gives up waiting.
CHOREOGRAPHY_TIMEOUT_S: Final = 120.0


@dataclass
class _ChoreographyProcesses:
    """The four choreography processes (:mod:`.choreo_process`) of one run."""

    directory: Path
    redis_url: str
    prefix: str
    faults_json: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, service: str) -> None:
        args = [service, str(self.directory), self.redis_url, self.prefix, self.faults_json]
        self.processes[service] = subprocess.Popen(  # noqa: S603 - our interpreter and module
            [sys.executable, "-m", "phalanx.txn.orders.choreo_process", *args]
        )

    def kill(self, service: str) -> None:
        self.processes[service].send_signal(signal.SIGKILL)
        self.processes[service].wait(STOP_TIMEOUT_S)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)


def run_orders_choreographed_processes(
    *,
    orders: int,
    faults: Faults,
    crash: str,
    directory: Path,
    redis_url: str,
    seed: int = 0,
) -> OrdersReport:
    """The choreographed order flow with each service in its own process and Redis Streams
    between them. With ``crash="payment"`` the payment process is SIGKILLed once some
    charges went through, and started again; its unacknowledged events are redelivered."""
    import redis

    from phalanx.txn.orders.choreographed import Choreography

    if crash not in ("none", "payment"):
        raise ValueError(f"crash: 'none' or 'payment' with service processes, got {crash!r}")
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    f = faults
    processes = _ChoreographyProcesses(
        directory,
        redis_url,
        f"phalanx-orders-{os.getpid()}-{seed}-{time.time_ns()}:",
        json.dumps([f.payment, f.inventory, f.shipping, f.seed]),
    )
    report = OrdersReport("choreographed, services as processes over Redis Streams", orders)
    shop = Shop(directory, faults)
    try:
        for service in SERVICES:
            processes.start(service)
        placing = Choreography(shop, now_s=time.time, services=())
        for order_id, item, qty, amount in placed_orders(orders, seed):
            placing.place(order_id, item, qty, amount)
        kill_after = random.Random(f"{seed}:choreo-crash").randint(1, max(1, orders // 3))
        deadline = time.monotonic() + CHOREOGRAPHY_TIMEOUT_S
        while time.monotonic() < deadline:
            if crash == "payment" and report.crashes == 0 and _charges(shop) >= kill_after:
                processes.kill("payments")
                report.crashes += 1
                processes.start("payments")
            if _pending(shop) == 0:
                break
            time.sleep(0.05)
    finally:
        processes.stop_all()
        shop.close()
        client = redis.Redis.from_url(redis_url)
        client.delete(f"{processes.prefix}order")
        client.close()
    _check(directory, faults, [], report)
    report.elapsed_s = time.perf_counter() - started
    return report


def _pending(shop: Shop) -> int:
    (count,) = shop.orders.conn.execute(
        "SELECT count(*) FROM orders WHERE status = 'pending'"
    ).fetchone()
    return int(count)


def _charges(shop: Shop) -> int:
    (count,) = shop.payments.conn.execute("SELECT count(*) FROM charges").fetchone()
    return int(count)
