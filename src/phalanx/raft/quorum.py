"""Counting a quorum: a simple majority of voters, and the joint rule (a majority of each).

A joint configuration (thesis 4.3) decides only when both the incoming and the outgoing
majorities agree. An empty majority config agrees with everything, so a joint rule with an
empty outgoing side is exactly the incoming majority.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Iterable, Mapping

__all__ = ["INDEX_UNBOUNDED", "VoteResult", "joint_index", "joint_vote", "majority_index"]

#: The "committed index" of an empty majority: it never constrains a joint minimum.
INDEX_UNBOUNDED = sys.maxsize


class VoteResult(enum.IntEnum):
    PENDING = 1
    LOST = 2
    WON = 3


def majority_index(voters: Iterable[int], index_of: Callable[[int], int]) -> int:
    """The largest index that a majority of ``voters`` have reached."""
    indexes = sorted((index_of(v) for v in voters), reverse=True)
    if not indexes:
        return INDEX_UNBOUNDED
    return indexes[len(indexes) // 2]


def joint_index(
    incoming: Iterable[int], outgoing: Iterable[int], index_of: Callable[[int], int]
) -> int:
    return min(majority_index(incoming, index_of), majority_index(outgoing, index_of))


def majority_vote(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    ids = list(voters)
    if not ids:
        return VoteResult.WON
    granted = sum(1 for v in ids if votes.get(v) is True)
    missing = sum(1 for v in ids if v not in votes)
    needed = len(ids) // 2 + 1
    if granted >= needed:
        return VoteResult.WON
    if granted + missing >= needed:
        return VoteResult.PENDING
    return VoteResult.LOST


def joint_vote(
    incoming: Iterable[int], outgoing: Iterable[int], votes: Mapping[int, bool]
) -> VoteResult:
    first = majority_vote(incoming, votes)
    second = majority_vote(outgoing, votes)
    if first == second:
        return first
    if VoteResult.LOST in (first, second):
        return VoteResult.LOST
    return VoteResult.PENDING
