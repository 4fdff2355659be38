"""The values the Raft core consumes and produces: entries, messages, states, the Ready batch.

All are immutable ``msgspec`` structs: cheap to build (the simulator makes millions), hashable
for trace digests, and encodable as they are for the WAL and the wire. Indexes and terms start
at 1; 0 means "none" (no entry, no vote, no leader).
"""

from __future__ import annotations

import enum

import msgspec

__all__ = [
    "NONE",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MessageType",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "decode_conf_change",
    "encode_conf_change",
]

#: "No node", "no term", "no index".
NONE = 0


class MessageType(enum.IntEnum):
    """Every message the core sends or accepts."""

    VOTE = 1  # RequestVote (Raft paper 5.2)
    VOTE_RESP = 2
    PRE_VOTE = 3  # thesis 9.6: ask before disrupting the cluster with a new term
    PRE_VOTE_RESP = 4
    APPEND = 5  # AppendEntries (5.3)
    APPEND_RESP = 6
    HEARTBEAT = 7  # an AppendEntries without entries, also carrying ReadIndex contexts
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9  # InstallSnapshot (paper 7)
    PROPOSE = 10  # a follower forwards a client proposal to the leader
    READ_INDEX = 11  # a follower asks the leader for a read index (thesis 6.4)
    READ_INDEX_RESP = 12
    TIMEOUT_NOW = 13  # leadership transfer: start an election now (thesis 3.10)
    TRANSFER_LEADER = 14  # a follower asks the leader to transfer to ``src``


class EntryType(enum.IntEnum):
    NORMAL = 1
    CONF_CHANGE = 2


class Role(enum.IntEnum):
    FOLLOWER = 1
    PRE_CANDIDATE = 2
    CANDIDATE = 3
    LEADER = 4
    LEARNER = 5


class Entry(msgspec.Struct, frozen=True, array_like=True):
    """One log entry. ``data`` is opaque to Raft (a ``ConfChange`` encoded for CONF_CHANGE)."""

    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


class HardState(msgspec.Struct, frozen=True, array_like=True):
    """What must be on stable storage before any message of the same Ready is sent."""

    term: int = NONE
    vote: int = NONE
    commit: int = NONE


class ConfState(msgspec.Struct, frozen=True, array_like=True):
    """The membership: voters, learners, and while in joint consensus the outgoing voters.

    ``voters_outgoing`` is empty outside a joint configuration (thesis 4.3). ``learners_next``
    are voters of the outgoing configuration being demoted to learners when the joint
    configuration is left. ``auto_leave`` means the leader leaves the joint configuration by
    itself once it is committed.
    """

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    voters_outgoing: tuple[int, ...] = ()
    learners_next: tuple[int, ...] = ()
    auto_leave: bool = False


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 1
    REMOVE_NODE = 2
    ADD_LEARNER = 3


class ConfChange(msgspec.Struct, frozen=True, array_like=True):
    """A membership change: one step (``changes`` of length 1, no ``joint``) or joint consensus.

    An empty ``changes`` tuple is the request to leave a joint configuration.
    """

    changes: tuple[tuple[ConfChangeType, int], ...] = ()
    joint: bool = False
    auto_leave: bool = True


class SnapshotMeta(msgspec.Struct, frozen=True, array_like=True):
    index: int
    term: int
    conf_state: ConfState


class Snapshot(msgspec.Struct, frozen=True, array_like=True):
    """The state machine's state up to ``meta.index``; ``data`` is opaque to Raft."""

    meta: SnapshotMeta
    data: bytes = b""


class Message(msgspec.Struct, frozen=True, array_like=True):
    """A message between two nodes. Unused fields keep their defaults.

    ``index``/``log_term`` name the entry preceding ``entries`` (AppendEntries) or the
    candidate's last entry (votes). ``reject_hint`` is the follower's suggestion of where the
    leader should probe next (fast backtracking, thesis 5.3 / etcd's hint), and
    ``hint_term`` the term of that entry. ``context`` carries ReadIndex request contexts.
    """

    type: MessageType
    src: int
    dst: int
    term: int
    log_term: int = NONE
    index: int = NONE
    entries: tuple[Entry, ...] = ()
    commit: int = NONE
    reject: bool = False
    reject_hint: int = NONE
    hint_term: int = NONE
    context: bytes = b""
    snapshot: Snapshot | None = None


class ReadState(msgspec.Struct, frozen=True, array_like=True):
    """A linearizable read may be served once the state machine has applied ``index``."""

    index: int
    context: bytes


class SoftState(msgspec.Struct, frozen=True, array_like=True):
    """Volatile state worth reporting: who leads, and this node's role."""

    leader: int = NONE
    role: Role = Role.FOLLOWER


class Ready(msgspec.Struct, frozen=True):
    """Everything the driver must do, in this order (then call ``advance(ready)``):

    1. persist ``hard_state`` (if not None), ``entries`` and ``snapshot`` (if not None), and
       fsync;
    2. only then send ``messages``;
    3. install ``snapshot`` into the state machine, then apply ``committed_entries`` in order;
    4. serve ``read_states`` once the state machine has applied each one's index.

    ``committed_entries`` are always committed (and so durable on a quorum); some may not be
    persisted locally yet when a leader commits entries it is still writing, which is why
    step 1 comes first.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()

    def is_empty(self) -> bool:
        return (
            self.soft_state is None
            and self.hard_state is None
            and not self.entries
            and self.snapshot is None
            and not self.committed_entries
            and not self.messages
            and not self.read_states
        )


def encode_conf_change(change: ConfChange) -> bytes:
    """The ``data`` of a CONF_CHANGE entry (msgpack)."""
    return msgspec.msgpack.encode(change)


def decode_conf_change(data: bytes) -> ConfChange:
    """The :class:`ConfChange` a CONF_CHANGE entry carries."""
    return msgspec.msgpack.decode(data, type=ConfChange)
