"""The transactional outbox and inbox on SQLite, and the relay between outbox and bus.

**Outbox.** :meth:`SqliteOutbox.append` inserts an event into the ``outbox`` table *on the
caller's connection, inside the caller's open transaction*: the event is stored if and only
if the state change it announces commits. The table has Debezium's outbox columns (``id``,
``aggregatetype``, ``aggregateid``, ``type``, ``payload``) plus ``seq`` (the order of
appends), the tracing fields, and ``published_at_s`` (set by the relay; published rows are
kept for ``phalanx saga trace`` until :meth:`SqliteOutbox.prune`).

**Relay.** :class:`Relay` reads unpublished events in ``seq`` order, publishes them one by
one, and marks each published after the bus accepted it. A publish that fails stops the
batch, so order is kept; a crash between publish and mark publishes that event again on the
next pass: delivery is at least once, and in order per outbox. Run one relay per outbox.

**Inbox.** :meth:`SqliteInbox.handle` runs a handler inside the consumer's local transaction
together with an ``inbox`` row keyed by (consumer, event id); a duplicate delivery finds the
row and is skipped. Handler effects and the inbox row commit together, so each event takes
effect once per consumer even though it may be delivered many times.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import msgspec

from phalanx.txn.events.envelope import Event

__all__ = [
    "INBOX_SCHEMA",
    "OUTBOX_SCHEMA",
    "RELAY_BATCH_MAX",
    "OutboxReader",
    "Publisher",
    "Relay",
    "RelayReport",
    "SqliteInbox",
    "SqliteOutbox",
]

#: Most events one relay pass publishes.
RELAY_BATCH_MAX: Final = 1000

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    aggregatetype TEXT NOT NULL,
    aggregateid TEXT NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id TEXT NOT NULL,
    service TEXT NOT NULL,
    occurred_at_s REAL NOT NULL,
    published_at_s REAL
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (published_at_s, seq);
CREATE INDEX IF NOT EXISTS outbox_correlation ON outbox (correlation_id);
"""
INBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    handled_at_s REAL NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
"""
_OUTBOX_COLUMNS = (
    "id, aggregatetype, aggregateid, type, payload, correlation_id, causation_id, service, "
    "occurred_at_s"
)


def _event(row: tuple[object, ...]) -> Event:
    return Event(
        id=str(row[0]),
        aggregatetype=str(row[1]),
        aggregateid=str(row[2]),
        type=str(row[3]),
        payload=msgspec.json.decode(str(row[4])),
        correlation_id=str(row[5]),
        causation_id=str(row[6]),
        service=str(row[7]),
        occurred_at_s=float(row[8]),  # type: ignore[arg-type]
    )


class SqliteOutbox:
    """The outbox of one service's SQLite database (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(OUTBOX_SCHEMA)

    @staticmethod
    def append(conn: sqlite3.Connection, event: Event) -> None:
        """Store ``event`` in the transaction open on ``conn`` (the caller commits)."""
        if not conn.in_transaction:
            raise ValueError("append: open the transaction of the state change first")
        conn.execute(
            f"INSERT INTO outbox ({_OUTBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant columns
            (
                event.id,
                event.aggregatetype,
                event.aggregateid,
                event.type,
                event.encoded_payload(),
                event.correlation_id,
                event.causation_id,
                event.service,
                event.occurred_at_s,
            ),
        )

    def unpublished(self, limit: int) -> list[tuple[int, Event]]:
        rows = self.conn.execute(
            f"SELECT seq, {_OUTBOX_COLUMNS} FROM outbox WHERE published_at_s IS NULL "  # noqa: S608
            "ORDER BY seq LIMIT ?",
            (min(limit, RELAY_BATCH_MAX),),
        ).fetchall()
        return [(int(row[0]), _event(row[1:])) for row in rows]

    def mark_published(self, seq: int, now_s: float) -> None:
        self.conn.execute("UPDATE outbox SET published_at_s = ? WHERE seq = ?", (now_s, seq))

    def by_correlation(self, correlation_id: str) -> list[Event]:
        rows = self.conn.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE correlation_id = ? ORDER BY seq",  # noqa: S608
            (correlation_id,),
        ).fetchall()
        return [_event(row) for row in rows]

    def prune(self, *, before_s: float) -> int:
        """Delete published events older than ``before_s`` (wall clock)."""
        cursor = self.conn.execute(
            "DELETE FROM outbox WHERE published_at_s IS NOT NULL AND occurred_at_s < ?",
            (before_s,),
        )
        return cursor.rowcount


Handler = Callable[[sqlite3.Connection, Event], None]


class SqliteInbox:
    """The inbox of one consumer's SQLite database (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, consumer: str) -> None:
        if conn.isolation_level is not None:
            raise ValueError("SqliteInbox needs an autocommit connection (isolation_level=None)")
        self.conn = conn
        self.consumer = consumer
        conn.executescript(INBOX_SCHEMA)
        conn.executescript(OUTBOX_SCHEMA)  # handlers usually emit the next event

    def handle(self, event: Event, handler: Handler, *, now_s: float) -> bool:
        """Run ``handler`` once for ``event``; return False for a duplicate (skipped)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = conn.execute(
                "INSERT INTO inbox VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (self.consumer, event.id, event.type, event.correlation_id, now_s),
            )
            fresh = cursor.rowcount == 1
            if fresh:
                handler(conn, event)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return fresh


class OutboxReader(Protocol):
    """What a relay reads: :class:`SqliteOutbox` and ``PostgresOutbox`` both are."""

    def unpublished(self, limit: int) -> list[tuple[int, Event]]: ...

    def mark_published(self, seq: int, now_s: float) -> None: ...


@runtime_checkable
class Publisher(Protocol):
    """Where a relay sends events: a bus or a broker."""

    def publish(self, event: Event) -> None:
        """Deliver ``event`` (or raise: the relay tries again later, in order)."""
        ...


@dataclass(slots=True)
class RelayReport:
    published: int = 0
    error: str = ""


class Relay:
    """Moves events from one outbox to a publisher, in order, at least once."""

    def __init__(
        self,
        outbox: OutboxReader,
        publisher: Publisher,
        *,
        batch_max: int = 100,
        now_s: Callable[[], float],
    ) -> None:
        if not 1 <= batch_max <= RELAY_BATCH_MAX:
            raise ValueError(f"batch_max: 1 to {RELAY_BATCH_MAX}, got {batch_max}")
        self.outbox = outbox
        self.publisher = publisher
        self.batch_max = batch_max
        self._now_s = now_s

    def run_once(self) -> RelayReport:
        report = RelayReport()
        for seq, event in self.outbox.unpublished(self.batch_max):
            try:
                self.publisher.publish(event)
            except Exception as exc:
                report.error = f"{event.id}: {type(exc).__name__}: {exc}"
                break  # keep the order: nothing after a failed event goes out first
            self.outbox.mark_published(seq, self._now_s())
            report.published += 1
        return report
