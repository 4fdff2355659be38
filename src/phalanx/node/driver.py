"""``RaftNode``: one Raft node running on asyncio.

One task group owns three loops: the peer transport, a ticker and the Ready loop. The Ready
loop performs each ``Ready`` in the order the core's contract requires (``docs/raft.md``):

1. persist the hard state, entries and snapshot with one ``DiskStorage.save`` (one fsync),
   in a worker thread so the event loop keeps stepping messages and ticking meanwhile;
2. send the messages (only now: they promise what step 1 made durable);
3. install the snapshot, apply the committed entries to the ``KVStore`` in order (calling
   ``apply_conf_change`` for membership changes) and resolve the proposals waiting on them;
4. serve the read states whose index is applied;

then ``advance``. Everything that touches the core runs on the event loop, one call at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Mapping
from pathlib import Path

from phalanx.errors import NotLeader, PhalanxError, Timeout
from phalanx.kv import KVStore, Proposal, Put, encode_proposal
from phalanx.kv.responses import Error, PutResult, Response
from phalanx.net import PeerTransport
from phalanx.node.client_server import ClientServer
from phalanx.raft.config import Config
from phalanx.raft.errors import ProposalDropped
from phalanx.raft.node import RawNode, Status
from phalanx.raft.types import (
    NONE,
    ConfState,
    EntryType,
    Message,
    Ready,
    Role,
    decode_conf_change,
)
from phalanx.storage import DiskStorage
from phalanx.storage.limits import StorageLimits

__all__ = ["Address", "RaftNode"]

_log = logging.getLogger(__name__)

Address = tuple[str, int]

#: How long ``put`` and ``get`` wait by default before raising ``Timeout``.
REQUEST_TIMEOUT_S = 5.0


class RaftNode:
    """One member of a Phalanx cluster, with an in-process client API (``put``/``get``).

    ``peers`` maps every other member's id to its peer address; on first start the cluster's
    membership is ``peers`` plus this node, afterwards the log's record of it wins. With
    ``client_listen`` the node also serves the client protocol there (``ClientServer``);
    ``client_addrs`` maps members' ids to their client addresses, so that a ``NotLeader``
    answer can name the leader's client address. Use as
    ``async with RaftNode(...) as node:`` or call :meth:`start` and :meth:`aclose`.
    """

    def __init__(
        self,
        node_id: int,
        data_dir: Path | str,
        listen_addr: Address,
        peers: Mapping[int, Address],
        *,
        cluster_id: str,
        tick_interval_s: float = 0.1,
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        rng: random.Random | None = None,
        client_listen: Address | None = None,
        client_addrs: Mapping[int, Address] | None = None,
        storage_limits: StorageLimits | None = None,
    ) -> None:
        if tick_interval_s <= 0:
            raise ValueError(f"tick_interval_s: must be > 0, got {tick_interval_s}")
        if request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s: must be > 0, got {request_timeout_s}")
        if node_id in peers:
            raise ValueError(f"peers: must not contain this node's own id {node_id}")
        self.id = node_id
        self.data_dir = Path(data_dir)
        self.tick_interval_s = tick_interval_s
        self.request_timeout_s = request_timeout_s
        self._listen_addr = listen_addr
        self._peers = dict(peers)
        self._cluster_id = cluster_id
        # Validate the Raft settings now rather than at start().
        self._config = Config(
            id=node_id, election_ticks=election_ticks, heartbeat_ticks=heartbeat_ticks
        )
        self._rng = rng or random.Random()
        self._storage_limits = storage_limits or StorageLimits()
        self.store = KVStore()
        self._storage: DiskStorage | None = None
        self._node: RawNode | None = None
        self._transport: PeerTransport | None = None
        self._runner: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopping = False
        self._closed = False
        # Proposals waiting for their entry: index -> (term proposed in, future).
        self._proposals: dict[int, tuple[int, asyncio.Future[Response]]] = {}
        # Reads waiting for their ReadState (by context), then for the apply index.
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._read_waits: list[tuple[int, asyncio.Future[None]]] = []
        self._contexts = itertools.count(1)
        # The client endpoint (none: in-process API only) and every member's client address.
        self._client_listen = client_listen
        self._client_addrs = dict(client_addrs or {})
        self._client_server: ClientServer | None = None

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the storage, restart the core from it, bind the listener, run in a task."""
        if self._runner is not None or self._closed:
            raise RuntimeError("start(): the node was already started")
        await self._open()
        transport = self._core_transport()
        self._runner = asyncio.create_task(self._run(), name=f"phalanx-node-{self.id}")
        waiter = asyncio.ensure_future(transport.wait_listening())
        done, _ = await asyncio.wait({waiter, self._runner}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
            await self._runner  # raises what stopped it
        if self._client_listen is not None:
            server = ClientServer(self, self._client_listen)
            try:
                await server.start()
            except BaseException:
                await self.aclose()
                raise
            self._client_server = server
            self._client_addrs.setdefault(self.id, server.address)

    async def _open(self) -> None:
        voters = tuple(sorted({self.id, *self._peers}))
        storage = await asyncio.to_thread(
            DiskStorage, self.data_dir, ConfState(voters=voters), limits=self._storage_limits
        )
        self._storage = storage
        snapshot = storage.snapshot()
        if snapshot.meta.index > 0:
            self.store.restore(snapshot.data)
        # The state machine holds exactly the snapshot: every later committed entry is
        # handed out again and re-applied (the KV state lives in memory).
        config = Config(
            id=self.id,
            election_ticks=self._config.election_ticks,
            heartbeat_ticks=self._config.heartbeat_ticks,
            applied=snapshot.meta.index,
        )
        self._node = RawNode(config, storage, self._rng)
        self._transport = PeerTransport(
            self.id,
            self._listen_addr,
            self._peers,
            self._on_message,
            cluster_id=self._cluster_id,
            on_unreachable=self._on_unreachable,
            on_snapshot_status=self._on_snapshot_status,
        )

    async def _run(self) -> None:
        transport = self._core_transport()
        storage = self._core_storage()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(transport.run(), name=f"phalanx-net-{self.id}")
                await transport.wait_listening()
                ticker = tg.create_task(self._tick_loop(), name=f"phalanx-tick-{self.id}")
                ready = tg.create_task(self._ready_loop(), name=f"phalanx-ready-{self.id}")
                await self._stop.wait()
                ticker.cancel()
                # The Ready loop finishes the Ready it holds (persist, send, apply, advance)
                # and then returns: a save is never abandoned half-way.
                self._stopping = True
                self._wake.set()
                await ready
                await transport.aclose()
        finally:
            self._fail_waiters()
            await asyncio.to_thread(storage.close)

    async def aclose(self) -> None:
        """Stop the loops, close the connections and the storage. Pending ``put`` calls raise
        ``Timeout`` (their outcome is unknown); pending ``get`` calls raise ``Timeout``."""
        self._closed = True
        server, self._client_server = self._client_server, None
        if server is not None:
            await server.aclose()
        self._stop.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner

    async def __aenter__(self) -> RaftNode:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- inspection ---------------------------------------------------------------------------

    @property
    def listen_address(self) -> Address:
        """The bound peer address (the real port when 0 was asked for)."""
        return self._core_transport().listen_address

    @property
    def client_address(self) -> Address | None:
        """The bound client address, or None when the node serves no client endpoint."""
        return self._client_server.address if self._client_server is not None else None

    def leader_client_address(self) -> tuple[int, Address | None]:
        """The leader's id (0 if unknown) and its client address, when this node knows it."""
        leader = self._core().status().leader
        return leader, self._client_addrs.get(leader) if leader != NONE else None

    def status(self) -> Status:
        return self._core().status()

    @property
    def leader_id(self) -> int:
        """The leader this node knows of, or 0."""
        return self._core().status().leader

    @property
    def is_leader(self) -> bool:
        return self._core().status().role == Role.LEADER

    def _core(self) -> RawNode:
        if self._node is None:
            raise RuntimeError("the node is not started")
        return self._node

    def _core_storage(self) -> DiskStorage:
        if self._storage is None:
            raise RuntimeError("the node is not started")
        return self._storage

    def _core_transport(self) -> PeerTransport:
        if self._transport is None:
            raise RuntimeError("the node is not started")
        return self._transport

    # -- inputs -------------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        if self._node is None or self._stopping:
            return
        self._node.step(message)
        self._wake.set()

    def _on_unreachable(self, peer: int) -> None:
        if self._node is not None:
            self._node.report_unreachable(peer)
            self._wake.set()

    def _on_snapshot_status(self, peer: int, ok: bool) -> None:
        if self._node is not None:
            self._node.report_snapshot(peer, ok)
            self._wake.set()

    async def _tick_loop(self) -> None:
        node = self._core()
        while True:
            await asyncio.sleep(self.tick_interval_s)
            node.tick()
            self._wake.set()

    # -- the Ready loop -----------------------------------------------------------------------

    async def _ready_loop(self) -> None:
        node = self._core()
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            while node.has_ready():
                await self._handle(node, node.ready())

    async def _handle(self, node: RawNode, ready: Ready) -> None:
        storage = self._core_storage()
        transport = self._core_transport()
        # 1. Persist: one save, one fsync, off the event loop.
        if ready.hard_state is not None or ready.entries or ready.snapshot is not None:
            await asyncio.to_thread(storage.save, ready.hard_state, ready.entries, ready.snapshot)
        # 2. Send, now that what the messages promise is durable.
        for message in ready.messages:
            transport.send(message)
        # 3. Install the snapshot, apply the committed entries in order.
        if ready.snapshot is not None and ready.snapshot.meta.index > self.store.applied_index:
            self.store.restore(ready.snapshot.data)
            self.store.applied_index = ready.snapshot.meta.index
        for entry in ready.committed_entries:
            if entry.type == EntryType.CONF_CHANGE:
                node.apply_conf_change(decode_conf_change(entry.data))
                response: Response = self.store.apply(entry.index, b"")
            else:
                response = self.store.apply(entry.index, entry.data)
            self._resolve_proposal(entry.index, entry.term, response)
        # 4. Serve the reads whose index is applied.
        for read in ready.read_states:
            future = self._reads.pop(read.context, None)
            if future is not None and not future.done():
                future.set_result(read.index)
        self._serve_reads()
        node.advance(ready)

    def _resolve_proposal(self, index: int, term: int, response: Response) -> None:
        waiting = self._proposals.pop(index, None)
        if waiting is None:
            return
        proposed_term, future = waiting
        if future.done():
            return
        if term == proposed_term:
            future.set_result(response)
        else:
            # Another leader's entry took the index: the proposal was never committed.
            future.set_exception(
                NotLeader("leadership changed before the write committed", **self._hint())
            )

    def _serve_reads(self) -> None:
        applied = self.store.applied_index
        waiting: list[tuple[int, asyncio.Future[None]]] = []
        for index, future in self._read_waits:
            if future.done():
                continue
            if index <= applied:
                future.set_result(None)
            else:
                waiting.append((index, future))
        self._read_waits = waiting

    def _fail_waiters(self) -> None:
        error = "the node closed before an answer came"
        for _, future in self._proposals.values():
            if not future.done():
                future.set_exception(Timeout(error + "; the write's outcome is unknown"))
        for read in self._reads.values():
            if not read.done():
                read.set_exception(Timeout(error))
        for _, wait in self._read_waits:
            if not wait.done():
                wait.set_exception(Timeout(error))
        self._proposals.clear()
        self._reads.clear()
        self._read_waits.clear()

    # -- client API ---------------------------------------------------------------------------

    def _hint(self) -> dict[str, str | None]:
        leader = self._core().status().leader
        return {"leader_hint": str(leader) if leader != NONE else None}

    def _check_open(self) -> RawNode:
        if self._runner is None or self._stopping or self._closed:
            raise RuntimeError("the node is not running")
        return self._core()

    async def put(self, key: bytes, value: bytes, *, timeout_s: float | None = None) -> PutResult:
        """Write ``key`` = ``value`` through the log; returns once applied on this node.

        Raises ``NotLeader`` (with ``leader_hint``, the leader's id, when one is known) on a
        node that does not lead: nothing was proposed. Raises ``Timeout`` when the entry is not
        applied within ``timeout_s``: the outcome is then INDETERMINATE (the entry may still
        commit and apply later). Validation errors (``BadRequest``, ``TooLarge``) are raised
        before anything is proposed.
        """
        node = self._check_open()
        data = encode_proposal(
            Proposal(Put(key, value), now_ms=int(time.time() * 1000)), self.store.limits
        )
        if node.status().role != Role.LEADER:
            raise NotLeader(f"node {self.id} is not the leader", **self._hint())
        try:
            node.propose(data)
        except ProposalDropped as exc:
            raise NotLeader(f"node {self.id} refused the proposal: {exc}", **self._hint()) from exc
        status = node.status()
        index = status.last_index
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._proposals[index] = (status.term, future)
        self._wake.set()
        try:
            async with asyncio.timeout(self._timeout(timeout_s)):
                response = await future
        except TimeoutError:
            raise Timeout(
                f"entry {index} not applied within the deadline; the write's outcome is unknown"
            ) from None
        finally:
            waiting = self._proposals.get(index)
            if waiting is not None and waiting[1] is future:
                del self._proposals[index]
        if isinstance(response, Error):
            raise response.exception()
        if not isinstance(response, PutResult):  # pragma: no cover - the store's contract
            raise PhalanxError(f"unexpected response to a put: {response!r}")
        return response

    async def get(
        self, key: bytes, *, linearizable: bool = True, timeout_s: float | None = None
    ) -> bytes | None:
        """The value of ``key`` (None when absent).

        Linearizable by default: a ReadIndex round confirms the leader's commit index, and the
        read is served once this node has applied it, so it sees every write acknowledged
        before it began (on a follower too). ``linearizable=False`` reads the local state at
        once and may be stale. Raises ``Timeout`` when no round completes in time (a read has
        no effect, so retrying is safe).
        """
        node = self._check_open()
        if linearizable:
            try:
                async with asyncio.timeout(self._timeout(timeout_s)):
                    index = await self._read_index(node)
                    wait: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    self._read_waits.append((index, wait))
                    self._serve_reads()
                    await wait
            except TimeoutError:
                raise Timeout("no read round completed within the deadline") from None
        result = self.store.get(key)
        return result.kvs[0].value if result.kvs else None

    async def _read_index(self, node: RawNode) -> int:
        # A forwarded read may be lost (dropped by a leader, or no leader yet): ask again with
        # the same context every election timeout until the deadline.
        context = f"{self.id}:{next(self._contexts)}".encode()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[context] = future
        retry_s = self._config.election_ticks * self.tick_interval_s
        try:
            while True:
                try:
                    node.read_index(context)
                    self._wake.set()
                except ProposalDropped:
                    pass  # no leader known yet: wait and ask again
                done, _ = await asyncio.wait({future}, timeout=retry_s)
                if done:
                    return future.result()
        finally:
            self._reads.pop(context, None)
            if not future.done():
                future.cancel()

    def _timeout(self, timeout_s: float | None) -> float:
        return self.request_timeout_s if timeout_s is None else timeout_s

    def __repr__(self) -> str:
        return f"RaftNode(id={self.id}, data_dir={str(self.data_dir)!r})"
