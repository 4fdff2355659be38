"""The transactional outbox and inbox on PostgreSQL.

The same contract as the SQLite ones (:mod:`.outbox`): :meth:`PostgresOutbox.append` writes
on the caller's psycopg connection inside its open transaction, and the table has Debezium's
outbox columns (``id``, ``aggregatetype``, ``aggregateid``, ``type``, ``payload`` as
``jsonb``), so Debezium's outbox event router can stream it as it is. The relay reads in
``seq`` order; :meth:`PostgresInbox.handle` runs the handler in one transaction with the
inbox row, so duplicates are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec
import psycopg

from phalanx.txn.events.envelope import Event
from phalanx.txn.events.outbox import RELAY_BATCH_MAX

__all__ = ["PG_INBOX_SCHEMA", "PG_OUTBOX_SCHEMA", "PostgresInbox", "PostgresOutbox"]

PG_OUTBOX_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    seq bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,
    payload jsonb NOT NULL,
    correlation_id text NOT NULL,
    causation_id text NOT NULL,
    service text NOT NULL,
    occurred_at_s double precision NOT NULL,
    published_at_s double precision
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (seq) WHERE published_at_s IS NULL;
"""
PG_INBOX_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS inbox (
    consumer text NOT NULL,
    event_id text NOT NULL,
    type text NOT NULL,
    correlation_id text NOT NULL,
    handled_at_s double precision NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
"""
_COLUMNS: Final = (
    "id, aggregatetype, aggregateid, type, payload, correlation_id, causation_id, service, "
    "occurred_at_s"
)


def _event(row: tuple[Any, ...]) -> Event:
    payload = row[4] if isinstance(row[4], dict) else msgspec.json.decode(row[4])
    return Event(
        id=row[0],
        aggregatetype=row[1],
        aggregateid=row[2],
        type=row[3],
        payload=payload,
        correlation_id=row[5],
        causation_id=row[6],
        service=row[7],
        occurred_at_s=float(row[8]),
    )


class PostgresOutbox:
    """The outbox of one service's PostgreSQL database; ``conn`` is the relay's connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        with conn.transaction():
            conn.execute(PG_OUTBOX_SCHEMA)

    @staticmethod
    def append(conn: psycopg.Connection[Any], event: Event) -> None:
        """Store ``event`` in the transaction open on ``conn`` (the caller commits)."""
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
            raise ValueError("append: open the transaction of the state change first")
        conn.execute(
            f"INSERT INTO outbox ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",  # noqa: S608 - constant columns
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
        with self.conn.transaction():
            rows = self.conn.execute(
                f"SELECT seq, {_COLUMNS} FROM outbox WHERE published_at_s IS NULL "  # noqa: S608
                "ORDER BY seq LIMIT %s",
                (min(limit, RELAY_BATCH_MAX),),
            ).fetchall()
        return [(int(row[0]), _event(row[1:])) for row in rows]

    def mark_published(self, seq: int, now_s: float) -> None:
        with self.conn.transaction():
            self.conn.execute("UPDATE outbox SET published_at_s = %s WHERE seq = %s", (now_s, seq))


Handler = Callable[[psycopg.Connection[Any], Event], None]


class PostgresInbox:
    """The inbox of one consumer's PostgreSQL database (autocommit connection)."""

    def __init__(self, conn: psycopg.Connection[Any], consumer: str) -> None:
        if not conn.autocommit:
            raise ValueError("PostgresInbox needs an autocommit connection")
        self.conn = conn
        self.consumer = consumer
        with conn.transaction():
            conn.execute(PG_INBOX_SCHEMA)
            conn.execute(PG_OUTBOX_SCHEMA)

    def handle(self, event: Event, handler: Handler, *, now_s: float) -> bool:
        """Run ``handler`` once for ``event``; return False for a duplicate (skipped)."""
        with self.conn.transaction():
            cursor = self.conn.execute(
                "INSERT INTO inbox VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (self.consumer, event.id, event.type, event.correlation_id, now_s),
            )
            if cursor.rowcount != 1:
                return False
            handler(self.conn, event)
        return True
