"""``phalanx demo``: the resilience primitives at work against a flaky dependency."""

from __future__ import annotations

import click


@click.command()
@click.option("--seed", default=7, show_default=True, help="Seed of the simulated dependency.")
@click.option(
    "--duration-s",
    default=12.0,
    show_default=True,
    type=click.FloatRange(1.0, 600.0),
    help="How long the demo runs, in seconds.",
)
@click.option(
    "--cluster/--no-cluster",
    "with_cluster",
    default=True,
    show_default=True,
    help="End with a real three-node cluster losing its leader (about 10 s).",
)
def demo(seed: int, duration_s: float, with_cluster: bool) -> None:
    """Show retries, a circuit breaker and a bulkhead riding out an outage, Raft under
    simulated faults, then a real cluster that loses its leader and no acknowledged write."""
    from phalanx.demo.resilience import run

    run(seed=seed, duration_s=duration_s)
    if with_cluster:
        from rich.console import Console

        from phalanx.demo.cluster import run_cluster_act

        if not run_cluster_act(Console()).proven:
            raise SystemExit(1)
