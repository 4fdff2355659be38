"""One simulated node: a Raft core, its disk, its state machine, and its life cycle.

A node is *up* (a :class:`~phalanx.raft.node.RawNode` runs on a storage built from its disk),
*down* (crashed: the core, the state machine and everything not fsynced are gone) or
*retired* (removed from the membership; it no longer ticks or receives messages).

``life`` counts restarts. Ticks and fsync completions carry the life they were scheduled in,
so the ones left over from before a crash are ignored when they fire.

The core reads ``storage``: the writes of every Ready, synced or not, like a page cache.
``disk`` knows which of them are durable; a restart rebuilds ``storage`` from the durable
part only.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from typing import Any, Protocol

from phalanx.raft.storage import LogCompacted, MemoryStorage
from phalanx.raft.types import NONE, ConfState, Message, ReadState, Ready, Role
from phalanx.sim.disk import SimDisk
from phalanx.sim.kv import KvStateMachine

__all__ = ["CoreFactory", "NodeCore", "NodeState", "SimNode"]


class NodeCore(Protocol):
    """The part of the Raft core's API the simulator drives."""

    def tick(self) -> None: ...
    def step(self, msg: Message) -> None: ...
    def propose(self, data: bytes) -> None: ...
    def has_ready(self) -> bool: ...
    def ready(self) -> Ready: ...
    def advance(self, ready: Ready) -> None: ...
    def status(self) -> Any: ...


#: Builds a core: (node id, applied index, storage, rng) -> core.
CoreFactory = Callable[[int, int, MemoryStorage, random.Random], Any]


class NodeState(enum.Enum):
    UP = "up"
    DOWN = "down"
    RETIRED = "retired"


class SimNode:
    """The mutable state of one node in the simulation."""

    __slots__ = (
        "conf_state",
        "core",
        "disk",
        "id",
        "leader",
        "life",
        "pending_reads",
        "rng",
        "role",
        "slow_disk",
        "sm",
        "state",
        "storage",
        "syncing",
        "tick_factor",
        "tick_us",
    )

    def __init__(
        self, node_id: int, conf_state: ConfState, rng: random.Random, tick_us: int
    ) -> None:
        self.id = node_id
        self.rng = rng
        self.disk = SimDisk(conf_state)
        self.storage = self.disk.load()
        self.conf_state = conf_state
        self.core: Any = None
        self.state = NodeState.DOWN
        self.life = 0
        self.sm = KvStateMachine()
        #: The Ready waiting for its fsync, if any: nothing else is taken from the core
        #: until it completes.
        self.syncing: Ready | None = None
        self.pending_reads: list[ReadState] = []
        self.role = Role.FOLLOWER
        self.leader = NONE
        #: Base tick period with this node's clock skew, and a temporary factor (skew fault).
        self.tick_us = tick_us
        self.tick_factor = 1.0
        self.slow_disk = False

    @property
    def up(self) -> bool:
        return self.state is NodeState.UP

    def tick_period_us(self) -> int:
        return max(1, int(self.tick_us * self.tick_factor))

    def start(self, factory: CoreFactory) -> None:
        """Start (or restart) from what the disk holds durably."""
        self.storage = self.disk.load()
        snapshot = self.storage.snapshot()
        self.conf_state = snapshot.meta.conf_state
        self.sm = KvStateMachine()
        if snapshot.meta.index:
            self.sm.restore(snapshot.data, snapshot.meta.index)
        self.life += 1
        self.core = factory(self.id, snapshot.meta.index, self.storage, self.rng)
        self.state = NodeState.UP
        self.syncing = None
        self.pending_reads = []
        self.role = Role.FOLLOWER
        self.leader = NONE

    def crash(self, torn: bool) -> int:
        """Lose the core, the state machine and unsynced writes; return the writes lost."""
        self.life += 1
        self.core = None
        self.state = NodeState.DOWN
        self.syncing = None
        self.pending_reads = []
        self.role = Role.FOLLOWER
        self.leader = NONE
        return self.disk.crash(self.rng, torn)

    def retire(self) -> None:
        self.life += 1
        self.core = None
        self.state = NodeState.RETIRED
        self.syncing = None
        self.pending_reads = []
        self.role = Role.FOLLOWER
        self.leader = NONE

    def term_at(self, index: int) -> int | None:
        """The term of ``index`` in this node's log; None if compacted into the snapshot."""
        try:
            return self.storage.term(index)
        except LogCompacted:
            return None
