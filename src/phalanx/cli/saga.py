"""``phalanx saga``: look at sagas in a saga log and steer the ones that need a person.

::

    phalanx saga list --db sagas.db [--status dead_letter]
    phalanx saga show ORDER-42 --db sagas.db        # the record and its timeline
    phalanx saga retry ORDER-42 --db sagas.db       # a dead letter goes back to work
    phalanx saga compensate ORDER-42 --db sagas.db  # undo whatever it did
    phalanx saga trace ORDER-42 --db orders.db --db payments.db ...   # a choreographed flow

``--db`` is the SQLite saga log (``PHALANX_SAGA_DB`` when not given). ``retry`` and
``compensate`` bump the saga's fencing token, so a worker still holding it stops at its next
write; a running worker pool picks the saga up at its next claim.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Final

import click

from phalanx.errors import Conflict
from phalanx.txn.saga import SagaRecord, SagaStatus, SqliteSagaStore
from phalanx.txn.saga.admin import force_compensate, retry_dead_letter

__all__ = ["saga"]

#: The stall timer a retried saga gets when none is given.
RETRY_STALL_TIMEOUT_S: Final = 3600.0
DB_OPTION = click.option(
    "--db",
    "db_path",
    envvar="PHALANX_SAGA_DB",
    required=True,
    type=click.Path(dir_okay=False),
    help="The SQLite saga log (env PHALANX_SAGA_DB).",
)


@contextmanager
def _store(db_path: str) -> Iterator[SqliteSagaStore]:
    store = SqliteSagaStore(db_path)
    try:
        yield store
    finally:
        store.close()


def _stamp(wall_s: float) -> str:
    return datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _load(store: SqliteSagaStore, saga_id: str) -> SagaRecord:
    record = store.get(saga_id)
    if record is None:
        raise click.ClickException(f"no saga {saga_id!r} in {store.path}")
    return record


@click.group()
def saga() -> None:
    """Sagas: list, show, retry, compensate; trace a choreographed flow."""


@saga.command("list")
@DB_OPTION
@click.option(
    "--status",
    type=click.Choice([s.value for s in SagaStatus]),
    default=None,
    help="Only sagas in this status.",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
def list_sagas(db_path: str, status: str | None, limit: int) -> None:
    """One line per saga: id, name, status, step, executions, owner, error."""
    with _store(db_path) as store:
        records = store.find(status=SagaStatus(status) if status else None, limit=limit)
    if not records:
        click.echo("no sagas")
        return
    click.echo(f"{'ID':24} {'NAME':12} {'STATUS':13} {'STEP':>4} {'RUNS':>4} {'OWNER':10} ERROR")
    for r in records:
        click.echo(
            f"{r.saga_id:24} {r.name:12} {r.status.value:13} {r.step:>4} {r.executions:>4} "
            f"{r.owner or '-':10} {r.error[:60]}"
        )


@saga.command()
@click.argument("saga_id")
@DB_OPTION
def show(saga_id: str, db_path: str) -> None:
    """The saga's record and its timeline, oldest event first."""
    with _store(db_path) as store:
        record = _load(store, saga_id)
        events = store.events(saga_id)
    click.echo(f"saga {record.saga_id} ({record.name}): {record.status.value}")
    click.echo(f"  step {record.step}, executions {record.executions}, resumes {record.resumes}")
    click.echo(f"  owner {record.owner or '-'}, fence {record.fence}")
    click.echo(f"  stall timer {_stamp(record.deadline_s)}")
    if record.error:
        click.echo(f"  error: {record.error}")
    click.echo(f"  payload: {record.payload}")
    click.echo("timeline:")
    start_s = events[0].at_s if events else 0.0
    for event in events:
        step = f" {event.step}" if event.step else ""
        detail = f"  ({event.detail})" if event.detail else ""
        click.echo(
            f"  {_stamp(event.at_s)} +{event.at_s - start_s:8.3f}s {event.kind}{step}{detail}"
        )


@saga.command()
@click.argument("saga_id")
@DB_OPTION
@click.option(
    "--stall-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    default=RETRY_STALL_TIMEOUT_S,
    show_default=True,
    help="A fresh stall timer from now.",
)
def retry(saga_id: str, db_path: str, stall_timeout_s: float) -> None:
    """Send a dead-lettered saga back to where it stopped, with fresh caps."""
    with _store(db_path) as store:
        _load(store, saga_id)
        try:
            record = retry_dead_letter(
                store, saga_id, now_s=time.time(), stall_timeout_s=stall_timeout_s
            )
        except Conflict as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"saga {saga_id}: {record.status.value} again (fence {record.fence})")


@saga.command()
@click.argument("saga_id")
@DB_OPTION
def compensate(saga_id: str, db_path: str) -> None:
    """Undo a running or dead-lettered saga: compensate every step that may have run."""
    with _store(db_path) as store:
        _load(store, saga_id)
        try:
            record = force_compensate(store, saga_id, now_s=time.time())
        except Conflict as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"saga {saga_id}: compensating from step {record.step} (fence {record.fence})")


@saga.command()
@click.argument("correlation_id")
@click.option(
    "--db",
    "databases",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A service's SQLite database holding an outbox and/or an inbox; repeat for each.",
)
def trace(correlation_id: str, databases: tuple[str, ...]) -> None:
    """The timeline of a choreographed flow across services, from their outboxes and inboxes."""
    from phalanx.txn.events import trace as build_trace

    lines = build_trace(correlation_id, databases)
    if not lines:
        raise click.ClickException(f"no events with correlation id {correlation_id!r}")
    start_s = lines[0].at_s
    for line in lines:
        indent = "  " * line.depth
        cause = f" <- {line.causation_id}" if line.causation_id else ""
        click.echo(
            f"+{line.at_s - start_s:9.3f}s {indent}{line.what:7} {line.service:12} "
            f"{line.event_type} [{line.event_id}]{cause}"
        )
