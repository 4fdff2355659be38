"""Targeted faults: short scripts that steer a cluster into one known dangerous situation.

Random faults rarely land in the narrow windows some Raft bugs hide behind. A nemesis here
watches what the nodes do (through three hooks the cluster calls) and reacts at the exact
moment that matters, using only faults a real system can suffer: a process crash after its
writes reached the disk but before its messages left, a crash before an fsync completed,
messages lost on the network, a partition. A correct core therefore survives every one of
them; they can only expose a bug, never create one.

The hooks, each cheap and called only while a nemesis is active:

- :meth:`Nemesis.after_write`: a node wrote a Ready (not yet fsynced);
- :meth:`Nemesis.before_send`: a node's Ready is durable and its messages are about to go;
- :meth:`Nemesis.filter`: the messages about to go, which the nemesis may thin out.

``after_write`` and ``before_send`` return True when they crashed the node, which ends its
Ready there. Every nemesis ends (its links unblocked, the nodes it crashed restarted) when
its fault ends, at the latest at ``heal-all``.

``figure8`` (the paper's Figure 8, 5.4.2)
    1. the next leader A to write entries of its own term crashes once they are durable,
       before sending them: A alone holds them (index i, term tA);
    2. the next leader R (elected without A) does the same with its first entries: R alone
       holds an entry of a later term tR at an index <= i;
    3. A restarts, R stays down, and a star partition centred on A (every other pair of
       nodes cut) makes A the only possible leader. A replicates its log, its old entries
       reach followers before its own new entry (one entry per append helps), and A crashes
       the moment it first advances its commit index, before telling anyone;
    4. R restarts in a star centred on R, A stays down.
    A correct A first commits an entry of its own term, which a majority then holds, so R
    cannot win. An A that commits entry i (term tA) by counting replicas leaves it on a
    majority that still votes for R, and R's election overwrites a committed entry.

``unsynced-vote``
    1. the next candidate V's vote requests reach only a bare quorum less one (others lose
       them and stay a term behind);
    2. the first voter N to write its grant crashes before the fsync completes (the grant
       and the term are lost) and restarts 1 to 50 ms later;
    3. if V wins the term anyway, it crashes before its first messages as leader leave.
    A node left a term behind, or N itself, then campaigns in V's term and asks N, which
    has forgotten its vote. Only a driver that sent N's grant before it was durable lets V
    win, and then two leaders share a term (N voted twice).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from phalanx.raft.types import Message, MessageType, Ready, Role
from phalanx.sim.faults import Fault, FaultKind

if TYPE_CHECKING:
    from phalanx.sim.cluster import Cluster
    from phalanx.sim.node import SimNode

__all__ = ["Figure8", "Nemesis", "UnsyncedVote", "build"]


class Nemesis:
    """A script reacting to what nodes do; the base class does nothing."""

    name = "nemesis"

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.step = "armed"
        self._links: set[tuple[int, int]] = set()

    def after_write(self, node: SimNode, ready: Ready) -> bool:  # noqa: ARG002
        return False

    def before_send(self, node: SimNode, ready: Ready) -> bool:  # noqa: ARG002
        return False

    def filter(self, node: SimNode, messages: tuple[Message, ...]) -> tuple[Message, ...]:
        del node
        return messages

    # -- helpers -----------------------------------------------------------------------------

    def _advance(self, step: str, text: str) -> None:
        self.step = step
        self.cluster.note(f"{self.name}: {text}")

    def _crash(self, node: SimNode, *, torn: bool = True) -> None:
        self.cluster.crash_node(node, torn=torn)

    def _restart_soon(self, node_id: int, delay_us: int = 1) -> None:
        cluster = self.cluster
        at = cluster.queue.now_us + delay_us
        cluster.schedule_fault(Fault(at, FaultKind.RESTART, (node_id,)))

    def _star(self, centre: int) -> None:
        """Cut every link that does not touch ``centre``."""
        self._unblock()
        ids = [n for n in self.cluster.client_nodes() if n != centre]
        network = self.cluster.network
        for a in ids:
            for b in ids:
                if a != b and network.connected(a, b):
                    network.block(a, b)
                    self._links.add((a, b))

    def _unblock(self) -> None:
        network = self.cluster.network
        for a, b in sorted(self._links):
            network.unblock(a, b)
        self._links.clear()

    def stop(self) -> None:
        """The fault ends: undo the partitions this nemesis made."""
        self._unblock()
        if self.step != "done":
            self._advance("done", f"ends at step {self.step}")


def _own_entries(node: SimNode, ready: Ready) -> int:
    """The index of the first entry of the leader's own term in ``ready`` (0: none)."""
    if node.role != Role.LEADER or not ready.entries:
        return 0
    term = node.storage.hard_state().term
    for entry in ready.entries:
        if entry.term == term:
            return entry.index
    return 0


class Figure8(Nemesis):
    name = "figure8"

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        super().__init__(cluster, rng)
        self.a = 0
        self.a_term = 0
        self.a_commit = 0
        self.r = 0
        self.r_term = 0

    def before_send(self, node: SimNode, ready: Ready) -> bool:
        step = self.step
        if step == "armed":
            return self._strand(node, ready)
        if step == "rival":
            return self._rival(node, ready)
        if step == "old-leader" and node.id == self.a:
            return self._old_leader(node, ready)
        if step == "rival-again" and node.id == self.r and node.role == Role.LEADER:
            self._unblock()
            self._advance("done", f"node {node.id} leads again")
        return False

    def _strand(self, node: SimNode, ready: Ready) -> bool:
        index = _own_entries(node, ready)
        if not index:
            return False
        self.a = node.id
        self.a_term = node.storage.hard_state().term
        self._advance(
            "rival", f"node {node.id} crashes holding entries {index}.. of term {self.a_term}"
        )
        self._crash(node)
        return True

    def _rival(self, node: SimNode, ready: Ready) -> bool:
        index = _own_entries(node, ready)
        if not index or node.id == self.a:
            return False
        self.r = node.id
        self.r_term = node.storage.hard_state().term
        self._advance(
            "old-leader",
            f"node {node.id} crashes holding entries {index}.. of term {self.r_term}; "
            f"node {self.a} restarts, the only one others can reach",
        )
        self._crash(node)
        self._star(self.a)
        self.a_commit = self.cluster.nodes[self.a].disk.durable.hard_state.commit
        self._restart_soon(self.a)
        return True

    def _old_leader(self, node: SimNode, ready: Ready) -> bool:
        hs = ready.hard_state
        if hs is None:
            return False
        if node.role != Role.LEADER or hs.term <= self.r_term or hs.commit <= self.a_commit:
            self.a_commit = max(self.a_commit, hs.commit)
            return False
        self._advance(
            "rival-again",
            f"node {node.id} leads term {hs.term} and crashes as it first commits "
            f"(up to {hs.commit}); node {self.r} restarts, the only one others can reach",
        )
        self._crash(node)
        self._star(self.r)
        self._restart_soon(self.r)
        return True


class UnsyncedVote(Nemesis):
    name = "unsynced-vote"

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        super().__init__(cluster, rng)
        self.candidate = 0
        self.term = 0
        self.allowed: frozenset[int] = frozenset()

    def filter(self, node: SimNode, messages: tuple[Message, ...]) -> tuple[Message, ...]:
        if self.step == "armed":
            votes = [m.dst for m in messages if m.type == MessageType.VOTE]
            if not votes:
                return messages
            quorum = len(node.conf_state.voters) // 2 + 1
            self.candidate = node.id
            self.term = next(m.term for m in messages if m.type == MessageType.VOTE)
            self.allowed = frozenset(self.rng.sample(sorted(votes), min(len(votes), quorum - 1)))
            self._advance(
                "vote",
                f"node {node.id} campaigns for term {self.term}; only "
                f"{','.join(map(str, sorted(self.allowed)))} hear it",
            )
        if self.step in ("vote", "leader") and node.id == self.candidate:
            return tuple(
                m
                for m in messages
                if m.type != MessageType.VOTE or m.term != self.term or m.dst in self.allowed
            )
        return messages

    def after_write(self, node: SimNode, ready: Ready) -> bool:
        if self.step != "vote" or node.id not in self.allowed:
            return False
        hs = ready.hard_state
        if hs is None or hs.term != self.term or hs.vote != self.candidate:
            return False
        self._advance(
            "leader",
            f"node {node.id} crashes before its vote for {self.candidate} in term {self.term} "
            "is on disk",
        )
        self._crash(node, torn=False)
        self._restart_soon(node.id, self.rng.randint(1_000, 50_000))
        return True

    def before_send(self, node: SimNode, ready: Ready) -> bool:  # noqa: ARG002
        if self.step != "leader" or node.id != self.candidate or node.role != Role.LEADER:
            return False
        if node.storage.hard_state().term != self.term:
            return False
        self._advance("done", f"node {node.id} leads term {self.term} and crashes at once")
        self._crash(node)
        return True


def build(kind: FaultKind, cluster: Cluster, rng: random.Random) -> Nemesis:
    if kind is FaultKind.FIGURE8:
        return Figure8(cluster, rng)
    if kind is FaultKind.UNSYNCED_VOTE:
        return UnsyncedVote(cluster, rng)
    raise ValueError(f"{kind} is not a nemesis")
