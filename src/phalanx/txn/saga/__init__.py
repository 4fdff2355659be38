"""Orchestrated sagas: ordered steps with compensations, a durable log, leased workers.

* :mod:`.definition`: :class:`SagaDefinition`, :class:`Step`, :class:`StepContext`;
* :mod:`.state`: :class:`SagaRecord`, :class:`SagaStatus`, :class:`SagaEvent` (the timeline);
* :mod:`.machine`: :class:`SagaMachine`, the sans-I/O executor;
* :mod:`.store`, :mod:`.store_sqlite`, :mod:`.store_postgres`: the saga log (in memory,
  SQLite, PostgreSQL) with leases and fencing tokens;
* :mod:`.worker`: :class:`SagaWorker`, which claims sagas and runs their steps;
* :mod:`.admin`: what ``phalanx saga retry`` and ``compensate`` do.

See ``docs/saga.md``. :class:`PostgresSagaStore` loads psycopg on first use.
"""

from typing import TYPE_CHECKING, Any

from phalanx.txn.saga.admin import force_compensate, retry_dead_letter
from phalanx.txn.saga.definition import SagaDefinition, Step, StepContext
from phalanx.txn.saga.machine import SagaMachine, step_key
from phalanx.txn.saga.state import SagaEvent, SagaRecord, SagaStatus
from phalanx.txn.saga.store import LeaseLost, MemorySagaStore, SagaStore
from phalanx.txn.saga.store_sqlite import SqliteSagaStore
from phalanx.txn.saga.worker import SagaWorker, WorkerStatistics

if TYPE_CHECKING:
    from phalanx.txn.saga.store_postgres import PostgresSagaStore

__all__ = [
    "LeaseLost",
    "MemorySagaStore",
    "PostgresSagaStore",
    "SagaDefinition",
    "SagaEvent",
    "SagaMachine",
    "SagaRecord",
    "SagaStatus",
    "SagaStore",
    "SagaWorker",
    "SqliteSagaStore",
    "Step",
    "StepContext",
    "WorkerStatistics",
    "force_compensate",
    "retry_dead_letter",
    "step_key",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresSagaStore":
        from phalanx.txn.saga.store_postgres import PostgresSagaStore

        return PostgresSagaStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
