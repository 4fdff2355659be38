"""The leader's side: proposals, replication with flow control, commit, reads, transfers.

Functions of a :class:`~phalanx.raft.raft.Raft` in the LEADER role. Replication follows
paper 5.3 with etcd-io/raft's flow control (see :mod:`phalanx.raft.progress`); the commit rule
is paper 5.4.2 (only entries of the current term are committed by counting: Figure 8).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from phalanx.errors import invariant
from phalanx.raft.confchange import validate
from phalanx.raft.errors import ProposalDropped
from phalanx.raft.log import payload_bytes
from phalanx.raft.progress import Progress, ProgressState
from phalanx.raft.read_only import PENDING_READS_MAX, decode_round
from phalanx.raft.storage import LogCompacted
from phalanx.raft.types import (
    NONE,
    ConfChange,
    Entry,
    EntryType,
    Message,
    MessageType,
    ReadState,
    Role,
    decode_conf_change,
    encode_conf_change,
)

if TYPE_CHECKING:
    from phalanx.raft.raft import Raft

#: Election timeouts a leader waits for a snapshot's answer before presuming it lost.
SNAPSHOT_TIMEOUT_ELECTIONS: Final = 2

__all__ = [
    "after_conf_change",
    "append_entries",
    "broadcast_append",
    "maybe_auto_leave",
    "step",
    "tick",
    "transfer_leader",
]


def tick(r: Raft) -> None:
    r.leader_ticks += 1
    r.heartbeat_elapsed += 1
    r.election_elapsed += 1
    if r.election_elapsed >= r.config.election_ticks:
        r.election_elapsed = 0
        if r.config.check_quorum:
            active = r.tracker.quorum_active(r.id)
            for node, pr in r.tracker.progress.items():
                pr.recent_active = node == r.id
            if not active:
                # Check-quorum (thesis 6.2): a leader cut off from a quorum steps down.
                r.become_follower(r.term, NONE)
                return
        if r.lead_transferee != NONE:
            abort_transfer(r)  # the transfer did not finish within an election timeout
    if r.heartbeat_elapsed >= r.config.heartbeat_ticks:
        r.heartbeat_elapsed = 0
        broadcast_heartbeat(r)


def step(r: Raft, m: Message) -> None:
    kind = m.type
    if kind == MessageType.PROPOSE:
        _propose(r, m)
        return
    if kind == MessageType.READ_INDEX:
        _read_index(r, m)
        return
    if kind == MessageType.TRANSFER_LEADER:
        transfer_leader(r, m.src)
        return
    pr = r.tracker.progress.get(m.src)
    if pr is None:
        return
    if kind == MessageType.APPEND_RESP:
        pr.recent_active = True
        if m.reject:
            _append_rejected(r, m, pr)
        else:
            _append_accepted(r, m, pr)
    elif kind == MessageType.HEARTBEAT_RESP:
        _heartbeat_answered(r, m, pr)


# -- proposals -------------------------------------------------------------------------------


def _propose(r: Raft, m: Message) -> None:
    invariant(bool(m.entries), "a proposal without entries")
    if r.id not in r.tracker.progress:
        raise ProposalDropped(f"leader {r.id} was removed from the configuration")
    if r.lead_transferee != NONE:
        raise ProposalDropped(f"leader {r.id} is transferring leadership to {r.lead_transferee}")
    entries = list(m.entries)
    conf_index = NONE
    for position, entry in enumerate(entries):
        if entry.type != EntryType.CONF_CHANGE:
            continue
        if _conf_change_refused(r, entry, conf_index):
            # One change at a time, each valid for the current membership: a refused change
            # becomes an empty entry, so the proposer sees it commit without effect.
            entries[position] = Entry(term=0, index=0)
        else:
            conf_index = r.log.last_index() + position + 1
    if not append_entries(r, entries):
        raise ProposalDropped(
            f"leader {r.id} has {r.uncommitted_bytes} uncommitted bytes "
            f"(max_uncommitted_entries_bytes={r.config.max_uncommitted_entries_bytes})"
        )
    if conf_index != NONE:
        r.pending_conf_index = conf_index
    broadcast_append(r)


def _conf_change_refused(r: Raft, entry: Entry, earlier_in_batch: int) -> bool:
    if earlier_in_batch != NONE or r.pending_conf_index > r.log.applied:
        return True
    return validate(r.tracker.membership, decode_conf_change(entry.data)) is not None


def append_entries(r: Raft, entries: list[Entry]) -> bool:
    """Append ``entries`` at the end of the leader's log, in its term; False past the cap."""
    last = r.log.last_index()
    stamped = [
        Entry(term=r.term, index=last + 1 + i, type=e.type, data=e.data)
        for i, e in enumerate(entries)
    ]
    size = payload_bytes(stamped)
    cap = r.config.max_uncommitted_entries_bytes
    # Something must always be able to make progress: an entry larger than the cap is
    # accepted when nothing else is uncommitted.
    if r.uncommitted_bytes > 0 and size > 0 and r.uncommitted_bytes + size > cap:
        return False
    r.uncommitted_bytes += size
    last = r.log.append(stamped)
    # The leader's own acknowledgement counts once the entries are persisted.
    r.send_to_self_after_persist(
        Message(type=MessageType.APPEND_RESP, src=r.id, dst=r.id, term=r.term, index=last)
    )
    return True


# -- replication -----------------------------------------------------------------------------


def broadcast_append(r: Raft) -> None:
    for node in r.tracker.ids():
        if node != r.id:
            send_append(r, node)


def send_append(r: Raft, to: int, *, send_if_empty: bool = True) -> bool:
    """Send ``to`` what it lacks, if its flow control allows; True if a message went out."""
    pr = r.tracker.progress[to]
    if pr.is_paused():
        return False
    prev = pr.next - 1
    try:
        prev_term = r.log.term(prev)
        entries = r.log.entries(
            pr.next, r.config.max_size_per_msg_bytes, r.config.max_entries_per_msg
        )
    except LogCompacted:
        return _send_snapshot(r, to, pr)
    if not entries and not send_if_empty:
        return False
    r.send(
        r.message(
            MessageType.APPEND,
            to,
            index=prev,
            log_term=prev_term,
            entries=tuple(entries),
            commit=r.log.committed,
        )
    )
    pr.sent_entries(entries[-1].index if entries else None)
    return True


def _send_snapshot(r: Raft, to: int, pr: Progress) -> bool:
    if not pr.recent_active:
        return False  # not heard from lately: a snapshot would likely be wasted
    snapshot = r.log.snapshot()
    invariant(snapshot.meta.index > 0, "entries are compacted but there is no snapshot")
    pr.become_snapshot(snapshot.meta.index, r.leader_ticks)
    r.send(r.message(MessageType.SNAPSHOT, to, snapshot=snapshot))
    return True


def snapshot_presumed_lost(r: Raft, pr: Progress) -> bool:
    """The follower answers heartbeats but not the snapshot, for SNAPSHOT_TIMEOUT_ELECTIONS
    election timeouts: the snapshot (or its answer) was lost, and the driver did not say so
    with ``report_snapshot``. Probing again re-sends it if it is still needed."""
    waited = r.leader_ticks - pr.snapshot_sent_tick
    return waited >= SNAPSHOT_TIMEOUT_ELECTIONS * r.config.election_ticks


def _append_rejected(r: Raft, m: Message, pr: Progress) -> None:
    hint = m.reject_hint
    if m.hint_term > 0:
        # Skip every entry of a term the follower's log cannot contain.
        hint, _ = r.log.find_conflict_by_term(m.reject_hint, m.hint_term)
    if pr.maybe_decrease_to(m.index, hint):
        if pr.state == ProgressState.REPLICATE:
            pr.become_probe()
        send_append(r, m.src)


def _append_accepted(r: Raft, m: Message, pr: Progress) -> None:
    was_paused = pr.is_paused()
    probe_match = pr.match == m.index and pr.state == ProgressState.PROBE
    if not (pr.maybe_update(m.index) or probe_match):
        return
    if pr.state == ProgressState.PROBE:
        pr.become_replicate()
    elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= r.log.first_index():
        pr.become_probe()
        pr.become_replicate()
    elif pr.state == ProgressState.REPLICATE:
        pr.inflights.free_le(m.index)
    if maybe_commit(r):
        broadcast_append(r)
    elif was_paused and m.src != r.id:
        send_append(r, m.src)
    if m.src != r.id:
        while send_append(r, m.src, send_if_empty=False):
            pass
        if m.src == r.lead_transferee and pr.match == r.log.last_index():
            _send_timeout_now(r, m.src)


def maybe_commit(r: Raft) -> bool:
    if not r.log.maybe_commit(r.tracker.committed(), r.term):
        return False
    if r.reads_before_commit and r.committed_in_current_term():
        waiting, r.reads_before_commit = r.reads_before_commit, []
        for read in waiting:
            _serve_read(r, read)
    return True


# -- heartbeats and reads --------------------------------------------------------------------


def broadcast_heartbeat(r: Raft) -> None:
    context = r.read_only.start_round(r.id, r.leader_ticks)
    for node in r.tracker.ids():
        if node == r.id:
            continue
        pr = r.tracker.progress[node]
        # Never tell a follower to commit past what it is known to hold.
        commit = min(pr.match, r.log.committed)
        r.send(r.message(MessageType.HEARTBEAT, node, commit=commit, context=context))
    _confirm_reads(r)


def _heartbeat_answered(r: Raft, m: Message, pr: Progress) -> None:
    pr.recent_active = True
    pr.probe_sent = False
    if pr.state == ProgressState.REPLICATE and pr.inflights.full():
        # An append may have been lost: let one more through so the gap shows up.
        pr.inflights.free_first_one()
    elif pr.state == ProgressState.SNAPSHOT and snapshot_presumed_lost(r, pr):
        pr.become_probe()
    if pr.match < r.log.last_index():
        send_append(r, m.src)
    round_number = decode_round(m.context)
    if round_number:
        r.read_only.ack(m.src, round_number)
        _confirm_reads(r)


def _confirm_reads(r: Raft) -> None:
    confirmed = r.tracker.quorum_index(r.read_only.acked())
    released, again = r.read_only.confirm(confirmed)
    for read in released:
        _answer_read(r, read.requester, read.index, read.context)
    if again:
        broadcast_heartbeat(r)


def _read_index(r: Raft, m: Message) -> None:
    if not r.committed_in_current_term():
        # Thesis 6.4: until an entry of its term commits, a new leader's commit index may
        # lag behind entries committed by earlier leaders.
        _check_read_capacity(r, m)
        r.reads_before_commit.append(m)
        return
    _serve_read(r, m)


def _serve_read(r: Raft, m: Message) -> None:
    alone = r.tracker.is_singleton() and r.tracker.is_voter(r.id)
    if alone or (r.config.read_only == "lease" and _lease_valid(r)):
        _answer_read(r, m.src, r.log.committed, m.context)
    else:
        _check_read_capacity(r, m)
        if r.read_only.add(r.log.committed, m.context, m.src):
            broadcast_heartbeat(r)


def _check_read_capacity(r: Raft, m: Message) -> None:
    if r.read_only.pending_count() + len(r.reads_before_commit) >= PENDING_READS_MAX:
        raise ProposalDropped(
            f"leader {r.id} holds {PENDING_READS_MAX} pending reads; dropped {m.context!r}"
        )


def _lease_valid(r: Raft) -> bool:
    """Did a quorum acknowledge a heartbeat sent recently enough that no one else can lead?"""
    if r.lease_broken:
        return False
    confirmed = r.tracker.quorum_index(r.read_only.acked())
    sent = r.read_only.sent_tick(confirmed)
    return sent is not None and r.leader_ticks - sent < lease_ticks(r)


def lease_ticks(r: Raft) -> int:
    # One tick less than the followers' vote lease, for drift between nodes' tick rates.
    return r.config.election_ticks - 1


def _answer_read(r: Raft, requester: int, index: int, context: bytes) -> None:
    if requester == r.id:
        r.read_states.append(ReadState(index=index, context=context))
    else:
        r.send(r.message(MessageType.READ_INDEX_RESP, requester, index=index, context=context))


# -- leadership transfer ---------------------------------------------------------------------


def transfer_leader(r: Raft, target: int) -> None:
    """Thesis 3.10: bring ``target`` up to date, then tell it to campaign at once."""
    pr = r.tracker.progress.get(target)
    if pr is None or pr.is_learner or target == r.id:
        return
    if r.lead_transferee != NONE:
        if r.lead_transferee == target:
            return
        abort_transfer(r)
    # The transfer must finish within an election timeout (checked by tick).
    r.election_elapsed = 0
    r.lead_transferee = target
    if pr.match == r.log.last_index():
        _send_timeout_now(r, target)
    else:
        send_append(r, target)


def abort_transfer(r: Raft) -> None:
    r.lead_transferee = NONE


def _send_timeout_now(r: Raft, to: int) -> None:
    r.lease_broken = True
    r.send(r.message(MessageType.TIMEOUT_NOW, to))


# -- membership ------------------------------------------------------------------------------


def after_conf_change(r: Raft) -> None:
    """A conf change was applied while leading."""
    pr = r.tracker.progress.get(r.id)
    if pr is None or pr.is_learner:
        # Removed (or demoted): this node must not lead a configuration it is not part of.
        r.become_follower(r.term, NONE)
        return
    if r.lead_transferee != NONE and not r.tracker.is_voter(r.lead_transferee):
        abort_transfer(r)
    if maybe_commit(r):
        broadcast_append(r)
    else:
        for node in r.tracker.ids():
            if node != r.id:
                send_append(r, node, send_if_empty=False)


def maybe_auto_leave(r: Raft) -> None:
    """Leave a joint configuration by itself once it applied (``auto_leave``)."""
    if r.role != Role.LEADER or not r.tracker.membership.auto_leave:
        return
    if r.log.applied < r.pending_conf_index:
        return
    leave = Entry(
        term=0, index=0, type=EntryType.CONF_CHANGE, data=encode_conf_change(ConfChange())
    )
    message = r.message(MessageType.PROPOSE, r.id, term=0, entries=(leave,))
    try:
        _propose(r, message)
    except ProposalDropped:
        return  # tried again after the next apply
