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
def demo(seed: int, duration_s: float) -> None:
    """Show retries, a circuit breaker and a bulkhead riding out an outage."""
    from phalanx.demo.resilience import run

    run(seed=seed, duration_s=duration_s)
