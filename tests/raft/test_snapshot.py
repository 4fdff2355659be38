"""Snapshots and compaction (paper section 7): sending one to a laggard, installing it."""

from __future__ import annotations

import random

from phalanx_tests_raft_harness import Network, T

from phalanx.raft.config import Config
from phalanx.raft.node import RawNode
from phalanx.raft.progress import ProgressState
from phalanx.raft.storage import MemoryStorage
from phalanx.raft.types import ConfState, HardState, Message, Snapshot, SnapshotMeta


def compact_leader(net: Network, leader: int) -> int:
    storage = net.storages[leader]
    applied = net[leader].status().applied
    conf = net[leader].status().conf_state
    storage.create_snapshot(applied, conf, b"state@%d" % applied)
    storage.compact(applied)
    return applied


def lagging_cluster() -> tuple[Network, int]:
    net = Network()
    net.elect(1)
    net.isolate(3)
    for i in range(5):
        net.propose(1, b"%d" % i)
    return net, compact_leader(net, 1)


def test_leader_sends_a_snapshot_to_a_follower_needing_compacted_entries() -> None:
    net, index = lagging_cluster()
    assert index == 6
    net.heal()
    net.trace.clear()
    net.tick(1)  # heartbeat; node 3's answer shows it lags behind the compaction
    while not any(t[0] == "SNAPSHOT" for t in net.trace):
        net.deliver_one()
    assert ("SNAPSHOT", 1, 3, 1, 6) in net.trace
    progress = dict(net[1].status().progress)[3]
    assert (progress.state, progress.next) == (ProgressState.SNAPSHOT, 2)
    net.settle()
    # Node 3 installed it (its storage now starts after the snapshot) and caught up.
    assert net.storages[3].snapshot().meta.index == 6
    assert net.storages[3].snapshot().data == b"state@6"
    assert net[3].status().applied == 6
    assert net[3].status().commit == 6
    assert dict(net[1].status().progress)[3].state == ProgressState.REPLICATE
    net.propose(1, b"after")
    assert net.data(3) == [b"snap", b"after"]


def test_snapshot_state_waits_for_report_snapshot_on_failure() -> None:
    net, _ = lagging_cluster()
    net.heal()
    net.tick(1)
    lost = []
    while not lost:
        lost = net.drop(lambda m: m.type != T.SNAPSHOT)
        net.deliver_one()
    net.settle()
    assert dict(net[1].status().progress)[3].state == ProgressState.SNAPSHOT
    net.propose(1, b"more")  # nothing goes to node 3 meanwhile
    assert net.log(3)[-1][0] == 1
    net[1].report_snapshot(3, ok=False)
    progress = dict(net[1].status().progress)[3]
    assert progress.state == ProgressState.PROBE
    net.tick_all(1)  # the next heartbeat answer lets the leader try again
    net.settle()
    assert net.storages[3].snapshot().meta.index == 6
    assert net.data(3)[-1] == b"more"


def test_report_snapshot_success_resumes_with_probing() -> None:
    net, _ = lagging_cluster()
    net.heal()
    net.tick(1)
    while not net.drop(lambda m: m.type != T.SNAPSHOT):
        net.deliver_one()
    net[1].report_snapshot(3, ok=True)
    progress = dict(net[1].status().progress)[3]
    assert (progress.state, progress.next) == (ProgressState.PROBE, 7)


def test_follower_restores_from_a_snapshot_message() -> None:
    storage = MemoryStorage(conf_state=ConfState(voters=(1, 2, 3)))
    raw = RawNode(Config(id=2), storage, random.Random(1))
    snap = Snapshot(SnapshotMeta(10, 3, ConfState(voters=(1, 2, 3), learners=(4,))), b"s")
    raw.step(Message(type=T.SNAPSHOT, src=1, dst=2, term=3, snapshot=snap))
    rd = raw.ready()
    assert rd.snapshot == snap
    assert rd.hard_state == HardState(term=3, vote=0, commit=10)
    assert rd.committed_entries == ()
    assert [(m.type, m.index) for m in rd.messages] == [(T.APPEND_RESP, 10)]
    storage.apply_snapshot(snap)
    storage.set_hard_state(rd.hard_state)
    raw.advance(rd)
    status = raw.status()
    assert (status.applied, status.last_index, status.conf_state.learners) == (10, 10, (4,))
    # An older snapshot is ignored and answered with the commit index.
    old = Snapshot(SnapshotMeta(5, 2, ConfState(voters=(1, 2, 3))))
    raw.step(Message(type=T.SNAPSHOT, src=1, dst=2, term=3, snapshot=old))
    rd = raw.ready()
    assert rd.snapshot is None
    assert [(m.type, m.index) for m in rd.messages] == [(T.APPEND_RESP, 10)]


def test_node_restarts_from_its_snapshot() -> None:
    storage = MemoryStorage()
    snap = Snapshot(SnapshotMeta(10, 3, ConfState(voters=(1, 2, 3))), b"s")
    storage.apply_snapshot(snap)
    storage.set_hard_state(HardState(term=3, vote=1, commit=10))
    raw = RawNode(Config(id=2), storage, random.Random(1))
    status = raw.status()
    assert (status.term, status.commit, status.applied, status.last_index) == (3, 10, 10, 10)
    assert status.conf_state.voters == (1, 2, 3)
    assert not raw.has_ready()
