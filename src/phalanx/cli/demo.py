"""``phalanx demo``: the resilience primitives at work against a flaky dependency.

::

    phalanx demo [--seed S] [--duration-s N] [--no-cluster] [--no-more]   # every act
    phalanx demo orders --mode orchestrated|choreographed --orders N \\
        --fail payment=0.2,inventory=0.1,shipping=0.1 --crash orchestrator|payment|none --seed S

Without a subcommand it runs every act. ``orders`` runs the order flow on embedded defaults
(fresh SQLite databases, services in this process) through ``phalanx txn orders``: it prints
how many orders completed and how many were compensated, checks the invariants, and exits 1
if any is violated.
"""

from __future__ import annotations

import click

from phalanx.txn.orders import CRASHES, MODES

__all__ = ["demo"]


@click.group(invoke_without_command=True)
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
@click.pass_context
def demo(
    ctx: click.Context, seed: int, duration_s: float, with_cluster: bool, with_more: bool
) -> None:
    """Show retries, a circuit breaker and a bulkhead riding out an outage, Raft under
    simulated faults, a real cluster that loses its leader and no acknowledged write, then
    sharding, sagas and a chaos run. `phalanx demo orders` runs the order flow alone."""
    if ctx.invoked_subcommand is not None:
        return
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


@demo.command("orders")
@click.option("--mode", type=click.Choice(MODES), default="orchestrated", show_default=True)
@click.option("--orders", "count", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option(
    "--fail", default="", help="Failure shares, e.g. payment=0.2,inventory=0.1,shipping=0.1."
)
@click.option("--crash", type=click.Choice(CRASHES), default="none", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def demo_orders(
    ctx: click.Context, mode: str, count: int, fail: str, crash: str, seed: int
) -> None:
    """Run N orders through the order flow on embedded defaults and check the invariants
    (exit 1 if one is violated)."""
    from phalanx.cli.txn import orders

    ctx.invoke(orders, mode=mode, count=count, fail=fail, crash=crash, seed=seed)
