"""The fault vocabulary and the schedule of faults a seed produces.

A :class:`Fault` is one action at one virtual time. Most name their targets when the
schedule is generated (``nodes``, ``groups``), so a printed schedule says exactly what will
happen; a few are resolved when they fire because they depend on the cluster's state then
(``isolate-leader``, ``crash-leader``, ``transfer``, ``membership``), and the trace records
what they resolved to.

Faults come in categories, chosen with ``--faults``:

======================  =================================================================
category                kinds
======================  =================================================================
``partition``           ``isolate``, ``isolate-leader``, ``halves``, ``ring``, ``bridge``;
                        ended by ``heal``
``network``             ``lossy`` (loss, duplication and long delays on every link);
                        ended by ``clean``
``crash``               ``crash``, ``crash-leader``, ``power-loss`` (every node at once),
                        ``crash-points`` (until it ends, a node crashes with probability
                        ``value`` at each interesting moment: while an fsync is pending,
                        right after a Ready is handled); ended by ``restart``
``disk``                ``slow-disk`` (fsync takes tens to hundreds of ms); ended by
                        ``fast-disk``
``clock``               ``skew`` (one node ticks faster or slower); ended by ``unskew``
``transfer``            ``transfer`` (ask the leader to hand over to another voter)
``membership``          ``membership`` (remove a voter, or add a fresh node as a learner
                        and promote it)
``figure8``             ``figure8``: a targeted script of crashes and partitions that leads
                        a new leader to hold old-term entries it could commit by counting
                        replicas (the paper's Figure 8); ended by ``restart``
``unsynced-vote``       ``unsynced-vote``: a voter crashes right after granting a vote,
                        before the vote is on disk, and restarts while another node of the
                        same term can still ask it; ended by ``restart``
======================  =================================================================

Every schedule ends with ``heal-all`` at the end of the fault phase: partitions healed,
links clean, crashed nodes restarted, disks fast, clocks even. From then on the cluster must
recover by itself (the liveness check).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Sequence

import msgspec

__all__ = [
    "CATEGORIES",
    "NEMESES",
    "Fault",
    "FaultKind",
    "ScheduleSettings",
    "generate_schedule",
    "parse_categories",
]


class FaultKind(enum.StrEnum):
    ISOLATE = "isolate"
    ISOLATE_LEADER = "isolate-leader"
    HALVES = "halves"
    RING = "ring"
    BRIDGE = "bridge"
    HEAL = "heal"
    LOSSY = "lossy"
    CLEAN = "clean"
    CRASH = "crash"
    CRASH_LEADER = "crash-leader"
    POWER_LOSS = "power-loss"
    CRASH_POINTS = "crash-points"
    RESTART = "restart"
    SLOW_DISK = "slow-disk"
    FAST_DISK = "fast-disk"
    SKEW = "skew"
    UNSKEW = "unskew"
    TRANSFER = "transfer"
    MEMBERSHIP = "membership"
    FIGURE8 = "figure8"
    UNSYNCED_VOTE = "unsynced-vote"
    HEAL_ALL = "heal-all"


#: Category name -> the kinds that start a fault of that category.
CATEGORIES: dict[str, tuple[FaultKind, ...]] = {
    "partition": (
        FaultKind.ISOLATE,
        FaultKind.ISOLATE_LEADER,
        FaultKind.HALVES,
        FaultKind.RING,
        FaultKind.BRIDGE,
    ),
    "network": (FaultKind.LOSSY,),
    "crash": (
        FaultKind.CRASH,
        FaultKind.CRASH_LEADER,
        FaultKind.POWER_LOSS,
        FaultKind.CRASH_POINTS,
    ),
    "disk": (FaultKind.SLOW_DISK,),
    "clock": (FaultKind.SKEW,),
    "transfer": (FaultKind.TRANSFER,),
    "membership": (FaultKind.MEMBERSHIP,),
    "figure8": (FaultKind.FIGURE8,),
    "unsynced-vote": (FaultKind.UNSYNCED_VOTE,),
}

#: Targeted faults (:mod:`phalanx.sim.nemesis`): scripts that react to the cluster's state.
NEMESES = frozenset({FaultKind.FIGURE8, FaultKind.UNSYNCED_VOTE})

_NETWORK_TRACK = ("partition", "network")
_NODE_TRACK = ("crash", "disk", "clock", "figure8", "unsynced-vote")
_OPS_TRACK = ("transfer", "membership")


def parse_categories(spec: str | Iterable[str]) -> frozenset[str]:
    """``"all"``, ``"none"`` or a comma-separated list of categories."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for name in names:
        if not name or name == "none":
            continue
        if name == "all":
            chosen.update(CATEGORIES)
        elif name in CATEGORIES:
            chosen.add(name)
        else:
            known = ", ".join(["all", "none", *CATEGORIES])
            raise ValueError(f"unknown fault category {name!r} (known: {known})")
    return frozenset(chosen)


class Fault(msgspec.Struct, frozen=True):
    """One fault action at ``at_us``.

    ``nodes`` are the targets (crash, restart, isolate, disk, skew, transfer) or the ring
    order; ``groups`` the sides of a split (``bridge``: left, the bridge node, right);
    ``value`` a parameter (the loss probability of ``lossy``, the tick factor of ``skew``).
    """

    at_us: int
    kind: FaultKind
    nodes: tuple[int, ...] = ()
    groups: tuple[tuple[int, ...], ...] = ()
    value: float = 0.0

    def describe(self) -> str:
        parts = [f"{self.at_us / 1e6:9.3f}s {self.kind.value}"]
        if self.nodes:
            parts.append("nodes=" + ",".join(map(str, self.nodes)))
        if self.groups:
            parts.append("groups=" + "|".join(",".join(map(str, g)) for g in self.groups))
        if self.value:
            parts.append(f"value={self.value:g}")
        return " ".join(parts)


class ScheduleSettings(msgspec.Struct, frozen=True):
    """Shape of a generated schedule: gaps between faults and how long each lasts."""

    gap_us_min: int = 300_000
    gap_us_max: int = 2_000_000
    fault_us_min: int = 300_000
    fault_us_max: int = 4_000_000
    ops_gap_us_min: int = 500_000
    ops_gap_us_max: int = 3_000_000
    #: Targeted faults run a script of several elections: they get longer windows.
    nemesis_us_min: int = 4_000_000
    nemesis_us_max: int = 8_000_000


def _pick_kind(rng: random.Random, categories: Sequence[str]) -> FaultKind:
    category = rng.choice(categories)
    return rng.choice(CATEGORIES[category])


def _start_fault(  # noqa: PLR0911 - one return per fault shape reads best
    rng: random.Random, at_us: int, kind: FaultKind, nodes: Sequence[int]
) -> Fault:
    n = len(nodes)
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    if kind is FaultKind.ISOLATE:
        return Fault(at_us, kind, nodes=(shuffled[0],))
    if kind is FaultKind.HALVES:
        cut = rng.randint(1, n - 1) if n > 1 else 1
        return Fault(at_us, kind, groups=(tuple(shuffled[:cut]), tuple(shuffled[cut:])))
    if kind is FaultKind.RING:
        return Fault(at_us, kind, nodes=tuple(shuffled))
    if kind is FaultKind.BRIDGE:
        half = (n - 1) // 2
        left, bridge, right = shuffled[:half], shuffled[half], shuffled[half + 1 :]
        return Fault(at_us, kind, groups=(tuple(left), (bridge,), tuple(right)))
    if kind is FaultKind.LOSSY:
        return Fault(at_us, kind, value=round(rng.uniform(0.05, 0.4), 3))
    if kind is FaultKind.CRASH:
        minority = max(1, (n - 1) // 2)
        count = rng.randint(1, minority)
        return Fault(at_us, kind, nodes=tuple(sorted(shuffled[:count])))
    if kind is FaultKind.CRASH_POINTS:
        return Fault(at_us, kind, value=rng.choice((0.01, 0.03, 0.1)))
    if kind is FaultKind.SLOW_DISK:
        count = rng.randint(1, n)
        return Fault(at_us, kind, nodes=tuple(sorted(shuffled[:count])))
    if kind is FaultKind.SKEW:
        factor = rng.choice((0.5, 0.7, 1.5, 2.0, 3.0))
        return Fault(at_us, kind, nodes=(shuffled[0],), value=factor)
    return Fault(at_us, kind)


_ENDS: dict[FaultKind, FaultKind] = {
    FaultKind.ISOLATE: FaultKind.HEAL,
    FaultKind.ISOLATE_LEADER: FaultKind.HEAL,
    FaultKind.HALVES: FaultKind.HEAL,
    FaultKind.RING: FaultKind.HEAL,
    FaultKind.BRIDGE: FaultKind.HEAL,
    FaultKind.LOSSY: FaultKind.CLEAN,
    FaultKind.CRASH: FaultKind.RESTART,
    FaultKind.CRASH_LEADER: FaultKind.RESTART,
    FaultKind.POWER_LOSS: FaultKind.RESTART,
    FaultKind.CRASH_POINTS: FaultKind.RESTART,
    FaultKind.SLOW_DISK: FaultKind.FAST_DISK,
    FaultKind.SKEW: FaultKind.UNSKEW,
    FaultKind.FIGURE8: FaultKind.RESTART,
    FaultKind.UNSYNCED_VOTE: FaultKind.RESTART,
}


def _track(
    rng: random.Random,
    categories: Sequence[str],
    nodes: Sequence[int],
    end_us: int,
    settings: ScheduleSettings,
) -> list[Fault]:
    """Faults of one track: start, end, gap, start, end, gap... all before ``end_us``."""
    faults: list[Fault] = []
    if not categories:
        return faults
    now = rng.randint(settings.gap_us_min, settings.gap_us_max)
    while now < end_us:
        kind = _pick_kind(rng, categories)
        start = _start_fault(rng, now, kind, nodes)
        faults.append(start)
        end_kind = _ENDS.get(kind)
        if end_kind is not None:
            if kind in NEMESES:
                lasts = rng.randint(settings.nemesis_us_min, settings.nemesis_us_max)
            else:
                lasts = rng.randint(settings.fault_us_min, settings.fault_us_max)
            stop = min(end_us, now + lasts)
            faults.append(Fault(stop, end_kind, nodes=start.nodes))
            now = stop
        now += rng.randint(settings.gap_us_min, settings.gap_us_max)
    return faults


def generate_schedule(
    rng: random.Random,
    nodes: Sequence[int],
    categories: Iterable[str],
    fault_phase_us: int,
    settings: ScheduleSettings | None = None,
) -> list[Fault]:
    """A schedule for ``fault_phase_us`` of virtual time, ending with ``heal-all``.

    Three independent tracks overlap: the network (partitions, lossy links), the nodes
    (crashes, slow disks, clock skew) and operations (leader transfers, membership
    changes). Within a track a fault is always ended before the next one starts.
    """
    settings = settings or ScheduleSettings()
    chosen = set(categories)
    tracks = [
        [c for c in _NETWORK_TRACK if c in chosen],
        [c for c in _NODE_TRACK if c in chosen],
    ]
    faults: list[Fault] = []
    for track in tracks:
        faults.extend(_track(rng, track, nodes, fault_phase_us, settings))
    ops = [c for c in _OPS_TRACK if c in chosen]
    if ops:
        now = rng.randint(settings.ops_gap_us_min, settings.ops_gap_us_max)
        while now < fault_phase_us:
            kind = _pick_kind(rng, ops)
            faults.append(Fault(now, kind))
            now += rng.randint(settings.ops_gap_us_min, settings.ops_gap_us_max)
    faults.sort(key=lambda f: f.at_us)  # stable: ties keep the track order
    faults.append(Fault(fault_phase_us, FaultKind.HEAL_ALL))
    return faults
