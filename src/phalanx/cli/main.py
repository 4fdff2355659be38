"""The ``phalanx`` command line: the front door to every capability."""

from __future__ import annotations

import click

from phalanx import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="phalanx")
def cli() -> None:
    """Phalanx: reliable, scalable distributed systems in Python."""


def _register() -> None:
    # Subcommand modules are imported here so that ``phalanx --help`` lists them all.
    from phalanx.cli.bench import bench
    from phalanx.cli.breaker import breaker
    from phalanx.cli.chaos import chaos
    from phalanx.cli.cluster import cluster
    from phalanx.cli.demo import demo
    from phalanx.cli.elect import elect
    from phalanx.cli.health import health
    from phalanx.cli.kv import kv
    from phalanx.cli.lock import lock
    from phalanx.cli.node import node
    from phalanx.cli.saga import saga
    from phalanx.cli.shard import shard
    from phalanx.cli.sim import sim
    from phalanx.cli.txn import txn

    cli.add_command(bench)
    cli.add_command(breaker)
    cli.add_command(chaos)
    cli.add_command(cluster)
    cli.add_command(demo)
    cli.add_command(elect)
    cli.add_command(health)
    cli.add_command(kv)
    cli.add_command(lock)
    cli.add_command(node)
    cli.add_command(saga)
    cli.add_command(shard)
    cli.add_command(sim)
    cli.add_command(txn)


def main() -> None:
    _register()
    cli()


if __name__ == "__main__":
    main()
