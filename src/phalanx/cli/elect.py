"""``phalanx elect``: campaign for, observe, or show the leader of an election.

- ``phalanx elect NAME VALUE``: campaign with VALUE, print ``elected: ...`` once leader,
  lead until SIGINT/SIGTERM, then resign (exit status 0). If leadership is lost (the lease
  could not be renewed) it says so and exits with status 75.
- ``phalanx elect NAME --observe``: print the leader, then every change, until a signal.
- ``phalanx elect NAME --leader``: print the current leader's value (exit status 1: none).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import click

from phalanx.cli.endpoints import client_tls, resolve_endpoints
from phalanx.cli.lock import CALL_TIMEOUT_S, EXIT_LOCK_LOST, handle_signals

if TYPE_CHECKING:
    from phalanx.client.election import Election, Leader

__all__ = ["elect"]

EXIT_NO_LEADER: Final = 1


def _show(leader: Leader) -> str:
    return f"{leader.value.decode(errors='replace')} (token {leader.token})"


async def _campaign(election: Election, value: bytes, stop: asyncio.Event) -> int:
    from phalanx.client.lock import first_of

    async def win() -> None:
        leadership = await election.campaign(value)
        click.echo(f"elected: {value.decode(errors='replace')} (token {leadership.token})")

    async def wait_stop() -> None:
        await stop.wait()

    await first_of(win(), wait_stop())
    leadership = election.leadership
    if leadership is None:  # stopped before being elected: the candidacy was withdrawn
        return 0

    async def wait_lost() -> None:
        await leadership.lost.wait()

    await first_of(wait_lost(), wait_stop())
    lost = leadership.lost.is_set()
    reason = leadership.lost_reason
    await election.resign()
    if lost:
        click.echo(f"phalanx elect: leadership lost ({reason})", err=True)
        return EXIT_LOCK_LOST
    click.echo("resigned")
    return 0


async def _observe(election: Election, stop: asyncio.Event) -> int:
    from phalanx.client.lock import first_of

    async def follow() -> None:
        async for leader in election.observe():
            click.echo(_show(leader))

    async def wait_stop() -> None:
        await stop.wait()

    await first_of(follow(), wait_stop())
    return 0


async def run_elect(
    endpoints: Sequence[str],
    name: str,
    value: str | None,
    *,
    observe: bool,
    ttl_s: float,
) -> int:
    from phalanx.client.client import AsyncClient
    from phalanx.client.election import Election
    from phalanx.errors import PhalanxError

    stop = asyncio.Event()

    def on_signal(_sig: signal.Signals) -> None:
        stop.set()

    try:
        async with AsyncClient(
            endpoints, total_timeout_s=CALL_TIMEOUT_S, ssl=client_tls()
        ) as client:
            election = Election(client, name, ttl_s=ttl_s)
            with handle_signals(on_signal):
                if value is not None:
                    return await _campaign(election, value.encode(), stop)
                if observe:
                    return await _observe(election, stop)
                leader = await election.leader()
                if leader is None:
                    click.echo(f"no leader of {name!r}", err=True)
                    return EXIT_NO_LEADER
                click.echo(leader.value.decode(errors="replace"))
                return 0
    except PhalanxError as exc:
        raise click.ClickException(f"election {name!r}: {type(exc).__name__}: {exc}") from None


@click.command()
@click.argument("name")
@click.argument("value", required=False)
@click.option("--observe", is_flag=True, help="Print the leader and every change until a signal.")
@click.option("--leader", "show_leader", is_flag=True, help="Print the current leader's value.")
@click.option(
    "--ttl-s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1, max=3600),
    help="The candidate's lease: a leader that stops renewing it is replaced after this long.",
)
@click.option(
    "--endpoints",
    default=None,
    help="Client addresses host:port,... (default: $PHALANX_ENDPOINTS, else the local "
    "cluster's ./.phalanx/cluster.json).",
)
def elect(
    name: str,
    value: str | None,
    observe: bool,
    show_leader: bool,
    ttl_s: float,
    endpoints: str | None,
) -> None:
    """Campaign in the election NAME with VALUE and lead until SIGINT/SIGTERM, then resign;
    or --observe its leaders, or show the --leader."""
    modes = (value is not None) + observe + show_leader
    if modes != 1:
        raise click.UsageError("give exactly one of VALUE, --observe, --leader")
    addresses = resolve_endpoints(endpoints)
    with contextlib.suppress(KeyboardInterrupt):
        status = asyncio.run(run_elect(addresses, name, value, observe=observe, ttl_s=ttl_s))
        raise SystemExit(status)
    raise SystemExit(130)
