"""An orchestrator process for the order flow's crash switch (``python -m`` this module).

It opens the services' databases and the saga log in ``directory``, starts the orders'
sagas and runs them; at the start of step number ``kill_at`` it prints ``STOP`` and waits on
stdin for the SIGKILL its parent sends. One JSON argument: ``directory``, ``orders``,
``seed``, ``faults`` ([payment, inventory, shipping, seed]) and ``kill_at``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


if __name__ == "__main__":
    main()
