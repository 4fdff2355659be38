"""What the saga log keeps: a record per saga and a timeline of events.

:class:`SagaRecord` is the whole durable state of one saga: where it is (``status`` and
``step``), what it was given (``payload``) and what its steps returned (``results``), how
many times the current step was started (``executions``, counted *before* each start, so a
step that crashes its worker every time still reaches the cap), and the stall timer
(``deadline_s``). ``owner``, ``lease_until_s`` and ``fence`` belong to the store's claims.

Statuses::

    RUNNING ──all steps done──> COMPLETED
       │ a step failed, the cap, or the stall timer (policy "compensate")
       v
    COMPENSATING ──every done step undone, newest first──> COMPENSATED
       │ a compensation kept failing (its cap), or the stall timer (policy "alert")
       v
    DEAD_LETTER   waits for a person: `phalanx saga retry` / `phalanx saga compensate`
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Final

__all__ = [
    "EVENTS_PER_SAGA_MAX",
    "PAYLOAD_BYTES_MAX",
    "SAGA_ID_CHARS_MAX",
    "SagaEvent",
    "SagaRecord",
    "SagaStatus",
]

#: Longest saga id (it is part of every idempotency key).
SAGA_ID_CHARS_MAX: Final = 128
#: Largest encoded payload plus results of one saga.
PAYLOAD_BYTES_MAX: Final = 1024 * 1024
#: Timeline entries kept per saga; older ones are dropped first.
EVENTS_PER_SAGA_MAX: Final = 1000


class SagaStatus(enum.Enum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    DEAD_LETTER = "dead_letter"

    @property
    def terminal(self) -> bool:
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)

    @property
    def active(self) -> bool:
        """Workers claim sagas in these statuses."""
        return self in (SagaStatus.RUNNING, SagaStatus.COMPENSATING)


@dataclass(frozen=True, slots=True)
class SagaRecord:
    saga_id: str
    name: str
    status: SagaStatus
    step: int
    payload: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)
    executions: int = 0
    resumes: int = 0
    error: str = ""
    #: The status to go back to when a person retries a dead-lettered saga.
    resume_status: SagaStatus = SagaStatus.RUNNING
    created_at_s: float = 0.0
    updated_at_s: float = 0.0
    deadline_s: float = 0.0
    owner: str | None = None
    lease_until_s: float = 0.0
    fence: int = 0

    def evolve(self, **changes: Any) -> SagaRecord:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class SagaEvent:
    """One line of a saga's timeline: ``kind`` is e.g. ``step-started``, ``step-done``."""

    at_s: float
    kind: str
    step: str = ""
    detail: str = ""
