"""The coordinator of one global transaction, as a sans-I/O state machine.

:class:`CoordinatorMachine` takes events (votes, acknowledgements, the decision the log
holds, ticks with the current time) and returns effects for a driver to perform. It never
touches a clock, a socket or a file. The driver's contract for each batch of effects:

1. :class:`LogDecision` is performed (durably) before anything else, and its *result* is fed
   back with :meth:`CoordinatorMachine.on_logged`: the log may hold a different decision than
   the one asked for (a participant that asked for the outcome first made it abort), and the
   machine follows the log. Phase 2 effects are only produced after that.
2. :class:`SendPrepare` and :class:`SendDecision` are sent in any order; their replies come
   back as :meth:`on_vote` / :meth:`on_done`, failures as :meth:`on_vote` (no) and
   :meth:`on_phase2_failed`.
3. :class:`LogEnd` forgets the transaction; after it the machine is finished.

Presumed abort: an abort is never logged by the coordinator. A participant that asks about a
transaction the log does not know learns "abort", and the log records that answer so that the
coordinator can no longer commit it (see :mod:`.log`).

States::

    INIT --start--> PREPARING --all yes--> DECIDING --logged commit--> COMMITTING --acks--> DONE
                        |  no vote / timeout               \\--logged abort--> ABORTING
                        '-----------------------------------------> ABORTING --acks--> DONE
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from phalanx.errors import invariant
from phalanx.txn.twopc.gid import Gid, check_name
from phalanx.txn.twopc.types import BRANCHES_MAX, Decision

__all__ = [
    "CoordinatorEffect",
    "CoordinatorMachine",
    "LogDecision",
    "LogEnd",
    "Phase",
    "SendDecision",
    "SendPrepare",
]


class Phase(enum.Enum):
    INIT = "init"
    PREPARING = "preparing"
    DECIDING = "deciding"
    COMMITTING = "committing"
    ABORTING = "aborting"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class SendPrepare:
    participant: str


@dataclass(frozen=True, slots=True)
class LogDecision:
    """Write ``decision`` durably, first writer wins; report the winner with ``on_logged``."""

    decision: Decision
    participants: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SendDecision:
    participant: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class LogEnd:
    """Every participant acknowledged the decision: the log may forget the transaction."""


CoordinatorEffect = SendPrepare | LogDecision | SendDecision | LogEnd


class CoordinatorMachine:
    """One global transaction seen from its coordinator (see the module docstring)."""

    def __init__(
        self, gid: Gid, participants: tuple[str, ...], *, prepare_timeout_s: float
    ) -> None:
        if not 1 <= len(participants) <= BRANCHES_MAX:
            raise ValueError(f"participants: 1 to {BRANCHES_MAX}, got {len(participants)}")
        if len(set(participants)) != len(participants):
            raise ValueError(f"participants: names must be distinct, got {participants}")
        for name in participants:
            check_name("participant", name)
        if prepare_timeout_s <= 0:
            raise ValueError(f"prepare_timeout_s: must be > 0, got {prepare_timeout_s}")
        self.gid = gid
        self.participants = participants
        self.prepare_timeout_s = prepare_timeout_s
        self.phase = Phase.INIT
        self.decision: Decision | None = None
        #: Why the transaction aborted, when it did.
        self.abort_reason = ""
        self.prepare_deadline_s = 0.0
        self._yes: set[str] = set()
        self._no: set[str] = set()
        self._pending: set[str] = set()  # phase 2 not yet acknowledged

    @classmethod
    def recovered(
        cls, gid: Gid, participants: tuple[str, ...], decision: Decision
    ) -> tuple[CoordinatorMachine, list[CoordinatorEffect]]:
        """A machine rebuilt from a logged decision, and the phase 2 effects to redo."""
        machine = cls(gid, participants, prepare_timeout_s=1.0)
        machine.phase = Phase.DECIDING
        return machine, machine.on_logged(decision)

    # -- events -------------------------------------------------------------------------

    def start(self, now_s: float) -> list[CoordinatorEffect]:
        invariant(self.phase is Phase.INIT, f"{self.gid}: start in phase {self.phase}")
        self.phase = Phase.PREPARING
        self.prepare_deadline_s = now_s + self.prepare_timeout_s
        return [SendPrepare(p) for p in self.participants]

    def on_vote(self, participant: str, yes: bool, now_s: float) -> list[CoordinatorEffect]:
        self._check_participant(participant)
        if self.phase is not Phase.PREPARING:
            return []  # a late vote: the outcome is already set
        if participant in self._yes or participant in self._no:
            return []  # a duplicate
        if now_s >= self.prepare_deadline_s:
            return self._abort("prepare timed out")
        if not yes:
            self._no.add(participant)
            return self._abort(f"{participant} voted no")
        self._yes.add(participant)
        if len(self._yes) < len(self.participants):
            return []
        self.phase = Phase.DECIDING
        return [LogDecision(Decision.COMMIT, self.participants)]

    def on_tick(self, now_s: float) -> list[CoordinatorEffect]:
        if self.phase is Phase.PREPARING and now_s >= self.prepare_deadline_s:
            return self._abort("prepare timed out")
        return []

    def on_logged(self, decision: Decision) -> list[CoordinatorEffect]:
        """The log holds ``decision`` for this transaction (ours, or an inquirer's abort)."""
        invariant(self.phase is Phase.DECIDING, f"{self.gid}: logged in phase {self.phase}")
        if decision is Decision.ABORT:
            return self._abort("a participant's inquiry decided abort first")
        self.decision = Decision.COMMIT
        self.phase = Phase.COMMITTING
        self._pending = set(self.participants)
        return [SendDecision(p, Decision.COMMIT) for p in self.participants]

    def on_log_failed(self) -> list[CoordinatorEffect]:
        """Writing the commit decision failed *for certain* (nothing was written): abort."""
        invariant(self.phase is Phase.DECIDING, f"{self.gid}: log failed in phase {self.phase}")
        return self._abort("the decision log refused the commit record")

    def on_done(self, participant: str) -> list[CoordinatorEffect]:
        """``participant`` applied the decision (or already had)."""
        self._check_participant(participant)
        if self.phase not in (Phase.COMMITTING, Phase.ABORTING):
            return []
        self._pending.discard(participant)
        if self._pending:
            return []
        finished_commit = self.phase is Phase.COMMITTING
        self.phase = Phase.DONE
        # Presumed abort: nothing was logged for an abort, so there is nothing to forget.
        return [LogEnd()] if finished_commit else []

    def on_phase2_failed(self, participant: str) -> list[CoordinatorEffect]:
        """Phase 2 could not reach ``participant``; it stays pending for the resolver."""
        self._check_participant(participant)
        return []

    # -- queries ------------------------------------------------------------------------

    @property
    def pending(self) -> tuple[str, ...]:
        """Participants that have not acknowledged phase 2, sorted."""
        return tuple(sorted(self._pending))

    @property
    def finished(self) -> bool:
        return self.phase is Phase.DONE

    # -- internals ----------------------------------------------------------------------

    def _abort(self, reason: str) -> list[CoordinatorEffect]:
        self.decision = Decision.ABORT
        self.abort_reason = reason
        self.phase = Phase.ABORTING
        # Those that voted no rolled back already; everyone else may hold a prepared branch
        # (or a prepare still in flight), so each is told to abort.
        self._pending = set(self.participants) - self._no
        if not self._pending:
            self.phase = Phase.DONE
            return []
        return [SendDecision(p, Decision.ABORT) for p in sorted(self._pending)]

    def _check_participant(self, participant: str) -> None:
        invariant(
            participant in self.participants,
            f"{self.gid}: {participant!r} is not a participant",
        )
