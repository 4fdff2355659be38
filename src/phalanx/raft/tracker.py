"""The membership a node works with, the leader's per-peer progress, and election votes.

:class:`Membership` is the configuration (voters, learners, and the outgoing voters while
joint); :class:`Tracker` adds a :class:`~phalanx.raft.progress.Progress` for every member and
counts quorums over it. Iteration is always in id order, so runs are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phalanx.raft.progress import Progress
from phalanx.raft.quorum import VoteResult, joint_index, joint_vote
from phalanx.raft.types import ConfState

__all__ = ["Membership", "Tracker"]


@dataclass(frozen=True)
class Membership:
    voters: frozenset[int] = frozenset()
    voters_outgoing: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    learners_next: frozenset[int] = frozenset()
    auto_leave: bool = False

    @property
    def joint(self) -> bool:
        return bool(self.voters_outgoing)

    def all_voters(self) -> frozenset[int]:
        return self.voters | self.voters_outgoing

    def members(self) -> frozenset[int]:
        return self.voters | self.voters_outgoing | self.learners | self.learners_next

    def to_conf_state(self) -> ConfState:
        return ConfState(
            voters=tuple(sorted(self.voters)),
            learners=tuple(sorted(self.learners)),
            voters_outgoing=tuple(sorted(self.voters_outgoing)),
            learners_next=tuple(sorted(self.learners_next)),
            auto_leave=self.auto_leave,
        )

    @classmethod
    def from_conf_state(cls, cs: ConfState) -> Membership:
        return cls(
            voters=frozenset(cs.voters),
            voters_outgoing=frozenset(cs.voters_outgoing),
            learners=frozenset(cs.learners),
            learners_next=frozenset(cs.learners_next),
            auto_leave=cs.auto_leave,
        )


@dataclass
class Tracker:
    membership: Membership
    progress: dict[int, Progress]
    votes: dict[int, bool] = field(default_factory=dict)

    def ids(self) -> list[int]:
        return sorted(self.progress)

    def voter_ids(self) -> list[int]:
        return sorted(self.membership.all_voters())

    def is_voter(self, node: int) -> bool:
        return node in self.membership.all_voters()

    def is_singleton(self) -> bool:
        m = self.membership
        return len(m.voters) == 1 and not m.voters_outgoing

    def committed(self) -> int:
        """The largest index a quorum has persisted (per each majority when joint)."""
        m = self.membership
        return joint_index(m.voters, m.voters_outgoing, self._match)

    def quorum_index(self, index_of: dict[int, int]) -> int:
        """The largest value a quorum has reached, for any per-voter counter."""
        m = self.membership
        return joint_index(m.voters, m.voters_outgoing, lambda v: index_of.get(v, 0))

    def _match(self, node: int) -> int:
        pr = self.progress.get(node)
        return pr.match if pr is not None else 0

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node: int, granted: bool) -> None:
        self.votes.setdefault(node, granted)

    def tally(self) -> tuple[int, int, VoteResult]:
        granted = sum(1 for v in self.voter_ids() if self.votes.get(v) is True)
        rejected = sum(1 for v in self.voter_ids() if self.votes.get(v) is False)
        m = self.membership
        return granted, rejected, joint_vote(m.voters, m.voters_outgoing, self.votes)

    def quorum_active(self, me: int) -> bool:
        """Did a quorum (counting this node) communicate since the last check?"""
        active = {
            node: node == me or pr.recent_active
            for node, pr in self.progress.items()
            if not pr.is_learner
        }
        m = self.membership
        return joint_vote(m.voters, m.voters_outgoing, active) == VoteResult.WON
