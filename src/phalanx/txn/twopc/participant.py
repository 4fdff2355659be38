"""One participant's branch of a global transaction, as a sans-I/O state machine.

:class:`ParticipantMachine` follows a branch from prepare to its outcome and decides when a
prepared branch must ask its coordinator for the outcome: after ``inquiry_after_s`` in the
prepared state without hearing a decision, and then again on a backoff schedule until an
answer comes. It is what a restarted participant runs for every branch it finds prepared.

Effects for the driver: :class:`Vote` (reply to the coordinator), :class:`Apply` (commit or
roll back the local branch; report with :meth:`on_applied`), :class:`AskOutcome` (ask the
coordinator named inside the gid; report the answer with :meth:`on_decision`).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from phalanx.errors import invariant
from phalanx.resilience.backoff import Backoff
from phalanx.txn.twopc.types import Decision

__all__ = ["Apply", "AskOutcome", "BranchState", "ParticipantEffect", "ParticipantMachine", "Vote"]


class BranchState(enum.Enum):
    ACTIVE = "active"
    PREPARED = "prepared"
    APPLYING = "applying"
    COMMITTED = "committed"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class Vote:
    yes: bool


@dataclass(frozen=True, slots=True)
class Apply:
    decision: Decision


@dataclass(frozen=True, slots=True)
class AskOutcome:
    branch_gid: str


ParticipantEffect = Vote | Apply | AskOutcome


class ParticipantMachine:
    """A branch ``branch_gid`` (see the module docstring)."""

    def __init__(
        self,
        branch_gid: str,
        *,
        inquiry_after_s: float,
        backoff: Backoff,
        rng: random.Random,
    ) -> None:
        if inquiry_after_s < 0:
            raise ValueError(f"inquiry_after_s: must be >= 0, got {inquiry_after_s}")
        self.branch_gid = branch_gid
        self.inquiry_after_s = inquiry_after_s
        self.state = BranchState.ACTIVE
        self.inquiries = 0
        self._backoff = backoff
        self._rng = rng
        self._next_inquiry_s = 0.0
        self._last_delay_s = 0.0

    @classmethod
    def found_prepared(
        cls,
        branch_gid: str,
        *,
        prepared_at_s: float,
        inquiry_after_s: float,
        backoff: Backoff,
        rng: random.Random,
    ) -> ParticipantMachine:
        """A branch found prepared after a restart; ``prepared_at_s`` on the caller's clock."""
        machine = cls(branch_gid, inquiry_after_s=inquiry_after_s, backoff=backoff, rng=rng)
        machine.state = BranchState.PREPARED
        machine._next_inquiry_s = prepared_at_s + inquiry_after_s
        return machine

    def on_prepared(self, ok: bool, now_s: float) -> list[ParticipantEffect]:
        """The local prepare finished (``ok``) or failed; vote accordingly."""
        invariant(self.state is BranchState.ACTIVE, f"{self.branch_gid}: prepared twice")
        if not ok:
            self.state = BranchState.ABORTED
            return [Vote(yes=False)]
        self.state = BranchState.PREPARED
        self._next_inquiry_s = now_s + self.inquiry_after_s
        return [Vote(yes=True)]

    def on_decision(self, decision: Decision) -> list[ParticipantEffect]:
        """The coordinator's decision arrived (pushed, or as the answer to an inquiry)."""
        if self.state is BranchState.ACTIVE:
            # Abort before prepare: roll back the unprepared work. Commit cannot happen.
            invariant(decision is Decision.ABORT, f"{self.branch_gid}: commit before prepare")
        elif self.state is not BranchState.PREPARED:
            return []  # applied already, or being applied
        self.state = BranchState.APPLYING
        return [Apply(decision)]

    def on_applied(self, decision: Decision) -> list[ParticipantEffect]:
        invariant(self.state is BranchState.APPLYING, f"{self.branch_gid}: applied unasked")
        self.state = BranchState.COMMITTED if decision is Decision.COMMIT else BranchState.ABORTED
        return []

    def on_apply_failed(self, now_s: float) -> list[ParticipantEffect]:
        """Applying failed (the database is down): stay prepared and ask again later."""
        invariant(self.state is BranchState.APPLYING, f"{self.branch_gid}: apply failed unasked")
        self.state = BranchState.PREPARED
        self._schedule(now_s)
        return []

    def on_tick(self, now_s: float) -> list[ParticipantEffect]:
        """Ask for the outcome when a prepared branch has waited long enough."""
        if self.state is not BranchState.PREPARED or now_s < self._next_inquiry_s:
            return []
        self.inquiries += 1
        self._schedule(now_s)
        return [AskOutcome(self.branch_gid)]

    @property
    def next_inquiry_s(self) -> float:
        return self._next_inquiry_s

    @property
    def settled(self) -> bool:
        return self.state in (BranchState.COMMITTED, BranchState.ABORTED)

    def _schedule(self, now_s: float) -> None:
        retry_index = max(0, self.inquiries - 1)
        delay_s = self._backoff.delay_s(retry_index, self._last_delay_s, self._rng)
        self._last_delay_s = delay_s
        self._next_inquiry_s = now_s + delay_s
