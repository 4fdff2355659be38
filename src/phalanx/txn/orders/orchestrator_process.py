"""An orchestrator process for the order flow's crash switch (``python -m`` this module).

It opens the services' databases and the saga log in ``directory``, starts the orders'
sagas and runs them; at the start of step number ``kill_at`` it prints ``STOP`` and waits on
stdin for the SIGKILL its parent sends. One JSON argument: ``directory``, ``orders``,
``seed``, ``faults`` ([payment, inventory, shipping, seed]) and ``kill_at``; with ``urls``
(service name to base URL) the services are processes and the steps call them over HTTP.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phalanx.txn.orders.run import orchestrate, placed_orders
from phalanx.txn.orders.services import Faults, Shop


def main() -> None:
    spec = json.loads(sys.argv[1])
    payment, inventory, shipping, fault_seed = spec["faults"]
    faults = Faults(payment=payment, inventory=inventory, shipping=shipping, seed=fault_seed)
    directory = Path(spec["directory"])
    kill_at = int(spec["kill_at"])

    def before(step_number: int) -> None:
        if step_number == kill_at:
            sys.stdout.write("STOP\n")
            sys.stdout.flush()
            sys.stdin.readline()  # the parent kills us here

    if "urls" in spec:  # the services run as processes: talk to them over HTTP
        _orchestrate_http(spec, directory, before)
        return
    shop = Shop(directory, faults)
    try:
        orchestrate(
            shop,
            placed_orders(int(spec["orders"]), int(spec["seed"])),
            crash="none",
            seed=int(spec["seed"]),
            directory=directory,
            worker_id="orchestrator-1",
            before=before,
        )
    finally:
        shop.close()
    sys.stdout.write("DONE\n")


def _orchestrate_http(spec: dict[str, Any], directory: Path, before: Callable[[int], None]) -> None:
    import httpx

    from phalanx.txn.orders.processes import http_order_saga
    from phalanx.txn.orders.services_http import ServiceClient
    from phalanx.txn.saga import SagaWorker, SqliteSagaStore

    steps = {"n": 0}

    def on_step(_operation: str) -> None:
        steps["n"] += 1
        before(steps["n"])

    with httpx.Client() as client:
        clients = {name: ServiceClient(name, url, client) for name, url in spec["urls"].items()}
        definition = http_order_saga(clients, on_step)
        with SqliteSagaStore(directory / "sagas.db", synchronous="NORMAL") as store:
            worker = SagaWorker(store, [definition], worker_id="orchestrator-1", lease_s=60)
            for order_id, item, qty, amount in placed_orders(
                int(spec["orders"]), int(spec["seed"])
            ):
                worker.start("order", order_id, {"item": item, "qty": qty, "amount": amount})
            worker.run_until_idle()


if __name__ == "__main__":
    main()
