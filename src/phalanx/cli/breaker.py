"""``phalanx breaker``: read and steer circuit breakers that share state through a store.

Breakers configured with a :class:`~phalanx.resilience.BreakerStore` adopt what is published
there within their ``refresh_interval_s``, so an operator can open one for maintenance, close
one after an incident, or look at what a fleet decided, from any machine that reaches the
store::

    phalanx breaker show payments --store sqlite:/var/lib/app/breakers.db
    phalanx breaker open payments --store redis://cache:6379/0 --for 10m
    phalanx breaker close payments --store redis://cache:6379/0
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Final, Protocol

import click

from phalanx.resilience.breaker_store import BreakerRecord, BreakerStore, SQLiteBreakerStore
from phalanx.resilience.config import parse_duration_s

__all__ = ["breaker"]

#: A write that loses this many compare-and-set races in a row gives up.
WRITE_ATTEMPTS_MAX: Final = 10
#: Longest ``--for``: longer than a day wants an open without ``--for`` and a later close.
OPEN_FOR_S_MAX: Final = 86_400.0

STORE_HELP = "Where the breakers publish: sqlite:PATH or redis://HOST:PORT/DB."


class ClosableStore(BreakerStore, Protocol):
    def close(self) -> None: ...


def open_store(spec: str) -> ClosableStore:
    """A store from ``sqlite:PATH`` or a ``redis://`` / ``rediss://`` / ``unix://`` URL."""
    if spec.startswith("sqlite:"):
        path = spec.removeprefix("sqlite:")
        if not path:
            raise click.BadParameter("sqlite: needs a path, e.g. sqlite:/var/lib/breakers.db")
        return SQLiteBreakerStore(path)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        try:
            from phalanx.resilience.breaker_redis import RedisBreakerStore
        except ImportError as exc:
            raise click.ClickException(str(exc)) from exc
        return RedisBreakerStore(spec)
    raise click.BadParameter(f"expected sqlite:PATH or redis://..., got {spec!r}")


@contextmanager
def store_for(spec: str) -> Iterator[ClosableStore]:
    store = open_store(spec)
    try:
        yield store
    finally:
        store.close()


def _describe(name: str, record: BreakerRecord | None) -> str:
    if record is None:
        return f"{name}: no state published (every process decides on its own counts)"

    def stamp(wall_s: float) -> str:
        return datetime.fromtimestamp(wall_s, UTC).isoformat(timespec="seconds")

    text = (
        f"{name}: {record.state} (version {record.version}, updated {stamp(record.updated_wall_s)})"
    )
    if record.state == "open":
        if record.open_until_wall_s is None:
            text += ", forced open until closed"
        else:
            text += f", probing from {stamp(record.open_until_wall_s)}"
    return text


def publish(
    store: BreakerStore, name: str, state: str, open_until_wall_s: float | None
) -> BreakerRecord:
    """Write ``state`` for ``name`` with compare-and-set, retrying lost races a few times."""
    current = store.load(name)
    for _ in range(WRITE_ATTEMPTS_MAX):
        expected = current.version if current is not None else 0
        record = BreakerRecord(
            state=state,
            version=expected + 1,
            open_until_wall_s=open_until_wall_s,
            updated_wall_s=time.time(),
        )
        written, current = store.compare_and_set(name, expected, record)
        if written:
            return current
    raise click.ClickException(
        f"{name}: lost {WRITE_ATTEMPTS_MAX} races with breakers writing at the same time"
    )


@click.group()
def breaker() -> None:
    """Read and steer circuit breakers that share state through a store."""


@breaker.command()
@click.argument("name")
@click.option("--store", "store_spec", required=True, help=STORE_HELP)
def show(name: str, store_spec: str) -> None:
    """Print the state published for breaker NAME."""
    with store_for(store_spec) as store:
        click.echo(_describe(name, store.load(name)))


@breaker.command(name="open")
@click.argument("name")
@click.option("--store", "store_spec", required=True, help=STORE_HELP)
@click.option(
    "--for",
    "open_for",
    default=None,
    help="Probe again after this long (e.g. 10m); without it, stay open until closed.",
)
def open_(name: str, store_spec: str, open_for: str | None) -> None:
    """Open breaker NAME in every process that shares the store."""
    until_wall_s = None
    if open_for is not None:
        try:
            seconds = parse_duration_s("--for", open_for, maximum_s=OPEN_FOR_S_MAX)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
        until_wall_s = time.time() + seconds
    with store_for(store_spec) as store:
        click.echo(_describe(name, publish(store, name, "open", until_wall_s)))


@breaker.command()
@click.argument("name")
@click.option("--store", "store_spec", required=True, help=STORE_HELP)
def close(name: str, store_spec: str) -> None:
    """Close breaker NAME in every process that shares the store."""
    with store_for(store_spec) as store:
        click.echo(_describe(name, publish(store, name, "closed", None)))
