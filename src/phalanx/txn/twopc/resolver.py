"""Finishing in-doubt transactions in the background, from both ends.

:class:`ParticipantResolver` is what a restarted participant runs: it lists the branches it
holds prepared, and for each Phalanx branch that waited ``inquiry_after_s`` it asks the
coordinator named inside the gid for the outcome, through that coordinator's decision log
(``logs``). The log answers with the decision it holds, writing an abort when it holds none
(presumed abort, see :mod:`.log`), and the branch is committed or rolled back accordingly.
The per-branch timing (first inquiry, then backoff) is :class:`~.participant.ParticipantMachine`.

:class:`Resolver` runs passes (``Coordinator.recover``, ``ParticipantResolver.run_once``, or
any callable) in one background thread: every ``interval_s`` while passes succeed, backing
off (:class:`~phalanx.resilience.backoff.Backoff`) while they fail. It is owned by whoever
starts it: ``close()`` (or leaving its ``with`` block) stops the thread and waits for it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.resilience.backoff import Backoff
from phalanx.txn.twopc.gid import parse_branch
from phalanx.txn.twopc.log import DecisionLog
from phalanx.txn.twopc.participant import Apply, AskOutcome, ParticipantMachine
from phalanx.txn.twopc.participants import Participant
from phalanx.txn.twopc.types import Decision

__all__ = ["ParticipantResolver", "ParticipantResolverReport", "Resolver", "ResolverStatistics"]

_log = logging.getLogger(__name__)

#: Most prepared branches one participant resolver tracks at once.
TRACKED_MAX: Final = 10_000
#: How long ``close`` waits for a pass in progress.
JOIN_TIMEOUT_S: Final = 30.0


@dataclass(slots=True)
class ParticipantResolverReport:
    committed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    waiting: int = 0  # prepared branches not yet old enough to ask about
    errors: list[str] = field(default_factory=list)


class ParticipantResolver:
    """Resolves the prepared branches of one participant (see the module docstring).

    ``logs`` maps coordinator ids to their decision logs; branches of a coordinator not in
    it are left alone and reported. ``inquiry_after_s`` must exceed the coordinators'
    prepare timeout, or inquiries abort transactions that were about to commit (safe, but
    wasteful).
    """

    def __init__(
        self,
        participant: Participant,
        logs: Mapping[str, DecisionLog],
        *,
        inquiry_after_s: float = 30.0,
        backoff: Backoff | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self.participant = participant
        self.logs = dict(logs)
        self.inquiry_after_s = inquiry_after_s
        self._backoff = backoff or Backoff(base_delay_s=1.0, max_delay_s=60.0, jitter="equal")
        self._clock = clock
        self._rng = rng or random.Random()
        self._machines: dict[str, ParticipantMachine] = {}

    def run_once(self) -> ParticipantResolverReport:
        """One pass over what the participant holds prepared; raises if it cannot list it."""
        report = ParticipantResolverReport()
        now_s = self._clock.wall_s()
        found = {b.gid: b for b in self.participant.prepared() if parse_branch(b.gid) is not None}
        for gid in [g for g in self._machines if g not in found]:
            del self._machines[gid]  # settled by someone else (the coordinator)
        for gid, branch in sorted(found.items())[:TRACKED_MAX]:
            machine = self._machines.get(gid)
            if machine is None:
                machine = ParticipantMachine.found_prepared(
                    gid,
                    prepared_at_s=branch.prepared_at_s,
                    inquiry_after_s=self.inquiry_after_s,
                    backoff=self._backoff,
                    rng=self._rng,
                )
                self._machines[gid] = machine
            effects = machine.on_tick(now_s)
            if not effects:
                report.waiting += 1
            for effect in effects:
                if isinstance(effect, AskOutcome):
                    self._ask(machine, report, now_s)
        return report

    def _ask(
        self, machine: ParticipantMachine, report: ParticipantResolverReport, now_s: float
    ) -> None:
        parsed = parse_branch(machine.branch_gid)
        if parsed is None:  # pragma: no cover - filtered in run_once
            return
        log = self.logs.get(parsed.gid.coordinator)
        if log is None:
            report.errors.append(
                f"{machine.branch_gid}: no decision log for coordinator {parsed.gid.coordinator!r}"
            )
            return
        try:
            decision = log.decide(parsed.gid, Decision.ABORT, (), now_s=now_s)
        except Exception as exc:
            report.errors.append(f"{machine.branch_gid}: inquiry failed: {exc!r}")
            return
        for effect in machine.on_decision(decision):
            if isinstance(effect, Apply):
                try:
                    if effect.decision is Decision.COMMIT:
                        self.participant.commit_prepared(machine.branch_gid)
                    else:
                        self.participant.rollback_prepared(machine.branch_gid)
                except Exception as exc:
                    machine.on_apply_failed(now_s)
                    report.errors.append(f"{machine.branch_gid}: apply failed: {exc!r}")
                    continue
                machine.on_applied(effect.decision)
                done = (
                    report.committed if effect.decision is Decision.COMMIT else report.rolled_back
                )
                done.append(machine.branch_gid)


@dataclass(frozen=True, slots=True)
class ResolverStatistics:
    passes: int
    failures: int
    consecutive_failures: int


class Resolver:
    """Runs ``passes`` in a background thread (see the module docstring).

    A pass "fails" when it raises, or when it returns an object whose ``errors`` list is not
    empty (both report types above have one): then the next pass waits a backoff delay
    instead of ``interval_s``.
    """

    def __init__(
        self,
        passes: Sequence[Callable[[], object]],
        *,
        interval_s: float = 5.0,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        name: str = "2pc-resolver",
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s: must be > 0, got {interval_s}")
        self._passes = tuple(passes)
        self.interval_s = interval_s
        self._backoff = backoff or Backoff(base_delay_s=0.5, max_delay_s=30.0, jitter="equal")
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._passes_run = 0
        self._failures = 0
        self._consecutive = 0
        self._started = False

    def start(self) -> Resolver:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._started:
            self._thread.join(JOIN_TIMEOUT_S)

    def __enter__(self) -> Resolver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def run_once(self) -> bool:
        """Run every pass once; return whether all succeeded."""
        ok = True
        for run in self._passes:
            try:
                result = run()
            except Exception:
                _log.warning("2pc resolver pass failed", exc_info=True)
                ok = False
                continue
            errors = getattr(result, "errors", None)
            if errors:
                _log.warning("2pc resolver: %s", "; ".join(map(str, errors)))
                ok = False
        self._passes_run += 1
        if ok:
            self._consecutive = 0
        else:
            self._failures += 1
            self._consecutive += 1
        return ok

    def statistics(self) -> ResolverStatistics:
        return ResolverStatistics(self._passes_run, self._failures, self._consecutive)

    def _loop(self) -> None:
        previous_s = 0.0
        while not self._stop.is_set():
            if self.run_once():
                delay_s = self.interval_s
            else:
                delay_s = self._backoff.delay_s(self._consecutive - 1, previous_s, self._rng)
            previous_s = delay_s
            self._stop.wait(delay_s)
