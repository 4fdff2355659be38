"""``phalanx txn``: the order-flow reference system, and 2PC recovery by hand.

::

    phalanx txn orders --mode orchestrated --orders 200 \\
        --fail payment=0.2,inventory=0.1,shipping=0.1 --crash orchestrator --seed 7
    phalanx txn orders --http --orders 50 --fail payment=0.2 --crash payment   # processes
    phalanx txn orders --http --mode choreographed --redis redis://127.0.0.1:6379/0 ...
    phalanx txn in-doubt --log 2pc.db --pg a='host=db1 dbname=a' --sqlite s=shop.db
    phalanx txn recover --coordinator app-1 --log 2pc.db --pg a='host=db1 dbname=a' ...
    phalanx txn resolve --log app-1=2pc.db --pg a='host=db1 dbname=a' [--once]

``orders`` runs the order flow on fresh SQLite databases, prints how many orders completed
and how many were compensated, checks the invariants, and exits 1 if any is violated.
``in-doubt`` lists the prepared branches of participants with what the log says about
each; ``recover`` finishes the in-doubt transactions of a coordinator from its decision log.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import click

from phalanx.txn.orders import CRASHES, MODES, Faults, run_orders
from phalanx.txn.twopc.participants import Participant

__all__ = ["txn"]


def _parse_fail(text: str) -> Faults:
    faults = Faults()
    if not text:
        return faults
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in ("payment", "inventory", "shipping"):
            raise click.BadParameter(f"unknown failure {name!r} (payment, inventory, shipping)")
        try:
            share = float(value)
        except ValueError:
            raise click.BadParameter(
                f"{name}: expected a share from 0 to 1, got {value!r}"
            ) from None
        if not 0.0 <= share <= 1.0:
            raise click.BadParameter(f"{name}: expected a share from 0 to 1, got {share}")
        setattr(faults, name, share)
    return faults


@click.group()
def txn() -> None:
    """Distributed transactions: the order flow, 2PC recovery."""


@txn.command()
@click.option("--mode", type=click.Choice(MODES), default="orchestrated", show_default=True)
@click.option("--orders", "count", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option(
    "--fail", default="", help="Failure shares, e.g. payment=0.2,inventory=0.1,shipping=0.1."
)
@click.option("--crash", type=click.Choice(CRASHES), default="none", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the services keep their databases (default: a temporary directory).",
)
@click.option(
    "--http",
    is_flag=True,
    help="Run each service as its own process: over HTTP (orchestrated) or over Redis "
    "Streams (choreographed).",
)
@click.option("--redis", "redis_url", default=None, help="Redis URL, for --http choreographed.")
def orders(
    mode: str,
    count: int,
    fail: str,
    crash: str,
    seed: int,
    directory: str | None,
    http: bool,
    redis_url: str | None,
) -> None:
    """Run N orders through the order flow and check the invariants."""
    faults = _parse_fail(fail)
    faults.seed = seed
    if http and mode == "choreographed" and crash == "orchestrator":
        raise click.BadParameter("a choreography has no orchestrator to crash")
    if http and mode == "choreographed" and not redis_url:
        raise click.BadParameter("--http --mode choreographed needs --redis URL (the broker)")
    with tempfile.TemporaryDirectory(prefix="phalanx-orders-") as tmp:
        where = Path(directory) if directory else Path(tmp)
        if http and mode == "choreographed":
            from phalanx.txn.orders.processes import run_orders_choreographed_processes

            report = run_orders_choreographed_processes(
                orders=count,
                faults=faults,
                crash=crash,
                directory=where,
                redis_url=str(redis_url),
                seed=seed,
            )
        elif http:
            from phalanx.txn.orders.processes import run_orders_http

            report = run_orders_http(
                orders=count, faults=faults, crash=crash, directory=where, seed=seed
            )
        else:
            report = run_orders(
                mode=mode, orders=count, faults=faults, crash=crash, directory=where, seed=seed
            )
    click.echo(
        f"{report.mode}: {report.orders} orders, {report.completed} completed, "
        f"{report.cancelled} compensated, {report.crashes} crashes injected, "
        f"{report.elapsed_s:.2f} s"
    )
    if report.ok:
        click.echo(
            "invariants: hold (no order paid but not shipped or refunded, "
            "inventory never negative and conserved, no double charge)"
        )
        return
    for problem in report.violations[:20]:
        click.echo(f"violated: {problem}", err=True)
    raise SystemExit(1)


class _ClosableParticipant(Participant, Protocol):
    def close(self) -> None: ...


def _participants(postgres: tuple[str, ...], sqlite: tuple[str, ...]) -> list[_ClosableParticipant]:
    from phalanx.txn.twopc import SqliteParticipant

    found: list[_ClosableParticipant] = []
    for spec in postgres:
        name, _, conninfo = spec.partition("=")
        from phalanx.txn.twopc.postgres import PostgresParticipant

        found.append(PostgresParticipant(name, conninfo))
    for spec in sqlite:
        name, _, path = spec.partition("=")
        found.append(SqliteParticipant(name, path))
    if not found:
        raise click.BadParameter("give at least one --pg or --sqlite participant")
    return found


PARTICIPANT_OPTIONS = (
    click.option("--pg", "postgres", multiple=True, help="A participant: NAME=CONNINFO."),
    click.option("--sqlite", "sqlite", multiple=True, help="A participant: NAME=PATH."),
)


def _with_participants(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(PARTICIPANT_OPTIONS):
        fn = option(fn)
    return fn


@txn.command()
@click.option("--coordinator", "coordinator_id", required=True, help="The coordinator's id.")
@click.option("--log", "log_path", required=True, type=click.Path(dir_okay=False))
@_with_participants
def recover(
    coordinator_id: str, log_path: str, postgres: tuple[str, ...], sqlite: tuple[str, ...]
) -> None:
    """Finish every in-doubt transaction of a coordinator (safe to repeat)."""
    from phalanx.txn.twopc import Coordinator, SqliteDecisionLog

    participants = _participants(postgres, sqlite)
    try:
        with (
            SqliteDecisionLog(log_path) as log,
            Coordinator(coordinator_id, log, participants) as coordinator,
        ):
            report = coordinator.recover()
    finally:
        for participant in participants:
            participant.close()
    for gid in report.committed:
        click.echo(f"committed {gid}")
    for gid in report.rolled_back:
        click.echo(f"rolled back {gid}")
    for error in report.errors:
        click.echo(f"not done: {error}", err=True)
    click.echo(f"{report.ended} transactions finished; {len(report.errors)} problems")
    if report.errors:
        raise SystemExit(1)


@txn.command("in-doubt")
@click.option("--log", "log_path", required=True, type=click.Path(dir_okay=False, exists=True))
@_with_participants
def in_doubt(log_path: str, postgres: tuple[str, ...], sqlite: tuple[str, ...]) -> None:
    """List prepared branches and what the decision log says about each (changes nothing)."""
    import time

    from phalanx.txn.twopc import SqliteDecisionLog, parse_branch

    participants = _participants(postgres, sqlite)
    rows = 0
    try:
        with SqliteDecisionLog(log_path) as log:
            for participant in participants:
                for branch in participant.prepared():
                    parsed = parse_branch(branch.gid)
                    if parsed is None:
                        verdict = "not a Phalanx branch: left alone"
                    else:
                        held = log.outcome(parsed.gid)
                        verdict = (
                            f"log says {held.value}"
                            if held
                            else "no decision yet (presumed abort once asked)"
                        )
                    age_s = time.time() - branch.prepared_at_s
                    click.echo(f"{participant.name:12} {branch.gid}  {age_s:8.1f}s  {verdict}")
                    rows += 1
    finally:
        for participant in participants:
            participant.close()
    click.echo(f"{rows} prepared branches")


@txn.command()
@click.option(
    "--log",
    "logs",
    multiple=True,
    required=True,
    help="A coordinator's decision log: COORDINATOR=PATH (SQLite); repeat for each.",
)
@click.option("--inquiry-after-s", type=click.FloatRange(min=0), default=30.0, show_default=True)
@click.option("--interval-s", type=click.FloatRange(min=0.01), default=5.0, show_default=True)
@click.option("--once", is_flag=True, help="One pass, then exit (for cron or tests).")
@_with_participants
def resolve(
    logs: tuple[str, ...],
    inquiry_after_s: float,
    interval_s: float,
    once: bool,
    postgres: tuple[str, ...],
    sqlite: tuple[str, ...],
) -> None:
    """Participant side: ask the coordinators' logs about branches prepared too long."""
    import threading

    from phalanx.txn.twopc import ParticipantResolver, Resolver, SqliteDecisionLog

    opened = {}
    for spec in logs:
        coordinator_id, _, path = spec.partition("=")
        opened[coordinator_id] = SqliteDecisionLog(path)
    participants = _participants(postgres, sqlite)
    try:
        resolvers = [
            ParticipantResolver(p, opened, inquiry_after_s=inquiry_after_s) for p in participants
        ]
        if once:
            problems = 0
            for participant, resolver in zip(participants, resolvers, strict=True):
                report = resolver.run_once()
                for gid in report.committed:
                    click.echo(f"{participant.name}: committed {gid}")
                for gid in report.rolled_back:
                    click.echo(f"{participant.name}: rolled back {gid}")
                for error in report.errors:
                    click.echo(f"{participant.name}: not done: {error}", err=True)
                problems += len(report.errors)
                click.echo(f"{participant.name}: {report.waiting} prepared, not old enough yet")
            if problems:
                raise SystemExit(1)
            return
        stop = threading.Event()
        with Resolver([r.run_once for r in resolvers], interval_s=interval_s):
            click.echo("resolving in the background; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
    finally:
        for participant in participants:
            participant.close()
        for log in opened.values():
            log.close()


@txn.command()
def demo() -> None:
    """An order saga that fails and compensates, with the invariants checked."""
    from phalanx.txn.orders.demo import run_demo

    if not run_demo(click.echo):
        raise SystemExit(1)
