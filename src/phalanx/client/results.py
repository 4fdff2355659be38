"""What the client returns: plain, typed values."""

from __future__ import annotations

from dataclasses import dataclass

from phalanx.kv.responses import KeyValue
from phalanx.kv.watch import Event, EventType

__all__ = ["GetResult", "KeyValue", "WatchEvent"]


@dataclass(frozen=True, slots=True)
class GetResult:
    """A read: ``kvs`` in key order, the store's ``revision`` when read, ``count`` of every
    match, ``more`` when ``kvs`` was cut at the limit, and ``stale`` when the read was served
    from one node's local state without ReadIndex (it may miss recent writes)."""

    kvs: tuple[KeyValue, ...]
    revision: int
    count: int
    more: bool = False
    stale: bool = False

    @property
    def value(self) -> bytes | None:
        """The first key's value (None when nothing matched)."""
        return self.kvs[0].value if self.kvs else None


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: ``type`` is ``"put"`` or ``"delete"``; ``kv`` the key's new version (a
    tombstone with ``version == 0`` for a delete); ``revision`` the change's revision."""

    type: str
    kv: KeyValue
    revision: int

    @property
    def key(self) -> bytes:
        return self.kv.key

    @property
    def value(self) -> bytes:
        return self.kv.value

    @classmethod
    def of(cls, event: Event) -> WatchEvent:
        kind = "put" if event.type == EventType.PUT else "delete"
        return cls(kind, event.kv, event.revision)
