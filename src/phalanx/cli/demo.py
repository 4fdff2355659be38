"""``phalanx demo``: the resilience primitives at work against a flaky dependency."""

from __future__ import annotations

import click


@click.command()
@click.option("--seed", default=7, show_default=True, help="Seed of the simulated dependency.")
def demo(seed: int) -> None:
    """Show retries, a circuit breaker and a bulkhead riding out an outage."""
    from phalanx.demo.resilience import run

    run(seed=seed)
