"""ReadIndex (thesis 6.4) and lease reads (6.4.1)."""

from __future__ import annotations

import pytest
from phalanx_tests_raft_harness import Network

from phalanx.raft.node import ProposalDropped
from phalanx.raft.types import ReadState, Role


def heartbeats(net: Network) -> int:
    return sum(1 for t in net.trace if t[0] == "HEARTBEAT")


def test_leader_read_waits_for_one_heartbeat_round() -> None:
    net = Network()
    net.elect(1)
    net.propose(1, b"x")
    net.trace.clear()
    net[1].read_index(b"r1")
    net.deliver_one()  # HEARTBEAT to 2
    net.deliver_one()  # HEARTBEAT to 3
    assert net.reads[1] == []
    net.deliver_one()  # 2 answers: with the leader itself, a quorum confirmed leadership
    assert net.reads[1] == [ReadState(index=2, context=b"r1")]
    net.settle()
    assert net.types() == ["HEARTBEAT", "HEARTBEAT", "HEARTBEAT_RESP", "HEARTBEAT_RESP"]
    assert net.reads[1] == [ReadState(index=2, context=b"r1")]


def test_reads_queued_during_a_round_share_the_next_one() -> None:
    net = Network(voters=(1, 2, 3, 4, 5))
    net.elect(1)
    net.trace.clear()
    net[1].read_index(b"a")
    net.process(1)
    net[1].read_index(b"b")  # a round is in flight: these wait for the next one
    net[1].read_index(b"c")
    net[1].read_index(b"d")
    net.settle()
    assert [r.context for r in net.reads[1]] == [b"a", b"b", b"c", b"d"]
    assert heartbeats(net) == 8  # two rounds of four heartbeats, not four rounds


def test_follower_read_is_confirmed_by_the_leader() -> None:
    net = Network()
    net.elect(1)
    net.propose(1, b"x")
    net.trace.clear()
    net[3].read_index(b"f")
    net.settle()
    assert net.trace[0] == ("READ_INDEX", 3, 1, 0)
    assert net.trace[-1] == ("READ_INDEX_RESP", 1, 3, 1)
    assert net.reads[3] == [ReadState(index=2, context=b"f")]
    assert net.reads[1] == []


def test_new_leader_serves_reads_only_after_committing_in_its_term() -> None:
    net = Network()
    raw = net[1]
    while raw.status().role != Role.LEADER:
        raw.tick()
        while raw.status().role != Role.LEADER and net.deliver_one():
            pass
    assert raw.status().commit == 0
    raw.read_index(b"early")
    assert not [t for t in net.pending() if t[0] == "HEARTBEAT"]
    net.settle()
    assert net.reads[1] == [ReadState(index=1, context=b"early")]


def test_read_without_a_leader_is_dropped() -> None:
    net = Network()
    with pytest.raises(ProposalDropped):
        net[2].read_index(b"x")


def test_single_voter_reads_at_once() -> None:
    net = Network(voters=(1,))
    net.elect(1)
    net[1].read_index(b"solo")
    net.process(1)
    assert net.reads[1] == [ReadState(index=1, context=b"solo")]


def test_lease_read_needs_no_round_while_the_lease_holds() -> None:
    net = Network(config={"read_only": "lease"})
    net.elect(1)
    net.tick_all(1)  # one heartbeat round acknowledged by a quorum
    net.trace.clear()
    net[1].read_index(b"lease")
    net.process(1)
    assert net.reads[1] == [ReadState(index=1, context=b"lease")]
    assert net.trace == []


def test_lease_expires_without_acknowledgements() -> None:
    net = Network(config={"read_only": "lease", "election_ticks": 10})
    net.elect(1)
    net.tick_all(1)
    net.isolate(1)
    for _ in range(9):
        net.tick(1)
    net.settle()
    net[1].read_index(b"late")
    net.settle()
    assert net.reads[1] == []  # waits for a round that cannot complete
    assert net.role(1) == Role.LEADER


def test_transfer_ends_the_lease() -> None:
    net = Network(config={"read_only": "lease"})
    net.elect(1)
    net.tick_all(1)
    net.cut.add((2, 1))
    net[1].transfer_leader(2)
    net.process(1)
    net[1].read_index(b"x")
    net.process(1)
    assert net.reads[1] == []
