"""Elections (paper 5.2, 5.4.1), pre-vote (thesis 9.6), check-quorum and the vote lease."""

from __future__ import annotations

import random

import pytest
from phalanx_tests_raft_harness import Network, T

from phalanx.errors import InvariantViolation
from phalanx.raft.config import Config
from phalanx.raft.node import RawNode
from phalanx.raft.storage import MemoryStorage
from phalanx.raft.types import ConfState, Entry, HardState, Message, Role


def test_pre_vote_then_vote_then_empty_entry() -> None:
    net = Network()
    net.elect(1)
    assert net.trace[:8] == [
        ("PRE_VOTE", 1, 2, 1, 0, 0),
        ("PRE_VOTE", 1, 3, 1, 0, 0),
        ("PRE_VOTE_RESP", 2, 1, 1, "grant"),
        ("PRE_VOTE_RESP", 3, 1, 1, "grant"),
        ("VOTE", 1, 2, 1, 0, 0),
        ("VOTE", 1, 3, 1, 0, 0),
        ("VOTE_RESP", 2, 1, 1, "grant"),
        ("VOTE_RESP", 3, 1, 1, "grant"),
    ]
    # The new leader appends an empty entry of its term, and commits it.
    assert net.trace[8:10] == [
        ("APPEND", 1, 2, 1, 0, 0, (1,), 0),
        ("APPEND", 1, 3, 1, 0, 0, (1,), 0),
    ]
    for node in (1, 2, 3):
        assert net.log(node) == [(1, 1)]
        status = net[node].status()
        assert (status.term, status.vote, status.commit, status.leader) == (1, 1, 1, 1)
        assert net.storages[node].hard_state() == HardState(term=1, vote=1, commit=1)


def test_without_pre_vote_the_term_rises_at_once() -> None:
    net = Network(config={"pre_vote": False})
    net.elect(2)
    assert net.trace[:2] == [("VOTE", 2, 1, 1, 0, 0), ("VOTE", 2, 3, 1, 0, 0)]


def test_single_node_elects_itself_after_persisting_its_vote() -> None:
    net = Network(voters=(1,))
    raw = net[1]
    for _ in range(20):
        raw.tick()
        if raw.has_ready():
            break
    # The vote for itself is counted in advance(), after the Ready that persists it.
    rd = raw.ready()
    assert rd.messages == ()
    assert raw.status().role == Role.PRE_CANDIDATE
    net.storages[1].set_hard_state(rd.hard_state or HardState())
    raw.advance(rd)
    net.process(1)
    assert raw.status().role == Role.LEADER
    assert raw.status().commit == 1


@pytest.mark.parametrize("seed", range(8))
def test_election_timeout_is_randomized_in_range(seed: int) -> None:
    net = Network(seed=seed, config={"election_ticks": 7})
    raw = net[1]
    ticks = 0
    while raw.status().role == Role.FOLLOWER:
        raw.tick()
        ticks += 1
    assert 7 <= ticks < 14


def test_timeouts_differ_between_nodes_and_repeat_per_seed() -> None:
    def timeouts(seed: int) -> list[int]:
        net = Network(voters=(1, 2, 3, 4, 5), seed=seed)
        return [net[n]._raft.randomized_election_timeout for n in net.nodes]

    assert timeouts(3) == timeouts(3)
    assert len(set(timeouts(3))) > 1


def test_vote_requires_an_up_to_date_log() -> None:
    net = Network(config={"pre_vote": False, "check_quorum": False})
    net.elect(1)
    # Entry 2 reaches node 2 only.
    net.cut.add((1, 3))
    net.propose(1, b"x")
    assert net.log(2) == [(1, 1), (2, 1)]
    assert net.log(3) == [(1, 1)]
    net.isolate(1)
    net.trace.clear()
    net.campaign(3)
    # Node 2's log is longer: it refuses; node 1 never answers. Node 3 cannot win.
    assert ("VOTE_RESP", 2, 3, 2, "reject") in net.trace
    assert net.role(3) == Role.CANDIDATE
    net.campaign(2)
    assert net.role(2) == Role.LEADER
    assert ("VOTE_RESP", 3, 2, 3, "grant") in net.trace


def test_a_node_votes_once_per_term() -> None:
    storage = MemoryStorage(conf_state=ConfState(voters=(1, 2, 3)))
    raw = RawNode(Config(id=3, pre_vote=False), storage, random.Random(1))
    raw.step(Message(type=T.VOTE, src=1, dst=3, term=5))
    rd = raw.ready()
    assert [(m.type, m.dst, m.reject) for m in rd.messages] == [(T.VOTE_RESP, 1, False)]
    assert rd.hard_state == HardState(term=5, vote=1, commit=0)
    raw.advance(rd)
    raw.step(Message(type=T.VOTE, src=2, dst=3, term=5))
    rd = raw.ready()
    assert [(m.type, m.dst, m.reject) for m in rd.messages] == [(T.VOTE_RESP, 2, True)]
    assert rd.hard_state is None
    raw.advance(rd)
    # The same candidate asking again gets the same answer (a retransmission).
    raw.step(Message(type=T.VOTE, src=1, dst=3, term=5))
    assert not raw.ready().messages[0].reject


def test_vote_is_kept_across_a_restart() -> None:
    storage = MemoryStorage(conf_state=ConfState(voters=(1, 2, 3)))
    storage.set_hard_state(HardState(term=5, vote=1, commit=0))
    raw = RawNode(Config(id=3, pre_vote=False), storage, random.Random(1))
    raw.step(Message(type=T.VOTE, src=2, dst=3, term=5))
    assert raw.ready().messages[0].reject


def test_voting_twice_is_an_invariant_violation() -> None:
    storage = MemoryStorage(conf_state=ConfState(voters=(1, 2, 3)))
    storage.set_hard_state(HardState(term=5, vote=1, commit=0))
    raw = RawNode(Config(id=3, pre_vote=False), storage, random.Random(1))
    with pytest.raises(InvariantViolation, match="voted for 1"):
        raw._raft._set_vote(2)


def test_pre_vote_keeps_a_partitioned_node_from_raising_terms() -> None:
    net = Network()
    net.elect(1)
    net.isolate(3)
    for _ in range(100):
        net.tick(3)
    net.settle()
    assert net[3].status().term == 1
    assert net.role(3) == Role.PRE_CANDIDATE
    net.heal()
    net.tick_all(3)
    # Rejoining does not disturb the leader: same leader, same term.
    assert net.role(1) == Role.LEADER
    assert [net[n].status().term for n in (1, 2, 3)] == [1, 1, 1]
    assert net.role(3) == Role.FOLLOWER
    assert net[3].status().leader == 1


def test_without_pre_vote_a_rejoining_node_disrupts_the_leader() -> None:
    net = Network(config={"pre_vote": False})
    net.elect(1)
    net.isolate(3)
    for _ in range(100):
        net.tick(3)
    net.settle()
    term = net[3].status().term
    assert term > 3
    net.heal()
    net.tick_all(3)
    assert net[1].status().term >= term  # the whole cluster moved to the partitioned node's term


def test_pre_vote_is_refused_to_a_stale_log() -> None:
    net = Network()
    net.elect(1)
    net.isolate(3)
    net.propose(1, b"x")
    net.heal()
    # Node 3 missed entry 2; followers 1 and 2 are past their lease, so only the log decides.
    net.isolate(1)
    for node in (2, 3):
        net[node]._raft.election_elapsed = 100
    net.trace.clear()
    net.campaign(3)
    assert ("PRE_VOTE_RESP", 2, 3, 1, "reject") in net.trace
    assert net[3].status().term == 1


def test_check_quorum_leader_steps_down_when_cut_off() -> None:
    net = Network(config={"election_ticks": 10})
    net.elect(1)
    net.isolate(1)
    ticks = 0
    while net.role(1) == Role.LEADER:
        net.tick(1)
        ticks += 1
    assert ticks <= 20
    assert net[1].status().term == 1
    assert net[1].status().leader == 0


def test_leader_stays_while_a_quorum_answers() -> None:
    net = Network(voters=(1, 2, 3, 4, 5))
    net.elect(1)
    net.isolate(5)
    net.isolate(4)
    net.cut -= {(1, 2), (2, 1), (1, 3), (3, 1)}
    for _ in range(50):
        net.tick(1)
        net.settle()
    assert net.role(1) == Role.LEADER


def test_followers_in_lease_ignore_vote_requests() -> None:
    net = Network(config={"pre_vote": False})
    net.elect(1)
    # Node 2 heard from the leader just now: a vote request of a higher term is ignored,
    # and its term does not move.
    net[2].step(Message(type=T.VOTE, src=3, dst=2, term=9, index=5, log_term=1))
    assert not net[2].has_ready()
    assert net[2].status().term == 1
    # Once the lease ran out (an election timeout without the leader), it votes.
    for _ in range(10):
        net[2].tick()
    net.queue.clear()
    net[2].step(Message(type=T.VOTE, src=3, dst=2, term=9, index=5, log_term=1))
    net.process(2)
    assert net[2].status().term == 9
    assert net[2].status().vote == 3


def test_leader_steps_down_on_a_higher_term() -> None:
    net = Network()
    net.elect(1)
    net[1].step(Message(type=T.APPEND_RESP, src=2, dst=1, term=4))
    status = net[1].status()
    assert (status.role, status.term, status.leader) == (Role.FOLLOWER, 4, 0)


def test_stale_leader_learns_the_new_term_from_its_followers() -> None:
    net = Network()
    net.elect(1)
    net.isolate(1)
    for node in (2, 3):
        net[node]._raft.election_elapsed = 100
    net.campaign(2)
    assert net.role(2) == Role.LEADER
    assert net.role(1) == Role.LEADER  # cut off, it does not know yet
    net.heal()
    net.trace.clear()
    net.tick(1)  # its heartbeat reaches nodes of term 2, which answer with their term
    net.settle()
    assert net.trace[2:] == [("APPEND_RESP", 2, 1, 2, 0), ("APPEND_RESP", 3, 1, 2, 0)]
    assert net.role(1) == Role.FOLLOWER
    assert net[1].status().term == 2


def test_candidate_returns_to_follower_on_an_append_of_its_term() -> None:
    storage = MemoryStorage(conf_state=ConfState(voters=(1, 2, 3)))
    raw = RawNode(Config(id=3, pre_vote=False), storage, random.Random(1))
    while raw.status().role != Role.CANDIDATE:
        raw.tick()
    term = raw.status().term
    raw.step(Message(type=T.APPEND, src=1, dst=3, term=term, entries=(Entry(term, 1),)))
    status = raw.status()
    assert (status.role, status.leader, status.term) == (Role.FOLLOWER, 1, term)


def test_candidate_that_loses_becomes_follower() -> None:
    net = Network(config={"pre_vote": False, "check_quorum": False})
    raw = net[1]
    while raw.status().role != Role.CANDIDATE:
        raw.tick()
    net.process(1)
    net.queue.clear()
    for node in (2, 3):
        raw.step(Message(type=T.VOTE_RESP, src=node, dst=1, term=1, reject=True))
    assert raw.status().role == Role.FOLLOWER
