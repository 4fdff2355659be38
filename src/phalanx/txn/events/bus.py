"""Event buses: the embedded in-process bus and Redis Streams.

:class:`EmbeddedBus` delivers each published event synchronously to every handler
subscribed to its ``type``, in subscription order. A handler's failure propagates to the
publisher (the relay), which keeps the event unpublished and delivers it again later, to
every subscriber: handlers must sit behind an inbox.

:class:`RedisStreamsBus` appends each event to a stream per aggregate type
(``<prefix><aggregatetype>``, ``XADD`` with a length cap) and consumes with consumer groups:
``XREADGROUP`` hands each entry to one consumer of a group, which acknowledges it
(``XACK``) only after its handler committed; entries a crashed consumer never acknowledged
stay pending and are read again (:meth:`RedisStreamsBus.consume` reads its own pending
entries first), so delivery is at least once here too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any, Final

from phalanx.txn.events.envelope import Event

__all__ = ["STREAM_LENGTH_MAX", "EmbeddedBus", "RedisStreamsBus"]

#: Approximate cap on each Redis stream's length (``XADD MAXLEN ~``).
STREAM_LENGTH_MAX: Final = 100_000
#: Most entries one ``consume`` reads.
READ_COUNT_MAX: Final = 1000
#: Most handlers one embedded bus holds.
HANDLERS_MAX: Final = 1000

EventHandler = Callable[[Event], None]


class EmbeddedBus:
    """Synchronous in-process delivery by event type (see the module docstring)."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[EventHandler]] = defaultdict(list)
        self.delivered = 0

    def subscribe(self, event_type: str, handler: EventHandler) -> None:
        if sum(len(h) for h in self._handlers.values()) >= HANDLERS_MAX:
            raise ValueError(f"more than {HANDLERS_MAX} handlers")
        self._handlers[event_type].append(handler)

    def publish(self, event: Event) -> None:
        for handler in self._handlers.get(event.type, ()):
            handler(event)
            self.delivered += 1


class RedisStreamsBus:
    """Redis Streams as the broker (see the module docstring). ``client`` is a
    ``redis.Redis`` with ``decode_responses=True``."""

    def __init__(self, client: Any, *, prefix: str = "phalanx:events:") -> None:
        self.client = client
        self.prefix = prefix

    def stream(self, aggregatetype: str) -> str:
        return f"{self.prefix}{aggregatetype}"

    def publish(self, event: Event) -> None:
        self.client.xadd(
            self.stream(event.aggregatetype),
            event.to_fields(),
            maxlen=STREAM_LENGTH_MAX,
            approximate=True,
        )

    def ensure_group(self, aggregatetype: str, group: str) -> None:
        try:
            self.client.xgroup_create(self.stream(aggregatetype), group, id="0", mkstream=True)
        except Exception as exc:  # the group exists already
            if "BUSYGROUP" not in str(exc):
                raise

    def consume(
        self,
        aggregatetype: str,
        group: str,
        consumer: str,
        handler: EventHandler,
        *,
        count: int = 100,
        block_ms: int | None = None,
    ) -> int:
        """Handle this consumer's pending entries, then new ones (waiting up to ``block_ms``
        for some); ack each after its handler returned. Return how many were handled."""
        self.ensure_group(aggregatetype, group)
        stream = self.stream(aggregatetype)
        handled = 0
        for start in ("0", ">"):  # "0": delivered to us before but never acknowledged
            reply = self.client.xreadgroup(
                group,
                consumer,
                {stream: start},
                count=min(count, READ_COUNT_MAX),
                block=block_ms if start == ">" else None,
            )
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    if not fields:
                        continue  # trimmed away while pending
                    handler(Event.from_fields(fields))
                    self.client.xack(stream, group, entry_id)
                    handled += 1
        return handled
