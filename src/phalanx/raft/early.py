"""Which of a leader's messages may leave before its Ready is persisted (thesis 10.2.1).

A leader may write new entries to its own disk while it replicates them: its own
acknowledgement (the self message the core steps only after ``advance``) is what counts it
toward a commit, so an append sent before the leader's fsync promises nothing the leader has
not yet made durable. Overlapping the two removes one fsync from the critical path of every
write. Only messages that promise nothing about the sender's storage go early: appends,
heartbeats, snapshots (read from storage, already durable) and TimeoutNow. Responses (votes,
append acknowledgements, read index answers) always wait for the fsync, and so does
everything a node sends while it is not the leader: a candidate's vote requests, for one,
must not leave before its new term and self-vote are on disk.
"""

from __future__ import annotations

from typing import Final

from phalanx.raft.types import Message, MessageType, Role

__all__ = ["EARLY_TYPES", "split_early"]

EARLY_TYPES: Final = frozenset(
    {MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT, MessageType.TIMEOUT_NOW}
)


def split_early(
    messages: tuple[Message, ...], role: Role
) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
    """``(early, late)``: what a node in ``role`` (its role once the Ready was taken) may send
    before persisting, and what must wait until after."""
    if role != Role.LEADER or not messages:
        return (), messages
    early = tuple(m for m in messages if m.type in EARLY_TYPES)
    if not early:
        return (), messages
    late = tuple(m for m in messages if m.type not in EARLY_TYPES)
    return early, late
