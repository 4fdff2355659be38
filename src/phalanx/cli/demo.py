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
@click.option(
    "--more/--no-more",
    "with_more",
    default=True,
    show_default=True,
    help="Then a shard added under writes, an order saga, and a checked chaos run (~20 s).",
)
def demo(seed: int, duration_s: float, with_cluster: bool, with_more: bool) -> None:
    """Show retries, a circuit breaker and a bulkhead riding out an outage, Raft under
    simulated faults, a real cluster that loses its leader and no acknowledged write, then
    sharding, sagas and a chaos run."""
    from rich.console import Console

    from phalanx.demo.resilience import run

    run(seed=seed, duration_s=duration_s)
    console = Console()
    proven = True
    if with_cluster:
        from phalanx.demo.cluster import run_cluster_act

        proven = run_cluster_act(console).proven and proven
    if with_more:
        from phalanx.demo.acts import run_chaos_act, run_sharding_act, run_txn_act

        proven = run_sharding_act(console) and proven
        proven = run_txn_act(console) and proven
        proven = run_chaos_act(console) and proven
    if not proven:
        raise SystemExit(1)
