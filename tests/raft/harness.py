"""A tiny hand-driven network of RawNodes for transcript tests.

Messages wait in one FIFO queue until a test delivers them; every Ready is handled by the
book (persist, then queue its messages, then apply, then advance). Delivered messages are
recorded in ``trace`` as short tuples so tests can assert exact exchanges.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from phalanx.raft.config import Config
from phalanx.raft.node import RawNode
from phalanx.raft.storage import MemoryStorage
from phalanx.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    decode_conf_change,
)

T = MessageType


def short(m: Message) -> tuple[object, ...]:  # noqa: PLR0911 - one return per message type
    """A message as (type, src, dst, term) plus the fields that matter for its type."""
    head: tuple[object, ...] = (m.type.name, m.src, m.dst, m.term)
    if m.type in (T.VOTE, T.PRE_VOTE):
        return (*head, m.index, m.log_term)
    if m.type in (T.VOTE_RESP, T.PRE_VOTE_RESP):
        return (*head, "reject" if m.reject else "grant")
    if m.type == T.APPEND:
        return (*head, m.index, m.log_term, tuple(e.index for e in m.entries), m.commit)
    if m.type == T.APPEND_RESP:
        if m.reject:
            return (*head, "reject", m.index, m.reject_hint, m.hint_term)
        return (*head, m.index)
    if m.type == T.HEARTBEAT:
        return (*head, m.commit)
    if m.type == T.SNAPSHOT and m.snapshot is not None:
        return (*head, m.snapshot.meta.index)
    return head


@dataclass
class Network:
    voters: tuple[int, ...] = (1, 2, 3)
    learners: tuple[int, ...] = ()
    seed: int = 0
    config: dict[str, object] = field(default_factory=dict)
    # Nodes that start outside the configuration: like every node, they boot from the
    # cluster's initial membership and learn later changes from the log.
    extra: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RawNode] = {}
        self.queue: list[Message] = []
        self.trace: list[tuple[object, ...]] = []
        self.cut: set[tuple[int, int]] = set()
        self.applied: dict[int, list[Entry]] = {}
        self.reads: dict[int, list[ReadState]] = {}
        self.conf: dict[int, ConfState] = {}
        cs = ConfState(voters=self.voters, learners=self.learners)
        for node in (*self.voters, *self.learners, *self.extra):
            self.add_node(node, MemoryStorage(conf_state=cs))

    # -- nodes ------------------------------------------------------------------------------

    def add_node(self, node: int, storage: MemoryStorage, **overrides: object) -> RawNode:
        settings = {**self.config, **overrides}
        config = Config(id=node, **settings)  # type: ignore[arg-type]
        raw = RawNode(config, storage, random.Random(self.seed * 1000 + node))
        self.storages[node] = storage
        self.nodes[node] = raw
        self.applied.setdefault(node, [])
        self.reads.setdefault(node, [])
        return raw

    def restart(self, node: int, **overrides: object) -> RawNode:
        """Crash ``node`` (losing only what was not persisted) and start it again."""
        self.queue = [m for m in self.queue if m.dst != node]
        return self.add_node(node, self.storages[node], **overrides)

    def load(self, node: int, terms: list[int], term: int, **overrides: object) -> RawNode:
        """Give ``node`` a log with entries of ``terms`` (from index 1) and restart it."""
        storage = self.storages[node]
        storage.append([Entry(term=t, index=i + 1) for i, t in enumerate(terms)])
        storage.set_hard_state(HardState(term=term, vote=0, commit=0))
        return self.restart(node, **overrides)

    def __getitem__(self, node: int) -> RawNode:
        return self.nodes[node]

    def role(self, node: int) -> Role:
        return self.nodes[node].status().role

    def log(self, node: int) -> list[tuple[int, int]]:
        """(index, term) of every entry ``node`` persisted."""
        s = self.storages[node]
        return [(e.index, e.term) for e in s.entries(s.first_index(), s.last_index() + 1, 1 << 40)]

    def data(self, node: int) -> list[bytes]:
        """The data of every NORMAL non-empty entry ``node`` applied."""
        return [e.data for e in self.applied[node] if e.type == EntryType.NORMAL and e.data]

    # -- the driver loop ----------------------------------------------------------------------

    def process(self, node: int) -> None:
        raw = self.nodes[node]
        storage = self.storages[node]
        rounds = 0
        while raw.has_ready():
            rounds += 1
            assert rounds < 1000, "Ready loop does not settle"
            rd = raw.ready()
            if rd.snapshot is not None:
                storage.apply_snapshot(rd.snapshot)
            storage.append(rd.entries)
            if rd.hard_state is not None:
                storage.set_hard_state(rd.hard_state)
            self.queue.extend(rd.messages)
            if rd.snapshot is not None:
                self.applied[node] = [Entry(term=0, index=rd.snapshot.meta.index, data=b"snap")]
                self.conf[node] = rd.snapshot.meta.conf_state
            for entry in rd.committed_entries:
                if entry.type == EntryType.CONF_CHANGE:
                    self.conf[node] = raw.apply_conf_change(decode_conf_change(entry.data))
                self.applied[node].append(entry)
            self.reads[node].extend(rd.read_states)
            raw.advance(rd)

    def process_all(self) -> None:
        for node in sorted(self.nodes):
            self.process(node)

    def deliver_one(self) -> Message | None:
        self.process_all()
        if not self.queue:
            return None
        message = self.queue.pop(0)
        if (message.src, message.dst) in self.cut or message.dst not in self.nodes:
            return message
        self.trace.append(short(message))
        self.nodes[message.dst].step(message)
        self.process(message.dst)
        return message

    def settle(self, limit: int = 10_000) -> None:
        """Deliver messages until none are left."""
        self.process_all()
        for _ in range(limit):
            if self.deliver_one() is None:
                return
        raise AssertionError("the network does not settle")

    def drop(self, keep: Callable[[Message], bool]) -> list[Message]:
        """Remove queued messages ``keep`` rejects; returns them."""
        self.process_all()
        dropped = [m for m in self.queue if not keep(m)]
        self.queue = [m for m in self.queue if keep(m)]
        return dropped

    def pending(self) -> list[tuple[object, ...]]:
        self.process_all()
        return [short(m) for m in self.queue]

    # -- time and faults ----------------------------------------------------------------------

    def tick(self, node: int, times: int = 1) -> None:
        for _ in range(times):
            self.nodes[node].tick()
            self.process(node)

    def tick_all(self, times: int = 1, *, settle: bool = True) -> None:
        for _ in range(times):
            for node in sorted(self.nodes):
                self.tick(node)
            if settle:
                self.settle()

    def campaign(self, node: int) -> None:
        """Tick only ``node`` until it starts a (pre-)election, then settle."""
        raw = self.nodes[node]
        for _ in range(1000):
            raw.tick()
            self.process(node)
            if raw.status().role != Role.FOLLOWER:
                break
        self.settle()

    def elect(self, node: int) -> None:
        self.campaign(node)
        assert self.role(node) == Role.LEADER, f"{node} is {self.role(node).name}"

    def isolate(self, node: int) -> None:
        for other in self.nodes:
            if other != node:
                self.cut |= {(node, other), (other, node)}

    def partition(self, *groups: Iterable[int]) -> None:
        """Replace any cut with these groups (nodes not named are alone)."""
        sets = [set(g) for g in groups]
        self.cut = set()
        for a in self.nodes:
            for b in self.nodes:
                if a != b and not any(a in s and b in s for s in sets):
                    self.cut.add((a, b))

    def heal(self) -> None:
        self.cut.clear()

    def propose(self, node: int, data: bytes) -> None:
        self.nodes[node].propose(data)
        self.settle()

    def change(self, node: int, change: ConfChange) -> None:
        self.nodes[node].propose_conf_change(change)
        self.settle()

    def types(self) -> list[str]:
        return [str(t[0]) for t in self.trace]


__all__ = ["Network", "T", "short"]
