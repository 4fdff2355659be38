"""``simulate(seed, ...)``: one seeded run of a cluster through faults, and its result.

The same seed and settings always give the same run: the same events in the same order, the
same history, the same :attr:`Result.trace_hash`. A run that breaks a property raises
:class:`~phalanx.sim.cluster.SimulationFailed`, whose ``report`` holds everything needed to
replay and read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from phalanx.sim.cluster import ALL_FEATURES, Cluster, SimSettings
from phalanx.sim.faults import Fault, parse_categories
from phalanx.sim.history import History
from phalanx.sim.network import NetworkStats
from phalanx.sim.node import CoreFactory
from phalanx.sim.workload import WorkloadSettings

__all__ = ["Result", "settings_for", "simulate"]


@dataclass
class Result:
    """What one run did. ``virtual_s`` is the simulated time the run covered."""

    seed: int
    nodes: int
    elections: int
    commits: int
    faults_applied: int
    events: int
    virtual_s: float
    trace_hash: str
    history: History
    schedule: list[Fault]
    network: NetworkStats
    liveness_s: float | None = None
    ops: dict[str, int] = field(default_factory=dict)


def settings_for(
    *,
    nodes: int = 5,
    faults: str | Iterable[str] = "all",
    duration_s: float = 10.0,
    clients: int = 3,
    features: Iterable[str] | None = None,
    **overrides: object,
) -> SimSettings:
    """Settings from the common knobs; ``overrides`` set any other :class:`SimSettings` field."""
    workload = overrides.pop("workload", None)
    if workload is None:
        workload = WorkloadSettings(clients=clients)
    fields = {
        "nodes": nodes,
        "faults": parse_categories(faults),
        "fault_phase_us": round(duration_s * 1_000_000),
        "workload": workload,
        "features": frozenset(ALL_FEATURES if features is None else features),
        **overrides,
    }
    return msgspec.convert(fields, SimSettings, from_attributes=True)


def simulate(
    seed: int,
    nodes: int = 5,
    faults: str | Iterable[str] = "all",
    duration_s: float = 10.0,
    *,
    settings: SimSettings | None = None,
    core_factory: CoreFactory | None = None,
    **overrides: object,
) -> Result:
    """Run one seed; raise :class:`~phalanx.sim.cluster.SimulationFailed` on a violation.

    ``duration_s`` is the length of the fault phase; the run then continues (healed) until
    liveness is confirmed, at most ``liveness_us_max`` more.
    """
    if settings is None:
        settings = settings_for(
            nodes=nodes,
            faults=faults,
            duration_s=duration_s,
            **overrides,  # type: ignore[arg-type]  # checked by msgspec.convert
        )
    cluster = Cluster(seed, settings, core_factory)
    cluster.run()
    liveness = cluster.liveness_met_us
    return Result(
        seed=seed,
        nodes=settings.nodes,
        elections=cluster.elections(),
        commits=cluster.commits(),
        faults_applied=cluster.faults_applied,
        events=cluster.queue.popped,
        virtual_s=cluster.queue.now_us / 1e6,
        trace_hash=f"{cluster.trace_hash:016x}",
        history=cluster.history,
        schedule=cluster.schedule,
        network=cluster.network.stats,
        liveness_s=None if liveness is None else (liveness - cluster.quiesce_us) / 1e6,
        ops=cluster.history.counts(),
    )
