"""Running the order flow end to end and checking its invariants.

:func:`run_orders` places ``orders`` orders on a fresh :class:`~.services.Shop` in
``directory``, runs them orchestrated (a :class:`~phalanx.txn.saga.SagaWorker` on a SQLite
saga log) or choreographed (outbox, inbox, embedded bus), with the failure switches of
``faults`` and one kind of crash, then checks :func:`~.invariants.check_invariants`.

Crashes (in-process, seeded):

* ``orchestrator``: the worker dies in the middle of a step (the step never returns; its
  saga stays claimed). A new worker, once the dead one's lease has expired (its clock is set
  past it), claims every unfinished saga and resumes it, re-running the interrupted step
  under the same idempotency key.
* ``payment``: the payment service crashes once per affected order. Orchestrated: after
  committing the charge but before answering, so the orchestrator's retry charges again with
  the same key (nothing is charged twice). Choreographed: while handling an event, so its
  transaction rolls back and the relay delivers the event again.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from phalanx.clock import ManualClock
from phalanx.txn.events import Event
from phalanx.txn.orders.choreographed import Choreography
from phalanx.txn.orders.invariants import check_invariants
from phalanx.txn.orders.orchestrated import order_saga
from phalanx.txn.orders.services import ITEMS, Faults, Shop
from phalanx.txn.saga import SagaStatus, SagaWorker, SqliteSagaStore, StepContext

__all__ = ["CRASHES", "MODES", "OrdersReport", "run_orders"]

MODES: Final = ("orchestrated", "choreographed")
CRASHES: Final = ("none", "orchestrator", "payment")
ORDERS_MAX: Final = 100_000
#: The share of orders whose payment service crashes under ``crash="payment"``.
PAYMENT_CRASH_SHARE: Final = 0.2
LEASE_S: Final = 30.0


class _WorkerKilled(BaseException):
    """Ends a worker mid-step, as SIGKILL would: nothing after it runs."""


@dataclass
class OrdersReport:
    mode: str
    orders: int
    completed: int = 0
    cancelled: int = 0
    violations: list[str] = field(default_factory=list)
    crashes: int = 0
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations


def _orders(count: int, seed: int) -> list[tuple[str, str, int, int]]:
    rng = random.Random(seed)
    return [
        (f"order-{i:05d}", rng.choice(ITEMS), rng.randint(1, 3), rng.randint(5, 500))
        for i in range(count)
    ]


def run_orders(
    *,
    mode: str,
    orders: int,
    faults: Faults,
    crash: str,
    directory: Path,
    seed: int = 0,
) -> OrdersReport:
    if mode not in MODES:
        raise ValueError(f"mode: one of {MODES}, got {mode!r}")
    if crash not in CRASHES:
        raise ValueError(f"crash: one of {CRASHES}, got {crash!r}")
    if not 1 <= orders <= ORDERS_MAX:
        raise ValueError(f"orders: 1 to {ORDERS_MAX}, got {orders}")
    started = time.perf_counter()
    shop = Shop(directory, faults)
    report = OrdersReport(mode, orders)
    try:
        placed = _orders(orders, seed)
        if mode == "orchestrated":
            report.crashes = _orchestrated(shop, placed, crash, seed, directory)
        else:
            report.crashes = _choreographed(shop, placed, crash, seed)
        statuses = dict(shop.orders.conn.execute("SELECT id, status FROM orders").fetchall())
        report.completed = sum(1 for s in statuses.values() if s == "completed")
        report.cancelled = sum(1 for s in statuses.values() if s == "cancelled")
        report.violations = check_invariants(shop)
        missing = orders - len(statuses)
        if missing:
            report.violations.append(f"{missing} orders were never created")
    finally:
        shop.close()
    report.elapsed_s = time.perf_counter() - started
    return report


def _orchestrated(
    shop: Shop, placed: list[tuple[str, str, int, int]], crash: str, seed: int, directory: Path
) -> int:
    rng = random.Random(f"{seed}:crash")
    # Every order runs at least two steps (create, reserve): the kill always lands.
    kill_at = rng.randint(1, 2 * len(placed)) if crash == "orchestrator" else -1
    crashed_payments: set[str] = set()
    counter = {"steps": 0, "crashes": 0}

    def before_step(step: str, ctx: StepContext) -> None:
        counter["steps"] += 1
        if counter["steps"] == kill_at:
            counter["crashes"] += 1
            raise _WorkerKilled
        if (
            crash == "payment"
            and step == "charge"
            and ctx.saga_id not in crashed_payments
            and random.Random(f"{seed}:{ctx.saga_id}").random() < PAYMENT_CRASH_SHARE
        ):
            crashed_payments.add(ctx.saga_id)
            counter["crashes"] += 1
            # The charge commits, then the service dies before it answers.
            shop.payments.charge(ctx.idempotency_key, ctx.saga_id, dict(ctx.payload)["amount"])
            raise ConnectionError("payment service crashed before answering")

    definition = order_saga(shop, before_step=before_step)
    with SqliteSagaStore(directory / "sagas.db", synchronous="NORMAL") as store:
        worker = SagaWorker(store, [definition], worker_id="orchestrator-1", lease_s=LEASE_S)
        for order_id, item, qty, amount in placed:
            worker.start("order", order_id, {"item": item, "qty": qty, "amount": amount})
        try:
            worker.run_until_idle()
        except _WorkerKilled:
            # A new orchestrator starts after the dead one's lease expired.
            later = ManualClock(wall_start_s=time.time() + LEASE_S + 1)
            worker = SagaWorker(
                store, [definition], worker_id="orchestrator-2", lease_s=LEASE_S, clock=later
            )
            worker.run_until_idle()
        unfinished = [
            r for r in store.find(limit=len(placed)) if r.status is SagaStatus.DEAD_LETTER
        ]
        for record in unfinished:
            shop.orders.set_status(record.saga_id, f"dead-letter: {record.error}")
    return counter["crashes"]


def _choreographed(
    shop: Shop, placed: list[tuple[str, str, int, int]], crash: str, seed: int
) -> int:
    crashed: set[str] = set()

    def crash_payment(service: str, event: Event) -> bool:
        if crash != "payment" or service != "payments" or event.correlation_id in crashed:
            return False
        if random.Random(f"{seed}:{event.correlation_id}").random() >= PAYMENT_CRASH_SHARE:
            return False
        crashed.add(event.correlation_id)
        return True

    flow = Choreography(shop, now_s=time.time, crash=crash_payment)
    for order_id, item, qty, amount in placed:
        flow.place(order_id, item, qty, amount)
    if crash == "orchestrator":
        # No orchestrator in a choreography: kill the relays' process instead, i.e. stop
        # pumping halfway; a new process's relays pick up every unpublished event.
        for relay in flow.relays[:2]:
            relay.run_once()
        flow = Choreography(shop, now_s=time.time, crash=crash_payment)
    flow.pump()  # a crashed handler fails its relay's publish: delivered again next pass
    return len(crashed) + (1 if crash == "orchestrator" else 0)
