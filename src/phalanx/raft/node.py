"""RawNode: the Raft core behind the ``Ready``/``advance`` interface a driver uses.

The driver loop::

    node.tick()                       # every tick
    node.step(message)                # every message received
    while node.has_ready():
        ready = node.ready()
        persist ready.hard_state, ready.entries, ready.snapshot   (fsync)
        send ready.messages                                        (only now)
        install ready.snapshot, apply ready.committed_entries      (in order; call
            node.apply_conf_change(change) for each CONF_CHANGE entry)
        serve ready.read_states once their index is applied
        node.advance(ready)

The contract, checked at ``ready()`` and ``advance()`` (``InvariantViolation`` if broken):

- one Ready is out at a time: ``ready()`` again before ``advance()`` is a driver bug, and
  ``has_ready()`` is False meanwhile; ``advance(ready)`` takes exactly the last Ready.
- ``step``/``tick``/``propose`` may be called while a Ready is out; what they produce goes in
  the next Ready.
- a Ready's messages depend on its hard state and entries being durable, so they must be sent
  after persisting; messages to this node itself never appear (its own vote and its own append
  acknowledgement are counted inside ``advance``, after the persist they depend on).
- the hard state's term and commit never decrease, and its vote never changes within a term.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from phalanx.errors import invariant
from phalanx.raft import leader
from phalanx.raft.config import Config
from phalanx.raft.errors import ProposalDropped
from phalanx.raft.progress import ProgressState
from phalanx.raft.raft import Raft
from phalanx.raft.storage import Storage
from phalanx.raft.types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    Role,
    SoftState,
    encode_conf_change,
)

__all__ = ["PeerStatus", "ProposalDropped", "RawNode", "Status"]


@dataclass(frozen=True)
class PeerStatus:
    """A leader's view of one member's replication."""

    match: int
    next: int
    state: ProgressState
    is_learner: bool


@dataclass(frozen=True)
class Status:
    id: int
    term: int
    vote: int
    commit: int
    applied: int
    role: Role
    leader: int
    conf_state: ConfState
    last_index: int
    #: The node a leadership transfer is under way to, or 0.
    transferee: int = NONE
    #: Per member, on a leader only (empty otherwise).
    progress: tuple[tuple[int, PeerStatus], ...] = ()


class RawNode:
    """One Raft node. Not thread-safe: the driver calls it from one task."""

    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        self._raft = Raft(config, storage, rng)
        self._storage = storage
        self._prev_soft = self._soft_state()
        self._prev_hard = self._raft.hard_state()
        self._outstanding: Ready | None = None
        self._self_messages: list[Message] = []

    @property
    def id(self) -> int:
        return self._raft.id

    # Cheap views of the volatile state, for a driver's hot path (``status()`` builds a
    # whole snapshot, progress of every peer included).

    @property
    def role(self) -> Role:
        return self._raft.role

    @property
    def leader(self) -> int:
        return self._raft.lead

    @property
    def term(self) -> int:
        return self._raft.term

    @property
    def last_index(self) -> int:
        return self._raft.log.last_index()

    @property
    def commit_index(self) -> int:
        return self._raft.log.committed

    # -- inputs ----------------------------------------------------------------------------

    def tick(self) -> None:
        self._raft.tick()

    def step(self, message: Message) -> None:
        """Take a message from the network. Messages for another node raise ValueError."""
        if message.dst != self.id:
            raise ValueError(f"message for {message.dst} stepped into node {self.id}")
        try:
            self._raft.step(message)
        except ProposalDropped:
            # A forwarded proposal or read the leader cannot take: its sender finds out by
            # timing out (the outcome is unknown to it), exactly as if the message were lost.
            return

    def propose(self, data: bytes) -> None:
        """Propose ``data`` for the log. Raises ProposalDropped when it cannot be accepted."""
        self._propose(Entry(term=0, index=0, type=EntryType.NORMAL, data=data))

    def propose_batch(self, datas: Sequence[bytes]) -> None:
        """Propose several entries at once, in order: one append to each follower instead of
        one per entry. All or none are accepted (ProposalDropped)."""
        if not datas:
            return
        entries = tuple(Entry(term=0, index=0, type=EntryType.NORMAL, data=d) for d in datas)
        self._raft.step(
            Message(type=MessageType.PROPOSE, src=self.id, dst=self.id, term=0, entries=entries)
        )

    def propose_conf_change(self, change: ConfChange) -> None:
        """Propose a membership change; a refused one commits as an empty entry instead."""
        data = encode_conf_change(change)
        self._propose(Entry(term=0, index=0, type=EntryType.CONF_CHANGE, data=data))

    def _propose(self, entry: Entry) -> None:
        message = Message(
            type=MessageType.PROPOSE, src=self.id, dst=self.id, term=0, entries=(entry,)
        )
        self._raft.step(message)

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read; a ReadState with ``context`` comes in a later Ready.

        Raises ProposalDropped when no leader is known or the leader holds too many reads.
        A forwarded request may also be lost: callers retry with the same context.
        """
        message = Message(
            type=MessageType.READ_INDEX, src=self.id, dst=self.id, term=0, context=context
        )
        self._raft.step(message)

    def transfer_leader(self, to: int) -> None:
        """Hand leadership to ``to`` (thesis 3.10). On a follower, the request goes to the leader
        as a TRANSFER_LEADER message whose ``src`` names the target. Ignored without a leader."""
        r = self._raft
        if r.role == Role.LEADER:
            leader.transfer_leader(r, to)
        elif r.lead not in (NONE, to):
            r.send(Message(type=MessageType.TRANSFER_LEADER, src=to, dst=r.lead, term=r.term))

    def report_unreachable(self, peer: int) -> None:
        """The transport could not deliver to ``peer``: stop streaming, probe it instead."""
        r = self._raft
        pr = r.tracker.progress.get(peer)
        if r.role == Role.LEADER and pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """The snapshot sent to ``peer`` was installed (``ok``) or failed."""
        r = self._raft
        pr = r.tracker.progress.get(peer)
        if r.role != Role.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for the follower's answer (or a heartbeat round) before the next append.
        pr.probe_sent = True

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Apply a committed CONF_CHANGE entry's change; returns the new membership."""
        return self._raft.apply_conf_change(change)

    # -- outputs --------------------------------------------------------------------------

    def _soft_state(self) -> SoftState:
        return SoftState(leader=self._raft.lead, role=self._raft.status_role())

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        r = self._raft
        return bool(
            self._soft_state() != self._prev_soft
            or r.hard_state() != self._prev_hard
            or r.log.unstable.entries
            or r.log.unstable.snapshot is not None
            or r.msgs
            or r.msgs_after_append
            or r.read_states
            or r.log.has_next_committed_entries()
        )

    def ready(self) -> Ready:
        invariant(self._outstanding is None, "ready() called again before advance()")
        r = self._raft
        soft = self._soft_state()
        hard = r.hard_state()
        committed = tuple(r.log.next_committed_entries())
        ready = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=tuple(r.log.unstable.entries),
            snapshot=r.log.unstable.snapshot,
            committed_entries=committed,
            messages=tuple(r.msgs),
            read_states=tuple(r.read_states),
        )
        self._check(ready, hard)
        r.msgs = []
        r.read_states = []
        self._self_messages, r.msgs_after_append = r.msgs_after_append, []
        if committed:
            r.log.applying_to(committed[-1].index)
        self._prev_soft = soft
        self._prev_hard = hard
        self._outstanding = ready
        return ready

    def _check(self, ready: Ready, hard: HardState) -> None:
        prev = self._prev_hard
        invariant(hard.term >= prev.term, f"term went back from {prev.term} to {hard.term}")
        invariant(
            hard.commit >= prev.commit, f"commit went back from {prev.commit} to {hard.commit}"
        )
        invariant(
            hard.term != prev.term or prev.vote in (NONE, hard.vote),
            f"vote changed from {prev.vote} to {hard.vote} in term {hard.term}",
        )
        entries = ready.entries
        for before, after in itertools.pairwise(entries):
            invariant(after.index == before.index + 1, "Ready entries must be contiguous")
        if entries:
            held = self._storage.last_index()
            if ready.snapshot is not None:
                held = ready.snapshot.meta.index
            invariant(entries[0].index <= held + 1, f"Ready entries leave a gap after {held}")
        committed = ready.committed_entries
        if committed:
            invariant(ready.snapshot is None, "entries to apply alongside a snapshot to install")
            invariant(committed[-1].index <= hard.commit, "applying beyond the commit index")
        for message in ready.messages:
            invariant(message.dst != self.id, "a Ready never holds messages to the node itself")

    def advance(self, ready: Ready) -> None:
        """Acknowledge ``ready``: persisted, sent, applied. Steps this node's own messages."""
        invariant(ready is self._outstanding, "advance() takes the Ready from the last ready()")
        self._outstanding = None
        r = self._raft
        if ready.entries:
            last = ready.entries[-1]
            r.log.stable_to(last.index, last.term)
        if ready.snapshot is not None:
            r.log.stable_snap_to(ready.snapshot.meta.index)
            r.log.applied_to(ready.snapshot.meta.index)
        if ready.committed_entries:
            r.log.applied_to(ready.committed_entries[-1].index)
        own, self._self_messages = self._self_messages, []
        for message in own:
            r.step(message)
        r.after_apply(ready.committed_entries)

    # -- inspection -----------------------------------------------------------------------

    def status(self) -> Status:
        r = self._raft
        progress: tuple[tuple[int, PeerStatus], ...] = ()
        if r.role == Role.LEADER:
            progress = tuple(
                (node, PeerStatus(pr.match, pr.next, pr.state, pr.is_learner))
                for node, pr in sorted(r.tracker.progress.items())
            )
        return Status(
            id=r.id,
            term=r.term,
            vote=r.vote,
            commit=r.log.committed,
            applied=r.log.applied,
            role=r.status_role(),
            leader=r.lead,
            conf_state=r.conf_state(),
            last_index=r.log.last_index(),
            transferee=r.lead_transferee,
            progress=progress,
        )
