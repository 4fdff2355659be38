"""The demo's third act: Raft clusters run through faults in the deterministic simulator.

A handful of seeds, each a five-node cluster taking client writes and linearizable reads
while the network partitions, nodes crash and restart and disks tear writes; Raft's safety
properties are checked after every event. One seed is run twice to show the trace is the
same: any failure would replay exactly with ``phalanx sim --seed N``.
"""

from __future__ import annotations

import time
from collections import Counter

from rich.console import Console
from rich.table import Table

from phalanx.sim.cluster import SimulationFailed
from phalanx.sim.run import simulate

__all__ = ["run_consensus"]

SEEDS = 12
NODES = 5
FAULT_PHASE_S = 5.0


def run_consensus(console: Console, *, seeds: int = SEEDS) -> None:
    """Simulate ``seeds`` clusters and print what they went through."""
    console.print(
        f"\n[bold]Raft under faults[/bold]: {seeds} seeds of a {NODES}-node cluster, "
        f"{FAULT_PHASE_S:.0f} virtual seconds of faults each, every safety property checked "
        "after every event."
    )
    started = time.perf_counter()
    faults: Counter[str] = Counter()
    totals = Counter[str]()
    virtual_s = 0.0
    failed: list[int] = []
    for seed in range(seeds):
        try:
            result = simulate(seed, nodes=NODES, faults="all", duration_s=FAULT_PHASE_S)
        except SimulationFailed as failure:
            failed.append(seed)
            console.print(failure.report, markup=False)
            continue
        faults.update(str(fault.kind.value) for fault in result.schedule)
        totals.update(
            elections=result.elections,
            commits=result.commits,
            events=result.events,
            ok=result.ops.get("ok", 0),
            info=result.ops.get("info", 0),
        )
        virtual_s += result.virtual_s
    wall_s = time.perf_counter() - started
    first = simulate(0, nodes=NODES, faults="all", duration_s=FAULT_PHASE_S).trace_hash
    again = simulate(0, nodes=NODES, faults="all", duration_s=FAULT_PHASE_S).trace_hash

    table = Table(title="What the simulated clusters went through", show_header=True)
    table.add_column("what")
    table.add_column("total", justify="right")
    table.add_row("faults applied", str(sum(faults.values())))
    table.add_row("leader elections", str(totals["elections"]))
    table.add_row("entries committed", str(totals["commits"]))
    table.add_row("client operations ok / unknown outcome", f"{totals['ok']} / {totals['info']}")
    table.add_row("events checked", f"{totals['events']:,}")
    table.add_row(
        "virtual time simulated", f"{virtual_s:.0f} s in {wall_s:.1f} s ({virtual_s / wall_s:.0f}x)"
    )
    table.add_row(
        "safety violations",
        "0" if not failed else f"{len(failed)} (replay: phalanx sim --seed {failed[0]})",
    )
    table.add_row("seed 0 twice: same trace", "yes" if first == again else "NO")
    console.print(table)
    console.print("faults by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(faults.items())))
