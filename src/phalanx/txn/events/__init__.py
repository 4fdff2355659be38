"""Choreographed sagas: transactional outbox, relay, inbox, buses, and tracing.

* :mod:`.envelope`: :class:`Event` (Debezium outbox columns plus correlation and causation);
* :mod:`.outbox`: :class:`SqliteOutbox`, :class:`Relay`, :class:`SqliteInbox`;
  :mod:`.outbox_postgres`: ``PostgresOutbox``, ``PostgresInbox`` (import psycopg);
* :mod:`.bus`: :class:`EmbeddedBus` (in-process), :class:`RedisStreamsBus`;
* :mod:`.trace`: :func:`trace`, behind ``phalanx saga trace``.

See ``docs/saga.md``, "Choreography".
"""

from phalanx.txn.events.bus import EmbeddedBus, RedisStreamsBus
from phalanx.txn.events.envelope import Event, new_event_id
from phalanx.txn.events.outbox import Publisher, Relay, RelayReport, SqliteInbox, SqliteOutbox
from phalanx.txn.events.trace import TraceLine, trace

__all__ = [
    "EmbeddedBus",
    "Event",
    "Publisher",
    "RedisStreamsBus",
    "Relay",
    "RelayReport",
    "SqliteInbox",
    "SqliteOutbox",
    "TraceLine",
    "new_event_id",
    "trace",
]
