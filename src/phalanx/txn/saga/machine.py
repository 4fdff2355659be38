"""The saga executor's decisions, as a sans-I/O state machine.

:class:`SagaMachine` holds one saga's :class:`~.state.SagaRecord` and the plan of its
definition, and answers "what now?" with effects; it never runs a step, reads a clock or
touches a store. The driver's contract (:mod:`.worker`):

1. :class:`Persist` is written (fenced, see :mod:`.store`) *before* the effect after it in
   the same batch is performed: every transition is in the log before the next side effect.
2. :class:`RunAction` / :class:`RunCompensation` run the step's function under the given
   idempotency key; the result comes back as ``on_action_done`` / ``on_action_failed`` /
   ``on_compensation_done`` / ``on_compensation_failed``, each returning a Persist.
3. ``next(now_s)`` gives the following batch; an empty batch means the saga is settled
   (completed, compensated or dead-lettered).

Decisions:

* a step is started only while ``executions < executions_max`` (the count is persisted
  before each start, so crashes count too); at the cap the saga compensates;
* a failed action whose outcome is FAILED (definitely not applied) is not compensated
  itself; one whose outcome is unknown (a timeout, a crash, any unexpected error) is;
* a parallel group (see :mod:`.definition`) starts all its unfinished members in one batch;
  it is done when all are, and a failure compensates the whole group and what came before;
* compensations run newest first; one that keeps failing dead-letters the saga at its cap;
* the stall timer (``deadline_s``) passes: compensate or dead-letter, per the definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phalanx.errors import invariant
from phalanx.txn.saga.definition import SagaDefinition
from phalanx.txn.saga.state import SagaEvent, SagaRecord, SagaStatus

__all__ = ["Persist", "RunAction", "RunCompensation", "SagaEffect", "SagaMachine", "step_key"]


def step_key(saga_id: str, step: str, *, compensation: bool = False) -> str:
    """The idempotency key of a step (or of its compensation)."""
    return f"{saga_id}:{step}:compensate" if compensation else f"{saga_id}:{step}"


@dataclass(frozen=True, slots=True)
class Persist:
    record: SagaRecord
    event: SagaEvent


@dataclass(frozen=True, slots=True)
class RunAction:
    step: int
    key: str


@dataclass(frozen=True, slots=True)
class RunCompensation:
    step: int
    key: str


SagaEffect = Persist | RunAction | RunCompensation


class SagaMachine:
    """One saga (see the module docstring)."""

    def __init__(self, definition: SagaDefinition, record: SagaRecord) -> None:
        invariant(record.name == definition.name, f"{record.saga_id}: definition mismatch")
        invariant(
            -1 <= record.step <= len(definition.steps),
            f"{record.saga_id}: step {record.step} out of range",
        )
        self.definition = definition
        self.record = record

    def next(self, now_s: float) -> list[SagaEffect]:  # noqa: PLR0911 - one return per case
        record = self.record
        steps = self.definition.steps
        if not record.status.active:
            return []
        if record.status is SagaStatus.RUNNING and now_s >= record.deadline_s:
            return self._stalled(now_s)
        if record.status is SagaStatus.RUNNING:
            if record.step >= len(steps):
                return [self._persist(now_s, "completed", status=SagaStatus.COMPLETED)]
            step = steps[record.step]
            if record.executions >= step.executions_max:
                return self._compensate_from(
                    now_s,
                    self.definition.members(record.step)[-1],
                    f"step {step.name!r} started {record.executions} times without finishing",
                )
            group = self.definition.members(record.step)
            todo = [i for i in group if steps[i].name not in record.results]
            names = ",".join(steps[i].name for i in todo)
            persist = self._persist(
                now_s, "step-started", step=names, executions=record.executions + 1
            )
            return [persist, *(RunAction(i, step_key(record.saga_id, steps[i].name)) for i in todo)]
        if record.step < 0:
            return [self._persist(now_s, "compensated", status=SagaStatus.COMPENSATED)]
        step = steps[record.step]
        if record.executions >= step.compensation_executions_max:
            return [
                self._persist(
                    now_s,
                    "dead-lettered",
                    step=step.name,
                    status=SagaStatus.DEAD_LETTER,
                    resume_status=SagaStatus.COMPENSATING,
                    error=f"compensation of {step.name!r} failed {record.executions} times",
                )
            ]
        persist = self._persist(
            now_s, "compensation-started", step=step.name, executions=record.executions + 1
        )
        key = step_key(record.saga_id, step.name, compensation=True)
        return [persist, RunCompensation(record.step, key)]

    def on_action_done(
        self, result: Any, now_s: float, *, step: int | None = None
    ) -> list[SagaEffect]:
        """Step ``step`` (by default the current one) returned ``result``."""
        record = self._expect(SagaStatus.RUNNING)
        index = record.step if step is None else step
        group = self.definition.members(record.step)
        invariant(index in group, f"{record.saga_id}: step {index} is not running")
        name = self.definition.steps[index].name
        results = {**record.results, name: result}
        finished = all(self.definition.steps[i].name in results for i in group)
        return [
            self._persist(
                now_s,
                "step-done",
                step=name,
                step_index=group[-1] + 1 if finished else record.step,
                executions=0 if finished else record.executions,
                results=results,
            )
        ]

    def on_action_failed(
        self, error: str, *, applied: bool | None, now_s: float, step: int | None = None
    ) -> list[SagaEffect]:
        """The action failed; ``applied`` is False when it definitely had no effect,
        None when that is unknown (it is then compensated too)."""
        record = self._expect(SagaStatus.RUNNING)
        index = record.step if step is None else step
        group = self.definition.members(record.step)
        invariant(index in group, f"{record.saga_id}: step {index} is not running")
        name = self.definition.steps[index].name
        first = record.step if applied is None else record.step - 1
        if len(group) > 1:
            first = group[-1]  # the whole group: some members ran, or may have
        return self._compensate_from(now_s, first, f"step {name!r} failed: {error}")

    def on_compensation_done(self, now_s: float) -> list[SagaEffect]:
        record = self._expect(SagaStatus.COMPENSATING)
        name = self.definition.steps[record.step].name
        return [
            self._persist(
                now_s, "compensation-done", step=name, step_index=record.step - 1, executions=0
            )
        ]

    def on_compensation_failed(self, error: str, now_s: float) -> list[SagaEffect]:
        record = self._expect(SagaStatus.COMPENSATING)
        name = self.definition.steps[record.step].name
        # Stay on this compensation: next() runs it again until its cap.
        return [self._persist(now_s, "compensation-failed", step=name, error=error)]

    # -- internals ----------------------------------------------------------------------

    def _stalled(self, now_s: float) -> list[SagaEffect]:
        record = self.record
        reason = "stalled: the saga's timer expired before it finished"
        if self.definition.on_stall == "alert":
            return [
                self._persist(
                    now_s,
                    "dead-lettered",
                    status=SagaStatus.DEAD_LETTER,
                    resume_status=SagaStatus.RUNNING,
                    error=reason,
                )
            ]
        # The current step was maybe started: its outcome is unknown, so undo it too.
        if record.step >= len(self.definition.steps):
            first = len(self.definition.steps) - 1
        elif record.executions > 0 or any(
            self.definition.steps[i].name in record.results
            for i in self.definition.members(record.step)
        ):
            first = self.definition.members(record.step)[-1]
        else:
            first = record.step - 1
        return self._compensate_from(now_s, first, reason)

    def _compensate_from(self, now_s: float, first: int, reason: str) -> list[SagaEffect]:
        return [
            self._persist(
                now_s,
                "compensating",
                status=SagaStatus.COMPENSATING,
                step_index=first,
                executions=0,
                error=reason,
            )
        ]

    def _persist(
        self,
        now_s: float,
        kind: str,
        *,
        step: str = "",
        step_index: int | None = None,
        **changes: Any,
    ) -> Persist:
        if step_index is not None:
            changes["step"] = step_index
        self.record = self.record.evolve(updated_at_s=now_s, **changes)
        detail = changes.get("error", "") if kind != "step-started" else ""
        return Persist(self.record, SagaEvent(now_s, kind, step, str(detail)))

    def _expect(self, status: SagaStatus) -> SagaRecord:
        invariant(
            self.record.status is status,
            f"{self.record.saga_id}: expected {status.value}, is {self.record.status.value}",
        )
        return self.record
