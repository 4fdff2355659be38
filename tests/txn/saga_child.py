"""A saga worker the crash tests kill: ``python saga_child.py SAGA_DB SERVICES_DB ID STOP [fail]``.

It starts the order saga ``ID`` (idempotent) and runs it. The four steps write their effect
to SERVICES_DB keyed by their idempotency key (``INSERT OR IGNORE``: a re-run is harmless)
and log every execution. At ``STOP`` it prints ``STOP`` and waits on stdin for the SIGKILL:
``STOP`` is a saga event (``step-started:charge``, ``compensation-started:reserve`` ...) or
``in:<step>``, inside the step's action right after its effect was written. With ``fail`` the
``ship`` step is rejected, so the saga compensates.
"""

from __future__ import annotations

import sys

import saga_services

from phalanx.txn.saga import SagaWorker, SqliteSagaStore


def main() -> None:
    saga_db, services_db, saga_id, stop = sys.argv[1:5]
    fail = sys.argv[5:] == ["fail"]

    def pause(point: str) -> None:
        if point == stop:
            sys.stdout.write("STOP\n")
            sys.stdout.flush()
            sys.stdin.readline()

    definition = saga_services.order_saga(services_db, pause=pause, fail_ship=fail)
    with SqliteSagaStore(saga_db) as store:
        worker = SagaWorker(
            store,
            [definition],
            worker_id="child",
            lease_s=30,
            observer=lambda event, record: pause(event),
        )
        worker.start("order", saga_id, {"order": saga_id})
        worker.run_until_idle()


if __name__ == "__main__":
    main()
