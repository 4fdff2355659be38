"""Seeded random runs of the hand-driven network, checking Raft's safety properties.

Messages are delivered out of order, lost and duplicated; nodes restart, get partitioned,
compact their logs, transfer leadership and read. After every step: at most one leader per
term, no two nodes apply different entries at one index, commit indexes never go back.
At the end, with the network healed, the cluster agrees and makes progress.
"""

from __future__ import annotations

import random

import pytest
from phalanx_tests_raft_harness import Network

from phalanx.raft.node import ProposalDropped
from phalanx.raft.types import ConfChange, ConfChangeType, EntryType, Role


class Checker:
    def __init__(self, net: Network) -> None:
        self.net = net
        self.leaders: dict[int, int] = {}
        self.applied: dict[int, tuple[int, bytes]] = {}
        self.commit: dict[int, int] = {}

    def check(self) -> None:
        for node, raw in self.net.nodes.items():
            status = raw.status()
            if status.role == Role.LEADER:
                other = self.leaders.setdefault(status.term, node)
                assert other == node, f"two leaders in term {status.term}: {other}, {node}"
            assert status.commit >= self.commit.get(node, 0), f"commit of {node} went back"
            self.commit[node] = status.commit
            for entry in self.net.applied[node]:
                if entry.data == b"snap" and entry.term == 0:
                    continue
                seen = self.applied.setdefault(entry.index, (entry.term, entry.data))
                assert seen == (entry.term, entry.data), f"index {entry.index} differs on {node}"


def run(seed: int, steps: int, voters: tuple[int, ...], **config: object) -> Network:
    rng = random.Random(seed)
    net = Network(voters=voters, seed=seed, config=dict(config), extra=(9,))
    checker = Checker(net)
    nodes = sorted(net.nodes)
    proposed = 0
    for _ in range(steps):
        action = rng.random()
        if action < 0.30:
            net.tick(rng.choice(nodes))
        elif action < 0.75 and net.queue:
            message = net.queue.pop(rng.randrange(len(net.queue)))
            roll = rng.random()
            if roll < 0.05:
                pass  # lost
            else:
                if roll < 0.10:
                    net.queue.append(message)  # duplicated
                if (message.src, message.dst) not in net.cut:
                    net.nodes[message.dst].step(message)
                    net.process(message.dst)
        elif action < 0.85:
            node = rng.choice(nodes)
            proposed += 1
            try:
                net[node].propose(b"v%d" % proposed)
            except ProposalDropped:
                pass
            net.process(node)
        elif action < 0.87:
            node = rng.choice(nodes)
            net.restart(node)
            net.applied[node] = []
        elif action < 0.89:
            net.heal()
            net.isolate(rng.choice(nodes))
        elif action < 0.91:
            net.heal()
        elif action < 0.93:
            node = rng.choice(nodes)
            storage = net.storages[node]
            applied = net[node].status().applied
            if applied > storage.snapshot().meta.index:
                storage.create_snapshot(applied, net.conf.get(node, net[node].status().conf_state), b"")
                storage.compact(applied)
        elif action < 0.95:
            leader = [n for n in nodes if net.role(n) == Role.LEADER]
            if leader:
                kind = rng.choice([ConfChangeType.ADD_LEARNER, ConfChangeType.ADD_VOTER])
                target = rng.choice([9, *voters])
                change = ConfChange(changes=((kind, target),), joint=rng.random() < 0.5)
                try:
                    net[leader[0]].propose_conf_change(change)
                except ProposalDropped:
                    pass
        elif action < 0.97:
            node = rng.choice(nodes)
            try:
                net[node].read_index(b"r")
            except ProposalDropped:
                pass
        else:
            leader = [n for n in nodes if net.role(n) == Role.LEADER]
            if leader:
                net[leader[0]].transfer_leader(rng.choice(nodes))
        net.process_all()
        checker.check()
    # Heal and let it settle: one leader, everyone converges, a new proposal commits.
    net.heal()
    for _ in range(200):
        net.tick_all(1)
        checker.check()
        leaders = [n for n in nodes if net.role(n) == Role.LEADER]
        if leaders:
            try:
                net[leaders[0]].propose(b"final")
            except ProposalDropped:
                continue
            net.settle()
            net.tick_all(2)
            checker.check()
            break
    leaders = [n for n in nodes if net.role(n) == Role.LEADER]
    assert len(leaders) == 1, f"no single leader after healing: {leaders}"
    leader = leaders[0]
    conf = net[leader].status().conf_state
    members = [n for n in nodes if n in conf.voters or n in conf.learners]
    for _ in range(100):  # laggards may need a snapshot, or a presumed-lost one again
        last = net[leader].status().commit
        if all(net[n].status().commit == last for n in members):
            break
        net.tick_all(1)
        checker.check()
    last = net[leader].status().commit
    for node in members:
        assert net[node].status().commit == last, f"{node} did not catch up"
    return net


@pytest.mark.parametrize("seed", range(40))
def test_random_three_nodes(seed: int) -> None:
    run(seed, 400, (1, 2, 3), election_ticks=5)


@pytest.mark.parametrize("seed", range(20))
def test_random_five_nodes_small_limits(seed: int) -> None:
    run(
        seed,
        600,
        (1, 2, 3, 4, 5),
        election_ticks=6,
        max_inflight_msgs=2,
        max_entries_per_msg=2,
        pre_vote=seed % 2 == 0,
        read_only="lease" if seed % 3 == 0 else "safe",
    )


def test_applied_conf_changes_keep_entries_in_order() -> None:
    net = run(7, 300, (1, 2, 3), election_ticks=5)
    for node, entries in net.applied.items():
        indexes = [e.index for e in entries if not (e.term == 0 and e.data == b"snap")]
        assert indexes == sorted(indexes), node
        assert all(e.type in (EntryType.NORMAL, EntryType.CONF_CHANGE) for e in entries)
