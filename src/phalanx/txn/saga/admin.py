"""Operator actions on a saga, as ``phalanx saga retry`` and ``compensate`` perform them.

Both write through :meth:`~.store.SagaStore.force`, which bumps the fencing token and clears
the owner: a worker still holding the saga loses it at its next save, and the next claim
runs the saga from its new state.
"""

from __future__ import annotations

from phalanx.errors import Conflict
from phalanx.txn.saga.state import SagaEvent, SagaRecord, SagaStatus
from phalanx.txn.saga.store import SagaStore

__all__ = ["force_compensate", "retry_dead_letter"]


def _load(store: SagaStore, saga_id: str) -> SagaRecord:
    record = store.get(saga_id)
    if record is None:
        raise KeyError(f"no saga {saga_id!r}")
    return record


def retry_dead_letter(
    store: SagaStore, saga_id: str, *, now_s: float, stall_timeout_s: float
) -> SagaRecord:
    """Send a dead-lettered saga back to where it stopped, with fresh caps and timer."""
    record = _load(store, saga_id)
    if record.status is not SagaStatus.DEAD_LETTER:
        raise Conflict(f"saga {saga_id} is {record.status.value}, not dead_letter")
    changed = record.evolve(
        status=record.resume_status,
        executions=0,
        error="",
        updated_at_s=now_s,
        deadline_s=now_s + stall_timeout_s,
    )
    return store.force(changed, SagaEvent(now_s, "retried-by-operator"))


def force_compensate(store: SagaStore, saga_id: str, *, now_s: float) -> SagaRecord:
    """Undo a running or dead-lettered saga: compensate every step that may have run."""
    record = _load(store, saga_id)
    if record.status.terminal:
        raise Conflict(f"saga {saga_id} is already {record.status.value}")
    first = record.step
    if record.status is SagaStatus.RUNNING and record.executions == 0:
        first = record.step - 1  # the current step never started
    changed = record.evolve(
        status=SagaStatus.COMPENSATING,
        step=first,
        executions=0,
        error="compensation requested by an operator",
        updated_at_s=now_s,
        deadline_s=max(record.deadline_s, now_s),
    )
    return store.force(changed, SagaEvent(now_s, "compensate-by-operator"))
