"""``RaftNode``: one Raft node running on asyncio.

One task group owns three loops: the peer transport, a ticker and the Ready loop. The Ready
loop performs each ``Ready`` in the order the core's contract requires (``docs/raft.md``):

1. persist the hard state, entries and snapshot with one ``DiskStorage.save`` (one fsync),
   in a worker thread so the event loop keeps stepping messages and ticking meanwhile; a
   leader sends its appends and heartbeats before this step, so replication overlaps its
   own fsync (``phalanx.raft.early``, Raft thesis 10.2.1);
2. send the other messages (only now: they promise what step 1 made durable);
3. install the snapshot, apply the committed entries to the ``KVStore`` in order (calling
   ``apply_conf_change`` for membership changes) and resolve the proposals waiting on them;
4. serve the read states whose index is applied;

then ``advance``. Everything that touches the core runs on the event loop, one call at a time.

After a Ready the node may take a snapshot of the state machine (every ``snapshot_entries``
applied entries) and compact the log behind it, keeping ``snapshot_keep_entries`` entries for
followers that lag a little. A leader also proposes the expiry of leases whose deadline passed
by its clock. Membership addresses live in the replicated keyspace under
:data:`MEMBERS_PREFIX`, written before the membership change that adds the member, so every
node learns where a new member listens from the log itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Mapping
from pathlib import Path

from phalanx.errors import (
    BadRequest,
    Indeterminate,
    NoQuorum,
    NotLeader,
    PhalanxError,
    Timeout,
    Unavailable,
)
from phalanx.kv import KVStore, Proposal, Put, Range, WatchHub, encode_proposal
from phalanx.kv.commands import Command, DeleteRange, LeaseExpire, LeaseRenewAll
from phalanx.kv.lease import expire_proposal
from phalanx.kv.responses import Error, PutResult, RangeResult, Response
from phalanx.kv.snapshot import encode_chunks, image_of
from phalanx.net import PeerTransport
from phalanx.net.faults import LinkFaults
from phalanx.net.tls import TlsFiles
from phalanx.net.transport import TransportStatistics
from phalanx.node.client_protocol import MemberInfo, NodeStatus
from phalanx.node.client_server import ClientServer
from phalanx.node.members import (
    MEMBERS_PREFIX,
    Membership,
    encode_member,
    format_address,
    member_key,
)
from phalanx.node.observer import NodeObserver, NullObserver
from phalanx.raft.config import Config
from phalanx.raft.early import split_early
from phalanx.raft.errors import ProposalDropped
from phalanx.raft.node import RawNode, Status
from phalanx.raft.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryType,
    Message,
    MessageType,
    Ready,
    Role,
    SoftState,
    decode_conf_change,
)
from phalanx.storage import DiskStorage
from phalanx.storage.limits import StorageLimits

__all__ = ["MEMBERS_PREFIX", "Address", "RaftNode"]

_log = logging.getLogger(__name__)

Address = tuple[str, int]

#: How long ``put`` and ``get`` wait by default before raising ``Timeout``.
REQUEST_TIMEOUT_S = 5.0
#: Applied entries between two snapshots of the state machine.
SNAPSHOT_ENTRIES = 10_000
#: Encoded pieces of a snapshot (of ``phalanx.kv.snapshot.CHUNK_ITEMS`` keys or events each)
#: between two yields to the event loop while a snapshot is taken.
SNAPSHOT_CHUNKS_PER_YIELD = 4
#: Entries kept in the log behind a snapshot, so a follower that lags by fewer catches up
#: from the log instead of receiving the whole snapshot.
SNAPSHOT_KEEP_ENTRIES = 2_000
#: How far a learner's log may trail the commit index and still be promoted to voter:
#: one further behind (or that never answered) is refused with ``Unavailable``, since
#: counting it in the quorum before it caught up would cost availability.
LEARNER_LAG_ENTRIES_MAX = 1_000
#: Proposals one node may have waiting for their entries to apply; beyond it new writes
#: are refused with ``Unavailable`` (nothing proposed) instead of queueing without bound.
PENDING_PROPOSALS_MAX = 10_000
#: The shortest wait for a leadership transfer when a leader closes (two election timeouts
#: otherwise): a busy machine may need more than a fast tick's election timeout.
TRANSFER_ON_CLOSE_S_MIN = 1.0
_NO_EXPIRY = 1 << 62


class RaftNode:
    """One member of a Phalanx cluster, with an in-process client API.

    ``peers`` maps every other member's id to its peer address; on first start the cluster's
    membership is ``peers`` plus this node (or nobody, with ``join=True``: the node then waits
    for a leader that added it to reach it), afterwards the log's record of it wins. With
    ``client_listen`` the node also serves the client protocol there (``ClientServer``);
    ``client_addrs`` maps members' ids to their client addresses, so that a ``NotLeader``
    answer can name the leader's client address. ``tls`` turns on TLS for peer and client
    traffic (mutual TLS with ``TlsFiles(mutual=True)``). Use as
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
        observer: NodeObserver | None = None,
        join: bool = False,
        snapshot_entries: int = SNAPSHOT_ENTRIES,
        snapshot_keep_entries: int = SNAPSHOT_KEEP_ENTRIES,
        transfer_on_close: bool = True,
        pending_proposals_max: int = PENDING_PROPOSALS_MAX,
        tls: TlsFiles | None = None,
    ) -> None:
        _check_options(
            tick_interval_s=tick_interval_s,
            request_timeout_s=request_timeout_s,
            snapshot_entries=snapshot_entries,
            snapshot_keep_entries=snapshot_keep_entries,
            pending_proposals_max=pending_proposals_max,
        )
        if node_id in peers:
            raise ValueError(f"peers: must not contain this node's own id {node_id}")
        self.id = node_id
        self.data_dir = Path(data_dir)
        self.tick_interval_s = tick_interval_s
        self.request_timeout_s = request_timeout_s
        self.cluster_id = cluster_id
        self._listen_addr = listen_addr
        self._peers = dict(peers)
        self._join = join
        self._snapshot_entries = snapshot_entries
        self._snapshot_keep_entries = snapshot_keep_entries
        self._transfer_on_close = transfer_on_close
        self.pending_proposals_max = pending_proposals_max
        # Validate the Raft settings now rather than at start().
        self._config = Config(
            id=node_id, election_ticks=election_ticks, heartbeat_ticks=heartbeat_ticks
        )
        self._rng = rng or random.Random()
        self._storage_limits = storage_limits or StorageLimits()
        self.observer: NodeObserver = observer or NullObserver()
        self.store = KVStore()
        #: The watchers of this node's clients (not replicated).
        self.watches = WatchHub(self.store)
        self._members = Membership(node_id, peers, client_addrs or {})
        self._storage: DiskStorage | None = None
        self._node: RawNode | None = None
        self._transport: PeerTransport | None = None
        self._runner: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopping = False
        self._closed = False
        self._init_waiters()
        self._role = Role.FOLLOWER
        self._leader = NONE
        self._term = 0
        self._expire_index = _NO_EXPIRY  # the index of the LeaseExpire proposal in flight
        self._snapshot_index = 0
        self._durable_vote = (0, 0)  # the (term, vote) last fsynced
        self._snapshot_lock = asyncio.Lock()
        self._snapshot_task: asyncio.Task[int] | None = None
        self._group: asyncio.TaskGroup | None = None
        #: The commit index learned from the first leader heard of (readiness: applied to it).
        self.startup_commit_index: int | None = None
        self._client_listen = client_listen
        self._client_server: ClientServer | None = None
        self._tls = tls
        #: Injected network faults (cut links), for partition and chaos tests.
        self.faults = LinkFaults()
        #: The voter this node handed leadership to when it closed (0: none).
        self.handed_over_to = 0

    def _init_waiters(self) -> None:
        # Proposals not yet handed to the core (see ``_flush_batch``).
        self._batch: list[tuple[bytes, asyncio.Future[Response]]] = []
        # Proposals waiting for their entry: index -> (term proposed in, future).
        self._proposals: dict[int, tuple[int, asyncio.Future[Response]]] = {}
        # Reads waiting for their ReadState (by context), then for the apply index.
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._read_waits: list[tuple[int, asyncio.Future[None]]] = []
        self._apply_waiters: list[asyncio.Future[None]] = []
        self._contexts = itertools.count(1)

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
            server = ClientServer(
                self,
                self._client_listen,
                ssl=self._tls.server_context() if self._tls is not None else None,
            )
            try:
                await server.start()
            except BaseException:
                await self.aclose()
                raise
            self._client_server = server
            if self._members.client_address(self.id) is None:
                self._members.set_client_address(self.id, server.address)

    async def _open(self) -> None:
        voters = () if self._join else tuple(sorted({self.id, *self._peers}))
        storage = await asyncio.to_thread(
            DiskStorage, self.data_dir, ConfState(voters=voters), limits=self._storage_limits
        )
        self._storage = storage
        hard, _ = storage.initial_state()
        self._durable_vote = (hard.term, hard.vote)
        snapshot = storage.snapshot()
        if snapshot.meta.index > 0:
            self.store.restore(snapshot.data)
        self._snapshot_index = snapshot.meta.index
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
            cluster_id=self.cluster_id,
            on_unreachable=self._on_unreachable,
            on_snapshot_status=self._on_snapshot_status,
            server_ssl=self._tls.server_context() if self._tls is not None else None,
            client_ssl=self._tls.client_context() if self._tls is not None else None,
        )
        self._sync_members()

    async def _run(self) -> None:
        transport = self._core_transport()
        storage = self._core_storage()
        try:
            async with asyncio.TaskGroup() as tg:
                self._group = tg
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
        """Stop: hand leadership to another voter first (when this node leads and
        ``transfer_on_close``), then stop the loops, close the connections and the storage.
        Pending ``put`` calls raise ``Timeout`` (their outcome is unknown); pending reads
        raise ``Timeout``."""
        if self._transfer_on_close and self._runner is not None and not self._closed:
            with contextlib.suppress(PhalanxError, RuntimeError):
                self.handed_over_to = await self.transfer_leadership(
                    timeout_s=max(2 * self._election_timeout_s(), TRANSFER_ON_CLOSE_S_MIN)
                )
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
        leader = self._core().leader
        return leader, self._members.client_address(leader) if leader != NONE else None

    def status(self) -> Status:
        return self._core().status()

    def describe(self) -> NodeStatus:
        """This node's view of itself and the cluster, as the client protocol sends it."""
        status = self._core().status()
        return NodeStatus(
            node_id=self.id,
            role=status.role.name.lower(),
            term=status.term,
            leader=status.leader,
            commit_index=status.commit,
            applied_index=self.store.applied_index,
            last_index=status.last_index,
            revision=self.store.revision,
            members=self._members.members(),
            cluster_id=self.cluster_id,
        )

    def transport_statistics(self) -> TransportStatistics:
        return self._core_transport().statistics()

    @property
    def leader_id(self) -> int:
        """The leader this node knows of, or 0."""
        return self._core().leader

    @property
    def is_leader(self) -> bool:
        return self._core().role == Role.LEADER

    @property
    def started(self) -> bool:
        """The node runs: started, not stopping, and its loops have not failed."""
        return self._runner is not None and not self._runner.done() and not self._stopping

    async def wait_stopped(self) -> None:
        """Return once the node's loops ended, by ``aclose`` or by failing (a failed fsync,
        an invariant violation); ``aclose`` then raises the failure."""
        runner = self._runner
        if runner is not None:
            await asyncio.wait({runner})

    @property
    def ready(self) -> bool:
        """The node knows a leader and has applied up to the commit index it learned from
        the first leader it heard of (``/ready``)."""
        if not self.started or self._leader == NONE or self.startup_commit_index is None:
            return False
        return self.store.applied_index >= self.startup_commit_index

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

    def _election_timeout_s(self) -> float:
        return self._config.election_ticks * self.tick_interval_s

    # -- inputs -------------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        if self._node is None or self._stopping or self.faults.blocks_in(message.src):
            return
        if (
            message.type == MessageType.APPEND
            and message.index == 0
            and not self._node.status().conf_state.voters
        ):
            # A member added at runtime starts knowing no membership, and the initial one is
            # not in the log: entries from index 1 cannot be applied correctly without it.
            # Wait for the snapshot the leader sends once it compacted its first entry.
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
            if (
                self._role == Role.LEADER
                and self._expire_index == _NO_EXPIRY
                and len(self.store.leases)
            ):
                self._propose_expiry(node)
            self._wake.set()

    def _propose_expiry(self, node: RawNode) -> None:
        proposal = expire_proposal(self.store.leases, self.faults.now_ms())
        if proposal is None:
            return
        try:
            node.propose(encode_proposal(proposal, self.store.limits))
        except ProposalDropped:
            return
        self._expire_index = node.last_index
        self.observer.on_proposal("lease_expire")

    # -- the Ready loop -----------------------------------------------------------------------

    async def _ready_loop(self) -> None:
        node = self._core()
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            self._flush_batch(node)
            while node.has_ready():
                await self._handle(node, node.ready())
                self._flush_batch(node)
            self._maybe_snapshot()

    async def _handle(self, node: RawNode, ready: Ready) -> None:
        storage = self._core_storage()
        # 0. A leader's appends and heartbeats promise nothing about its own disk: they leave
        # now and replicate while the leader writes (``phalanx.raft.early``).
        role = ready.soft_state.role if ready.soft_state is not None else self._role
        early, late = split_early(ready.messages, role)
        self._send(early)
        # 1. Persist: one save, one fsync, off the event loop. A save that only moves the
        # commit index is written without an fsync (etcd's MustSync): a lost commit index
        # is learned again, while a lost term, vote or entry could break safety.
        hard = ready.hard_state
        if hard is not None or ready.entries or ready.snapshot is not None:
            sync = (
                bool(ready.entries)
                or ready.snapshot is not None
                or (hard is not None and (hard.term, hard.vote) != self._durable_vote)
            )
            began = time.perf_counter()
            if sync or self._snapshot_lock.locked():
                await asyncio.to_thread(
                    storage.save, hard, ready.entries, ready.snapshot, sync=sync
                )
            else:
                # One small write() and no fsync: cheaper here than a hop to a thread.
                storage.save(hard, sync=False)
            if hard is not None:
                self._durable_vote = (hard.term, hard.vote)
            if sync:
                self.observer.on_persist(time.perf_counter() - began, len(ready.entries))
        # 2. Send the rest, now that what they promise is durable.
        self._send(late)
        # 3. Install the snapshot, apply the committed entries in order.
        self._apply(node, ready)
        # 4. Serve the reads whose index is applied.
        for read in ready.read_states:
            future = self._reads.pop(read.context, None)
            if future is not None and not future.done():
                future.set_result(read.index)
        self._serve_reads()
        if ready.soft_state is not None:
            self._on_soft_state(node, ready.soft_state)
        node.advance(ready)

    def _send(self, messages: tuple[Message, ...]) -> None:
        transport = self._core_transport()
        for message in messages:
            self.faults.send(message.dst, transport.send, message)

    def _apply(self, node: RawNode, ready: Ready) -> None:
        members_changed = False
        if ready.snapshot is not None and ready.snapshot.meta.index > self.store.applied_index:
            self.store.restore(ready.snapshot.data)
            self.store.applied_index = ready.snapshot.meta.index
            self._snapshot_index = ready.snapshot.meta.index
            members_changed = True
        for entry in ready.committed_entries:
            if entry.type == EntryType.CONF_CHANGE:
                node.apply_conf_change(decode_conf_change(entry.data))
                response: Response = self.store.apply(entry.index, b"")
                members_changed = True
            else:
                response = self.store.apply(entry.index, entry.data)
            if entry.index >= self._expire_index:
                self._expire_index = _NO_EXPIRY
            self._resolve_proposal(entry.index, entry.term, response)
        if members_changed:
            self._sync_members()
        if ready.committed_entries or ready.snapshot is not None:
            self.observer.on_apply(node.commit_index, self.store.applied_index)
            self._notify_applied()

    def _on_soft_state(self, node: RawNode, soft: SoftState) -> None:
        was_leader = self._role == Role.LEADER
        self._role, self._leader = soft.role, soft.leader
        status = node.status()
        self._term = status.term
        if soft.leader != NONE and self.startup_commit_index is None:
            self.startup_commit_index = status.commit
        if soft.role == Role.LEADER and not was_leader:
            # Keep-alives could not land while there was no leader: renew every lease
            # before this leader's clock can expire any (the renewal is applied first).
            with contextlib.suppress(ProposalDropped):
                node.propose(encode_proposal(Proposal(LeaseRenewAll(), self.faults.now_ms())))
                self._expire_index = node.last_index
        if was_leader and soft.role != Role.LEADER:
            self._expire_index = _NO_EXPIRY
            self._fail_proposals(
                Indeterminate(
                    f"node {self.id} lost leadership before the write was applied; "
                    "it may still commit"
                )
            )
        self.observer.on_role(status.term, soft.role.name.lower(), soft.leader)

    def _sync_members(self) -> None:
        peers = self._members.sync(self._core().status().conf_state, self.store)
        transport = self._core_transport()
        known = set(transport.peers())
        for node_id, address in peers.items():
            transport.add_peer(node_id, address)
        if self._core().status().conf_state.voters:
            for node_id in known - set(peers):
                transport.remove_peer(node_id)

    def _maybe_snapshot(self) -> None:
        compact_at_least = 1 if self._joiner_needs_snapshot() else 0
        due = self.store.applied_index - self._snapshot_index >= self._snapshot_entries
        if not (due or compact_at_least) or self._group is None or self._stopping:
            return
        if self._snapshot_task is None or self._snapshot_task.done():
            # Beside the Ready loop, not in it: writes keep flowing while it is taken.
            self._snapshot_task = self._group.create_task(
                self.snapshot(compact_at_least=compact_at_least),
                name=f"phalanx-snapshot-{self.id}",
            )

    def _joiner_needs_snapshot(self) -> bool:
        """As leader with the first entry still in the log: does a member that joined at
        runtime (not among the initial voters) need the log from index 1? It ignores such
        appends (see ``_on_message``); compacting the first entry away sends it a snapshot."""
        if self._role != Role.LEADER or self.store.applied_index < 1:
            return False
        storage = self._core_storage()
        if storage.first_index() != 1:
            return False
        initial = set(storage.snapshot().meta.conf_state.voters)
        return any(
            peer.match == 0 and peer.next <= 1 and node_id not in initial
            for node_id, peer in self._core().status().progress
        )

    async def snapshot(self, *, compact_at_least: int = 0) -> int:
        """Snapshot the state machine at its applied index and compact the log behind it,
        keeping ``snapshot_keep_entries`` entries, or fewer so that at least the entries up to
        ``compact_at_least`` go. Returns the snapshot's index (0 when there was nothing new).

        The state is captured at once (an immutable image), then encoded a piece at a time,
        yielding to the event loop between pieces, and written by a worker thread.

        A member added at runtime starts with an empty log and does not know the initial
        membership, which is not in the log; compacting the first entry away makes the
        leader send it a snapshot, which carries the membership.
        """
        node = self._check_open()
        async with self._snapshot_lock:
            applied = self.store.applied_index
            if applied <= self._snapshot_index or self._stopping:
                return 0
            storage = self._core_storage()
            image = image_of(self.store)
            conf = node.status().conf_state
            parts: list[bytes] = []
            for count, chunk in enumerate(encode_chunks(image), start=1):
                parts.append(chunk)
                if count % SNAPSHOT_CHUNKS_PER_YIELD == 0:
                    await asyncio.sleep(0)
            data = b"".join(parts)
            await asyncio.to_thread(storage.create_snapshot, applied, conf, data)
            self._snapshot_index = applied
            compact_to = min(applied, max(applied - self._snapshot_keep_entries, compact_at_least))
            if compact_to > 0:
                await asyncio.to_thread(storage.compact, compact_to)
            _log.info("node %d: snapshot at index %d (%d bytes)", self.id, applied, len(data))
            return applied

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

    def _notify_applied(self) -> None:
        waiters, self._apply_waiters = self._apply_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    async def wait_applied(self, index: int, timeout_s: float) -> bool:
        """Wait until this node has applied beyond ``index``; False on timeout or close."""
        deadline = time.monotonic() + timeout_s
        while self.store.applied_index <= index and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._apply_waiters.append(future)
            done, _ = await asyncio.wait({future}, timeout=left)
            if not done:
                future.cancel()
        return self.store.applied_index > index

    def _fail_proposals(self, error: PhalanxError) -> None:
        for _, future in self._proposals.values():
            if not future.done():
                future.set_exception(error)
        self._proposals.clear()

    def _fail_waiters(self) -> None:
        error = "the node closed before an answer came"
        batch, self._batch = self._batch, []
        for _, future in batch:  # never proposed: nothing happened
            if not future.done():
                future.set_exception(Unavailable(error + "; the write was not proposed"))
        self._fail_proposals(Timeout(error + "; the write's outcome is unknown"))
        for read in self._reads.values():
            if not read.done():
                read.set_exception(Timeout(error))
        for _, wait in self._read_waits:
            if not wait.done():
                wait.set_exception(Timeout(error))
        self._reads.clear()
        self._read_waits.clear()
        self._notify_applied()

    # -- client API ---------------------------------------------------------------------------

    def _hint(self) -> dict[str, str | None]:
        leader = self._core().leader
        return {"leader_hint": str(leader) if leader != NONE else None}

    def _check_open(self) -> RawNode:
        if self._runner is None or self._stopping or self._closed:
            raise RuntimeError("the node is not running")
        return self._core()

    def _check_leader(self, node: RawNode) -> None:
        if node.role == Role.LEADER:
            return
        if node.leader == NONE:
            raise NoQuorum(
                f"node {self.id} knows no leader: it cannot reach a quorum (partitioned, "
                "or an election is under way); nothing was proposed"
            )
        raise NotLeader(f"node {self.id} is not the leader", **self._hint())

    async def propose(
        self,
        command: Command,
        *,
        client_id: int = 0,
        seq: int = 0,
        acked_seq: int = 0,
        timeout_s: float | None = None,
    ) -> Response:
        """Put ``command`` through the log; return the state machine's answer once applied.

        ``client_id``/``seq``/``acked_seq`` name a session request (exactly-once). Raises
        ``NotLeader`` (with ``leader_hint``) or ``NoQuorum`` on a node that does not lead:
        nothing was proposed. Raises ``Timeout`` when the entry is not applied within
        ``timeout_s``, and ``Indeterminate`` when the node loses leadership meanwhile: the
        outcome is then unknown (the entry may still commit and apply later). Validation
        errors (``BadRequest``, ``TooLarge``) come before anything is proposed; a command the
        state machine rejects raises its typed error (``LeaseNotFound``, ``Compacted``...).
        """
        node = self._check_open()
        if isinstance(command, LeaseExpire | LeaseRenewAll):
            raise BadRequest("lease expiry and renewal are the leader's, not a client's")
        data = encode_proposal(
            Proposal(command, self.faults.now_ms(), client_id, seq, acked_seq), self.store.limits
        )
        self._check_leader(node)
        if len(self._proposals) + len(self._batch) >= self.pending_proposals_max:
            raise Unavailable(
                f"pending_proposals_max {self.pending_proposals_max} writes are in flight; "
                "nothing was proposed",
                retry_after_s=self.tick_interval_s,
            )
        # Proposals wait in a batch until the Ready loop is free; it proposes them as one
        # append (see ``_flush_batch``), so a busy leader sends fewer, larger messages.
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._batch.append((data, future))
        self._wake.set()
        self.observer.on_proposal("kv")
        try:
            async with asyncio.timeout(self._timeout(timeout_s)):
                response = await future
        except TimeoutError:
            future.cancel()
            raise Timeout(
                "the write was not applied within the deadline; its outcome is unknown"
            ) from None
        if isinstance(response, Error):
            raise response.exception()
        return response

    def _flush_batch(self, node: RawNode) -> None:
        batch, self._batch = self._batch, []
        live = [(data, future) for data, future in batch if not future.done()]
        if not live:
            return
        error: PhalanxError | None = None
        if node.role != Role.LEADER:
            try:
                self._check_leader(node)
            except PhalanxError as exc:
                error = exc
        else:
            try:
                node.propose_batch([data for data, _ in live])
            except ProposalDropped as exc:
                error = Unavailable(f"node {self.id} refused the proposals: {exc}")
        if error is not None:
            for _, future in live:
                future.set_exception(error)
            return
        term, first = node.term, node.last_index - len(live) + 1
        for offset, (_, future) in enumerate(live):
            self._proposals[first + offset] = (term, future)

    async def _wait_entry(self, node: RawNode, timeout_s: float | None) -> Response:
        index = node.last_index
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._proposals[index] = (node.term, future)
        self._wake.set()
        try:
            async with asyncio.timeout(self._timeout(timeout_s)):
                return await future
        except TimeoutError:
            raise Timeout(
                f"entry {index} not applied within the deadline; the write's outcome is unknown"
            ) from None
        finally:
            waiting = self._proposals.get(index)
            if waiting is not None and waiting[1] is future:
                del self._proposals[index]

    async def put(self, key: bytes, value: bytes, *, timeout_s: float | None = None) -> PutResult:
        """Write ``key`` = ``value`` (see :meth:`propose` for the errors)."""
        response = await self.propose(Put(key, value), timeout_s=timeout_s)
        if not isinstance(response, PutResult):  # pragma: no cover - the store's contract
            raise PhalanxError(f"unexpected response to a put: {response!r}")
        return response

    async def read(
        self, op: Range, *, linearizable: bool = True, timeout_s: float | None = None
    ) -> RangeResult:
        """Read a key or range.

        Linearizable by default: a ReadIndex round confirms the leader's commit index, and the
        read is served once this node has applied it, so it sees every write acknowledged
        before it began (on a follower too). Raises ``NoQuorum`` when no round completes
        within the election timeout (this node is cut off from the majority, or no leader is
        elected), ``Timeout`` at ``timeout_s``. ``linearizable=False`` reads the local state
        at once and may be stale. A read has no effect, so retrying is always safe.
        """
        node = self._check_open()
        if linearizable:
            await self._read_barrier(node, timeout_s)
        return self.store.get(
            op.key,
            op.range_end,
            revision=op.revision,
            limit=op.limit,
            keys_only=op.keys_only,
            count_only=op.count_only,
        )

    async def get(
        self, key: bytes, *, linearizable: bool = True, timeout_s: float | None = None
    ) -> bytes | None:
        """The value of ``key`` (None when absent); see :meth:`read`."""
        result = await self.read(Range(key), linearizable=linearizable, timeout_s=timeout_s)
        return result.kvs[0].value if result.kvs else None

    async def _read_barrier(self, node: RawNode, timeout_s: float | None) -> None:
        try:
            async with asyncio.timeout(self._timeout(timeout_s)):
                index = await self._read_index(node)
                wait: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._read_waits.append((index, wait))
                self._serve_reads()
                await wait
        except TimeoutError:
            raise Timeout("no read round completed within the deadline") from None

    async def _read_index(self, node: RawNode) -> int:
        # A forwarded read may be lost (dropped by a leader, or no leader yet): ask again
        # every election timeout; after two timeouts without an answer give up with NoQuorum.
        context = f"{self.id}:{next(self._contexts)}".encode()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[context] = future
        retry_s = self._election_timeout_s()
        try:
            for _ in range(2):
                try:
                    node.read_index(context)
                    self._wake.set()
                except ProposalDropped:
                    pass  # no leader known yet: wait and ask again
                done, _ = await asyncio.wait({future}, timeout=retry_s)
                if done:
                    return future.result()
            raise NoQuorum(
                f"node {self.id} could not confirm a leader with a quorum within "
                f"{2 * retry_s:.3g} s (partitioned, or no leader elected)"
            )
        finally:
            self._reads.pop(context, None)
            if not future.done():
                future.cancel()

    # -- membership and leadership ----------------------------------------------------------

    async def add_member(
        self,
        node_id: int,
        peer: Address,
        client: Address,
        *,
        learner: bool = True,
        timeout_s: float | None = None,
    ) -> None:
        """Add ``node_id``: record its addresses, then change the configuration.

        A learner (the default) receives the log without voting, so adding it never lowers
        availability; promote it once it caught up (:meth:`promote_member`).
        """
        node = self._check_open()
        self._check_leader(node)
        info = MemberInfo(node_id, format_address(peer), format_address(client))
        await self.propose(Put(member_key(node_id), encode_member(info)), timeout_s=timeout_s)
        kind = ConfChangeType.ADD_LEARNER if learner else ConfChangeType.ADD_VOTER
        await self._change(node, ConfChange(((kind, node_id),)), timeout_s)
        # The new member reaches the log through a snapshot (see ``snapshot``).
        await self.snapshot(compact_at_least=1)

    async def promote_member(self, node_id: int, *, timeout_s: float | None = None) -> None:
        """Make the learner ``node_id`` a voter."""
        node = self._check_open()
        self._check_leader(node)
        status = node.status()
        if node_id not in status.conf_state.learners:
            raise BadRequest(f"node {node_id} is not a learner")
        match = dict(status.progress)[node_id].match if status.progress else 0
        if match == 0 or match + LEARNER_LAG_ENTRIES_MAX < status.commit:
            raise Unavailable(
                f"learner {node_id} has not caught up (its log ends at {match}, the commit "
                f"index is {status.commit}): promote it once it has",
                retry_after_s=1.0,
            )
        await self._change(node, ConfChange(((ConfChangeType.ADD_VOTER, node_id),)), timeout_s)

    async def remove_member(self, node_id: int, *, timeout_s: float | None = None) -> None:
        """Remove ``node_id`` from the configuration and forget its addresses."""
        node = self._check_open()
        self._check_leader(node)
        conf = node.status().conf_state
        if node_id not in conf.voters and node_id not in conf.learners:
            raise BadRequest(f"node {node_id} is not a member")
        if node_id == self.id:
            await self.transfer_leadership(timeout_s=timeout_s)
            raise NotLeader(
                "leadership moved away so this node can be removed; ask the new leader",
                **self._hint(),
            )
        await self._change(node, ConfChange(((ConfChangeType.REMOVE_NODE, node_id),)), timeout_s)
        await self.propose(DeleteRange(member_key(node_id)), timeout_s=timeout_s)

    async def _change(self, node: RawNode, change: ConfChange, timeout_s: float | None) -> None:
        self._check_leader(node)
        try:
            node.propose_conf_change(change)
        except ProposalDropped as exc:
            raise Unavailable(f"membership change refused: {exc}") from exc
        self.observer.on_proposal("conf_change")
        await self._wait_entry(node, timeout_s)

    async def transfer_leadership(self, to: int = 0, *, timeout_s: float | None = None) -> int:
        """Hand leadership to voter ``to`` (0: the most up-to-date other voter) and wait until
        this node no longer leads; returns the new leader's id (0 if none emerged in time).

        Raises ``NotLeader`` when this node does not lead, ``BadRequest`` when there is no
        other voter.
        """
        node = self._check_open()
        status = node.status()
        if status.role != Role.LEADER:
            raise NotLeader(f"node {self.id} is not the leader", **self._hint())
        if to == 0:
            candidates = [
                (peer.match, peer_id)
                for peer_id, peer in status.progress
                if peer_id != self.id and not peer.is_learner
            ]
            if not candidates:
                raise BadRequest("no other voter to hand leadership to")
            to = max(candidates)[1]
        node.transfer_leader(to)
        self._wake.set()
        deadline = time.monotonic() + self._timeout(timeout_s)
        while time.monotonic() < deadline:
            current = node.status()
            if current.role != Role.LEADER:
                return current.leader
            await asyncio.sleep(self.tick_interval_s / 2)
        return 0

    def _timeout(self, timeout_s: float | None) -> float:
        return self.request_timeout_s if timeout_s is None else timeout_s

    def __repr__(self) -> str:
        return f"RaftNode(id={self.id}, data_dir={str(self.data_dir)!r})"


def _check_options(
    *,
    tick_interval_s: float,
    request_timeout_s: float,
    snapshot_entries: int,
    snapshot_keep_entries: int,
    pending_proposals_max: int,
) -> None:
    if tick_interval_s <= 0:
        raise ValueError(f"tick_interval_s: must be > 0, got {tick_interval_s}")
    if request_timeout_s <= 0:
        raise ValueError(f"request_timeout_s: must be > 0, got {request_timeout_s}")
    if snapshot_entries < 1 or snapshot_keep_entries < 0:
        raise ValueError("snapshot_entries must be >= 1 and snapshot_keep_entries >= 0")
    if pending_proposals_max < 1:
        raise ValueError(f"pending_proposals_max: must be >= 1, got {pending_proposals_max}")
