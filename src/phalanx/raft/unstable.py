"""Entries and a snapshot the core has accepted but the driver has not persisted yet.

They sit after everything in :class:`~phalanx.raft.storage.Storage`: entry ``offset`` is the
first unstable one. A snapshot, when present, replaces everything before ``offset``.
"""

from __future__ import annotations

from phalanx.raft.types import Entry, Snapshot

__all__ = ["Unstable"]


class Unstable:
    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.entries: list[Entry] = []
        self.snapshot: Snapshot | None = None

    def first_index(self) -> int | None:
        """The first log index if a snapshot is pending, else ``None`` (storage knows)."""
        if self.snapshot is not None:
            return self.snapshot.meta.index + 1
        return None

    def last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.meta.index
        return None

    def term(self, index: int) -> int | None:
        if index < self.offset:
            snap = self.snapshot
            if snap is not None and snap.meta.index == index:
                return snap.meta.term
            return None
        position = index - self.offset
        if position < len(self.entries):
            return self.entries[position].term
        return None

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` are persisted, unless they were replaced since (term differs)."""
        if index < self.offset or self.term(index) != term:
            return
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.meta.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.meta.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        end = self.offset + len(self.entries)
        if first == end:
            self.entries.extend(entries)
        elif first <= self.offset:
            # Replaces everything unstable; the driver overwrites storage from ``first`` on.
            self.offset = first
            self.entries = list(entries)
        else:
            del self.entries[first - self.offset :]
            self.entries.extend(entries)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]
