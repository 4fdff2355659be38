"""``phalanx sim``: run the deterministic simulator over one seed or many.

``phalanx sim --seeds 1000 --nodes 5 --faults all`` runs seeds 0..999 (``--first-seed`` moves
the start) with a progress bar, then prints a summary: seeds per second, virtual seconds
simulated per wall second, events per second, faults applied, elections, commits and client
operations. ``phalanx sim --seed N`` runs exactly one seed and prints its result (trace hash,
fault schedule); the same seed and options always replay the same run.

A run that breaks a property stops the command with exit status 1 and prints the failure
report: the seed, the command that replays it, the nodes' states, the fault schedule and the
last events.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from phalanx.sim.cluster import SimSettings

__all__ = ["sim"]


@click.command("sim")
@click.option("--seed", type=int, default=None, help="Run (replay) exactly this seed.")
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="How many seeds to run (ignored with --seed).",
)
@click.option(
    "--first-seed", type=int, default=0, show_default=True, help="The first seed of a --seeds run."
)
@click.option("--nodes", type=click.IntRange(1, 9), default=5, show_default=True)
@click.option(
    "--faults",
    default="all",
    show_default=True,
    help="all, none, or a comma-separated list of: partition, network, crash, "
    "disk, clock, transfer, membership.",
)
@click.option(
    "--duration-s",
    type=click.FloatRange(min=0.0),
    default=10.0,
    show_default=True,
    help="Virtual seconds of faults per seed (recovery is checked after).",
)
@click.option("--clients", type=click.IntRange(min=0), default=3, show_default=True)
@click.option(
    "--history",
    "history_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --seed: write the client history here (JSON lines).",
)
@click.option(
    "--schedule/--no-schedule", default=False, help="With --seed: print the fault schedule."
)
def sim(
    seed: int | None,
    seeds: int,
    first_seed: int,
    nodes: int,
    faults: str,
    duration_s: float,
    clients: int,
    history_path: Path | None,
    schedule: bool,
) -> None:
    """Run Raft clusters through faults in virtual time and check safety after every event."""
    from phalanx.sim.cluster import SimulationFailed
    from phalanx.sim.run import settings_for

    try:
        settings = settings_for(nodes=nodes, faults=faults, duration_s=duration_s, clients=clients)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    try:
        if seed is not None:
            _one(seed, settings, history_path, schedule)
        else:
            _many(first_seed, seeds, settings)
    except SimulationFailed as failure:
        click.echo(failure.report, err=True)
        sys.exit(1)


def _one(seed: int, settings: SimSettings, history_path: Path | None, schedule: bool) -> None:
    from phalanx.sim.run import simulate

    started = time.perf_counter()
    result = simulate(seed, settings=settings)
    wall_s = time.perf_counter() - started
    click.echo(f"seed {seed}: ok")
    click.echo(f"  trace hash      {result.trace_hash}")
    click.echo(f"  virtual time    {result.virtual_s:.3f} s ({wall_s:.3f} s wall)")
    click.echo(f"  events          {result.events}")
    click.echo(f"  faults applied  {result.faults_applied}")
    click.echo(f"  elections       {result.elections}")
    click.echo(f"  commits         {result.commits}")
    ops = result.ops
    click.echo(
        f"  client ops      ok {ops['ok']}  fail {ops['fail']}  info {ops['info']}  "
        f"pending {ops['pending']}"
    )
    if result.liveness_s is not None:
        click.echo(f"  recovered       {result.liveness_s:.3f} s after the last heal")
    if schedule:
        click.echo("  fault schedule:")
        for fault in result.schedule:
            click.echo(f"    {fault.describe()}")
    if history_path is not None:
        result.history.write(history_path)
        click.echo(f"  history         {history_path} ({len(result.history)} operations)")


def _many(first_seed: int, seeds: int, settings: SimSettings) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from phalanx.sim.run import simulate

    console = Console(stderr=True)
    totals = {"events": 0, "faults": 0, "elections": 0, "commits": 0, "ok": 0, "fail": 0, "info": 0}
    virtual_s = 0.0
    started = time.perf_counter()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("simulating", total=seeds)
        for seed in range(first_seed, first_seed + seeds):
            progress.update(task, description=f"seed {seed}")
            result = simulate(seed, settings=settings)
            totals["events"] += result.events
            totals["faults"] += result.faults_applied
            totals["elections"] += result.elections
            totals["commits"] += result.commits
            for key in ("ok", "fail", "info"):
                totals[key] += result.ops[key]
            virtual_s += result.virtual_s
            progress.advance(task)
    wall_s = max(time.perf_counter() - started, 1e-9)
    click.echo(
        f"{seeds} seeds ({first_seed}..{first_seed + seeds - 1}) passed in {wall_s:.1f} s: "
        f"{seeds / wall_s:.1f} seeds/s"
    )
    click.echo(
        f"  virtual time    {virtual_s:.0f} s, {virtual_s / wall_s:.0f} virtual s per wall s"
    )
    click.echo(f"  events          {totals['events']}, {totals['events'] / wall_s:.0f} per s")
    click.echo(f"  faults applied  {totals['faults']}")
    click.echo(f"  elections       {totals['elections']}")
    click.echo(f"  commits         {totals['commits']}")
    click.echo(f"  client ops      ok {totals['ok']}  fail {totals['fail']}  info {totals['info']}")
