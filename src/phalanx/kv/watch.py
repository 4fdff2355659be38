"""Watches: the replicated event log and the node-local hub that serves watchers from it.

The :class:`EventLog` is part of the replicated state (and of snapshots): every write appends
one event per changed key, in revision order. It keeps at most ``event_log_len_max`` events,
dropping the oldest a whole revision at a time, and drops events below the compaction point
when the store is compacted. ``floor_revision`` is the lowest revision from which the log still
holds every event.

The :class:`WatchHub` belongs to one node and is not replicated. A watcher is a key or range
and the next revision it wants; :meth:`WatchHub.poll` returns its events from the log, in
order, without gaps. A client that reconnects, to this node or another one (even one restored
from a snapshot), watches again from the revision after the last event it saw and gets every
later event, or :class:`~phalanx.kv.errors.Compacted` if the log no longer reaches back there.
Polling is pull-based, so a slow watcher costs no memory: it only falls behind.
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from typing import TYPE_CHECKING

import msgspec

from phalanx.kv.commands import Range, validate_op
from phalanx.kv.errors import Compacted, TooManyWatchers
from phalanx.kv.limits import DEFAULT_LIMITS, Limits
from phalanx.kv.responses import KeyValue

if TYPE_CHECKING:
    from phalanx.kv.store import KVStore

__all__ = ["Event", "EventLog", "EventType", "WatchHub", "Watcher"]


class EventType(enum.IntEnum):
    PUT = 1
    DELETE = 2


class Event(msgspec.Struct, frozen=True, array_like=True):
    """A change of one key. For DELETE, ``kv`` is the tombstone (``version == 0``)."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


class EventLog:
    """The bounded, compaction-aware log of events, in revision order."""

    def __init__(self, len_max: int) -> None:
        self._len_max = len_max
        self._events: list[Event] = []
        self._revs: list[int] = []
        self._head = 0  # events before it are dropped; the lists are cut lazily
        self.floor_revision = 1

    def __len__(self) -> int:
        return len(self._events) - self._head

    def events(self) -> list[Event]:
        return self._events[self._head :]

    def load(self, events: list[Event], floor_revision: int) -> None:
        self._events = list(events)
        self._revs = [e.kv.mod_revision for e in events]
        self._head = 0
        self.floor_revision = floor_revision

    def append(self, event: Event) -> None:
        self._events.append(event)
        self._revs.append(event.kv.mod_revision)
        while len(self) > self._len_max:
            revision = self._revs[self._head]
            end = len(self._revs)
            while self._head < end and self._revs[self._head] == revision:
                self._head += 1
            self.floor_revision = revision + 1
        self._tidy()

    def trim_below(self, revision: int) -> None:
        """Drop events below ``revision`` (the store was compacted there)."""
        self._head = max(self._head, bisect_left(self._revs, revision, lo=self._head))
        self.floor_revision = max(self.floor_revision, revision)
        self._tidy()

    def position(self, revision: int) -> int:
        """Index (for :meth:`at`) of the first event at or above ``revision``."""
        return bisect_left(self._revs, revision, lo=self._head)

    def end(self) -> int:
        return len(self._events)

    def at(self, position: int) -> Event:
        return self._events[position]

    def _tidy(self) -> None:
        if self._head > 1024 and self._head * 2 > len(self._events):
            del self._events[: self._head]
            del self._revs[: self._head]
            self._head = 0


class Watcher:
    """A key or range, and the next revision whose events it has not seen."""

    __slots__ = ("key", "next_revision", "range_end", "watch_id")

    def __init__(self, watch_id: int, key: bytes, range_end: bytes, next_revision: int) -> None:
        self.watch_id = watch_id
        self.key = key
        self.range_end = range_end
        self.next_revision = next_revision

    def matches(self, key: bytes) -> bool:
        if not self.range_end:
            return key == self.key
        if self.range_end == b"\0":
            return key >= self.key
        return self.key <= key < self.range_end


class WatchHub:
    """One node's watchers over one store (which may be restored in place)."""

    def __init__(self, store: KVStore, limits: Limits = DEFAULT_LIMITS) -> None:
        self._store = store
        self._limits = limits
        self._watchers: dict[int, Watcher] = {}
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._watchers)

    def watch(self, key: bytes, range_end: bytes = b"", start_revision: int = 0) -> int:
        """Register a watcher from ``start_revision`` (0: only future events); its id.

        Raises ``BadRequest``/``TooLarge`` for a bad key, ``Compacted`` when the log no longer
        reaches ``start_revision``, ``TooManyWatchers`` at ``watchers_max``.
        """
        validate_op(Range(key, range_end), self._limits)
        if len(self._watchers) >= self._limits.watchers_max:
            raise TooManyWatchers(f"watchers_max {self._limits.watchers_max} reached")
        start = start_revision or self._store.revision + 1
        self._check(start)
        watch_id = self._next_id
        self._next_id += 1
        self._watchers[watch_id] = Watcher(watch_id, key, range_end, start)
        return watch_id

    def cancel(self, watch_id: int) -> None:
        self._watchers.pop(watch_id, None)

    def next_revision(self, watch_id: int) -> int:
        return self._watchers[watch_id].next_revision

    def poll(self, watch_id: int, events_max: int = 1000) -> list[Event]:
        """The watcher's next events, in order; all of a revision's events come together.

        ``events_max`` is exceeded only to finish a revision. Raises ``Compacted`` when the
        events the watcher needs are gone (it must re-read and watch from a newer revision).
        """
        watcher = self._watchers[watch_id]
        self._check(watcher.next_revision)
        log = self._store.events
        out: list[Event] = []
        position, end = log.position(watcher.next_revision), log.end()
        while position < end:
            event = log.at(position)
            if len(out) >= events_max and event.revision > out[-1].revision:
                watcher.next_revision = event.revision
                return out
            if watcher.matches(event.kv.key):
                out.append(event)
            position += 1
        watcher.next_revision = max(watcher.next_revision, self._store.revision + 1)
        return out

    def statistics(self) -> dict[str, int]:
        log = self._store.events
        return {
            "watchers": len(self._watchers),
            "event_log_len": len(log),
            "event_log_floor_revision": log.floor_revision,
        }

    def _check(self, revision: int) -> None:
        floor = self._store.events.floor_revision
        if revision < floor:
            raise Compacted(
                f"events before revision {floor} are gone; cannot watch from {revision}",
                compact_revision=floor - 1,
            )
