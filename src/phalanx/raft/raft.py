"""The Raft state machine: terms, roles, elections, and the follower's side of replication.

The leader's side (replication, reads, transfers) is in :mod:`phalanx.raft.leader`;
:class:`~phalanx.raft.node.RawNode` wraps this in the ``Ready``/``advance`` interface.

Messages a node would send to itself (its own vote, its own append acknowledgement) are never
emitted: they wait in ``msgs_after_append`` and are stepped when the driver acknowledges the
Ready that persisted what they vouch for.
"""

from __future__ import annotations

import random
from typing import Any, Final

import msgspec

from phalanx.errors import InvariantViolation, invariant
from phalanx.raft import leader
from phalanx.raft.confchange import (
    ConfChangeError,
    apply_change,
    membership_of,
    progress_for,
)
from phalanx.raft.config import Config
from phalanx.raft.errors import ProposalDropped
from phalanx.raft.log import RaftLog, payload_bytes
from phalanx.raft.progress import Progress
from phalanx.raft.quorum import VoteResult
from phalanx.raft.read_only import ReadOnly
from phalanx.raft.storage import LogCompacted, Storage
from phalanx.raft.tracker import Tracker
from phalanx.raft.types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    decode_conf_change,
)

__all__ = ["CAMPAIGN_TRANSFER", "Raft"]

#: The context of vote requests of a leadership transfer: they override the leader lease.
CAMPAIGN_TRANSFER: Final = b"transfer"

_VOTE_RESPONSE = {
    MessageType.VOTE: MessageType.VOTE_RESP,
    MessageType.PRE_VOTE: MessageType.PRE_VOTE_RESP,
}


class Raft:
    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        self.id = config.id
        self.config = config
        self.rng = rng
        self.log = RaftLog(storage)
        hard_state, conf_state = storage.initial_state()
        membership = membership_of(conf_state)
        self.tracker = Tracker(
            membership,
            progress_for(membership, self.log.last_index() + 1, config.max_inflight_msgs),
        )
        self.term = NONE
        self.vote = NONE
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.msgs: list[Message] = []
        self.msgs_after_append: list[Message] = []
        self.read_states: list[ReadState] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_ticks
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self.read_only = ReadOnly()
        #: Reads that arrived before this leader committed an entry of its term.
        self.reads_before_commit: list[Message] = []
        self.leader_ticks = 0
        #: A TIMEOUT_NOW went out this term: another node may win an election at any time.
        self.lease_broken = False
        if hard_state != HardState():
            self._load(hard_state)
        if config.applied > 0:
            invariant(
                config.applied <= self.log.committed,
                f"Config.applied {config.applied} is beyond the commit index {self.log.committed}",
            )
            self._replay_conf_changes(config.applied)
            self.log.applied_to(config.applied)
        self.become_follower(self.term, NONE)

    def _replay_conf_changes(self, applied: int) -> None:
        """Bring the membership from the snapshot's up to ``applied``.

        ``initial_state()`` gives the membership as of the snapshot; the driver applied the
        entries up to ``applied`` before the restart and will not be handed them again, so the
        membership changes among them (all still in the log: it starts after the snapshot) are
        applied here, in order, exactly as the driver once applied them.
        """
        lo = self.log.first_index()
        if applied < lo:
            return
        for entry in self.log.slice(lo, applied + 1, 1 << 62):
            if entry.type == EntryType.CONF_CHANGE:
                self._change_membership(decode_conf_change(entry.data))

    def _load(self, hard_state: HardState) -> None:
        invariant(
            self.log.committed <= hard_state.commit <= self.log.last_index(),
            f"stored commit {hard_state.commit} is outside [{self.log.committed}, "
            f"{self.log.last_index()}]",
        )
        self.log.committed = hard_state.commit
        self.term = hard_state.term
        self.vote = hard_state.vote

    # -- small helpers ------------------------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def conf_state(self) -> ConfState:
        return self.tracker.membership.to_conf_state()

    def status_role(self) -> Role:
        if self.role == Role.FOLLOWER and self.id in self.tracker.membership.learners:
            return Role.LEARNER
        return self.role

    def message(self, kind: MessageType, to: int, **fields: Any) -> Message:
        fields.setdefault("term", self.term)
        return Message(type=kind, src=self.id, dst=to, **fields)

    def send(self, message: Message) -> None:
        invariant(message.dst != self.id, f"{self.id} must not send {message.type.name} to itself")
        self.msgs.append(message)

    def send_to_self_after_persist(self, message: Message) -> None:
        self.msgs_after_append.append(message)

    def _set_vote(self, node: int) -> None:
        invariant(
            self.vote in (NONE, node),
            f"{self.id} voted for {self.vote} in term {self.term}, now for {node}",
        )
        self.vote = node

    def promotable(self) -> bool:
        return self.tracker.is_voter(self.id) and not self.log.has_pending_snapshot()

    def committed_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    # -- role transitions ---------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            invariant(term > self.term, f"term would go back from {self.term} to {term}")
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        ticks = self.config.election_ticks
        self.randomized_election_timeout = self.rng.randrange(ticks, 2 * ticks)
        self.lead_transferee = NONE
        self.tracker.reset_votes()
        last = self.log.last_index()
        fresh: dict[int, Progress] = {}
        for node, old in self.tracker.progress.items():
            pr = Progress(last + 1, self.config.max_inflight_msgs, is_learner=old.is_learner)
            if node == self.id:
                pr.match = last
            fresh[node] = pr
        self.tracker.progress = fresh
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self.read_only = ReadOnly()
        self.reads_before_commit = []
        self.leader_ticks = 0
        self.lease_broken = False

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def become_pre_candidate(self) -> None:
        invariant(self.role != Role.LEADER, "a leader cannot become a pre-candidate")
        # Neither the term nor the vote change: a pre-vote is harmless if it fails.
        self.tracker.reset_votes()
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE

    def become_candidate(self) -> None:
        invariant(self.role != Role.LEADER, "a leader cannot become a candidate")
        self._reset(self.term + 1)
        self._set_vote(self.id)
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        invariant(self.role == Role.CANDIDATE, f"{self.role.name} cannot become leader")
        invariant(
            self.tracker.is_voter(self.id),
            f"{self.id} is not a voter of {self.conf_state()} and cannot become leader",
        )
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self.tracker.progress[self.id].become_replicate()
        # Conservative: any conf change in the log may still be uncommitted.
        self.pending_conf_index = self.log.last_index()
        accepted = leader.append_entries(self, [Entry(term=self.term, index=0)])
        invariant(accepted, "a new leader's empty entry must be accepted")

    # -- elections ------------------------------------------------------------------------

    def hup(self, *, transfer: bool) -> None:
        if self.role == Role.LEADER or not self._may_lead():
            return
        if self.config.pre_vote and not transfer:
            self.campaign(pre_vote=True, transfer=False)
        else:
            self.campaign(pre_vote=False, transfer=transfer)

    def _may_lead(self) -> bool:
        """May this node campaign, or take the leadership it won, right now?"""
        return self.promotable() and not self._conf_change_unapplied()

    def _conf_change_unapplied(self) -> bool:
        """A committed conf change not yet applied may change who may campaign."""
        lo = self.log.applied + 1
        hi = self.log.committed + 1
        try:
            pending = self.log.slice(lo, hi, 1 << 62) if lo < hi else []
        except LogCompacted:
            return False
        return any(e.type == EntryType.CONF_CHANGE for e in pending)

    def campaign(self, *, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self.become_pre_candidate()
            kind, term = MessageType.PRE_VOTE, self.term + 1
        else:
            self.become_candidate()
            kind, term = MessageType.VOTE, self.term
        self.send_to_self_after_persist(
            Message(type=_VOTE_RESPONSE[kind], src=self.id, dst=self.id, term=term)
        )
        context = CAMPAIGN_TRANSFER if transfer else b""
        for node in self.tracker.voter_ids():
            if node == self.id:
                continue
            self.send(
                self.message(
                    kind,
                    node,
                    term=term,
                    index=self.log.last_index(),
                    log_term=self.log.last_term(),
                    context=context,
                )
            )

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type == MessageType.PRE_VOTE
        can_vote = (
            self.vote == m.src
            or (self.vote == NONE and self.lead == NONE)
            or (pre and m.term > self.term)
        )
        response = _VOTE_RESPONSE[m.type]
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self.send(self.message(response, m.src, term=m.term))
            if not pre:
                self.election_elapsed = 0
                self._set_vote(m.src)
        else:
            # The refusal carries our commit index and its term: see _learn_commit.
            committed = self.log.committed
            commit_term = self.log.term_or_zero(committed)
            self.send(
                self.message(response, m.src, reject=True, commit=committed, hint_term=commit_term)
            )

    # -- inputs ---------------------------------------------------------------------------

    def tick(self) -> None:
        if self.role == Role.LEADER:
            leader.tick(self)
            return
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.hup(transfer=False)

    def step(self, m: Message) -> None:
        if m.type in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP) and m.reject:
            self._learn_commit(m)
        if m.term > self.term:
            if not self._accept_higher_term(m):
                return
        elif 0 < m.term < self.term:
            self._answer_stale(m)
            return
        if m.type in _VOTE_RESPONSE:
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            leader.step(self, m)
        elif self.role in (Role.PRE_CANDIDATE, Role.CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _learn_commit(self, m: Message) -> None:
        """Commit up to a voter's commit index when our log holds that very entry.

        Committed is a fact about the cluster, and equal (index, term) means equal prefixes
        (Log Matching), so this is safe from any node. It matters after a membership change:
        a candidate still applying an older configuration may need the vote of a node that
        already left (and so never campaigns) while that node refuses because its log is
        longer; learning that the change committed lets the candidate apply it and move on.
        """
        if m.commit > self.log.committed and self.log.match_term(m.commit, m.hint_term):
            self.log.commit_to(m.commit)

    def _accept_higher_term(self, m: Message) -> bool:
        """Handle a message from a later term; False if it must be ignored."""
        if m.type in _VOTE_RESPONSE:
            forced = m.context == CAMPAIGN_TRANSFER
            in_lease = (
                self.config.check_quorum
                and self.lead != NONE
                and self.election_elapsed < self.config.election_ticks
            )
            if in_lease and not forced:
                # Leader lease for votes (thesis 4.2.3): a live leader is not disrupted.
                return False
        if m.type == MessageType.PRE_VOTE:
            return True  # a pre-vote never changes our term
        if m.type == MessageType.PRE_VOTE_RESP and not m.reject:
            return True  # the term is raised once a quorum grants the pre-vote
        leader_msg = m.type in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)
        self.become_follower(m.term, m.src if leader_msg else NONE)
        return True

    def _answer_stale(self, m: Message) -> None:
        if (self.config.check_quorum or self.config.pre_vote) and m.type in (
            MessageType.APPEND,
            MessageType.HEARTBEAT,
        ):
            # A deposed leader learns our term from this and steps down.
            self.send(self.message(MessageType.APPEND_RESP, m.src))
        elif m.type == MessageType.PRE_VOTE:
            self.send(self.message(MessageType.PRE_VOTE_RESP, m.src, reject=True))

    def _step_candidate(self, m: Message) -> None:
        kind = m.type
        if kind == MessageType.PROPOSE:
            raise ProposalDropped(f"node {self.id} is campaigning: no leader to take proposals")
        if kind == MessageType.READ_INDEX:
            raise ProposalDropped(f"node {self.id} is campaigning: no leader to serve reads")
        if kind in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT):
            self.become_follower(m.term, m.src)
            self._step_follower(m)
            return
        expected = (
            MessageType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MessageType.VOTE_RESP
        )
        if kind != expected:
            return
        self.tracker.record_vote(m.src, not m.reject)
        _, _, result = self.tracker.tally()
        if result == VoteResult.WON:
            if not self._may_lead():
                # A refusal taught this node a commit index covering a membership change it has
                # not applied yet (see _learn_commit): the votes were counted under a membership
                # that may no longer hold. Give up; hup campaigns again once it is applied.
                self.become_follower(self.term, NONE)
            elif self.role == Role.PRE_CANDIDATE:
                self.campaign(pre_vote=False, transfer=False)
            else:
                self.become_leader()
                leader.broadcast_append(self)
        elif result == VoteResult.LOST:
            self.become_follower(self.term, NONE)

    def _step_follower(self, m: Message) -> None:
        kind = m.type
        if kind == MessageType.PROPOSE:
            if self.lead == NONE:
                raise ProposalDropped(f"node {self.id} knows no leader in term {self.term}")
            self.send(msgspec.structs.replace(m, dst=self.lead))
        elif kind == MessageType.APPEND:
            self.election_elapsed = 0
            self.lead = m.src
            self._handle_append(m)
        elif kind == MessageType.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.src
            self.log.commit_to(m.commit)
            self.send(self.message(MessageType.HEARTBEAT_RESP, m.src, context=m.context))
        elif kind == MessageType.SNAPSHOT:
            self.election_elapsed = 0
            self.lead = m.src
            self._handle_snapshot(m)
        elif kind == MessageType.TRANSFER_LEADER:
            if self.lead != NONE:
                self.send(msgspec.structs.replace(m, dst=self.lead, term=self.term))
        elif kind == MessageType.TIMEOUT_NOW:
            # Leadership transfer (thesis 3.10): campaign now, skipping the pre-vote.
            self.hup(transfer=True)
        elif kind == MessageType.READ_INDEX:
            if self.lead == NONE:
                raise ProposalDropped(f"node {self.id} knows no leader to confirm a read")
            self.send(msgspec.structs.replace(m, dst=self.lead))
        elif kind == MessageType.READ_INDEX_RESP:
            self.read_states.append(ReadState(index=m.index, context=m.context))

    def _handle_append(self, m: Message) -> None:
        invariant(self.role != Role.LEADER, "a leader never takes appends into its own log")
        if m.index < self.log.committed:
            self.send(self.message(MessageType.APPEND_RESP, m.src, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self.send(self.message(MessageType.APPEND_RESP, m.src, index=last_new))
            return
        hint = min(m.index, self.log.last_index())
        hint, hint_term = self.log.find_conflict_by_term(hint, m.log_term)
        self.send(
            self.message(
                MessageType.APPEND_RESP,
                m.src,
                index=m.index,
                reject=True,
                reject_hint=hint,
                hint_term=hint_term,
            )
        )

    def _handle_snapshot(self, m: Message) -> None:
        invariant(m.snapshot is not None, "a SNAPSHOT message without a snapshot")
        if m.snapshot is not None and self.restore(m.snapshot):
            index = self.log.last_index()
        else:
            index = self.log.committed
        self.send(self.message(MessageType.APPEND_RESP, m.src, index=index))

    def restore(self, snapshot: Snapshot) -> bool:
        """Install a leader's snapshot (paper 7); False if it brings nothing new."""
        meta = snapshot.meta
        if meta.index <= self.log.committed:
            return False
        # The snapshot may predate this node's joining: the entries after it add the node.
        membership = membership_of(meta.conf_state)
        if self.log.match_term(meta.index, meta.term):
            # We hold the snapshot's last entry already: just commit up to it.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snapshot)
        self.tracker = Tracker(
            membership,
            progress_for(membership, self.log.last_index() + 1, self.config.max_inflight_msgs),
        )
        return True

    # -- membership ----------------------------------------------------------------------------

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        self._change_membership(change)
        if self.role == Role.LEADER:
            leader.after_conf_change(self)
        elif self.role in (Role.PRE_CANDIDATE, Role.CANDIDATE):
            # The campaign's votes were asked, and are counted, under the old membership, in
            # which this node may no longer be a voter: give it up (same term, no leader). It
            # campaigns again, under the new membership, when its election timeout runs out.
            self.become_follower(self.term, NONE)
        return self.tracker.membership.to_conf_state()

    def _change_membership(self, change: ConfChange) -> None:
        try:
            membership, progress = apply_change(
                self.tracker.membership,
                self.tracker.progress,
                change,
                next_index=self.log.last_index() + 1,
                max_inflight=self.config.max_inflight_msgs,
            )
        except ConfChangeError as error:
            # The leader validates every change before proposing it, so a committed change
            # always applies; one that does not means the log or the driver is broken.
            raise InvariantViolation(f"committed conf change does not apply: {error}") from error
        self.tracker.membership = membership
        self.tracker.progress = progress

    def after_apply(self, entries: tuple[Entry, ...]) -> None:
        """The driver applied ``entries``: release their bytes from the uncommitted cap."""
        if self.role == Role.LEADER:
            self.uncommitted_bytes = max(0, self.uncommitted_bytes - payload_bytes(entries))
            leader.maybe_auto_leave(self)
