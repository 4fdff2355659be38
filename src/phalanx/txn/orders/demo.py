"""The transactions part of ``make demo``: an order saga that fails and compensates.

:func:`run_demo` runs a few orders through the orchestrated order flow with failures and an
orchestrator crash, prints the counts and the invariants, then the timeline of one order
whose payment was declined: its steps, the failure, and the compensations newest first.
It is self-contained (temporary SQLite files) and returns whether the invariants held, so
the ``phalanx demo`` front door can call it and fail when they do not.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from phalanx.txn.orders.run import run_orders
from phalanx.txn.orders.services import Faults
from phalanx.txn.saga import SagaStatus, SqliteSagaStore

__all__ = ["run_demo"]

DEMO_ORDERS: Final = 20
DEMO_SEED: Final = 7


def run_demo(echo: Callable[[str], None] = print) -> bool:
    """Run the demo (see the module docstring); return whether the invariants held."""
    with tempfile.TemporaryDirectory(prefix="phalanx-demo-orders-") as tmp:
        directory = Path(tmp)
        faults = Faults(payment=0.2, inventory=0.1, shipping=0.1, seed=DEMO_SEED)
        report = run_orders(
            mode="orchestrated",
            orders=DEMO_ORDERS,
            faults=faults,
            crash="orchestrator",
            directory=directory,
            seed=DEMO_SEED,
        )
        echo(
            f"order sagas: {report.orders} orders, {report.completed} completed, "
            f"{report.cancelled} compensated; the orchestrator was killed once mid-step and "
            "a new one resumed its sagas"
        )
        echo(
            "invariants: "
            + ("hold" if report.ok else "VIOLATED: " + "; ".join(report.violations[:3]))
        )
        with SqliteSagaStore(directory / "sagas.db") as store:
            failed = [
                r
                for r in store.find(status=SagaStatus.COMPENSATED, limit=DEMO_ORDERS)
                if "declined" in r.error
            ]
            if failed:
                record = failed[0]
                echo(f"timeline of {record.saga_id} ({record.error}):")
                for number, event in enumerate(store.events(record.saga_id), start=1):
                    step = f" {event.step}" if event.step else ""
                    echo(f"  {number:2d}. {event.kind}{step}")
    return report.ok
