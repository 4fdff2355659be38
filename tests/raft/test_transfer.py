"""Leadership transfer (thesis 3.10)."""

from __future__ import annotations

import pytest
from phalanx_tests_raft_harness import Network

from phalanx.raft.node import ProposalDropped
from phalanx.raft.types import Role


def test_transfer_to_an_up_to_date_follower() -> None:
    net = Network()
    net.elect(1)
    net.trace.clear()
    net[1].transfer_leader(2)
    net.settle()
    # No pre-vote, and the vote request overrides the followers' lease.
    assert net.trace[:3] == [
        ("TIMEOUT_NOW", 1, 2, 1),
        ("VOTE", 2, 1, 2, 1, 1),
        ("VOTE", 2, 3, 2, 1, 1),
    ]
    assert net.role(2) == Role.LEADER
    assert net.role(1) == Role.FOLLOWER
    assert net[1].status().leader == 2


def test_transfer_first_brings_the_target_up_to_date() -> None:
    net = Network()
    net.elect(1)
    net.cut.add((1, 3))
    net.propose(1, b"x")
    net.heal()
    net.trace.clear()
    net[1].transfer_leader(3)
    assert net[1].status().transferee == 3
    with pytest.raises(ProposalDropped, match="transferring"):
        net[1].propose(b"y")
    net.settle()
    kinds = net.types()
    assert kinds.index("APPEND") < kinds.index("TIMEOUT_NOW")
    assert net.role(3) == Role.LEADER
    assert net.log(3)[:2] == [(1, 1), (2, 1)]


def test_transfer_is_aborted_after_an_election_timeout() -> None:
    net = Network(config={"election_ticks": 10})
    net.elect(1)
    net.isolate(3)
    net[1].transfer_leader(3)
    for _ in range(10):
        net.tick(1)
        net.settle()
    assert net[1].status().transferee == 0
    assert net.role(1) == Role.LEADER
    net.propose(1, b"after")
    assert net.data(2) == [b"after"]


def test_follower_asks_the_leader_to_transfer_to_it() -> None:
    net = Network()
    net.elect(1)
    net.trace.clear()
    net[3].transfer_leader(3)
    net.settle()
    assert net.trace[0] == ("TRANSFER_LEADER", 3, 1, 1)
    assert net.role(3) == Role.LEADER


def test_transfer_to_self_unknown_or_learner_is_ignored() -> None:
    net = Network(voters=(1, 2, 3), learners=(4,))
    net.elect(1)
    for target in (1, 9, 4):
        net[1].transfer_leader(target)
        assert net[1].status().transferee == 0
    net.settle()
    assert net.role(1) == Role.LEADER


def test_a_second_target_replaces_the_first() -> None:
    net = Network()
    net.elect(1)
    net.isolate(3)
    net[1].transfer_leader(3)
    net.heal()
    net.isolate(2)
    net[1].transfer_leader(2)
    assert net[1].status().transferee == 2
