"""Applying a :class:`~phalanx.raft.types.ConfChange` to a membership (thesis 4.1 and 4.3).

Three kinds of change, as in etcd-io/raft:

- simple: at most one voter added or removed (any number of learners); a majority of the old
  and of the new configuration always overlap, so no joint phase is needed (thesis 4.1);
- enter joint: the incoming voters get the changes and the old voters become the outgoing
  side; decisions need a majority of each (thesis 4.3);
- leave joint (an empty change): drop the outgoing side; voters demoted while joint
  (``learners_next``) become learners.

Each function returns a new membership and progress map, or raises :class:`ConfChangeError`
and leaves its inputs untouched. Invariants after every change: voters and learners are
disjoint, ``learners_next`` are outgoing voters only, every member has a progress.
"""

from __future__ import annotations

from dataclasses import replace

from phalanx.errors import PhalanxError, invariant
from phalanx.raft.progress import Progress
from phalanx.raft.tracker import Membership
from phalanx.raft.types import ConfChange, ConfChangeType, ConfState

__all__ = ["ConfChangeError", "apply_change", "progress_for", "validate"]


class ConfChangeError(PhalanxError):
    """The change does not apply to the current membership."""


Progresses = dict[int, Progress]


def apply_change(
    membership: Membership,
    progress: Progresses,
    change: ConfChange,
    *,
    next_index: int,
    max_inflight: int,
) -> tuple[Membership, Progresses]:
    if not change.changes:
        return _leave_joint(membership, progress)
    new_progress = dict(progress)
    if change.joint:
        if membership.joint:
            raise ConfChangeError("the configuration is already joint")
        if not membership.voters:
            raise ConfChangeError("a configuration without voters cannot become joint")
        joint = replace(membership, voters_outgoing=membership.voters, auto_leave=change.auto_leave)
        result = _apply(joint, new_progress, change, next_index, max_inflight)
    else:
        if membership.joint:
            raise ConfChangeError("a simple change cannot apply to a joint configuration")
        result = _apply(membership, new_progress, change, next_index, max_inflight)
        if len(result.voters ^ membership.voters) > 1:
            raise ConfChangeError("more than one voter changed without joint consensus")
    if not result.voters:
        raise ConfChangeError("the change removes every voter")
    _check(result, new_progress)
    return result, new_progress


def validate(membership: Membership, change: ConfChange) -> str | None:
    """Why ``change`` cannot apply to ``membership``, or None if it can."""
    try:
        apply_change(
            membership, progress_for(membership, 1, 1), change, next_index=1, max_inflight=1
        )
    except ConfChangeError as error:
        return str(error)
    return None


def progress_for(membership: Membership, next_index: int, max_inflight: int) -> Progresses:
    """Fresh progress for every member (after a restart or a snapshot)."""
    _check_membership(membership)
    return {
        node: Progress(next_index, max_inflight, is_learner=node in membership.learners)
        for node in sorted(membership.members())
    }


def membership_of(cs: ConfState) -> Membership:
    membership = Membership.from_conf_state(cs)
    _check_membership(membership)
    return membership


def _leave_joint(membership: Membership, progress: Progresses) -> tuple[Membership, Progresses]:
    if not membership.joint:
        raise ConfChangeError("the configuration is not joint")
    new_progress = dict(progress)
    for node in membership.learners_next:
        old = new_progress[node]
        pr = Progress(old.next, old.inflights.capacity, is_learner=True)
        pr.match = old.match
        new_progress[node] = pr
    result = Membership(
        voters=membership.voters,
        learners=membership.learners | membership.learners_next,
    )
    for node in membership.voters_outgoing:
        if node not in result.members():
            del new_progress[node]
    _check(result, new_progress)
    return result, new_progress


def _apply(
    membership: Membership,
    progress: Progresses,
    change: ConfChange,
    next_index: int,
    max_inflight: int,
) -> Membership:
    voters = set(membership.voters)
    learners = set(membership.learners)
    learners_next = set(membership.learners_next)
    outgoing = membership.voters_outgoing
    for kind, node in change.changes:
        if node <= 0:
            raise ConfChangeError(f"node id must be > 0, got {node}")
        pr = progress.get(node)
        if kind == ConfChangeType.ADD_VOTER:
            learners.discard(node)
            learners_next.discard(node)
            voters.add(node)
            if pr is None:
                progress[node] = Progress(next_index, max_inflight)
            elif pr.is_learner:
                progress[node] = _promoted(pr, is_learner=False)
        elif kind == ConfChangeType.ADD_LEARNER:
            if pr is not None and pr.is_learner:
                continue
            voters.discard(node)
            if node in outgoing:
                # Still a voter of the outgoing side: becomes a learner when leaving joint.
                learners_next.add(node)
                if pr is None:
                    progress[node] = Progress(next_index, max_inflight)
            else:
                learners.add(node)
                progress[node] = (
                    Progress(next_index, max_inflight, is_learner=True)
                    if pr is None
                    else _promoted(pr, is_learner=True)
                )
        else:
            voters.discard(node)
            learners.discard(node)
            learners_next.discard(node)
            if node not in outgoing:
                progress.pop(node, None)
    return replace(
        membership,
        voters=frozenset(voters),
        learners=frozenset(learners),
        learners_next=frozenset(learners_next),
    )


def _promoted(pr: Progress, *, is_learner: bool) -> Progress:
    copy = Progress(pr.next, pr.inflights.capacity, is_learner=is_learner)
    copy.match = pr.match
    copy.recent_active = pr.recent_active
    return copy


def _check_membership(m: Membership) -> None:
    invariant(not (m.learners & m.all_voters()), f"learners {m.learners} are also voters")
    invariant(
        m.learners_next <= m.voters_outgoing,
        f"learners_next {m.learners_next} must be outgoing voters",
    )
    invariant(not (m.learners_next & m.learners), "learners_next overlap learners")
    invariant(m.joint or not m.learners_next, "learners_next outside a joint configuration")
    invariant(m.joint or not m.auto_leave, "auto_leave outside a joint configuration")


def _check(m: Membership, progress: Progresses) -> None:
    _check_membership(m)
    invariant(set(progress) == set(m.members()), "progress must track exactly the members")
    for node, pr in progress.items():
        invariant(pr.is_learner == (node in m.learners), f"progress of {node}: learner flag")
