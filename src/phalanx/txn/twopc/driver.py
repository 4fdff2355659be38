"""The coordinator driver: runs :class:`~.coordinator.CoordinatorMachine` against real
participants and a decision log, and recovers what a crash left in doubt.

:class:`Coordinator` is synchronous (database drivers are); prepares run in parallel on a
bounded thread pool, phase 2 runs in the calling thread in participant order.

The order of work of :meth:`Transaction.commit`:

1. every branch is asked to prepare; votes are fed to the machine as they come, and the
   prepare timeout ends the wait (branches still preparing are rolled back when they finish);
2. on all yes, the commit decision is written to the log (compare-and-set, see :mod:`.log`)
   and only the decision the log holds is carried out;
3. phase 2 tells every branch the decision; a branch that cannot be reached stays pending,
   and :meth:`Coordinator.recover` (run by a :class:`~.resolver.Resolver`) finishes it;
4. once all acknowledged a commit, the log forgets the transaction.

``observer`` (optional) is called with the name of each protocol step as it completes, for
logs and metrics; the crash tests kill the process from it. Steps: ``voting``,
``prepared:<participant>``, ``decided:commit`` / ``decided:abort``, ``finished:<participant>``,
``ended``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import Indeterminate, invariant
from phalanx.resilience.events import Emitter, Listener, Observable
from phalanx.txn.twopc.coordinator import (
    CoordinatorEffect,
    CoordinatorMachine,
    LogDecision,
    LogEnd,
    SendDecision,
    SendPrepare,
)
from phalanx.txn.twopc.gid import Gid, check_name, parse_branch
from phalanx.txn.twopc.log import DecisionLog
from phalanx.txn.twopc.participants import Branch, Participant
from phalanx.txn.twopc.types import BRANCHES_MAX, Decision, TransactionAborted

__all__ = ["Coordinator", "CoordinatorStatistics", "RecoveryReport", "Transaction", "TxnResult"]

_log = logging.getLogger(__name__)

#: Most transactions one coordinator runs at once.
ACTIVE_MAX: Final = 10_000
Observer = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A committed transaction; ``pending`` lists participants phase 2 has not reached yet
    (the commit is decided and durable: recovery finishes them)."""

    gid: Gid
    pending: tuple[str, ...] = ()


@dataclass(slots=True)
class RecoveryReport:
    """What one recovery pass did."""

    committed: list[str] = field(default_factory=list)  # branch gids committed
    rolled_back: list[str] = field(default_factory=list)  # branch gids rolled back
    ended: int = 0  # commits finished everywhere and forgotten
    errors: list[str] = field(default_factory=list)  # what could not be done (retried later)


@dataclass(frozen=True, slots=True)
class CoordinatorStatistics:
    committed: int
    aborted: int
    indeterminate: int
    active: int
    recovered_branches: int


class Coordinator(Observable):
    """Runs global transactions whose gids carry ``coordinator_id``.

    Observable like the resilience primitives: listeners get ``committed``, ``aborted``,
    ``indeterminate`` per transaction and ``recovered`` per recovered branch;
    ``phalanx.obs.metrics.PrometheusMetrics().watch(coordinator)`` exports them with
    :meth:`statistics`.

    ``coordinator_id`` must be unique among live coordinators that share participants: a
    coordinator treats every prepared branch carrying its id that it is not running as left
    over from a crash. ``participants`` are all the participants transactions may enlist;
    recovery looks for prepared branches on each.
    """

    def __init__(
        self,
        coordinator_id: str,
        log: DecisionLog,
        participants: Iterable[Participant],
        *,
        prepare_timeout_s: float = 5.0,
        prepare_workers_max: int = 8,
        clock: Clock = SYSTEM_CLOCK,
        observer: Observer | None = None,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.coordinator_id = check_name("coordinator_id", coordinator_id)
        self.name = coordinator_id
        self._emitter = Emitter("twopc_coordinator", coordinator_id, listeners)
        if prepare_timeout_s <= 0:
            raise ValueError(f"prepare_timeout_s: must be > 0, got {prepare_timeout_s}")
        if not 1 <= prepare_workers_max <= BRANCHES_MAX:
            raise ValueError(f"prepare_workers_max: 1 to {BRANCHES_MAX}, got {prepare_workers_max}")
        self.log = log
        self.participants: dict[str, Participant] = {}
        for participant in participants:
            if participant.name in self.participants:
                raise ValueError(f"participants: {participant.name!r} given twice")
            self.participants[participant.name] = participant
        self.prepare_timeout_s = prepare_timeout_s
        self.clock = clock
        self._observer = observer
        self._pool = concurrent.futures.ThreadPoolExecutor(
            prepare_workers_max, thread_name_prefix=f"2pc-{coordinator_id}"
        )
        self._lock = threading.Lock()
        self._active: set[Gid] = set()
        self._sequence = 0
        self.incarnation = log.new_incarnation(coordinator_id)
        self._counts = {"committed": 0, "aborted": 0, "indeterminate": 0, "recovered": 0}

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def begin(self) -> Transaction:
        """Start a global transaction; enlist branches on it, then ``commit``."""
        with self._lock:
            if len(self._active) >= ACTIVE_MAX:
                raise ValueError(f"more than {ACTIVE_MAX} transactions active at once")
            self._sequence += 1
            gid = Gid(self.coordinator_id, self.incarnation, self._sequence)
            self._active.add(gid)
        return Transaction(self, gid)

    def statistics(self) -> CoordinatorStatistics:
        with self._lock:
            return CoordinatorStatistics(
                committed=self._counts["committed"],
                aborted=self._counts["aborted"],
                indeterminate=self._counts["indeterminate"],
                active=len(self._active),
                recovered_branches=self._counts["recovered"],
            )

    # -- recovery -----------------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Finish every transaction of this coordinator left in doubt; safe to repeat.

        Logged commits not yet ended are committed on every participant, then ended.
        Prepared branches carrying this coordinator's id, of transactions not running here,
        are resolved through the log: an abort is written unless a commit is there (presumed
        abort), and the branch follows it. A participant that cannot be reached is reported
        in ``errors`` and tried again on the next pass.
        """
        report = RecoveryReport()
        with self._lock:
            active = set(self._active)
        attempted = self._finish_logged(active, report)
        self._resolve_orphans(active, report, attempted)
        with self._lock:
            self._counts["recovered"] += len(report.committed) + len(report.rolled_back)
        for gid in (*report.committed, *report.rolled_back):
            self._emitter.emit("recovered", self.clock.now_s(), {"branch": gid})
        return report

    def _finish_logged(self, active: set[Gid], report: RecoveryReport) -> set[str]:
        """Commit everywhere the logged commits not yet ended, then end them; return the
        branch gids tried."""
        attempted: set[str] = set()
        for record in self.log.unfinished(self.coordinator_id):
            if record.gid in active:
                continue
            done = True
            for name in record.participants:
                branch_gid = record.gid.branch(name)
                attempted.add(branch_gid)
                if self._apply(name, branch_gid, Decision.COMMIT, report):
                    report.committed.append(branch_gid)
                else:
                    done = False
            if done:
                self.log.end(record.gid)
                report.ended += 1
        return attempted

    def _resolve_orphans(
        self, active: set[Gid], report: RecoveryReport, attempted: set[str]
    ) -> None:
        """Settle this coordinator's prepared branches that no running transaction owns."""
        for name, participant in sorted(self.participants.items()):
            try:
                prepared = participant.prepared()
            except Exception as exc:
                report.errors.append(f"{name}: cannot list prepared branches: {exc!r}")
                continue
            for branch in prepared:
                parsed = parse_branch(branch.gid)
                if parsed is None or parsed.gid.coordinator != self.coordinator_id:
                    continue
                if parsed.gid in active or branch.gid in attempted:
                    continue  # running here, or just tried with its logged commit
                now_s = self.clock.wall_s()
                decision = self.log.decide(parsed.gid, Decision.ABORT, (), now_s=now_s)
                if self._apply(name, branch.gid, decision, report):
                    done_list = (
                        report.committed if decision is Decision.COMMIT else report.rolled_back
                    )
                    done_list.append(branch.gid)

    def _apply(
        self, name: str, branch_gid: str, decision: Decision, report: RecoveryReport
    ) -> bool:
        participant = self.participants.get(name)
        if participant is None:
            report.errors.append(f"{branch_gid}: participant {name!r} is not configured")
            return False
        try:
            if decision is Decision.COMMIT:
                participant.commit_prepared(branch_gid)
            else:
                participant.rollback_prepared(branch_gid)
        except Exception as exc:
            report.errors.append(f"{branch_gid}: {decision.value} failed: {exc!r}")
            return False
        return True

    # -- used by Transaction ------------------------------------------------------------

    def _step(self, name: str) -> None:
        if self._observer is not None:
            self._observer(name)

    def _forget(self, gid: Gid, outcome: str) -> None:
        with self._lock:
            self._active.discard(gid)
            self._counts[outcome] += 1
        self._emitter.emit(outcome, self.clock.now_s(), {"gid": str(gid)})


class Transaction:
    """One global transaction: enlist branches, do the work on them, then :meth:`commit`.

    As a context manager, leaving the block without committing (or by an exception) rolls
    every branch back.
    """

    def __init__(self, coordinator: Coordinator, gid: Gid) -> None:
        self.coordinator = coordinator
        self.gid = gid
        self._branches: dict[str, Branch] = {}
        self._in_flight: set[str] = set()  # prepares still running after the outcome was set
        self._closed = False

    def enlist(self, participant: Participant | str) -> Branch:
        """Start this transaction's branch on ``participant`` (an object or its name)."""
        invariant(not self._closed, f"{self.gid}: enlist after the end")
        name = participant if isinstance(participant, str) else participant.name
        known = self.coordinator.participants.get(name)
        if known is None:
            raise ValueError(f"participant {name!r} is not one of the coordinator's")
        if name in self._branches:
            return self._branches[name]
        if len(self._branches) >= BRANCHES_MAX:
            raise ValueError(f"a transaction enlists at most {BRANCHES_MAX} participants")
        branch = known.begin(self.gid.branch(name))
        self._branches[name] = branch
        return branch

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._closed:
            self.rollback()

    def rollback(self) -> None:
        """Abandon the transaction before commit: every branch rolls back."""
        if self._closed:
            return
        self._closed = True
        for branch in self._branches.values():
            try:
                branch.finish(Decision.ABORT)
            except Exception:
                _log.warning("%s: rollback of a branch failed", self.gid, exc_info=True)
            branch.close()
        self.coordinator._forget(self.gid, "aborted")

    def commit(self) -> TxnResult:
        """Run two-phase commit.

        Returns when the commit is decided and durable (``pending`` names participants
        still to be told). Raises :class:`TransactionAborted` when it aborted, and
        :class:`~phalanx.errors.Indeterminate` when the log could not say whether the commit
        was recorded: recovery then settles it.
        """
        invariant(not self._closed, f"{self.gid}: commit after the end")
        invariant(bool(self._branches), f"{self.gid}: commit with no branch enlisted")
        self._closed = True
        coordinator = self.coordinator
        machine = CoordinatorMachine(
            self.gid, tuple(self._branches), prepare_timeout_s=coordinator.prepare_timeout_s
        )
        outcome = "indeterminate"
        try:
            effects = machine.start(coordinator.clock.now_s())
            coordinator._step("voting")
            effects = self._run_prepares(machine, effects)
            if machine.decision is Decision.ABORT:
                coordinator._step("decided:abort")
            while effects:
                effects = self._perform(machine, effects)
            if machine.decision is Decision.ABORT:
                outcome = "aborted"
                raise TransactionAborted(
                    f"{self.gid} aborted: {machine.abort_reason}",
                    gid=str(self.gid),
                    reason=machine.abort_reason,
                )
            outcome = "committed"
            return TxnResult(self.gid, machine.pending)
        finally:
            for name, branch in self._branches.items():
                if name not in self._in_flight:
                    branch.close()
            coordinator._forget(self.gid, outcome)

    # -- internals ----------------------------------------------------------------------

    def _run_prepares(
        self, machine: CoordinatorMachine, effects: list[CoordinatorEffect]
    ) -> list[CoordinatorEffect]:
        coordinator = self.coordinator
        clock = coordinator.clock
        futures: dict[concurrent.futures.Future[None], str] = {}
        for effect in effects:
            invariant(isinstance(effect, SendPrepare), f"{self.gid}: expected prepares first")
            assert isinstance(effect, SendPrepare)  # noqa: S101 - narrows for mypy only
            branch = self._branches[effect.participant]
            futures[coordinator._pool.submit(self._prepare_one, effect.participant, branch)] = (
                effect.participant
            )
        waiting = set(futures)
        out: list[CoordinatorEffect] = []
        while waiting and not out:
            timeout_s = max(0.0, machine.prepare_deadline_s - clock.now_s())
            done, waiting = concurrent.futures.wait(
                waiting, timeout=timeout_s, return_when=concurrent.futures.FIRST_COMPLETED
            )
            if not done:
                out = machine.on_tick(max(clock.now_s(), machine.prepare_deadline_s))
                break
            for future in sorted(done, key=lambda f: futures[f]):
                name = futures[future]
                ok = future.exception() is None
                if not ok:
                    _log.info("%s: %s votes no: %r", self.gid, name, future.exception())
                out += machine.on_vote(name, ok, clock.now_s())
        # A prepare still running when the outcome was set must not stay prepared: roll it
        # back as soon as it ends (recovery would find it too, later).
        for future in waiting:
            name = futures[future]
            self._in_flight.add(name)
            future.add_done_callback(functools.partial(_abort_and_close, self._branches[name]))
        return out

    def _prepare_one(self, name: str, branch: Branch) -> None:
        try:
            branch.prepare()
        except BaseException:
            _abort_quietly(branch)
            raise
        self.coordinator._step(f"prepared:{name}")

    def _perform(
        self, machine: CoordinatorMachine, effects: list[CoordinatorEffect]
    ) -> list[CoordinatorEffect]:
        coordinator = self.coordinator
        out: list[CoordinatorEffect] = []
        for effect in effects:
            if isinstance(effect, LogDecision):
                out += self._log_decision(machine, effect)
            elif isinstance(effect, SendDecision):
                if effect.participant in self._in_flight:
                    # Its prepare is still running: the callback set on it rolls it back
                    # when it ends (only an abort can be decided while a vote is missing).
                    invariant(effect.decision is Decision.ABORT, f"{self.gid}: commit unvoted")
                    out += machine.on_done(effect.participant)
                    continue
                try:
                    self._branches[effect.participant].finish(effect.decision)
                except Exception:
                    _log.warning(
                        "%s: phase 2 %s on %s failed; recovery will finish it",
                        self.gid,
                        effect.decision.value,
                        effect.participant,
                        exc_info=True,
                    )
                    out += machine.on_phase2_failed(effect.participant)
                    continue
                coordinator._step(f"finished:{effect.participant}")
                out += machine.on_done(effect.participant)
            elif isinstance(effect, LogEnd):
                coordinator.log.end(self.gid)
                coordinator._step("ended")
            else:
                invariant(condition=False, message=f"{self.gid}: unexpected effect {effect!r}")
        return out

    def _log_decision(
        self, machine: CoordinatorMachine, effect: LogDecision
    ) -> list[CoordinatorEffect]:
        log = self.coordinator.log
        now_s = self.coordinator.clock.wall_s()
        try:
            held = log.decide(self.gid, effect.decision, effect.participants, now_s=now_s)
        except Exception as first:
            # Did the commit record get written? Writing an abort tells: the log returns
            # whichever decision it holds. If that fails too, nobody can know yet.
            try:
                held = log.decide(self.gid, Decision.ABORT, effect.participants, now_s=now_s)
            except Exception as second:
                raise Indeterminate(
                    f"{self.gid}: the decision log failed ({first!r}, then {second!r}); "
                    "recovery will settle the outcome"
                ) from second
        self.coordinator._step(f"decided:{held.value}")
        return machine.on_logged(held)


def _abort_quietly(branch: Branch) -> None:
    try:
        branch.finish(Decision.ABORT)
    except Exception:
        _log.warning("rollback of a branch failed; recovery will find it", exc_info=True)


def _abort_and_close(branch: Branch, _future: object = None) -> None:
    _abort_quietly(branch)
    branch.close()
