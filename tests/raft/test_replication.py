"""Log replication (paper 5.3), the commit rule (5.4.2, Figure 8), proposal forwarding."""

from __future__ import annotations

import pytest
from phalanx_tests_raft_harness import Network, T

from phalanx.errors import InvariantViolation
from phalanx.raft.log import RaftLog
from phalanx.raft.node import ProposalDropped
from phalanx.raft.storage import MemoryStorage
from phalanx.raft.types import Entry, Message, Role


def test_proposal_commits_after_a_quorum_acknowledges() -> None:
    net = Network()
    net.elect(1)
    net.trace.clear()
    net[1].propose(b"x")
    net.process(1)
    assert net[1].status().commit == 1  # not before anyone acknowledged
    net.deliver_one()  # APPEND to 2
    net.deliver_one()  # APPEND to 3
    assert net[1].status().commit == 1
    net.deliver_one()  # 2 acknowledges: with the leader's own ack that is a quorum
    assert net[1].status().commit == 2
    net.settle()
    assert net.trace == [
        ("APPEND", 1, 2, 1, 1, 1, (2,), 1),
        ("APPEND", 1, 3, 1, 1, 1, (2,), 1),
        ("APPEND_RESP", 2, 1, 1, 2),
        ("APPEND_RESP", 3, 1, 1, 2),
        ("APPEND", 1, 2, 1, 2, 1, (), 2),  # tells the new commit index
        ("APPEND", 1, 3, 1, 2, 1, (), 2),
        ("APPEND_RESP", 2, 1, 1, 2),
        ("APPEND_RESP", 3, 1, 1, 2),
    ]
    assert [net.data(n) for n in (1, 2, 3)] == [[b"x"]] * 3


def test_entries_take_the_leaders_term() -> None:
    net = Network()
    net.elect(1)
    net.propose(1, b"x")
    assert net.log(2) == [(1, 1), (2, 1)]
    net.isolate(1)
    for node in (2, 3):
        net[node]._raft.election_elapsed = 100
    net.elect(2)
    net.propose(2, b"y")
    assert net.log(3) == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_follower_forwards_proposals_to_the_leader() -> None:
    net = Network()
    net.elect(1)
    net.trace.clear()
    net[3].propose(b"from-3")
    net.settle()
    assert net.trace[0] == ("PROPOSE", 3, 1, 0)
    assert [net.data(n) for n in (1, 2, 3)] == [[b"from-3"]] * 3


def test_proposal_without_a_leader_is_dropped() -> None:
    net = Network()
    with pytest.raises(ProposalDropped, match="no leader"):
        net[1].propose(b"x")
    assert not net[1].has_ready()


def test_leader_drops_forwarded_proposals_it_cannot_take_silently() -> None:
    net = Network(config={"max_uncommitted_entries_bytes": 10})
    net.elect(1)
    net.isolate(2)
    net.isolate(3)
    net[1].propose(b"0123456789")
    net.heal()
    net.cut.add((1, 2))
    net[2].propose(b"abc")  # forwarded; the leader is over its cap and drops it
    net.settle()
    assert net[1].status().last_index == 2


def test_fast_backtracking_skips_a_whole_term_per_round_trip() -> None:
    # Figure 7 (f) of the paper: the follower holds many entries of terms the leader lacks.
    net = Network(config={"pre_vote": False, "check_quorum": False})
    net.load(1, [1, 1, 1, 4, 4, 5, 5, 6, 6, 6], term=6)
    net.load(3, [1, 1, 1, 4, 4, 5, 5, 6, 6, 6], term=6)
    net.load(2, [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], term=3)
    net.elect(1)
    rejects = [t for t in net.trace if t[0] == "APPEND_RESP" and "reject" in t]
    # Leader probes after index 10 (term 6): 2 answers "try index 10, my term there is 3".
    # The leader jumps to its last entry of term <= 3 (index 3); entries 4.. are replaced.
    assert rejects == [("APPEND_RESP", 2, 1, 7, "reject", 10, 10, 3)]
    assert net.log(2) == net.log(1)
    assert [t for _, t in net.log(2)] == [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7]


def test_reject_hint_of_a_short_log_points_at_its_end() -> None:
    net = Network(config={"pre_vote": False, "check_quorum": False})
    net.load(1, [1, 1, 2, 2, 2], term=2)
    net.load(3, [1, 1, 2, 2, 2], term=2)
    net.load(2, [1], term=1)
    net.elect(1)
    rejects = [t for t in net.trace if t[0] == "APPEND_RESP" and "reject" in t]
    assert rejects == [("APPEND_RESP", 2, 1, 3, "reject", 5, 1, 1)]
    assert net.log(2) == net.log(1)


def test_figure_8_entries_of_earlier_terms_are_not_committed_by_counting() -> None:
    net = Network(
        voters=(1, 2, 3, 4, 5),
        config={"pre_vote": False, "check_quorum": False, "max_entries_per_msg": 1},
    )
    net.elect(1)  # term 1, entry 1 committed everywhere
    # (a) S1 replicates entry 2 (term 1) to S2 only.
    net.partition({1, 2}, {3}, {4}, {5})
    net.propose(1, b"a")
    assert net[1].status().commit == 1
    # (b) S5 wins term 2 with S3 and S4, writes entry 2 (term 2) in its own log only.
    net.partition({3, 4, 5}, {1}, {2})
    for node in (3, 4):
        net[node]._raft.election_elapsed = 100
    while net.role(5) != Role.LEADER:
        net.tick(5)
        while net.role(5) == Role.CANDIDATE and net.deliver_one():
            pass
    net.drop(lambda m: m.src != 5)
    assert net.log(5) == [(1, 1), (2, 2)]
    # (c) S1 restarts and wins term 3 with S2 and S3.
    net.restart(1)
    net.partition({1, 2, 3}, {4}, {5})
    for node in (1, 2, 3):
        net[node]._raft.election_elapsed = 100
    while net.role(1) != Role.LEADER:
        net.tick(1)
        while net.role(1) == Role.CANDIDATE and net.deliver_one():
            pass
    term = net[1].status().term
    assert net.log(1) == [(1, 1), (2, 1), (3, term)]
    # S1 re-sends entry 2 (term 1) to S3: now on a majority (S1, S2, S3) ...
    while net.log(3)[-1] != (2, 1):
        net.deliver_one()
    assert [net.log(n)[1] for n in (1, 2, 3)] == [(2, 1)] * 3
    # ... but it is not committed: it is not of the leader's term (Figure 8 (c)).
    net.process_all()
    assert net[1].status().commit == 1
    # (d) Why: if S1 crashes now, S5 can win (its last term 2 beats term 1) and replace it.
    net.queue.clear()
    net.restart(5)
    net.partition({2, 3, 4, 5}, {1})
    for node in (2, 3, 4, 5):
        net[node]._raft.election_elapsed = 100
    while net.role(5) != Role.LEADER:
        net.tick(5)
        net.settle()
    net.settle()
    assert net.log(3)[1] == (2, 2)
    assert net.data(3) == []


def test_entry_of_the_current_term_commits_the_earlier_ones() -> None:
    net = Network(config={"pre_vote": False, "check_quorum": False})
    net.load(1, [1, 1, 2], term=2)
    net.load(2, [1, 1, 2], term=2)
    net.elect(1)
    assert net[1].status().commit == 4
    assert net.log(3) == [(1, 1), (2, 1), (3, 2), (4, 3)]


def test_committed_entries_never_change() -> None:
    storage = MemoryStorage()
    storage.append([Entry(1, 1), Entry(1, 2)])
    log = RaftLog(storage)
    log.commit_to(2)
    with pytest.raises(InvariantViolation, match="committed"):
        log.maybe_append(1, 1, 2, (Entry(2, 2),))
    with pytest.raises(InvariantViolation, match="committed"):
        log.append([Entry(2, 1)])


def test_commit_never_decreases_and_never_passes_the_log() -> None:
    storage = MemoryStorage()
    storage.append([Entry(1, 1), Entry(1, 2)])
    log = RaftLog(storage)
    log.commit_to(2)
    log.commit_to(1)
    assert log.committed == 2
    with pytest.raises(InvariantViolation, match="beyond the last index"):
        log.commit_to(3)


def test_a_leader_never_takes_appends_into_its_own_log() -> None:
    net = Network()
    net.elect(1)
    message = Message(type=T.APPEND, src=2, dst=1, term=1, index=1, log_term=1)
    with pytest.raises(InvariantViolation, match="leader never takes appends"):
        net[1]._raft._handle_append(message)


def test_follower_ignores_appends_below_its_commit() -> None:
    net = Network()
    net.elect(1)
    net.propose(1, b"x")
    net.trace.clear()
    stale = Message(type=T.APPEND, src=1, dst=2, term=1, index=0, log_term=0, entries=())
    net[2].step(stale)
    net.settle()
    assert net.trace == [("APPEND_RESP", 2, 1, 1, 2)]


def test_restart_keeps_the_log_and_commit() -> None:
    net = Network()
    net.elect(1)
    net.propose(1, b"x")
    net.propose(1, b"y")
    raw = net.restart(2)
    status = raw.status()
    assert (status.term, status.commit, status.applied, status.last_index) == (1, 3, 0, 3)
    net.applied[2] = []
    net.process(2)
    assert net.data(2) == [b"x", b"y"]  # re-applied from the start (Config.applied = 0)
    raw = net.restart(2, applied=3)
    assert raw.status().applied == 3
    assert not raw.has_ready()


def test_a_batch_of_proposals_goes_out_as_one_append() -> None:
    net = Network()
    net.elect(1)
    net.trace.clear()
    net[1].propose_batch([b"a", b"b", b"c"])
    net.settle()
    assert net.trace[:2] == [
        ("APPEND", 1, 2, 1, 1, 1, (2, 3, 4), 1),
        ("APPEND", 1, 3, 1, 1, 1, (2, 3, 4), 1),
    ]
    assert [net.data(n) for n in (1, 2, 3)] == [[b"a", b"b", b"c"]] * 3
    net[1].propose_batch([])  # nothing to do
    assert net[1].status().last_index == 4


def test_a_batch_is_dropped_whole_without_a_leader() -> None:
    net = Network()
    with pytest.raises(ProposalDropped):
        net[1].propose_batch([b"a", b"b"])
    assert net[1].status().last_index == 0
