"""The nemesis: real faults on the real processes of a :class:`~phalanx.chaos.cluster.ChaosCluster`.

Two halves, as elsewhere in Phalanx:

**A schedule is pure data** (:func:`plan`). From a seed, the fault kinds asked for, the run's
length and the member ids it draws a list of :class:`FaultWindow`: when a fault starts, how
long it lasts, and what it is, with every random choice already made (which node, which
halves), except *the leader*, which only the running cluster can name. The same seed gives
the same schedule. Every window ends before the run does; the executor then heals
everything (the final heal) and the runner gives the cluster a recovery period.

========================  ===========================================================
fault (``kind``/shape)    what happens while the window is open
========================  ===========================================================
``partition``/``one``     one node is cut from every other (both directions)
``partition``/``leader``  the current leader is cut from every other
``partition``/``halves``  a random minority and majority cannot reach each other
``partition``/``ring``    each node reaches only its ring neighbours: every node sees a
                          majority, no two the same one (needs 5 nodes; 3 fall back to
                          ``one``)
``partition``/``bridge``  two halves, one node in the middle reaching both
``kill``                  SIGKILL a node (``random`` or ``leader``); restarted from its
                          data directory when the window closes
``pause``                 SIGSTOP a node (``random`` or ``leader``); SIGCONT at the close
``restart``               rolling restart: each node in turn is killed and started again,
                          waiting for a leader in between
``toxic``                 every link loses ``loss`` of its messages and is delayed by
                          ``latency_ms`` +/- ``jitter_ms`` (Toxiproxy's vocabulary)
``clock``                 every node's clock is shifted by its own offset of up to
                          ``CLOCK_SKEW_MS_MAX`` either way: lease grants, renewals and
                          expiry follow the leader's skewed clock; or (half of the
                          windows) *strobed*: each node's clock jumps by its own offset
                          and back every ``period`` of 10 to 250 ms. Reset at the close
``membership``            a follower is removed from the cluster through the client and
                          stopped; at the close (``rejoin``) it is added back as a learner
                          (its data wiped, started with ``--join``) and promoted to voter,
                          or (``replace``) a new member with a new id, from the cluster's
                          spare slots, is added and promoted in its place, the removed one
                          gone for good. Later windows that name the replaced member act
                          on its replacement
``bandwidth``             every member's inbound Raft connections carry at most ``rate``
                          KB/s (4 to 64)
``reset``                 connections to one member are reset (TCP RST) ``timeout`` ms
                          (0 to 1,000) after they open, again after each redial
``slow-close``            every connection is closed after ``bytes`` (1 to 64 KiB) and
                          its close is passed on ``delay`` ms (100 to 2,000) late
``timeout``               connections to one member go silent: no byte passes, and they
                          are closed after ``timeout`` ms (0: never; else 500 to 3,000)
========================  ===========================================================

The last four act on real TCP connections through the proxies of a cluster started with
``proxied`` (one :mod:`phalanx.chaos.proxy` process, a proxy in front of each member's peer
port); the runner starts it so whenever one of them is asked for. Their names and
attributes are Toxiproxy's (``bandwidth``, ``reset_peer``, ``limit_data`` + ``slow_close``,
``timeout``).

**The executor** (:class:`Nemesis`) runs a schedule against a cluster and records every
fault into a history (:class:`~phalanx.chaos.history.Recorder`) as operations of process
:data:`NEMESIS_PROCESS`: ``start-<kind>`` when a window opens (``output``: what was done, e.g.
the grudge of a partition) and ``stop-<kind>`` when it closes, and ``heal`` for the final
heal. A fault that could not be applied (no leader known, a membership change refused) ends
``fail`` with the reason, and the run goes on; nodes that did not answer the admin endpoint
(killed, paused, still starting) are listed as ``unreachable`` in the output.
Partitions and heals go through the cluster (:meth:`~phalanx.chaos.cluster.ChaosCluster.isolate`,
:meth:`~phalanx.chaos.cluster.ChaosCluster.heal`): the admin endpoints, or iptables rules
on a cluster running on network namespaces (:mod:`phalanx.chaos.netns`).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import msgspec

from phalanx.chaos.cluster import ChaosCluster
from phalanx.chaos.history import Recorder
from phalanx.client import AsyncClient
from phalanx.errors import PhalanxError

__all__ = [
    "CLOCK_SKEW_MS_MAX",
    "FAULT_KINDS",
    "NEMESIS_PROCESS",
    "PARTITION_SHAPES",
    "PROXY_KINDS",
    "STROBE_PERIOD_MS",
    "WINDOWS_MAX",
    "FaultWindow",
    "Nemesis",
    "NemesisError",
    "grudge",
    "plan",
]

#: The process number of nemesis operations in a history.
NEMESIS_PROCESS: Final = -1
#: Faults applied through the peer proxies (a ``proxied`` cluster).
PROXY_KINDS: Final = ("bandwidth", "reset", "slow-close", "timeout")
FAULT_KINDS: Final = (
    "partition",
    "kill",
    "pause",
    "restart",
    "toxic",
    "clock",
    "membership",
    *PROXY_KINDS,
)
PARTITION_SHAPES: Final = ("one", "leader", "halves", "ring", "bridge")
#: Most fault windows one schedule may hold.
WINDOWS_MAX: Final = 10_000
#: How long a window lasts, and the quiet time between two, by default.
FAULT_S_DEFAULT: Final = (1.0, 3.0)
QUIET_S_DEFAULT: Final = (1.0, 3.0)
#: How long the executor waits for a leader (to target it, or between rolling restarts).
LEADER_WAIT_S_MAX: Final = 10.0
#: The largest clock offset the ``clock`` fault gives a node, either way.
CLOCK_SKEW_MS_MAX: Final = 10_000
#: The range of a clock strobe's half-period.
STROBE_PERIOD_MS: Final = (10, 250)
#: How long a membership change through the client may take.
MEMBERSHIP_TIMEOUT_S: Final = 5.0
_PROMOTE_RETRY_S: Final = 0.2

Target = Literal["random", "leader"]


class NemesisError(ValueError):
    """A schedule cannot be made: an unknown fault, or a limit reached."""


class FaultWindow(msgspec.Struct, frozen=True, kw_only=True):
    """One fault: opened at ``start_s`` (seconds from the run's start), closed
    ``duration_s`` later. ``node`` is the chosen node when ``target`` is ``random``;
    ``groups`` the sides of a partition drawn in advance; ``toxic`` a toxic's settings."""

    start_s: float
    duration_s: float
    kind: str
    shape: str = ""
    target: Target = "random"
    node: int = 0
    groups: list[list[int]] = msgspec.field(default_factory=list)
    toxic: dict[str, float] = msgspec.field(default_factory=dict)
    offsets: dict[int, int] = msgspec.field(default_factory=dict)
    strobe_period_ms: int = 0

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def describe(self) -> str:
        if self.kind == "partition":
            return f"partition {self.shape}"
        if self.kind in {"kill", "pause"}:
            return f"{self.kind} {self.target if self.target == 'leader' else self.node}"
        if self.kind == "clock" and self.strobe_period_ms:
            return "clock strobe"
        if self.kind == "membership" and self.shape:
            return f"membership {self.shape}"
        if self.kind in PROXY_KINDS and self.node:
            return f"{self.kind} {self.node}"
        return self.kind


# -- the pure part ------------------------------------------------------------------------


def _ring_groups(ids: Sequence[int]) -> list[list[int]]:
    # Each node with its neighbours within distance m: a majority for 2m+1 >= n//2+1.
    n = len(ids)
    m = -(-(n // 2) // 2)
    return [[ids[k], *(ids[(k + d) % n] for d in range(-m, m + 1) if d)] for k in range(n)]


def _partition_groups(shape: str, ids: list[int], rng: random.Random) -> list[list[int]]:
    shuffled = ids[:]
    rng.shuffle(shuffled)
    if shape == "ring" and len(ids) < 5:
        shape = "one"
    if shape == "one":
        return [shuffled[:1], shuffled[1:]]
    if shape == "halves":
        half = len(ids) // 2
        return [sorted(shuffled[:half]), sorted(shuffled[half:])]
    if shape == "bridge":
        half = (len(ids) - 1) // 2
        bridge = shuffled[half]
        return [sorted([*shuffled[:half], bridge]), sorted([bridge, *shuffled[half + 1 :]])]
    if shape == "ring":
        return _ring_groups(sorted(ids))
    return []  # leader: drawn at run time


def grudge(
    groups: Sequence[Sequence[int]], ids: Sequence[int], *, views: bool = False
) -> dict[int, list[int]]:
    """Which peers each node must cut so that only nodes sharing a group can talk.

    ``groups`` may overlap (bridge): two nodes talk when some group holds both. With
    ``views`` (the ring), each group is instead one node's view: that node first, then the
    nodes it reaches.
    """
    cut: dict[int, list[int]] = {}
    for a in ids:
        if views:
            reachable = {b for g in groups if g and g[0] == a for b in g}
        else:
            reachable = {b for g in groups if a in g for b in g}
        cut[a] = sorted(b for b in ids if b != a and b not in reachable)
    return cut


def plan(
    seed: int,
    kinds: Sequence[str],
    *,
    time_limit_s: float,
    ids: Sequence[int],
    fault_s: tuple[float, float] = FAULT_S_DEFAULT,
    quiet_s: tuple[float, float] = QUIET_S_DEFAULT,
    shapes: Sequence[str] = PARTITION_SHAPES,
    toxic: Mapping[str, float] | None = None,
) -> list[FaultWindow]:
    """The fault windows of a run of ``time_limit_s``: quiet, fault, quiet, fault ...

    Each window's kind is drawn from ``kinds``; every window closes by ``time_limit_s``.
    """
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise NemesisError(f"unknown fault {unknown[0]!r}; choose from {', '.join(FAULT_KINDS)}")
    bad_shapes = [s for s in shapes if s not in PARTITION_SHAPES]
    if bad_shapes or not shapes:
        raise NemesisError(f"partition shapes: choose from {', '.join(PARTITION_SHAPES)}")
    if not kinds:
        return []
    rng = random.Random(seed)
    members = sorted(ids)
    windows: list[FaultWindow] = []
    at_s = rng.uniform(*quiet_s)
    while True:
        duration_s = rng.uniform(*fault_s)
        if at_s + duration_s > time_limit_s:
            break
        if len(windows) >= WINDOWS_MAX:
            raise NemesisError(f"more than WINDOWS_MAX={WINDOWS_MAX} fault windows")
        kind = rng.choice(list(kinds))
        window = FaultWindow(start_s=round(at_s, 3), duration_s=round(duration_s, 3), kind=kind)
        if kind == "partition":
            shape = rng.choice(list(shapes))
            window = msgspec.structs.replace(
                window, shape=shape, groups=_partition_groups(shape, members, rng)
            )
        elif kind in {"kill", "pause"}:
            target: Target = "leader" if rng.random() < 0.5 else "random"
            window = msgspec.structs.replace(window, target=target, node=rng.choice(members))
        elif kind == "toxic":
            settings = dict(toxic or {"loss": 0.05, "latency_ms": 20.0, "jitter_ms": 20.0})
            window = msgspec.structs.replace(window, toxic=settings)
        elif kind == "clock":
            offsets = {i: rng.randint(-CLOCK_SKEW_MS_MAX, CLOCK_SKEW_MS_MAX) for i in members}
            period_ms = rng.randint(*STROBE_PERIOD_MS) if rng.random() < 0.5 else 0
            window = msgspec.structs.replace(window, offsets=offsets, strobe_period_ms=period_ms)
        elif kind == "membership":
            shape = "replace" if rng.random() < 0.5 else "rejoin"
            window = msgspec.structs.replace(window, node=rng.choice(members), shape=shape)
        elif kind in PROXY_KINDS:
            window = _proxy_window(window, members, rng)
        windows.append(window)
        at_s += duration_s + rng.uniform(*quiet_s)
    return windows


def _proxy_window(window: FaultWindow, members: list[int], rng: random.Random) -> FaultWindow:
    """The toxic's attributes (and, for one-member kinds, the member) drawn in advance."""
    node = 0
    if window.kind == "bandwidth":
        settings = {"rate": float(rng.randint(4, 64))}
    elif window.kind == "reset":
        node = rng.choice(members)
        settings = {"timeout": float(rng.randint(0, 1_000))}
    elif window.kind == "slow-close":
        settings = {
            "bytes": float(rng.randint(1, 64) * 1024),
            "delay": float(rng.randint(100, 2_000)),
        }
    else:  # timeout
        node = rng.choice(members)
        settings = {"timeout": 0.0 if rng.random() < 0.5 else float(rng.randint(500, 3_000))}
    return msgspec.structs.replace(window, node=node, toxic=settings)


def proxy_toxics(window: FaultWindow) -> list[dict[str, Any]]:
    """The Toxiproxy toxics that make up a proxy fault window."""
    attributes = {k: int(v) for k, v in window.toxic.items()}
    if window.kind == "bandwidth":
        return [{"type": "bandwidth", "stream": "upstream", "attributes": attributes}]
    if window.kind == "reset":
        return [{"type": "reset_peer", "stream": "upstream", "attributes": attributes}]
    if window.kind == "slow-close":
        return [
            {
                "type": "limit_data",
                "stream": "upstream",
                "attributes": {"bytes": attributes["bytes"]},
            },
            {
                "type": "slow_close",
                "stream": "upstream",
                "attributes": {"delay": attributes["delay"]},
            },
            {
                "type": "slow_close",
                "stream": "downstream",
                "attributes": {"delay": attributes["delay"]},
            },
        ]
    return [
        {"type": "timeout", "stream": s, "attributes": attributes}
        for s in ("upstream", "downstream")
    ]


# -- the executor ---------------------------------------------------------------------------


class Nemesis:
    """Runs fault windows against ``cluster``, recording them into ``recorder``."""

    def __init__(self, cluster: ChaosCluster, recorder: Recorder, *, seed: int = 0) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self._rng = random.Random(seed)
        self._removed: set[int] = set()
        #: Members replaced during the run, and by whom.
        self._replaced: dict[int, int] = {}
        self.applied = 0
        self.failed = 0

    async def run(self, windows: Sequence[FaultWindow], *, started_at_s: float) -> None:
        """Open and close each window on time (``started_at_s`` on ``time.monotonic()``);
        cancelling leaves faults in place: call :meth:`heal` after."""
        for window in windows:
            await _sleep_until(started_at_s + window.start_s)
            undo = await self._open(window)
            await _sleep_until(started_at_s + window.end_s)
            await self._close(window, undo)

    async def _open(self, window: FaultWindow) -> dict[str, Any] | None:
        handle = self.recorder.invoke(
            NEMESIS_PROCESS, f"start-{window.kind}", window.describe(), key=None
        )
        try:
            done = await self._apply(window)
        except (PhalanxError, OSError, TimeoutError, _Skip) as exc:
            self.failed += 1
            self.recorder.fail(handle, str(exc) or type(exc).__name__)
            return None
        self.applied += 1
        self.recorder.ok(handle, done)
        return done

    async def _close(self, window: FaultWindow, undo: dict[str, Any] | None) -> None:
        handle = self.recorder.invoke(NEMESIS_PROCESS, f"stop-{window.kind}", window.describe())
        try:
            done = await self._revert(window, undo)
        except (PhalanxError, OSError, TimeoutError, _Skip) as exc:
            self.recorder.fail(handle, str(exc) or type(exc).__name__)
            return
        self.recorder.ok(handle, done)

    async def _target(self, window: FaultWindow) -> int:
        if window.target == "leader":
            leader = await self.cluster.leader()
            if leader is None:
                raise _Skip("no leader known")
            return leader
        node = self._now(window.node)
        if node in self._removed:
            raise _Skip(f"node {node} is not a member now")
        return node

    def _now(self, node: int) -> int:
        """The member in ``node``'s place now: itself, or whoever replaced it (in a chain)."""
        for _ in range(len(self._replaced) + 1):
            if node not in self._replaced:
                break
            node = self._replaced[node]
        return node

    async def _apply(self, window: FaultWindow) -> dict[str, Any]:
        if window.kind in {"kill", "pause"}:
            node = await self._target(window)
            done = self.cluster.kill(node) if window.kind == "kill" else self.cluster.pause(node)
            if not done:
                raise _Skip(f"node {node} is not running")
            return {"node": node}
        if window.kind in PROXY_KINDS:
            return await self._proxy(window)
        appliers = {
            "partition": self._partition,
            "restart": self._restart,
            "toxic": self._toxic,
            "clock": self._clock,
            "membership": self._remove_member,
        }
        apply = appliers.get(window.kind)
        if apply is None:
            raise _Skip(f"unknown fault {window.kind!r}")
        return await apply(window)

    async def _restart(self, window: FaultWindow) -> dict[str, Any]:
        return {"nodes": await self._rolling_restart(window.duration_s)}

    async def _toxic(self, window: FaultWindow) -> dict[str, Any]:
        ids = self.cluster.ids
        toxics = {str(p): window.toxic for p in ids}
        answered = await self._post_all(
            {i: {"toxics": toxics, "seed": self._rng.randrange(1 << 31)} for i in ids}
        )
        return {"toxic": window.toxic, **answered}

    async def _proxy(self, window: FaultWindow) -> dict[str, Any]:
        nodes = [self._now(window.node)] if window.node else list(self.cluster.ids)
        for toxic in proxy_toxics(window):
            await asyncio.gather(*(self.cluster.add_toxic(i, toxic) for i in nodes))
        return {"nodes": nodes, **window.toxic}

    async def _clock(self, window: FaultWindow) -> dict[str, Any]:
        now = {self._now(i): o for i, o in window.offsets.items()}
        offsets = {str(i): o for i, o in now.items()}
        if not window.strobe_period_ms:
            answered = await self._post_all({i: {"clock_offset_ms": off} for i, off in now.items()})
            return {"offsets_ms": offsets, **answered}
        duration_ms = round(window.duration_s * 1000)
        strobes = {
            i: {"delta_ms": off, "period_ms": window.strobe_period_ms, "duration_ms": duration_ms}
            for i, off in now.items()
        }
        answered = await self._post_all({i: {"clock_strobe": s} for i, s in strobes.items()})
        return {"strobe_ms": offsets, "period_ms": window.strobe_period_ms, **answered}

    async def _partition(self, window: FaultWindow) -> dict[str, Any]:
        cluster = self.cluster
        groups = [[self._now(i) for i in group] for group in window.groups]
        if window.shape == "leader" or not groups:
            leader = await cluster.leader()
            if leader is None:
                raise _Skip("no leader known")
            groups = [[leader], [i for i in cluster.ids if i != leader]]
        cuts = grudge(groups, cluster.ids, views=window.shape == "ring" and len(groups) > 2)
        answered = _unreachable(await cluster.isolate(cuts))
        return {"groups": groups, "cut": {str(i): c for i, c in cuts.items()}, **answered}

    async def _revert(self, window: FaultWindow, undo: dict[str, Any] | None) -> dict[str, Any]:
        cluster = self.cluster
        if window.kind in {"partition", "toxic", "clock"}:
            # heal also resets the clock offset; no fault of another kind is open meanwhile.
            return _unreachable(await cluster.heal())
        if window.kind in PROXY_KINDS:
            if not await cluster.reset_proxies():
                raise _Skip("the proxy did not answer its reset")
            return {}
        if undo is None or "node" not in undo:
            return {}
        node = int(undo["node"])
        if window.kind == "kill":
            cluster.start(node)
        elif window.kind == "pause":
            cluster.resume(node)
        elif window.kind == "membership":
            if window.shape == "replace":
                return await self._replace_member(node)
            return await self._add_member(node)
        return {"node": node}

    async def _post_all(self, requests: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
        answers = await asyncio.gather(
            *(self.cluster.faults(i, request) for i, request in requests.items())
        )
        missed = sorted(i for i, a in zip(requests, answers, strict=True) if a is None)
        return {"unreachable": missed} if missed else {}

    async def _rolling_restart(self, budget_s: float) -> list[int]:
        restarted: list[int] = []
        deadline = time.monotonic() + budget_s
        for node in self.cluster.ids:
            if time.monotonic() >= deadline:
                break
            if node in self._removed:
                continue  # not a member now: the final heal adds it back
            self.cluster.kill(node)
            self.cluster.start(node)
            restarted.append(node)
            left_s = max(0.1, min(LEADER_WAIT_S_MAX, deadline - time.monotonic()))
            try:
                await self.cluster.wait_leader(left_s)
            except PhalanxError:
                break
        return restarted

    def _client(self) -> AsyncClient:
        return AsyncClient(
            self.cluster.endpoints(),
            request_timeout_s=MEMBERSHIP_TIMEOUT_S,
            total_timeout_s=MEMBERSHIP_TIMEOUT_S,
        )

    async def _remove_member(self, _window: FaultWindow) -> dict[str, Any]:
        leader = await self.cluster.leader()
        if leader is None:
            raise _Skip("no leader known")
        candidates = [i for i in self.cluster.ids if i != leader and i not in self._removed]
        if not candidates:
            raise _Skip("no follower to remove")
        node = self._rng.choice(candidates)
        client = self._client()
        try:
            async with asyncio.timeout(MEMBERSHIP_TIMEOUT_S):
                await client.remove_member(node)
        finally:
            await client.aclose()
        self._removed.add(node)
        self.cluster.kill(node)
        return {"node": node}

    async def _add_member(self, node: int, *, learner: bool = False) -> dict[str, Any]:
        """Add ``node`` as a learner with an empty data directory, then promote it to voter
        once it has caught up (``learner``: it is a learner already; only promote it)."""
        client = self._client()
        peer = self.cluster.peer_advertised[node]
        address = self.cluster.client[node]
        try:
            if not learner:
                async with asyncio.timeout(MEMBERSHIP_TIMEOUT_S):
                    await client.add_member(
                        node, f"{peer[0]}:{peer[1]}", f"{address[0]}:{address[1]}"
                    )
                self.cluster.kill(node)  # still running when its removal's answer was lost
                shutil.rmtree(self.cluster.root / f"n{node}", ignore_errors=True)
            self.cluster.start(node, join=True)
            self._removed.discard(node)
            async with asyncio.timeout(MEMBERSHIP_TIMEOUT_S):
                while True:
                    try:
                        await client.promote_member(node)
                        break
                    except PhalanxError:
                        await asyncio.sleep(_PROMOTE_RETRY_S)
        finally:
            await client.aclose()
        return {"node": node}

    async def _replace_member(self, old: int) -> dict[str, Any]:
        """Add a new member from a spare slot in the place of ``old`` (removed already)."""
        new = self.cluster.take_spare()
        try:
            await self._add_member(new)
        except (PhalanxError, OSError, TimeoutError):
            # Not a voter: take it out again (it may be a learner by now), and leave ``old``
            # removed for the final heal to add back.
            self.cluster.kill(new)
            client = self._client()
            try:
                async with asyncio.timeout(MEMBERSHIP_TIMEOUT_S):
                    await client.remove_member(new)
            except (PhalanxError, OSError, TimeoutError):
                pass  # it was never added, or the final heal's check will see it
            finally:
                await client.aclose()
            raise
        self._removed.discard(old)
        self._replaced[old] = new
        self.cluster.replace_member(old, new)
        return {"removed": old, "node": new}

    async def heal(self) -> None:
        """The final heal: every process resumed or started again, every link restored;
        recorded as one ``heal`` operation."""
        handle = self.recorder.invoke(NEMESIS_PROCESS, "heal", None)
        cluster = self.cluster
        resumed = sorted(cluster.paused)
        for node in resumed:
            cluster.resume(node)
        started: list[int] = []
        for node in cluster.ids:
            if node in self._removed:
                continue
            if not cluster.alive(node):
                cluster.start(node)
                started.append(node)
        try:
            answered = _unreachable(await cluster.heal())
        except PhalanxError as exc:  # e.g. an iptables command failed (netns)
            answered = {"errors": [f"heal: {exc}"]}
        if not await cluster.reset_proxies():
            answered.setdefault("errors", []).append("the proxy did not answer its reset")
        removed = sorted(self._removed)
        for node in removed:
            try:
                await self._add_member(node)
            except (PhalanxError, OSError, TimeoutError) as exc:
                answered.setdefault("errors", []).append(f"re-adding {node}: {exc}")
        repaired = await self._repair_membership(answered)
        self.recorder.ok(
            handle,
            {
                "resumed": resumed,
                "started": started,
                "readded": removed,
                **({"repaired": repaired} if repaired else {}),
                **answered,
            },
        )

    async def _repair_membership(self, answered: dict[str, Any]) -> list[int]:
        """Make every member the cluster should have a voter again: one whose removal took
        effect although its answer was lost (the window was recorded ``fail``) is added back,
        a learner left unpromoted is promoted; and remove members it should not have (the
        spare of a replacement that failed half-way). Returns the members repaired."""
        cluster = self.cluster
        try:
            leader = await cluster.wait_leader(LEADER_WAIT_S_MAX)
        except PhalanxError as exc:
            answered.setdefault("errors", []).append(f"membership check: {exc}")
            return []
        status = await cluster.status(leader)
        if status is None or not status.members:
            return []
        voters = {m.node_id for m in status.members if not m.learner}
        learners = {m.node_id for m in status.members if m.learner}
        strays = sorted((voters | learners) - set(cluster.ids))
        repaired = [i for i in cluster.ids if i not in voters]
        for node in repaired:
            try:
                await self._add_member(node, learner=node in learners)
            except (PhalanxError, OSError, TimeoutError) as exc:
                answered.setdefault("errors", []).append(f"repairing {node}: {exc}")
        if strays:  # e.g. the spare of a replacement that failed half-way
            client = self._client()
            try:
                for node in strays:
                    cluster.kill(node)
                    async with asyncio.timeout(MEMBERSHIP_TIMEOUT_S):
                        await client.remove_member(node)
            except (PhalanxError, OSError, TimeoutError) as exc:
                answered.setdefault("errors", []).append(f"removing {strays}: {exc}")
            finally:
                await client.aclose()
        return [*repaired, *strays]


def _unreachable(missed: list[int]) -> dict[str, Any]:
    return {"unreachable": missed} if missed else {}


class _Skip(Exception):
    """A fault that cannot be applied now (recorded as a failed nemesis operation)."""


async def _sleep_until(at_s: float) -> None:
    delay_s = at_s - time.monotonic()
    if delay_s > 0:
        await asyncio.sleep(delay_s)
