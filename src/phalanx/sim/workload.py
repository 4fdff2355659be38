"""Simulated clients: puts of unique values and linearizable reads, recorded in a history.

Each client runs one operation at a time (a Jepsen "process"): it picks a node (the leader it
last heard of, sometimes any node, so proposal and read forwarding are exercised too), submits
the operation and waits for the answer or its timeout.

- A put is proposed on the chosen node with a unique value. It is ``ok`` once *that node*
  applies it, ``fail`` if the node refuses it (``ProposalDropped``, node down) and ``info``
  if the timeout expires or the node crashes first: it may still commit.
- A read asks the chosen node for a read index (ReadIndex, thesis 6.4). It is ``ok`` when
  the node serves the ReadState (after applying up to its index) with the value it holds
  then; otherwise ``fail`` (a read has no effect, so an unanswered read changes nothing).

After an ``info`` the client continues as a new process (its number grows by the number of
clients), as a Jepsen client would.
"""

from __future__ import annotations

import random
from typing import Protocol

import msgspec

from phalanx.errors import InvariantViolation
from phalanx.sim.events import EventKind, EventQueue
from phalanx.sim.history import History, Op, OpOutcome
from phalanx.sim.kv import encode_put

__all__ = ["ClientPort", "Workload", "WorkloadSettings"]


class WorkloadSettings(msgspec.Struct, frozen=True):
    """``clients`` concurrent processes over ``keys`` keys; ``read_fraction`` of reads."""

    clients: int = 3
    keys: int = 5
    read_fraction: float = 0.4
    think_us_min: int = 1_000
    think_us_max: int = 50_000
    op_timeout_us: int = 1_500_000
    leader_preference: float = 0.85
    retry_us_min: int = 20_000
    retry_us_max: int = 200_000
    reads: bool = True

    def __post_init__(self) -> None:
        if self.clients < 0 or self.keys < 1:
            raise ValueError("need clients >= 0 and keys >= 1")
        if not 0 <= self.think_us_min <= self.think_us_max:
            raise ValueError("need 0 <= think_us_min <= think_us_max")
        if self.op_timeout_us < 1:
            raise ValueError("op_timeout_us must be positive")


class ClientPort(Protocol):
    """What the clients can do to the cluster."""

    def client_nodes(self) -> list[int]:
        """Nodes a client may contact (members that are not retired), in id order."""
        ...

    def leader_hint(self, node: int) -> int:
        """Who ``node`` believes leads (0 if unknown or ``node`` is down)."""
        ...

    def propose(self, node: int, data: bytes) -> str | None:
        """Propose on ``node``; None if accepted, else why it was refused."""
        ...

    def read_index(self, node: int, context: bytes) -> str | None:
        """Request a read index on ``node``; None if accepted, else why it was refused."""
        ...


class _Client:
    __slots__ = ("hint", "index", "op", "process", "token")

    def __init__(self, index: int) -> None:
        self.index = index
        self.process = index
        self.op: Op | None = None
        self.token = 0
        self.hint = 0


class Workload:
    """The clients, their pending operations, and the history they record."""

    __slots__ = (
        "_clients",
        "_port",
        "_queue",
        "_rng",
        "acked",
        "history",
        "pending_puts",
        "pending_reads",
        "settings",
        "stopped",
    )

    def __init__(
        self,
        rng: random.Random,
        queue: EventQueue,
        port: ClientPort,
        settings: WorkloadSettings,
        history: History,
    ) -> None:
        self._rng = rng
        self._queue = queue
        self._port = port
        self.settings = settings
        self.history = history
        self._clients = [_Client(i) for i in range(settings.clients)]
        #: op id -> (client, node) for puts / reads submitted and not yet answered
        self.pending_puts: dict[int, _Client] = {}
        self.pending_reads: dict[int, _Client] = {}
        #: acknowledged puts: (op id, key, value, index)
        self.acked: list[tuple[int, str, str, int]] = []
        self.stopped = False

    def start(self) -> None:
        for client in self._clients:
            self._schedule(client, self._think())

    def _think(self) -> int:
        return self._rng.randint(self.settings.think_us_min, self.settings.think_us_max)

    def _retry(self) -> int:
        return self._rng.randint(self.settings.retry_us_min, self.settings.retry_us_max)

    def _schedule(self, client: _Client, delay_us: int) -> None:
        client.token += 1
        self._queue.push(
            self._queue.now_us + delay_us, EventKind.CLIENT, -1, (client.index, client.token)
        )

    # -- events ------------------------------------------------------------------------------

    def on_event(self, payload: tuple[int, int]) -> None:
        """A client's timer fired: its operation timed out, or it is time for the next one."""
        index, token = payload
        client = self._clients[index]
        if token != client.token:
            return  # superseded by an answer
        if client.op is not None:
            self._finish(
                client, OpOutcome.INFO if client.op.f == "put" else OpOutcome.FAIL, error="timeout"
            )
            self._schedule(client, self._think())
            return
        self._begin(client)

    def _pick_node(self, client: _Client) -> int | None:
        nodes = self._port.client_nodes()
        if not nodes:
            return None
        rng = self._rng
        if client.hint in nodes and rng.random() < self.settings.leader_preference:
            return client.hint
        return rng.choice(nodes)

    def _begin(self, client: _Client) -> None:
        if self.stopped or self.history.full():
            return
        node = self._pick_node(client)
        if node is None:
            self._schedule(client, self.settings.op_timeout_us)
            return
        rng = self._rng
        now = self._queue.now_us
        key = f"k{rng.randrange(self.settings.keys)}"
        history = self.history
        if self.settings.reads and rng.random() < self.settings.read_fraction:
            op = history.invoke(client.process, "read", key, now, node=node)
            client.op = op
            error = self._port.read_index(node, str(op.id).encode())
            pending = self.pending_reads
        else:
            value = f"v{len(history)}"
            op = history.invoke(client.process, "put", key, now, value=value, node=node)
            client.op = op
            error = self._port.propose(node, encode_put(op.id, key, value))
            pending = self.pending_puts
        if error is not None:
            self._finish(client, OpOutcome.FAIL, error=error)
            self._schedule(client, self._retry())
            return
        pending[op.id] = client
        self._schedule(client, self.settings.op_timeout_us)

    def _finish(
        self,
        client: _Client,
        outcome: OpOutcome,
        *,
        output: str | None = None,
        index: int = 0,
        error: str | None = None,
    ) -> Op:
        op = client.op
        if op is None:
            raise InvariantViolation(f"client {client.index} has no operation to finish")
        client.op = None
        self.pending_puts.pop(op.id, None)
        self.pending_reads.pop(op.id, None)
        History.complete(op, outcome, self._queue.now_us, output=output, index=index, error=error)
        if outcome is OpOutcome.INFO:
            client.process += len(self._clients)
        hint = self._port.leader_hint(op.node)
        if hint:
            client.hint = hint
        return op

    # -- answers from the cluster ------------------------------------------------------------

    def on_put_applied(self, node: int, op_id: int, index: int) -> Op | None:
        """``node`` applied put ``op_id`` at ``index``: the ok answer, if a client waits."""
        client = self.pending_puts.get(op_id)
        if client is None or client.op is None or client.op.node != node:
            return None
        op = self._finish(client, OpOutcome.OK, index=index)
        self.acked.append((op.id, op.key, op.value or "", index))
        self._schedule(client, self._think())
        return op

    def read_key(self, context: bytes) -> tuple[Op, int] | None:
        """The pending read a ReadState context belongs to, and its client's index."""
        try:
            op_id = int(context)
        except ValueError:
            return None
        client = self.pending_reads.get(op_id)
        if client is None or client.op is None:
            return None
        return client.op, client.index

    def on_read_served(self, client_index: int, value: str | None, index: int) -> Op:
        client = self._clients[client_index]
        op = self._finish(client, OpOutcome.OK, output=value, index=index)
        self._schedule(client, self._think())
        return op

    def on_node_down(self, node: int) -> None:
        """``node`` crashed or left: its pending puts become ``info``, its reads ``fail``."""
        for pending, outcome in (
            (self.pending_puts, OpOutcome.INFO),
            (self.pending_reads, OpOutcome.FAIL),
        ):
            for op_id in sorted(pending):
                client = pending[op_id]
                if client.op is not None and client.op.node == node:
                    self._finish(client, outcome, error="node down")
                    self._schedule(client, self._think())
