"""The demo's last acts: a keyspace grows a shard under writes, an order saga compensates,
and a real cluster goes through a chaos run whose history is checked for linearizability.

Each act returns whether its proof held; ``phalanx demo`` exits 1 when one did not.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = ["run_chaos_act", "run_sharding_act", "run_txn_act"]

#: The chaos act's fault phase, in seconds (the run adds a recovery period and the check).
CHAOS_TIME_LIMIT_S = 10.0


def run_sharding_act(console: Console, *, rows: int = 20_000) -> bool:
    """Grow a SQLite keyspace from 2 to 3 shards while a writer keeps writing."""
    from phalanx.sharding.showcase import grow_under_writes

    console.rule("[bold]Sharding: a shard added under live writes")
    with tempfile.TemporaryDirectory(prefix="phalanx-demo-shards-") as folder:
        result = asyncio.run(grow_under_writes(Path(folder) / "keyspace", rows=rows))
    table = Table(show_header=True, header_style="bold")
    table.add_column("shard")
    table.add_column("rows before", justify="right")
    table.add_column("rows after", justify="right")
    for shard in sorted(result.rows_after):
        table.add_row(
            shard, f"{result.rows_before.get(shard, 0):,}", f"{result.rows_after[shard]:,}"
        )
    console.print(table)
    console.print(
        f"{result.rows_moved:,} rows copied, caught up, verified and cut over in "
        f"{result.seconds:.1f} s while {result.writes:,} writes went on (slowest "
        f"{result.write_ms_max:.0f} ms; writes fenced {result.write_fence_ms:.0f} ms at the "
        f"cut-over). Every row checked: {result.lost} lost, {result.duplicated} duplicated, "
        f"{result.misplaced} misplaced, {result.stale} stale."
    )
    return result.ok


def run_txn_act(console: Console) -> bool:
    """The guide's order flow as an orchestrated saga, with a failure that compensates."""
    from phalanx.txn.orders.demo import run_demo

    console.rule("[bold]Sagas: orders that fail compensate, in reverse order")
    return run_demo(echo=console.print)


def run_chaos_act(console: Console, *, seed: int = 13) -> bool:
    """A real 3-node cluster under partitions, kills and connection resets (through the fault
    proxy); the history must be linearizable."""
    from phalanx.chaos.runner import RunOptions, run_chaos
    from phalanx.chaos.verdict import Verdict

    console.rule(
        "[bold]Chaos: partitions, SIGKILL and TCP resets on a real cluster, history checked"
    )
    options = RunOptions(
        nodes=3,
        workload="register",
        nemesis=["partition", "kill", "reset"],
        time_limit_s=CHAOS_TIME_LIMIT_S,
        seed=seed,
        recovery_s=2.0,
    )
    # Kept after the demo: the report is the point.
    out = Path(tempfile.mkdtemp(prefix="phalanx-demo-chaos-"))
    result = run_chaos(options, out)
    table = Table(show_header=True, header_style="bold")
    table.add_column("at s", justify="right")
    table.add_column("fault")
    table.add_column("for s", justify="right")
    for fault in result.faults:
        what = fault.describe()
        table.add_row(f"{fault.start_s:.1f}", what, f"{fault.duration_s:.1f}")
    console.print(table)
    counts = result.counts
    console.print(
        f"{counts.get('operations', 0):,} operations: {counts.get('ok', 0):,} ok, "
        f"{counts.get('fail', 0):,} failed (definitely not applied), {counts.get('info', 0):,} "
        f"unknown. Linearizability check: [bold]{result.verdict.value}[/bold] "
        f"({result.check_s:.2f} s). Replay with: {result.command}"
    )
    console.print(f"Report: file://{out / 'index.html'}")
    return result.verdict == Verdict.VALID and result.error is None
