"""The event envelope of choreographed sagas.

An :class:`Event` is what a service writes to its outbox and what consumers receive. Its
first five fields are the columns Debezium's outbox event router reads by default (``id``,
``aggregatetype``, ``aggregateid``, ``type``, ``payload``), so the outbox tables can be
streamed by Debezium instead of Phalanx's relay. The rest make the flow traceable:

* ``correlation_id``: the same for every event of one business flow (one order);
* ``causation_id``: the id of the event whose handling produced this one (empty for the
  first), so a trace is a tree, not just a list;
* ``service`` and ``occurred_at_s`` (wall-clock seconds): who wrote it and when.

:meth:`Event.caused` makes the next event of a flow from the one being handled.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

__all__ = ["EVENT_BYTES_MAX", "Event", "new_event_id"]

#: Largest encoded payload of one event.
EVENT_BYTES_MAX: Final = 256 * 1024


def new_event_id() -> str:
    """A random event id (UUID4 hex); inject another ``ids`` function for determinism."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    aggregatetype: str
    aggregateid: str
    type: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    correlation_id: str = ""
    causation_id: str = ""
    service: str = ""
    occurred_at_s: float = 0.0

    def caused(
        self,
        type_: str,
        payload: Mapping[str, Any],
        *,
        service: str,
        now_s: float,
        ids: Callable[[], str] = new_event_id,
        aggregatetype: str | None = None,
    ) -> Event:
        """The event a handler of this one emits: same flow, caused by this event."""
        return Event(
            id=ids(),
            aggregatetype=aggregatetype or self.aggregatetype,
            aggregateid=self.aggregateid,
            type=type_,
            payload=dict(payload),
            correlation_id=self.correlation_id,
            causation_id=self.id,
            service=service,
            occurred_at_s=now_s,
        )

    def encoded_payload(self) -> str:
        text = msgspec.json.encode(dict(self.payload)).decode()
        if len(text) > EVENT_BYTES_MAX:
            raise ValueError(f"event {self.id}: payload {len(text)} bytes > {EVENT_BYTES_MAX}")
        return text

    def to_fields(self) -> dict[str, str]:
        """Flat string fields, as a broker message (Redis Streams) carries them."""
        return {
            "id": self.id,
            "aggregatetype": self.aggregatetype,
            "aggregateid": self.aggregateid,
            "type": self.type,
            "payload": self.encoded_payload(),
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "service": self.service,
            "occurred_at_s": repr(self.occurred_at_s),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Event:
        return cls(
            id=fields["id"],
            aggregatetype=fields["aggregatetype"],
            aggregateid=fields["aggregateid"],
            type=fields["type"],
            payload=msgspec.json.decode(fields["payload"]),
            correlation_id=fields.get("correlation_id", ""),
            causation_id=fields.get("causation_id", ""),
            service=fields.get("service", ""),
            occurred_at_s=float(fields.get("occurred_at_s", "0")),
        )
