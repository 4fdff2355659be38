"""Running the order flow end to end and checking its invariants.

:func:`run_orders` places ``orders`` orders on a fresh :class:`~.services.Shop` in
``directory``, runs them orchestrated (a :class:`~phalanx.txn.saga.SagaWorker` on a SQLite
saga log) or choreographed (outbox, inbox, embedded bus), with the failure switches of
``faults`` and one kind of crash, then checks :func:`~.invariants.check_invariants`.

Crashes (seeded):

* ``orchestrator``: orchestrated, a real orchestrator process is SIGKILLed at the start of a
  seeded step (its saga stays claimed). A new orchestrator, once the dead one's lease has
  expired (its clock is set past it), claims every unfinished saga and resumes it,
  re-running the interrupted step under the same idempotency key. Choreographed (there is
  no orchestrator), the relays stop halfway and new ones take over.
* ``payment``: the payment service crashes once per affected order. Orchestrated: after
  committing the charge but before answering, so the orchestrator's retry charges again with
  the same key (nothing is charged twice). Choreographed: while handling an event, so its
  transaction rolls back and the relay delivers the event again.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from phalanx.clock import SYSTEM_CLOCK, ManualClock
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
#: How long to wait for a killed orchestrator process to be reaped.
CHILD_TIMEOUT_S: Final = 60


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


def placed_orders(count: int, seed: int) -> list[tuple[str, str, int, int]]:
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
        placed = placed_orders(orders, seed)
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
    crashes = 0
    if crash == "orchestrator":
        # A real orchestrator process, SIGKILLed in the middle of a step.
        rng = random.Random(f"{seed}:crash")
        # Every order runs at least two steps (create, reserve): the kill always lands.
        kill_at = rng.randint(1, 2 * len(placed))
        crashes = _run_and_kill(shop.faults, placed, seed, directory, kill_at)
        # A new orchestrator starts after the dead one's lease expired.
        clock: ManualClock | None = ManualClock(wall_start_s=time.time() + LEASE_S + 1)
    else:
        clock = None
    return crashes + orchestrate(
        shop, placed, crash=crash, seed=seed, directory=directory, clock=clock
    )


def orchestrate(
    shop: Shop,
    placed: list[tuple[str, str, int, int]],
    *,
    crash: str,
    seed: int,
    directory: Path,
    clock: ManualClock | None = None,
    worker_id: str = "orchestrator",
    before: Callable[[int], None] | None = None,
) -> int:
    """Start the order sagas (idempotent) and run them until none is left; return the
    payment crashes injected. ``before(n)`` runs before the ``n``-th step action."""
    crashed_payments: set[str] = set()
    counter = {"steps": 0, "crashes": 0}

    def before_step(step: str, ctx: StepContext) -> None:
        counter["steps"] += 1
        if before is not None:
            before(counter["steps"])
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
        worker = SagaWorker(
            store,
            [definition],
            worker_id=worker_id,
            lease_s=LEASE_S,
            clock=clock if clock is not None else SYSTEM_CLOCK,
        )
        for order_id, item, qty, amount in placed:
            worker.start("order", order_id, {"item": item, "qty": qty, "amount": amount})
        worker.run_until_idle()
        unfinished = [
            r for r in store.find(limit=len(placed)) if r.status is SagaStatus.DEAD_LETTER
        ]
        for record in unfinished:
            shop.orders.set_status(record.saga_id, f"dead-letter: {record.error}")
    return counter["crashes"]


def _run_and_kill(
    faults: Faults,
    placed: list[tuple[str, str, int, int]],
    seed: int,
    directory: Path,
    kill_at: int,
) -> int:
    """Run an orchestrator process until its ``kill_at``-th step starts, then SIGKILL it."""
    spec = {
        "directory": str(directory),
        "orders": len(placed),
        "seed": seed,
        "faults": [faults.payment, faults.inventory, faults.shipping, faults.seed],
        "kill_at": kill_at,
    }
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no user input
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
        child.communicate(timeout=CHILD_TIMEOUT_S)
    return 1 if line == "STOP" else 0


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
