"""Flow control: progress states, the in-flight window, bytes per append, uncommitted cap."""

from __future__ import annotations

import pytest
from phalanx_tests_raft_harness import Network

from phalanx.raft.node import ProposalDropped
from phalanx.raft.progress import ProgressState


def peer(net: Network, leader: int, node: int) -> object:
    return dict(net[leader].status().progress)[node]


def appends_to(net: Network, node: int) -> list[tuple[object, ...]]:
    return [t for t in net.pending() if t[0] == "APPEND" and t[2] == node]


def test_replicate_state_streams_up_to_the_inflight_window() -> None:
    net = Network(config={"max_inflight_msgs": 3, "max_entries_per_msg": 1})
    net.elect(1)
    assert peer(net, 1, 2).state == ProgressState.REPLICATE  # type: ignore[attr-defined]
    net.cut.add((2, 1))  # node 2's acknowledgements are lost
    for i in range(6):
        net[1].propose(b"x%d" % i)
    sent = appends_to(net, 2)
    assert [t[6] for t in sent] == [(2,), (3,), (4,)]  # three in flight, then paused
    net.settle()
    assert peer(net, 1, 2).next == 5  # type: ignore[attr-defined]
    # Node 3 keeps the quorum: everything commits without node 2.
    assert net[1].status().commit == 7


def test_heartbeat_answer_lets_one_more_append_through_a_full_window() -> None:
    net = Network(config={"max_inflight_msgs": 2, "max_entries_per_msg": 1})
    net.elect(1)
    net.cut.add((1, 2))
    for i in range(4):
        net[1].propose(b"x%d" % i)
    net.settle()
    net.heal()
    net.tick(1)  # heartbeat; node 2's answer shows it lags
    net.settle()
    assert net.log(2) == net.log(1)


def test_probe_state_sends_one_append_per_answer() -> None:
    net = Network(config={"max_entries_per_msg": 1})
    net.elect(1)
    net.cut.add((1, 2))
    net.propose(1, b"a")
    net.heal()
    net[1].report_unreachable(2)
    assert peer(net, 1, 2).state == ProgressState.PROBE  # type: ignore[attr-defined]
    net[1].propose(b"b")
    net[1].propose(b"c")
    assert len(appends_to(net, 2)) == 1  # waits for the answer to the probe
    net.settle()
    assert net.log(2) == net.log(1)
    assert peer(net, 1, 2).state == ProgressState.REPLICATE  # type: ignore[attr-defined]


def test_report_unreachable_moves_a_replicating_peer_to_probe() -> None:
    net = Network()
    net.elect(1)
    net[1].report_unreachable(2)
    assert peer(net, 1, 2).state == ProgressState.PROBE  # type: ignore[attr-defined]
    net[1].report_unreachable(9)  # unknown peers are ignored
    net[2].report_unreachable(1)  # followers ignore it


def test_append_carries_at_most_max_size_per_msg_bytes() -> None:
    # Each entry counts its data plus 16 bytes: 26 here; 40 bytes fit one entry only.
    net = Network(config={"max_size_per_msg_bytes": 40})
    net.elect(1)
    net.cut.add((1, 2))
    for data in (b"0123456789", b"abcdefghij", b"ABCDEFGHIJ"):
        net.propose(1, data)
    net.heal()
    net.trace.clear()
    net.tick_all(1)
    appends = [t for t in net.trace if t[0] == "APPEND" and t[2] == 2 and t[6]]
    assert appends
    assert all(len(t[6]) == 1 for t in appends)  # type: ignore[arg-type]
    assert net.log(2) == net.log(1)


def test_one_entry_always_goes_even_if_larger_than_the_limit() -> None:
    net = Network(config={"max_size_per_msg_bytes": 1})
    net.elect(1)
    net.propose(1, b"far larger than one byte")
    assert net.data(2) == [b"far larger than one byte"]


def test_append_carries_at_most_max_entries_per_msg() -> None:
    net = Network(config={"max_entries_per_msg": 2})
    net.elect(1)
    net.cut.add((1, 2))
    for i in range(5):
        net.propose(1, b"%d" % i)
    net.heal()
    net.trace.clear()
    net.tick_all(1)
    sizes = [len(t[6]) for t in net.trace if t[0] == "APPEND" and t[2] == 2 and t[6]]  # type: ignore[arg-type]
    assert max(sizes) == 2
    assert net.log(2) == net.log(1)


def test_uncommitted_bytes_cap_drops_proposals_until_commit() -> None:
    net = Network(config={"max_uncommitted_entries_bytes": 25})
    net.elect(1)
    net.isolate(1)
    net[1].propose(b"0123456789")
    net[1].propose(b"0123456789")
    with pytest.raises(ProposalDropped, match="uncommitted"):
        net[1].propose(b"0123456789")
    net[1].propose(b"")  # empty entries cost nothing
    net.heal()
    net.settle()
    assert net.data(2) == [b"0123456789", b"0123456789"]
    net[1].propose(b"0123456789")  # committed and applied: room again
    net.settle()


def test_an_entry_larger_than_the_cap_is_accepted_when_nothing_is_pending() -> None:
    net = Network(config={"max_uncommitted_entries_bytes": 5})
    net.elect(1)
    net.isolate(1)
    net[1].propose(b"0123456789")
    with pytest.raises(ProposalDropped):
        net[1].propose(b"x")
