"""The saga worker: claims sagas from the log and drives :class:`~.machine.SagaMachine`.

Order of work for each claimed saga (the machine's contract):

1. ask the machine for the next batch; write its :class:`~.machine.Persist` to the store,
   fenced by the claim's token (a stale token raises :class:`~.store.LeaseLost` and the
   worker drops the saga: someone else owns it now). Transitions with no side effect
   between them are written together: a step's "done" and the next step's "started" are
   one write, made before that next step runs. If the worker dies before that write, the
   finished step runs again under its key, which its idempotency makes harmless;
2. run the step's action or compensation, under its idempotency key, wrapped in the step's
   :class:`~phalanx.resilience.TimeLimiter` (``timeout_s``) and :class:`~phalanx.resilience.Retry`;
3. feed the result back; repeat until the batch is empty (the saga settled).

A worker that dies mid-step leaves the saga claimed until its lease runs out; then any
worker claims it, and the machine starts the same step again with the same key (the
execution count was persisted before the first start, so a step that kills its worker every
time still reaches its cap). Times in the store are wall-clock seconds (``Clock.wall_s``),
since several processes compare them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import Conflict, Outcome, invariant, outcome_of
from phalanx.resilience.events import Emitter, Listener, Observable
from phalanx.resilience.keys import idempotency_key
from phalanx.resilience.timeout import TimeLimiter
from phalanx.txn.saga.definition import SagaDefinition, Step, StepContext
from phalanx.txn.saga.machine import (
    Persist,
    RunAction,
    RunCompensation,
    SagaEffect,
    SagaMachine,
)
from phalanx.txn.saga.state import SAGA_ID_CHARS_MAX, SagaEvent, SagaRecord, SagaStatus
from phalanx.txn.saga.store import LeaseLost, SagaStore

__all__ = ["SagaWorker", "WorkerStatistics"]

_log = logging.getLogger(__name__)

#: Batches one saga may take in a single run before the worker yields it (a safety net:
#: a definition's caps end every saga well before).
BATCHES_PER_RUN_MAX: Final = 10_000
#: Most sagas one worker drives at the same time.
CONCURRENCY_MAX: Final = 64
Observer = Callable[[str, SagaRecord], None]


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    claimed: int
    completed: int
    compensated: int
    dead_lettered: int
    leases_lost: int


class SagaWorker(Observable):
    """Runs sagas of the given definitions from ``store`` (see the module docstring).

    Observable like the resilience primitives: listeners get an event per saga transition
    (``kind`` is the timeline's: ``step-done``, ``compensating``, ``completed``,
    ``dead-lettered`` ..., plus ``lease-lost``), and
    ``phalanx.obs.metrics.PrometheusMetrics().watch(worker)`` exports them with
    :meth:`statistics`.

    ``concurrency`` sagas of a claimed batch are driven at the same time (threads), for steps
    that wait on other services; each saga's own steps stay in order. ``lease_s`` must exceed
    the longest step (its timeout times its attempts): a step that
    outlives the lease lets another worker take the saga over, and this worker's next save
    then fails on the fencing token.
    """

    def __init__(
        self,
        store: SagaStore,
        definitions: Iterable[SagaDefinition],
        *,
        worker_id: str,
        lease_s: float = 60.0,
        claim_batch: int = 16,
        concurrency: int = 1,
        clock: Clock = SYSTEM_CLOCK,
        observer: Observer | None = None,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.store = store
        self.definitions: Mapping[str, SagaDefinition] = {d.name: d for d in definitions}
        if lease_s <= 0:
            raise ValueError(f"lease_s: must be > 0, got {lease_s}")
        self.worker_id = worker_id
        self.name = worker_id
        self._emitter = Emitter("saga_worker", worker_id, listeners)
        self.lease_s = lease_s
        self.claim_batch = claim_batch
        self.clock = clock
        self._observer = observer
        self._limiters: dict[tuple[str, str], TimeLimiter] = {}
        if not 1 <= concurrency <= CONCURRENCY_MAX:
            raise ValueError(f"concurrency: 1 to {CONCURRENCY_MAX}, got {concurrency}")
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("claimed", "completed", "compensated", "dead_letter", "lost"), 0
        )

    def start(self, name: str, saga_id: str, payload: Mapping[str, Any]) -> SagaRecord:
        """Record a new saga; a worker's next claim runs it.

        Idempotent by ``saga_id``: starting it again with the same name and payload returns
        the existing saga; with another name or payload it raises
        :class:`~phalanx.errors.Conflict`.
        """
        definition = self.definitions.get(name)
        if definition is None:
            raise ValueError(f"unknown saga {name!r}")
        if not 1 <= len(saga_id) <= SAGA_ID_CHARS_MAX or ":" in saga_id:
            raise ValueError(f"saga_id: 1-{SAGA_ID_CHARS_MAX} characters without ':'")
        now_s = self.clock.wall_s()
        record = SagaRecord(
            saga_id=saga_id,
            name=name,
            status=SagaStatus.RUNNING,
            step=0,
            payload=dict(payload),
            created_at_s=now_s,
            updated_at_s=now_s,
            deadline_s=now_s + definition.stall_timeout_s,
        )
        stored = self.store.create(record, SagaEvent(now_s, "started"))
        if stored.name != name or stored.payload != record.payload:
            raise Conflict(f"saga {saga_id} exists with another name or payload")
        return stored

    def run_once(self) -> int:
        """Claim a batch and drive each saga until it settles; return how many were claimed."""
        now_s = self.clock.wall_s()
        claimed = self.store.claim(
            self.worker_id, now_s=now_s, lease_s=self.lease_s, limit=self.claim_batch
        )
        self._count("claimed", len(claimed))
        if self.concurrency == 1 or len(claimed) <= 1:
            for record in claimed:
                self.drive(record)
        else:
            workers = min(self.concurrency, len(claimed))
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                list(pool.map(self.drive, claimed))
        return len(claimed)

    def run_until_idle(self, *, rounds_max: int = 1000) -> None:
        """Call :meth:`run_once` until a claim finds nothing (or ``rounds_max`` rounds)."""
        for _ in range(rounds_max):
            if self.run_once() == 0:
                return

    def drive(self, record: SagaRecord) -> SagaRecord:
        """Drive one claimed saga; return its last saved record."""
        definition = self.definitions.get(record.name)
        if definition is None:
            _log.warning("saga %s: no definition named %r here", record.saga_id, record.name)
            return record
        machine = SagaMachine(definition, record)
        unsaved: list[Persist] = []
        try:
            for _ in range(BATCHES_PER_RUN_MAX):
                effects = machine.next(self.clock.wall_s())
                if not effects:
                    break
                while effects:
                    effects = self._perform(machine, definition, effects, unsaved)
            self._flush(unsaved)
        except LeaseLost:
            self._count("lost")
            self._emitter.emit("lease-lost", self.clock.now_s(), {"saga": record.saga_id})
            _log.info("saga %s: lease lost; another worker owns it", record.saga_id)
        return machine.record

    def statistics(self) -> WorkerStatistics:
        c = self._counts
        return WorkerStatistics(
            c["claimed"], c["completed"], c["compensated"], c["dead_letter"], c["lost"]
        )

    # -- internals ----------------------------------------------------------------------

    def _count(self, what: str, by: int = 1) -> None:
        with self._lock:
            self._counts[what] += by

    def _perform(
        self,
        machine: SagaMachine,
        definition: SagaDefinition,
        effects: list[SagaEffect],
        unsaved: list[Persist],
    ) -> list[SagaEffect]:
        out: list[SagaEffect] = []
        actions: list[RunAction] = []
        for effect in effects:
            if isinstance(effect, Persist):
                unsaved.append(effect)
                continue
            self._flush(unsaved)  # every transition is durable before the next side effect
            if isinstance(effect, RunAction):
                actions.append(effect)
                continue
            invariant(isinstance(effect, RunCompensation), f"unexpected effect {effect!r}")
            step = definition.steps[effect.step]
            out += self._run_compensation(machine, step, self._context(machine, step, effect.key))
        if actions:
            out += self._run_actions(machine, definition, actions)
        return out

    def _context(self, machine: SagaMachine, step: Step, key: str) -> StepContext:
        record = machine.record
        return StepContext(
            saga_id=record.saga_id,
            step=step.name,
            idempotency_key=key,
            payload=record.payload,
            results=record.results,
            fence=record.fence,
        )

    def _run_actions(
        self, machine: SagaMachine, definition: SagaDefinition, actions: list[RunAction]
    ) -> list[SagaEffect]:
        """Run one step, or a parallel group's members together; then report, successes
        first, so that a failure compensates every member that finished."""
        outcomes: list[tuple[int, Any, BaseException | None]] = []
        calls = [
            (
                a.step,
                definition.steps[a.step],
                self._context(machine, definition.steps[a.step], a.key),
            )
            for a in actions
        ]
        if len(calls) == 1:
            index, step, ctx = calls[0]
            outcomes.append((index, *self._attempt(step, ctx)))
        else:
            with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
                futures = [
                    (index, pool.submit(self._attempt, step, ctx)) for index, step, ctx in calls
                ]
                outcomes = [(index, *future.result()) for index, future in futures]
        out: list[SagaEffect] = []
        for index, result, error in outcomes:
            if error is None:
                out = machine.on_action_done(result, self.clock.wall_s(), step=index)
        for index, _, error in outcomes:
            if error is not None:
                applied = False if outcome_of(error) is Outcome.FAILED else None
                return machine.on_action_failed(
                    _describe(error), applied=applied, now_s=self.clock.wall_s(), step=index
                )
        return out

    def _attempt(self, step: Step, ctx: StepContext) -> tuple[Any, BaseException | None]:
        try:
            result = self._call(step, step.action, ctx)
            msgspec.json.encode(result)  # results are stored: they must encode
        except Exception as exc:
            return None, exc
        return result, None

    def _run_compensation(
        self, machine: SagaMachine, step: Step, ctx: StepContext
    ) -> list[SagaEffect]:
        try:
            self._call(step, step.compensation, ctx)
        except Exception as exc:
            return machine.on_compensation_failed(_describe(exc), self.clock.wall_s())
        return machine.on_compensation_done(self.clock.wall_s())

    def _call(self, step: Step, fn: Callable[[StepContext], Any], ctx: StepContext) -> Any:
        def attempt() -> Any:
            if step.timeout_s is None:
                return fn(ctx)
            # One limiter (and its bounded worker pool) per step and function; timeouts are
            # real time, so the limiter keeps the system clock.
            with self._lock:
                limiter = self._limiters.get((step.name, fn.__qualname__))
                if limiter is None:
                    limiter = TimeLimiter(timeout_s=step.timeout_s, name=f"saga-{step.name}")
                    self._limiters[(step.name, fn.__qualname__)] = limiter
            return limiter.call(fn, ctx)

        with idempotency_key(ctx.idempotency_key):
            if step.retry is None:
                return attempt()
            return step.retry.call(attempt)

    def _flush(self, unsaved: list[Persist]) -> None:
        """Write the transitions not yet saved, as one write of the latest record."""
        batch = list(unsaved)
        unsaved.clear()
        if not batch:
            return
        self.store.save(
            batch[-1].record,
            [p.event for p in batch],
            now_s=self.clock.wall_s(),
            lease_s=self.lease_s,
        )
        for persist in batch:
            self._saved(persist)

    def _saved(self, effect: Persist) -> None:
        status = effect.record.status
        if effect.event.kind in ("completed", "compensated", "dead-lettered"):
            self._count(
                {
                    SagaStatus.COMPLETED: "completed",
                    SagaStatus.COMPENSATED: "compensated",
                }.get(status, "dead_letter")
            )
        if self._emitter.active:
            data = {"saga": effect.record.saga_id, "step": effect.event.step}
            self._emitter.emit(effect.event.kind, self.clock.now_s(), data)
        if self._observer is not None:
            suffix = f":{effect.event.step}" if effect.event.step else ""
            self._observer(effect.event.kind + suffix, effect.record)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text[:500]
