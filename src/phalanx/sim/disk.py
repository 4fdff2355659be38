"""A simulated disk: what is durable, what is written but not yet fsynced, and crashes.

The node harness writes each Ready's snapshot, entries and hard state as *operations* in that
order (the order of a write-ahead log: entries before the hard state that may commit them).
Written operations are pending until :meth:`SimDisk.sync` makes them durable. A crash
(:meth:`SimDisk.crash`) loses every pending operation; with ``torn`` writes a prefix of the
pending operations survives instead, possibly cutting an entries operation after any entry.
Any prefix is a state the real disk could be left in, and since nothing pending was
acknowledged to anyone, Raft must cope with every one of them.

:meth:`SimDisk.load` builds the :class:`~phalanx.raft.storage.MemoryStorage` a restarted node
reads: the durable state and nothing else.
"""

from __future__ import annotations

import random
from typing import cast

import msgspec

from phalanx.errors import invariant
from phalanx.raft.storage import LogCompacted, LogUnavailable, MemoryStorage
from phalanx.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta

__all__ = ["DiskStats", "DurableState", "SimDisk", "SimStorage", "WriteOp"]

#: One pending write: ("snapshot", Snapshot) installs a snapshot received from a leader and
#: drops the log; ("compact", (Snapshot, keep_after)) records a local snapshot and drops the
#: entries up to ``keep_after``; ("entries", tuple of Entry) appends, truncating a conflicting
#: suffix; ("hard_state", HardState).
WriteOp = tuple[str, object]


class SimStorage(MemoryStorage):
    """:class:`MemoryStorage` without its lock on the reads the core makes most often.

    The simulator runs on one thread; the lock was a third of the cost of these reads.
    Writes keep the parent's (locked, checked) code.
    """

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        entries = self._entries
        return entries[0].index + len(entries) - 1

    def term(self, index: int) -> int:
        entries = self._entries
        offset = entries[0].index
        if index < offset:
            raise LogCompacted(f"index {index} is compacted (first kept: {offset + 1})")
        if index - offset >= len(entries):
            raise LogUnavailable(f"index {index} is beyond the last index")
        return entries[index - offset].term

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def hard_state(self) -> HardState:
        return self._hard_state

    def set_hard_state(self, hard_state: HardState) -> None:
        self._hard_state = hard_state


class DiskStats(msgspec.Struct):
    writes: int = 0
    syncs: int = 0
    crashes: int = 0
    ops_lost: int = 0
    torn_crashes: int = 0


class DurableState:
    """The durable contents: a hard state, a snapshot, and the log entries after ``offset``.

    ``offset`` is the index just before the first entry held: the snapshot's index, or less
    when a local snapshot kept some entries before it for slow followers.
    """

    __slots__ = ("entries", "hard_state", "offset", "snapshot")

    def __init__(self, conf_state: ConfState) -> None:
        self.hard_state = HardState()
        self.snapshot = Snapshot(SnapshotMeta(0, 0, conf_state))
        self.offset = 0
        self.entries: list[Entry] = []

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def apply(self, op: WriteOp) -> None:
        kind, value = op
        if kind == "entries":
            self._append(cast("tuple[Entry, ...]", value))
        elif kind == "hard_state":
            self.hard_state = cast(HardState, value)
        elif kind == "snapshot":
            self.snapshot = cast(Snapshot, value)
            self.offset = self.snapshot.meta.index
            self.entries = []
        elif kind == "compact":
            snapshot, keep_after = cast("tuple[Snapshot, int]", value)
            self.snapshot = snapshot
            if keep_after > self.offset:
                del self.entries[: keep_after - self.offset]
                self.offset = keep_after
        else:  # pragma: no cover - the harness writes only the kinds above
            raise ValueError(f"unknown write {kind!r}")

    def _append(self, entries: tuple[Entry, ...]) -> None:
        if not entries:
            return
        first = entries[0].index
        offset = self.offset
        invariant(first > offset, f"durable append at {first} overlaps compacted index {offset}")
        invariant(
            first <= self.last_index() + 1,
            f"durable append at {first} leaves a gap after {self.last_index()}",
        )
        del self.entries[first - offset - 1 :]
        self.entries.extend(entries)


class SimDisk:
    """Durable state plus the operations written since the last fsync."""

    __slots__ = ("durable", "pending", "stats")

    def __init__(self, conf_state: ConfState) -> None:
        self.durable = DurableState(conf_state)
        self.pending: list[WriteOp] = []
        self.stats = DiskStats()

    def write(
        self,
        hard_state: HardState | None,
        entries: tuple[Entry, ...],
        snapshot: Snapshot | None,
    ) -> bool:
        """Queue one Ready's writes (snapshot, entries, hard state); return whether any."""
        wrote = False
        if snapshot is not None:
            self.pending.append(("snapshot", snapshot))
            wrote = True
        if entries:
            self.pending.append(("entries", entries))
            wrote = True
        if hard_state is not None:
            self.pending.append(("hard_state", hard_state))
            wrote = True
        if wrote:
            self.stats.writes += 1
        return wrote

    def compact(self, snapshot: Snapshot, keep_after: int) -> None:
        """Queue a local snapshot; entries up to ``keep_after`` (<= its index) are dropped."""
        self.pending.append(("compact", (snapshot, keep_after)))

    def sync(self) -> None:
        """fsync: every pending operation becomes durable."""
        if self.pending:
            for op in self.pending:
                self.durable.apply(op)
            self.pending.clear()
        self.stats.syncs += 1

    def crash(self, rng: random.Random, torn: bool) -> int:
        """Lose the pending operations (all, or with ``torn`` a random suffix of them).

        Returns how many operations (counting entries one by one) were lost.
        """
        self.stats.crashes += 1
        units: list[WriteOp] = []
        for kind, value in self.pending:
            if kind == "entries":
                units.extend(("entries", (entry,)) for entry in cast("tuple[Entry, ...]", value))
            else:
                units.append((kind, value))
        keep = rng.randint(0, len(units)) if torn and units else 0
        if keep:
            self.stats.torn_crashes += 1
        for op in units[:keep]:
            self.durable.apply(op)
        lost = len(units) - keep
        self.stats.ops_lost += lost
        self.pending.clear()
        return lost

    def load(self) -> SimStorage:
        """A fresh storage holding exactly the durable state."""
        durable = self.durable
        storage = SimStorage(durable.snapshot.meta.conf_state)
        if durable.snapshot.meta.index:
            storage.apply_snapshot(durable.snapshot)
        cut = durable.snapshot.meta.index
        storage.append([e for e in durable.entries if e.index > cut])
        storage.set_hard_state(durable.hard_state)
        return storage
