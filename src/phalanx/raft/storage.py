"""The core's read-only view of stable storage, and its in-memory twin.

The Raft core never writes storage: the driver persists what a :class:`~.types.Ready` asks
for, and the core reads back through :class:`Storage` (a small protocol, like etcd-io/raft's).
:class:`MemoryStorage` is the twin used by tests and the simulator; the durable node runtime
implements the same protocol on its WAL.

Indexes: the log holds entries ``first_index() .. last_index()``. Entries up to a snapshot's
index are compacted away; the snapshot's index and term stay known so the entry just before
``first_index()`` can still be checked by AppendEntries.
"""

from __future__ import annotations

import threading
from typing import Protocol

from phalanx.errors import PhalanxError, invariant
from phalanx.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta

__all__ = ["LogCompacted", "LogUnavailable", "MemoryStorage", "Storage"]


class LogCompacted(PhalanxError):
    """The requested index is older than the first entry kept: read the snapshot instead."""


class LogUnavailable(PhalanxError):
    """The requested index is beyond the last entry stored."""


class Storage(Protocol):
    """What the core reads. Every index refers to the log as persisted so far."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state, and the membership as of the snapshot.

        The membership is the one in effect once every entry up to the snapshot's index is
        applied, without any change from the log entries after it: the core applies those
        up to ``Config.applied`` itself when it starts (see ``docs/raft.md``, Restarting).
        """
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries ``[lo, hi)``, at least one if any, stopping before ``max_bytes`` of data.

        Raises :class:`LogCompacted` if ``lo`` was compacted, :class:`LogUnavailable` if ``hi - 1``
        is beyond the last index.
        """
        ...

    def term(self, index: int) -> int:
        """The term of entry ``index`` (also of the snapshot's index); raises like entries."""
        ...

    def first_index(self) -> int:
        """The first index still held (the snapshot's index + 1)."""
        ...

    def last_index(self) -> int:
        """The last index held (the snapshot's index when the log is empty)."""
        ...

    def snapshot(self) -> Snapshot:
        """The latest snapshot."""
        ...


def _size(entry: Entry) -> int:
    return len(entry.data) + 16


class MemoryStorage:
    """An in-memory :class:`Storage` with the writes a driver performs. Thread-safe.

    ``_entries[0]`` is a dummy entry standing for the snapshot (its index and term), so that
    ``term(snapshot_index)`` works after compaction, as the protocol requires.
    """

    def __init__(self, conf_state: ConfState | None = None) -> None:
        self._lock = threading.Lock()
        self._hard_state = HardState()
        self._snapshot = Snapshot(SnapshotMeta(0, 0, conf_state or ConfState()))
        self._entries: list[Entry] = [Entry(term=0, index=0)]

    # -- Storage ----------------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        with self._lock:
            return self._hard_state, self._snapshot.meta.conf_state

    def _offset(self) -> int:
        return self._entries[0].index

    def first_index(self) -> int:
        with self._lock:
            return self._offset() + 1

    def last_index(self) -> int:
        with self._lock:
            return self._offset() + len(self._entries) - 1

    def term(self, index: int) -> int:
        with self._lock:
            offset = self._offset()
            if index < offset:
                raise LogCompacted(f"index {index} is compacted (first kept: {offset + 1})")
            if index - offset >= len(self._entries):
                raise LogUnavailable(f"index {index} is beyond the last index")
            return self._entries[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        with self._lock:
            offset = self._offset()
            if lo <= offset:
                raise LogCompacted(f"index {lo} is compacted (first kept: {offset + 1})")
            if hi > offset + len(self._entries):
                raise LogUnavailable(f"index {hi - 1} is beyond the last index")
            selected = self._entries[lo - offset : hi - offset]
        if not selected:
            return []
        result = [selected[0]]
        total = _size(selected[0])
        for entry in selected[1:]:
            total += _size(entry)
            if total > max_bytes:
                break
            result.append(entry)
        return result

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    # -- what a driver writes ----------------------------------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        with self._lock:
            self._hard_state = hard_state

    def hard_state(self) -> HardState:
        with self._lock:
            return self._hard_state

    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Append ``entries``, truncating any conflicting suffix first (as Raft requires)."""
        if not entries:
            return
        with self._lock:
            offset = self._offset()
            first = entries[0].index
            invariant(first > offset, f"append at {first} overlaps the snapshot at {offset}")
            invariant(
                first <= offset + len(self._entries),
                f"append at {first} leaves a gap after {offset + len(self._entries) - 1}",
            )
            del self._entries[first - offset :]
            self._entries.extend(entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the log with ``snapshot`` (a follower installing one from its leader)."""
        with self._lock:
            meta = snapshot.meta
            held = self._snapshot.meta.index
            invariant(meta.index >= held, f"snapshot at {meta.index} is older than {held}")
            self._snapshot = snapshot
            self._entries = [Entry(term=meta.term, index=meta.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine at ``index`` (which must be applied)."""
        with self._lock:
            offset = self._offset()
            invariant(index > self._snapshot.meta.index, "snapshot index must move forward")
            invariant(index - offset < len(self._entries), f"index {index} is not in the log")
            term = self._entries[index - offset].term
            self._snapshot = Snapshot(SnapshotMeta(index, term, conf_state), data)
            return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index`` (keep it as the new dummy entry)."""
        with self._lock:
            offset = self._offset()
            if index <= offset:
                return
            invariant(index - offset < len(self._entries), f"compact({index}) beyond last index")
            self._entries = self._entries[index - offset :]
            first = self._entries[0]
            self._entries[0] = Entry(term=first.term, index=first.index)
