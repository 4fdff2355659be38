"""A simulated cluster: nodes, network, disks, clients and faults on one event queue.

:class:`Cluster` pops events in virtual-time order and, for every node an event touched, runs
the Ready loop the core's contract asks for:

1. take a Ready; write its snapshot, entries and hard state to the disk (pending writes);
2. fsync: at once, or after the disk's latency (a :data:`~.events.EventKind.DISK_SYNC`
   event), holding the Ready (and everything after it) until then;
3. only then send its messages;
4. install its snapshot and apply its committed entries to the key-value state machine,
   calling ``apply_conf_change`` for membership entries;
5. serve its read states once the state machine has applied their index;
6. ``advance`` it, then report unreachable peers and sent snapshots to the core.

The :class:`~.checks.Checker` sees every step as it happens. A broken property, an exception
from the core or from the harness, ends the run with :class:`SimulationFailed`, whose report
holds the seed, the settings, the fault schedule and the last events.

Optional features (``SimSettings.features``) switch on parts of the core's API as the core
gains them: ``read_index`` (client reads), ``transfer`` (leader transfers), ``membership``
(conf changes), ``snapshot`` (log compaction and snapshot installs), ``unreachable``
(``report_unreachable`` / ``report_snapshot``).
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from typing import Any

import msgspec

from phalanx.errors import InvariantViolation, PhalanxError
from phalanx.raft.early import split_early
from phalanx.raft.storage import MemoryStorage
from phalanx.raft.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Ready,
    Role,
)
from phalanx.sim.checks import Checker, Violation
from phalanx.sim.events import EventKind, EventQueue
from phalanx.sim.faults import Fault, FaultKind, ScheduleSettings, generate_schedule
from phalanx.sim.history import History
from phalanx.sim.nemesis import Nemesis
from phalanx.sim.nemesis import build as build_nemesis
from phalanx.sim.network import LinkProfile, Network
from phalanx.sim.node import CoreFactory, NodeState, SimNode
from phalanx.sim.workload import Workload, WorkloadSettings

__all__ = [
    "ALL_FEATURES",
    "Cluster",
    "SimSettings",
    "SimulationFailed",
    "default_core_factory",
]

ALL_FEATURES = frozenset({"read_index", "transfer", "membership", "snapshot", "unreachable"})

_MASK64 = (1 << 64) - 1
_FNV_PRIME = 0x100000001B3
_READY_LOOPS_MAX = 1_000  # Readys drained per node per event; more means a core livelock
_CHECK_PERIOD_US = 100_000
_NOTE = 0  # a trace line that is not an event
# Crash points are likelier at the moments most bugs hide behind (FoundationDB's "buggify"):
# a vote or a new term not yet on disk, a leader that just advanced its commit index.
_HOT_CRASH_WEIGHT = 10.0
_FAULT_CODES = {kind: code for code, kind in enumerate(FaultKind)}


class SimSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that shapes one simulated run, apart from the seed."""

    nodes: int = 5
    faults: frozenset[str] = frozenset()
    fault_phase_us: int = 10_000_000
    liveness_us_max: int = 15_000_000
    tick_us: int = 100_000
    tick_skew_max: float = 0.05
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    read_only: str = "safe"
    max_size_per_msg_bytes: int = 1 << 20
    max_inflight_msgs: int = 256
    link: LinkProfile = msgspec.field(default_factory=LinkProfile)
    lossy_duplicate_probability: float = 0.05
    sync_us_min: int = 50
    sync_us_max: int = 1_000
    slow_sync_us_min: int = 20_000
    slow_sync_us_max: int = 400_000
    torn_writes: bool = True
    workload: WorkloadSettings = msgspec.field(default_factory=WorkloadSettings)
    snapshot_entries: int = 64
    nodes_max: int = 9
    features: frozenset[str] = ALL_FEATURES
    schedule: ScheduleSettings = msgspec.field(default_factory=ScheduleSettings)
    trace_events: int = 80
    events_max: int = 1_000_000
    history_ops_max: int = 200_000
    #: What a Ready's messages may leave before its writes are durable. ``"leader"`` (the
    #: default, what ``phalanx.node`` does): a leader's appends and heartbeats overlap its
    #: fsync (``phalanx.raft.early``). Deliberately broken drivers, for the planted-bug
    #: tests: ``"all"`` of them, or only the ``"votes"`` a node grants. ``""``: nothing.
    early_send: str = "leader"

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= self.nodes_max:
            raise ValueError(f"nodes must be within [1, nodes_max={self.nodes_max}]")
        if self.fault_phase_us < 0 or self.liveness_us_max < 1:
            raise ValueError("need fault_phase_us >= 0 and liveness_us_max > 0")
        if self.tick_us < 1 or not 0 <= self.tick_skew_max < 1:
            raise ValueError("need tick_us > 0 and 0 <= tick_skew_max < 1")
        unknown = self.features - ALL_FEATURES
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}")
        if self.early_send not in ("", "leader", "all", "votes"):
            raise ValueError("early_send must be '', 'leader', 'all' or 'votes'")


class SimulationFailed(InvariantViolation):
    """A run broke a property (or the core raised): ``report`` says how to replay it."""

    def __init__(self, seed: int, check: str, detail: str, report: str) -> None:
        super().__init__(f"seed {seed}: [{check}] {detail}")
        self.seed = seed
        self.check = check
        self.detail = detail
        self.report = report


def default_core_factory(settings: SimSettings) -> CoreFactory:
    """Build the real :class:`~phalanx.raft.node.RawNode` with the settings' timing."""
    from phalanx.raft.config import Config
    from phalanx.raft.node import RawNode

    def build(node_id: int, applied: int, storage: MemoryStorage, rng: random.Random) -> Any:
        config = Config(
            id=node_id,
            election_ticks=settings.election_ticks,
            heartbeat_ticks=settings.heartbeat_ticks,
            pre_vote=settings.pre_vote,
            check_quorum=settings.check_quorum,
            read_only=settings.read_only,
            max_size_per_msg_bytes=settings.max_size_per_msg_bytes,
            max_inflight_msgs=settings.max_inflight_msgs,
            applied=applied,
        )
        return RawNode(config, storage, rng)

    return build


def _proposal_dropped() -> type[Exception]:
    try:
        from phalanx.raft.node import ProposalDropped
    except ImportError:  # pragma: no cover - only before the core exists
        return PhalanxError
    return ProposalDropped


def _describe_message(m: Message) -> str:
    text = f"{m.type.name} {m.src}->{m.dst} term={m.term}"
    if m.log_term or m.index:
        text += f" log_term={m.log_term} index={m.index}"
    if m.entries:
        text += f" entries={m.entries[0].index}..{m.entries[-1].index}"
    if m.commit:
        text += f" commit={m.commit}"
    if m.reject:
        text += f" REJECT hint={m.reject_hint}"
    if m.snapshot is not None:
        text += f" snapshot@{m.snapshot.meta.index}"
    return text


class Cluster:
    """One seeded run: build it, then :meth:`run` it."""

    def __init__(
        self,
        seed: int,
        settings: SimSettings,
        core_factory: CoreFactory | None = None,
    ) -> None:
        self.seed = seed
        self.settings = settings
        self.rng = random.Random(seed)
        rng = self.rng
        self.queue = EventQueue(settings.events_max)
        self.network = Network(random.Random(rng.getrandbits(64)), settings.link)
        self.checker = Checker()
        self.history = History(settings.history_ops_max)
        self._factory = core_factory or default_core_factory(settings)
        self._dropped = _proposal_dropped()
        self.features = settings.features
        ids = tuple(range(1, settings.nodes + 1))
        self.initial_ids = ids
        conf = ConfState(voters=ids)
        self.nodes: dict[int, SimNode] = {}
        for node_id in ids:
            self.nodes[node_id] = self._new_node(node_id, conf)
        self._fault_rng = random.Random(rng.getrandbits(64))
        self.schedule: list[Fault] = generate_schedule(
            random.Random(rng.getrandbits(64)),
            ids,
            settings.faults,
            settings.fault_phase_us,
            settings.schedule,
        )
        self.workload = Workload(
            random.Random(rng.getrandbits(64)),
            self.queue,
            self,
            settings.workload,
            self.history,
        )
        # (time_us, seq, kind, node, payload): events as popped, notes with kind _NOTE; they
        # are formatted only when a report is written.
        self._trace: collections.deque[tuple[int, int, int, int, Any]] = collections.deque(
            maxlen=settings.trace_events
        )
        self.trace_hash = 0xCBF29CE484222325
        self.faults_applied = 0
        self.quiesce_us = settings.fault_phase_us
        self.liveness_met_us: int | None = None
        self._last_fault: str = ""
        self._fault_handlers = self._handlers()
        #: Probability of a crash at each crash point (0: the crash-points fault is off).
        self._crash_point_p = 0.0
        #: The targeted fault running now, if any (see :mod:`phalanx.sim.nemesis`).
        self.nemesis: Nemesis | None = None
        #: Every targeted fault that ran: (name, the last step it reached).
        self.nemesis_log: list[tuple[str, str]] = []

    def _new_node(self, node_id: int, conf: ConfState) -> SimNode:
        skew = self.rng.uniform(-self.settings.tick_skew_max, self.settings.tick_skew_max)
        tick_us = max(1, round(self.settings.tick_us * (1 + skew)))
        return SimNode(node_id, conf, random.Random(self.rng.getrandbits(64)), tick_us)

    # -- the trace ---------------------------------------------------------------------------

    def _fold(self, value: int) -> None:
        self.trace_hash = ((self.trace_hash ^ value) * _FNV_PRIME) & _MASK64

    def note(self, text: str) -> None:
        """Add a line to the trace of recent events (shown when a run fails)."""
        self._trace.append((self.queue.now_us, -1, _NOTE, 0, text))

    def trace_lines(self) -> list[str]:
        """The recent events and notes, oldest first, one readable line each."""
        lines = []
        for time_us, _seq, kind, node, payload in self._trace:
            if kind == _NOTE:
                text = f"  * {payload}"
            elif kind == EventKind.DELIVER:
                text = f"deliver {_describe_message(payload)}"
            elif kind == EventKind.TICK:
                text = f"tick node {node}"
            elif kind == EventKind.DISK_SYNC:
                text = f"fsync done node {node}"
            elif kind == EventKind.CLIENT:
                text = f"client {payload[0]} timer"
            elif kind == EventKind.FAULT:
                text = f"fault {payload.kind.value}"
            else:
                text = f"check {payload}"
            lines.append(f"{time_us / 1e6:12.6f}s  {text}")
        return lines

    def replay_command(self) -> str:
        s = self.settings
        return (
            f"phalanx sim --seed {self.seed} --nodes {s.nodes} "
            f"--faults {','.join(sorted(s.faults)) or 'none'} "
            f"--duration-s {s.fault_phase_us / 1e6:g}"
        )

    def report(self, check: str, detail: str) -> str:
        lines = [
            f"SIMULATION FAILED: [{check}] {detail}",
            "",
            f"seed {self.seed}   replay: {self.replay_command()}",
            (
                f"virtual time {self.queue.now_us / 1e6:.6f}s, {self.queue.popped} events, "
                f"trace hash {self.trace_hash:016x}"
            ),
            "",
            "nodes:",
        ]
        for node in self.nodes.values():
            status = ""
            if node.core is not None:
                try:
                    st = node.core.status()
                    status = (
                        f"term={st.term} vote={st.vote} commit={st.commit} "
                        f"applied={st.applied} role={Role(st.role).name} leader={st.leader}"
                    )
                except Exception as error:  # the core may be in a broken state
                    status = f"status() raised {error!r}"
            lines.append(
                f"  node {node.id}: {node.state.value} life={node.life} "
                f"last_index={node.storage.last_index()} applied={node.sm.applied} {status}"
            )
        lines += ["", "fault schedule:"]
        lines += [f"  {f.describe()}" for f in self.schedule] or ["  (none)"]
        lines += ["", f"last {len(self._trace)} events:"]
        lines += [f"  {line}" for line in self.trace_lines()]
        return "\n".join(lines)

    # -- running -----------------------------------------------------------------------------

    def run(self) -> None:
        """Run to the end: liveness confirmed after the fault phase, or a failure raised."""
        try:
            self._run()
        except SimulationFailed:
            raise
        except Violation as violation:
            raise SimulationFailed(
                self.seed,
                violation.check,
                violation.detail,
                self.report(violation.check, violation.detail),
            ) from violation
        except Exception as error:
            check = "core-invariant" if isinstance(error, InvariantViolation) else "exception"
            detail = f"{type(error).__name__}: {error}"
            raise SimulationFailed(self.seed, check, detail, self.report(check, detail)) from error

    def _run(self) -> None:
        queue = self.queue
        for node in self.nodes.values():
            self._start(node)
        for fault in self.schedule:
            queue.push(fault.at_us, EventKind.FAULT, 0, fault)
        queue.push(self.quiesce_us, EventKind.CHECK, 0, "quiesce")
        if self.settings.workload.clients:
            self.workload.start()
        deadline = self.quiesce_us + self.settings.liveness_us_max
        pop = queue.pop
        deliver = EventKind.DELIVER
        nodes = self.nodes
        trace = self._trace.append
        h = self.trace_hash
        try:
            while queue:
                event = pop()
                trace(event)
                time_us, _seq, kind, node_id, payload = event
                if kind == deliver:
                    msg: Message = payload
                    h = (
                        h
                        ^ hash(
                            (
                                time_us,
                                msg.type,
                                msg.src,
                                msg.dst,
                                msg.term,
                                msg.index,
                                msg.log_term,
                                msg.commit,
                                len(msg.entries),
                                msg.reject,
                            )
                        )
                    ) * _FNV_PRIME & _MASK64
                    self._deliver(nodes[node_id], msg)
                    continue
                self.trace_hash = h
                if self._other_event(time_us, kind, node_id, payload, deadline):
                    return
                h = self.trace_hash
        finally:
            self.trace_hash = h

    def _other_event(
        self, time_us: int, kind: int, node_id: int, payload: Any, deadline: int
    ) -> bool:
        """Every event but a delivery (the common case, handled inline); True: stop."""
        fold = self._fold
        queue = self.queue
        tick = EventKind.TICK
        nodes = self.nodes
        if kind == tick:
            fold(hash((time_us, kind, node_id)))
            node = nodes[node_id]
            if node.life == payload and node.state is NodeState.UP:
                node.core.tick()
                self._drive(node)
                queue.push(time_us + node.tick_period_us(), tick, node_id, node.life)
        elif kind == EventKind.DISK_SYNC:
            fold(hash((time_us, kind, node_id)))
            node = nodes[node_id]
            if node.life == payload and node.syncing is not None:
                self._synced(node)
        elif kind == EventKind.CLIENT:
            fold(hash((time_us, kind, payload)))
            self.workload.on_event(payload)
        elif kind == EventKind.FAULT:
            fold(hash((time_us, kind, _FAULT_CODES[payload.kind], payload.nodes)))
            self._fault(payload)
        else:
            fold(hash((time_us, kind)))
            if self._check_liveness(deadline):
                return True
            queue.push(time_us + _CHECK_PERIOD_US, EventKind.CHECK, 0, "liveness")
        return False

    # -- nodes -------------------------------------------------------------------------------

    def _start(self, node: SimNode) -> None:
        node.start(self._factory)
        self.checker.on_start(node.id, node.storage.hard_state().commit)
        snapshot_index = node.storage.snapshot().meta.index
        if snapshot_index:
            self.checker.on_snapshot_installed(node.id, snapshot_index)
        self.note(
            f"node {node.id} starts (life {node.life}) commit="
            f"{node.storage.hard_state().commit} last_index={node.storage.last_index()}"
        )
        # The first tick comes at a random phase, so nodes do not tick in lockstep.
        first = self.queue.now_us + self.rng.randint(1, node.tick_period_us())
        self.queue.push(first, EventKind.TICK, node.id, node.life)
        self._drive(node)

    def _crash_after(self, node: SimNode, ready: Ready) -> bool:
        if not self._crash_point_p:
            return False
        if node.role == Role.LEADER and ready.hard_state is not None:
            return self._crash_point(node, "right after committing as leader", _HOT_CRASH_WEIGHT)
        return self._crash_point(node, "right after a Ready")

    def _crash_point(self, node: SimNode, where: str, weight: float = 1.0) -> bool:
        """While crash points are on, crash ``node`` here with their probability times weight."""
        if not self._crash_point_p or node.state is not NodeState.UP:
            return False
        if self._fault_rng.random() >= self._crash_point_p * weight:
            return False
        self.note(f"crash point: node {node.id} {where}")
        self._crash(node)
        # A supervisor restarts the process soon, while the cluster may still be in the
        # middle of whatever the crash interrupted (an election, a replication round).
        restart_us = self.queue.now_us + self._fault_rng.randint(1_000, 300_000)
        self.queue.push(
            restart_us, EventKind.FAULT, 0, Fault(restart_us, FaultKind.RESTART, (node.id,))
        )
        return True

    def crash_node(self, node: SimNode, *, torn: bool = True) -> None:
        """Crash ``node`` now (torn writes only if the settings allow them)."""
        if node.state is not NodeState.UP:
            return
        lost = node.crash(torn and self.settings.torn_writes)
        self.checker.on_durable_commit(node.id, node.disk.durable.hard_state.commit)
        self.note(f"node {node.id} CRASHES, {lost} unsynced writes lost")
        self.workload.on_node_down(node.id)

    def schedule_fault(self, fault: Fault) -> None:
        """Run ``fault`` at its time (not part of the schedule printed in reports)."""
        self.queue.push(fault.at_us, EventKind.FAULT, 0, fault)

    def _crash(self, node: SimNode) -> None:
        if node.state is not NodeState.UP:
            return
        lost = node.crash(self.settings.torn_writes)
        self.checker.on_durable_commit(node.id, node.disk.durable.hard_state.commit)
        self.note(f"node {node.id} CRASHES, {lost} unsynced writes lost")
        self.workload.on_node_down(node.id)

    def _deliver(self, node: SimNode, msg: Message) -> None:
        if not self.network.arrives(msg.src, msg.dst) or node.state is not NodeState.UP:
            return
        node.core.step(msg)
        self._drive(node)

    def _drive(self, node: SimNode) -> None:
        """Run the Ready loop until the core has nothing more or waits for an fsync."""
        core = node.core
        if core is None:
            return
        for _ in range(_READY_LOOPS_MAX):
            if node.syncing is not None or node.core is not core or not core.has_ready():
                return
            ready: Ready = core.ready()
            wrote = self._persist(node, ready)
            if self.settings.early_send:
                self._send(self._early(node, ready.messages))
            nemesis = self.nemesis
            if nemesis is not None and nemesis.after_write(node, ready):
                return
            if wrote:
                durable = node.disk.durable.hard_state
                hs = ready.hard_state
                hot = hs is not None and (hs.vote != durable.vote or hs.term != durable.term)
                # etcd's MustSync: a Ready that only moves the commit index need not wait for
                # an fsync (a lost commit index is learned again); its write stays pending
                # until the next fsync, and a crash may lose it.
                if hot or ready.entries or ready.snapshot is not None:
                    s = self.settings
                    rng = node.rng.random
                    if node.slow_disk:
                        low, high = s.slow_sync_us_min, s.slow_sync_us_max
                    else:
                        low, high = s.sync_us_min, s.sync_us_max
                    latency = low + int(rng() * (high - low + 1))
                    if latency > 0:
                        node.syncing = ready
                        self.queue.push(
                            self.queue.now_us + latency, EventKind.DISK_SYNC, node.id, node.life
                        )
                        if self._crash_point_p:
                            self._crash_point(
                                node,
                                "with a new term or vote not yet fsynced"
                                if hot
                                else "with an fsync pending",
                                _HOT_CRASH_WEIGHT if hot else 1.0,
                            )
                        return
                    node.disk.sync()
                    self.checker.on_durable_commit(node.id, node.disk.durable.hard_state.commit)
            self._complete(node, ready)
            if self._crash_after(node, ready):
                return
        raise InvariantViolation(f"node {node.id} produced {_READY_LOOPS_MAX} Readys in a row")

    def _synced(self, node: SimNode) -> None:
        ready = node.syncing
        node.syncing = None
        node.disk.sync()
        self.checker.on_durable_commit(node.id, node.disk.durable.hard_state.commit)
        if ready is not None:
            self._complete(node, ready)
            if self._crash_after(node, ready):
                return
        self._drive(node)

    def _persist(self, node: SimNode, ready: Ready) -> bool:
        """Step 1: write the Ready to storage (the page cache) and queue it on the disk."""
        storage = node.storage
        checker = self.checker
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        if ready.entries:
            first = ready.entries[0].index
            prev_term = node.term_at(first - 1) if first > 1 else 0
            storage.append(ready.entries)
            checker.on_persist(node.id, ready.entries, prev_term)
        hard_state = ready.hard_state
        if hard_state is not None:
            storage.set_hard_state(hard_state)
            checker.on_commit(
                node.id, hard_state.term, hard_state.commit, storage.last_index(), node.term_at
            )
        soft = ready.soft_state
        if soft is not None:
            if soft.role != node.role or soft.leader != node.leader:
                self.note(f"node {node.id} is {Role(soft.role).name} (leader {soft.leader})")
            node.role = soft.role
            node.leader = soft.leader
        # A leader is checked when it takes office and whenever its term changes while it
        # leads (a core that forgets to step down on a higher term keeps the role).
        if node.role == Role.LEADER and (soft is not None or hard_state is not None):
            term = hard_state.term if hard_state is not None else storage.hard_state().term
            if self.checker.leaders.get(term) != node.id:
                checker.on_leader(node.id, term, storage.last_index(), node.term_at)
        return node.disk.write(hard_state, ready.entries, ready.snapshot)

    def _early(self, node: SimNode, messages: tuple[Message, ...]) -> tuple[Message, ...]:
        """The messages the broken driver sends before persisting."""
        if self.nemesis is not None:
            messages = self.nemesis.filter(node, messages)
        if self.settings.early_send == "all":
            return messages
        if self.settings.early_send == "leader":
            return split_early(messages, Role(node.role))[0]
        return tuple(m for m in messages if m.type == MessageType.VOTE_RESP)

    def _send(self, messages: tuple[Message, ...]) -> None:
        """Step 2 (or, with the broken driver, step 1b): put messages on the network."""
        if not messages:
            return
        network = self.network
        queue = self.queue
        now = queue.now_us
        nodes = self.nodes
        checker = self.checker
        for msg in messages:
            if msg.type == MessageType.VOTE_RESP and not msg.reject:
                checker.on_vote(msg.src, msg.term, msg.dst)
            target = nodes.get(msg.dst)
            if target is None:
                continue
            for delay in network.transmit(msg.src, msg.dst):
                queue.push(now + delay, EventKind.DELIVER, msg.dst, msg)

    def _complete(self, node: SimNode, ready: Ready) -> None:
        """Steps 2-6 once the Ready's writes are durable."""
        nemesis = self.nemesis
        messages = ready.messages
        if nemesis is not None:
            if nemesis.before_send(node, ready):
                return  # crashed before sending
            if messages:
                messages = nemesis.filter(node, messages)
        if not self.settings.early_send:
            self._send(messages)
        elif self.settings.early_send == "leader":
            self._send(split_early(messages, Role(node.role))[1])
        elif self.settings.early_send == "votes":
            self._send(tuple(m for m in messages if m.type != MessageType.VOTE_RESP))
        core = node.core
        checker = self.checker
        if ready.snapshot is not None:
            meta = ready.snapshot.meta
            node.sm.restore(ready.snapshot.data, meta.index)
            node.conf_state = meta.conf_state
            checker.on_snapshot_installed(node.id, meta.index)
            self.note(f"node {node.id} installs snapshot at {meta.index}")
        if ready.committed_entries and not self._apply(node, ready.committed_entries):
            return  # the node removed itself
        if ready.read_states:
            node.pending_reads.extend(ready.read_states)
        if node.pending_reads:
            self._serve_reads(node)
        core.advance(ready)
        if "snapshot" in self.features and self.settings.snapshot_entries:
            self._maybe_compact(node)
        if "unreachable" in self.features and ready.messages:
            self._report_peers(core, ready.messages)

    def _report_peers(self, core: Any, messages: tuple[Message, ...]) -> None:
        """Tell the core which peers were unreachable and how its snapshots fared."""
        network = self.network
        for msg in messages:
            if msg.type == MessageType.SNAPSHOT:
                ok = network.connected(msg.src, msg.dst) and msg.dst in self.nodes
                core.report_snapshot(msg.dst, ok)
            elif not network.connected(msg.src, msg.dst):
                core.report_unreachable(msg.dst)

    def _apply(self, node: SimNode, entries: tuple[Entry, ...]) -> bool:
        """Step 4: apply committed entries; False if the node removed itself meanwhile."""
        core = node.core
        checker = self.checker
        for entry in entries:
            checker.on_apply(node.id, entry)
            if entry.type == EntryType.CONF_CHANGE:
                self._apply_conf_change(node, entry)
                if node.core is not core:
                    return False
                node.sm.applied = entry.index
                continue
            put = node.sm.apply(entry)
            if put is not None:
                op_id, key, value = put
                checker.on_put_applied(value, entry.index)
                op = self.workload.on_put_applied(node.id, op_id, entry.index)
                if op is not None:
                    checker.on_put_ok(key, value, entry.index, self.queue.now_us)
        return True

    def _serve_reads(self, node: SimNode) -> None:
        waiting = []
        for rs in node.pending_reads:
            if rs.index > node.sm.applied:
                waiting.append(rs)
                continue
            found = self.workload.read_key(rs.context)
            if found is None:
                continue
            op, client_index = found
            if op.node != node.id:
                continue
            value = node.sm.data.get(op.key)
            self.workload.on_read_served(client_index, value, rs.index)
            self.checker.on_read_ok(op.key, value, op.invoke_us)
        node.pending_reads = waiting

    def _maybe_compact(self, node: SimNode) -> None:
        storage = node.storage
        applied = node.sm.applied
        keep = self.settings.snapshot_entries // 2
        if applied - storage.first_index() + 1 <= self.settings.snapshot_entries:
            return
        at = applied - keep
        if applied <= storage.snapshot().meta.index:
            return
        # The snapshot is of the state machine at ``applied``; the ``keep`` entries before it
        # stay in the log so that a follower slightly behind catches up without a snapshot.
        snapshot = storage.create_snapshot(applied, node.conf_state, node.sm.snapshot())
        storage.compact(at)
        node.disk.compact(snapshot, at)

    def _apply_conf_change(self, node: SimNode, entry: Entry) -> None:
        change = msgspec.msgpack.decode(entry.data, type=ConfChange) if entry.data else None
        if change is None:
            return
        old = node.conf_state
        was_member = node.id in old.voters + old.learners + old.voters_outgoing
        node.conf_state = node.core.apply_conf_change(change)
        cs = node.conf_state
        # A node that catches up from a snapshot taken before it was added applies conf
        # changes that do not name it yet: only a member that is removed retires.
        if was_member and node.id not in cs.voters + cs.learners + cs.voters_outgoing:
            self.note(f"node {node.id} applies its own removal and retires")
            node.retire()
            self.workload.on_node_down(node.id)

    # -- what clients call -------------------------------------------------------------------

    def client_nodes(self) -> list[int]:
        return [n.id for n in self.nodes.values() if n.state is not NodeState.RETIRED]

    def leader_hint(self, node: int) -> int:
        target = self.nodes.get(node)
        return target.leader if target is not None and target.up else NONE

    def propose(self, node: int, data: bytes) -> str | None:
        target = self.nodes[node]
        if not target.up:
            return "node down"
        try:
            target.core.propose(data)
        except self._dropped as error:
            return f"dropped: {error}"
        self._drive(target)
        return None

    def read_index(self, node: int, context: bytes) -> str | None:
        target = self.nodes[node]
        if not target.up:
            return "node down"
        try:
            target.core.read_index(context)
        except self._dropped as error:
            return f"dropped: {error}"
        self._drive(target)
        return None

    # -- faults ------------------------------------------------------------------------------

    def leader(self) -> SimNode | None:
        """The up node that believes it leads with the highest term, if any."""
        best: SimNode | None = None
        best_term = -1
        for node in self.nodes.values():
            if node.up and node.role == Role.LEADER:
                term = node.storage.hard_state().term
                if term > best_term:
                    best, best_term = node, term
        return best

    def _live_ids(self) -> list[int]:
        return [n.id for n in self.nodes.values() if n.state is not NodeState.RETIRED]

    def _fault(self, fault: Fault) -> None:
        self.faults_applied += 1
        resolved = self._fault_handlers[fault.kind](fault)
        self._last_fault = fault.describe() + resolved
        self.note(f"FAULT {self._last_fault.strip()}")

    def _handlers(self) -> dict[FaultKind, Callable[[Fault], str]]:
        return {
            FaultKind.ISOLATE: self._isolate,
            FaultKind.ISOLATE_LEADER: self._isolate_leader,
            FaultKind.HALVES: self._halves,
            FaultKind.RING: self._ring,
            FaultKind.BRIDGE: self._bridge,
            FaultKind.HEAL: self._heal,
            FaultKind.LOSSY: self._lossy,
            FaultKind.CLEAN: self._clean,
            FaultKind.CRASH: self._crash_nodes,
            FaultKind.CRASH_LEADER: self._crash_leader,
            FaultKind.POWER_LOSS: self._power_loss,
            FaultKind.CRASH_POINTS: self._crash_points,
            FaultKind.RESTART: self._restart,
            FaultKind.SLOW_DISK: self._slow_disk,
            FaultKind.FAST_DISK: self._fast_disk,
            FaultKind.SKEW: self._skew,
            FaultKind.UNSKEW: self._unskew,
            FaultKind.TRANSFER: self._transfer,
            FaultKind.MEMBERSHIP: self._membership,
            FaultKind.FIGURE8: self._start_nemesis,
            FaultKind.UNSYNCED_VOTE: self._start_nemesis,
            FaultKind.HEAL_ALL: self._heal_all,
        }

    def _isolate(self, fault: Fault) -> str:
        self.network.isolate(fault.nodes[0], self._live_ids())
        return ""

    def _isolate_leader(self, _fault: Fault) -> str:
        leader = self.leader()
        if leader is None:
            return " -> no leader"
        self.network.isolate(leader.id, self._live_ids())
        return f" -> node {leader.id}"

    def _halves(self, fault: Fault) -> str:
        self.network.split(fault.groups)
        return ""

    def _ring(self, fault: Fault) -> str:
        self.network.ring(fault.nodes)
        return ""

    def _bridge(self, fault: Fault) -> str:
        left, (bridge,), right = fault.groups
        self.network.bridge(left, bridge, right)
        return ""

    def _heal(self, _fault: Fault) -> str:
        self.network.heal()
        return ""

    def _lossy(self, fault: Fault) -> str:
        base = self.settings.link
        self.network.default = msgspec.structs.replace(
            base,
            loss_probability=fault.value,
            duplicate_probability=self.settings.lossy_duplicate_probability,
            tail_probability=max(base.tail_probability, 0.05),
        )
        return ""

    def _clean(self, _fault: Fault) -> str:
        self.network.default = self.settings.link
        return ""

    def _crash_nodes(self, fault: Fault) -> str:
        for node_id in fault.nodes:
            self._crash(self.nodes[node_id])
        return ""

    def _crash_leader(self, _fault: Fault) -> str:
        leader = self.leader()
        if leader is None:
            return " -> no leader"
        self._crash(leader)
        return f" -> node {leader.id}"

    def _power_loss(self, _fault: Fault) -> str:
        for node in list(self.nodes.values()):
            self._crash(node)
        return ""

    def _crash_points(self, fault: Fault) -> str:
        self._crash_point_p = fault.value
        return ""

    def _restart(self, fault: Fault) -> str:
        """Restart ``fault.nodes`` if down (all down nodes if none named)."""
        if fault.nodes:
            for node_id in fault.nodes:
                if self.nodes[node_id].state is NodeState.DOWN:
                    self._start(self.nodes[node_id])
            return ""
        self._crash_point_p = 0.0
        self._stop_nemesis()
        for node in list(self.nodes.values()):
            if node.state is NodeState.DOWN:
                self._start(node)
        return ""

    def _stop_nemesis(self) -> None:
        nemesis = self.nemesis
        if nemesis is not None:
            self.nemesis_log.append((nemesis.name, nemesis.step))
            nemesis.stop()
            self.nemesis = None

    def _start_nemesis(self, fault: Fault) -> str:
        self._stop_nemesis()
        rng = random.Random(self._fault_rng.getrandbits(64))
        self.nemesis = build_nemesis(fault.kind, self, rng)
        return ""

    def _slow_disk(self, fault: Fault) -> str:
        for node_id in fault.nodes:
            self.nodes[node_id].slow_disk = True
        return ""

    def _fast_disk(self, _fault: Fault) -> str:
        for node in self.nodes.values():
            node.slow_disk = False
        return ""

    def _skew(self, fault: Fault) -> str:
        self.nodes[fault.nodes[0]].tick_factor = fault.value
        return ""

    def _unskew(self, _fault: Fault) -> str:
        for node in self.nodes.values():
            node.tick_factor = 1.0
        return ""

    def _heal_all(self, fault: Fault) -> str:
        self._heal(fault)
        self._clean(fault)
        self._fast_disk(fault)
        self._unskew(fault)
        self._restart(Fault(fault.at_us, FaultKind.RESTART))
        return ""

    def _transfer(self, _fault: Fault) -> str:
        if "transfer" not in self.features:
            return " -> feature off"
        leader = self.leader()
        if leader is None:
            return " -> no leader"
        voters = [v for v in leader.conf_state.voters if v != leader.id]
        if not voters:
            return " -> no other voter"
        target = self._fault_rng.choice(sorted(voters))
        leader.core.transfer_leader(target)
        self._drive(leader)
        return f" -> {leader.id} hands over to {target}"

    def _membership(self, _fault: Fault) -> str:
        if "membership" not in self.features:
            return " -> feature off"
        leader = self.leader()
        if leader is None:
            return " -> no leader"
        cs = leader.conf_state
        rng = self._fault_rng
        if cs.voters_outgoing:
            change = ConfChange()  # leave the joint configuration
            text = "leave joint"
        elif cs.learners:
            learner = cs.learners[0]
            change = ConfChange(((ConfChangeType.ADD_VOTER, learner),))
            text = f"promote {learner}"
        elif len(cs.voters) > 3 and rng.random() < 0.5:
            victim = rng.choice(sorted(cs.voters))
            change = ConfChange(((ConfChangeType.REMOVE_NODE, victim),), joint=rng.random() < 0.3)
            text = f"remove {victim}" + (" (joint)" if change.joint else "")
        else:
            new_id = max(self.nodes) + 1
            if new_id > self.settings.nodes_max or "snapshot" not in self.features:
                return " -> no spare node"
            if leader.storage.first_index() <= 1:
                return " -> leader has no snapshot yet"
            # A fresh node starts with an empty membership and learns it from the leader's
            # snapshot, then from the conf changes after it.
            node = self._new_node(new_id, ConfState())
            self.nodes[new_id] = node
            self._start(node)
            change = ConfChange(((ConfChangeType.ADD_LEARNER, new_id),))
            text = f"add learner {new_id}"
        try:
            leader.core.propose_conf_change(change)
        except self._dropped as error:
            return f" -> {text}: dropped ({error})"
        self._drive(leader)
        return f" -> {text}"

    # -- liveness ----------------------------------------------------------------------------

    def members(self) -> list[SimNode]:
        """Nodes in the leader's configuration (voters and learners), or all live ones."""
        leader = self.leader()
        if leader is None:
            return [n for n in self.nodes.values() if n.state is not NodeState.RETIRED]
        cs = leader.conf_state
        ids = set(cs.voters) | set(cs.learners) | set(cs.voters_outgoing)
        return [n for n in self.nodes.values() if n.id in ids]

    def _check_liveness(self, deadline_us: int) -> bool:
        """After the fault phase: True once a new put is ok and applied everywhere."""
        now = self.queue.now_us
        if now < self.quiesce_us:
            return False
        if not self.settings.workload.clients or self.history.full():
            self.liveness_met_us = now
            return True
        leader = self.leader()
        acked = self.workload.acked
        if leader is not None and acked:
            members = self.members()
            applied_min = min((n.sm.applied if n.up else -1) for n in members)
            newest = max(index for _op, _key, _value, index in acked)
            fresh = any(self.history.get(op).invoke_us >= self.quiesce_us for op, *_ in acked)
            if fresh and applied_min >= newest:
                self.checker.check_acknowledged(
                    acked, {n.id: n.sm.ops.__contains__ for n in members}
                )
                self.liveness_met_us = now
                self.note(f"liveness met: every member applied up to {applied_min}")
                return True
        if now >= deadline_us:
            states = ", ".join(
                f"{n.id}:{n.state.value}/{Role(n.role).name}/applied={n.sm.applied}"
                for n in self.nodes.values()
            )
            raise Violation(
                "liveness",
                f"no put invoked after the last heal at {self.quiesce_us / 1e6:g}s was applied "
                f"by every member within {self.settings.liveness_us_max / 1e6:g}s "
                f"(leader: {leader.id if leader else 'none'}; nodes {states})",
            )
        return False

    # -- results -----------------------------------------------------------------------------

    def elections(self) -> int:
        """Terms that had a leader."""
        return len(self.checker.leaders)

    def commits(self) -> int:
        """Log indexes known to be committed."""
        return len(self.checker.committed)
