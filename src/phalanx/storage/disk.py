"""``DiskStorage``: the Raft :class:`~phalanx.raft.storage.Storage` kept in a WAL and files.

Layout of ``data_dir``::

    wal/NNNNNNNNNNNNNNNN.wal             segments of the write-ahead log (see :mod:`.wal`)
    snap/IIIIIIIIIIIIIIII-TTTTTTTTTTTTTTTT.snap   the current snapshot (see :mod:`.snapshot`)

Every change is a WAL record, replayed on open in order:

- ``STATE`` (hard state, snapshot metadata, log offset and its term): the first record of every
  segment. The first one replayed is the base everything else applies to; every later one
  must agree with the state replayed so far (a free consistency check).
- ``ENTRIES``: "entries from index i on are replaced by these" (i is the first entry's
  index). This is how a Raft conflict truncates the log's suffix: logically, by a record.
- ``HARD_STATE``: term, vote, commit.
- ``SNAPSHOT``: a snapshot is current (its file is written first). ``install`` means it came
  from a leader and replaces the whole log.
- ``COMPACT``: entries up to an index are dropped (the index and its term are kept).

The hard state is a WAL record rather than a file replaced atomically: a Ready usually carries
both a hard state (the commit index moves) and entries, and in the log they share the one
fsync of the batch, in the order the Ready needs (entries before the commit that covers
them); a separate file would cost a write, two fsyncs and a rename for every Ready. The
segment preambles keep the latest hard state in every segment, so deleting old segments never
loses it.

Reads are served from memory: the entries after the offset are held in a list, exactly as
:class:`~phalanx.raft.storage.MemoryStorage` holds them, and the semantics (errors, byte
limits, truncation, compaction) are the same.
"""

from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import msgspec

from phalanx.errors import TooLarge, invariant
from phalanx.raft.storage import LogCompacted, LogUnavailable
from phalanx.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from phalanx.storage.errors import WalCorrupted
from phalanx.storage.limits import StorageLimits
from phalanx.storage.snapshot import SnapshotStore
from phalanx.storage.wal import Wal, WalRecord, WalStatistics, fsync_directory

__all__ = ["DiskStorage", "DiskStorageStatistics", "RecordType"]


class RecordType(enum.IntEnum):
    STATE = 1
    ENTRIES = 2
    HARD_STATE = 3
    SNAPSHOT = 4
    COMPACT = 5


class StateRecord(msgspec.Struct, frozen=True, array_like=True):
    hard_state: HardState
    snapshot: SnapshotMeta
    offset: int
    offset_term: int


class SnapshotRecord(msgspec.Struct, frozen=True, array_like=True):
    meta: SnapshotMeta
    install: bool


class CompactRecord(msgspec.Struct, frozen=True, array_like=True):
    index: int
    term: int


_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(StateRecord)
_entries_decoder = msgspec.msgpack.Decoder(tuple[Entry, ...])
_hard_state_decoder = msgspec.msgpack.Decoder(HardState)
_snapshot_decoder = msgspec.msgpack.Decoder(SnapshotRecord)
_compact_decoder = msgspec.msgpack.Decoder(CompactRecord)

_Change = StateRecord | tuple[Entry, ...] | HardState | SnapshotRecord | CompactRecord
#: A change, its record type and its encoding.
_Write = tuple[_Change, RecordType, bytes]


def _size(entry: Entry) -> int:
    return len(entry.data) + 16  # as MemoryStorage counts an entry against max_bytes


class _Replay(Exception):
    """A record that does not fit the state replayed so far (raised as WalCorrupted)."""


class _Log:
    """The state the records describe: what :class:`DiskStorage` serves, and what replay builds.

    ``entries`` hold indexes ``base + 1 ..``. Normally ``base == offset``. On replay, a log
    whose oldest segments were deleted may start with entries after a gap (``base > offset``):
    they were in a deleted segment, and a later ``COMPACT`` must cover them before the end.
    """

    def __init__(self, state: StateRecord) -> None:
        self.hard_state = state.hard_state
        self.snapshot = state.snapshot
        self.offset = state.offset
        self.offset_term = state.offset_term
        self.base = state.offset
        self.entries: list[Entry] = []

    def state(self) -> StateRecord:
        return StateRecord(self.hard_state, self.snapshot, self.offset, self.offset_term)

    def last_index(self) -> int:
        return self.base + len(self.entries)

    def apply(self, change: _Change) -> None:
        if isinstance(change, tuple):
            self._append(change)
        elif isinstance(change, HardState):
            self.hard_state = change
        elif isinstance(change, SnapshotRecord):
            self.snapshot = change.meta
            if change.install:
                self.offset = self.base = change.meta.index
                self.offset_term = change.meta.term
                self.entries = []
        elif isinstance(change, CompactRecord):
            self._compact(change)
        elif change != self.state():
            raise _Replay("the segment preamble disagrees with the records before it")

    def _append(self, entries: tuple[Entry, ...]) -> None:
        first = entries[0].index
        if first <= self.offset:
            raise _Replay(f"entries at {first} overlap the compacted offset {self.offset}")
        if self.base < first <= self.last_index() + 1:
            del self.entries[first - self.base - 1 :]
            self.entries.extend(entries)
        else:
            self.base = first - 1
            self.entries = list(entries)

    def _compact(self, record: CompactRecord) -> None:
        if record.index <= self.offset:
            return
        if record.index > self.last_index():
            # Only on replay: the entries it drops were in segments deleted since.
            self.entries = []
            self.base = record.index
        elif record.index >= self.base:
            del self.entries[: record.index - self.base]
            self.base = record.index
        self.offset = record.index
        self.offset_term = record.term


def _decode(record: WalRecord) -> _Change:
    kind = record.record_type
    if kind == RecordType.STATE:
        return _state_decoder.decode(record.payload)
    if kind == RecordType.ENTRIES:
        entries = _entries_decoder.decode(record.payload)
        if not entries:
            raise _Replay("an entries record holds no entry")
        return entries
    if kind == RecordType.HARD_STATE:
        return _hard_state_decoder.decode(record.payload)
    if kind == RecordType.SNAPSHOT:
        return _snapshot_decoder.decode(record.payload)
    return _compact_decoder.decode(record.payload)


@dataclass(frozen=True, slots=True)
class DiskStorageStatistics:
    wal: WalStatistics
    entries_held: int
    first_index: int
    last_index: int
    snapshot_index: int
    saves: int
    snapshots_written: int
    snapshot_files_removed: int


class DiskStorage:
    """A durable :class:`~phalanx.raft.storage.Storage` with the writes a driver performs.

    ``conf_state`` is the cluster's initial membership, used only when ``data_dir`` holds no
    log yet; afterwards the log's own record of it wins. Reads are thread-safe and never
    touch the disk; writes come from one thread at a time and return once durable.
    """

    def __init__(
        self,
        data_dir: Path | str,
        conf_state: ConfState | None = None,
        *,
        limits: StorageLimits | None = None,
    ) -> None:
        self._limits = limits or StorageLimits()
        self._dir = Path(data_dir)
        created = not self._dir.exists()
        self._dir.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_directory(self._dir.parent)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._saves = 0
        self._snapshots = SnapshotStore(self._dir / "snap", self._limits.snapshot_bytes_max)
        initial = StateRecord(HardState(), SnapshotMeta(0, 0, conf_state or ConfState()), 0, 0)
        self._log = _Log(initial)
        self._wal, records = Wal.open(
            self._dir / "wal",
            limits=self._limits,
            preamble=self._preamble,
            record_types=frozenset(RecordType),
        )
        fsync_directory(self._dir)
        self._segment_index_max: dict[int, int] = {}
        self._replay(records)
        meta = self._log.snapshot
        self._snapshot = self._snapshots.read(meta) if meta.index > 0 else Snapshot(meta)
        self._snapshots.remove_except(meta)

    def _preamble(self) -> list[tuple[int, bytes]]:
        return [(RecordType.STATE, _encoder.encode(self._log.state()))]

    def _replay(self, records: list[WalRecord]) -> None:
        if records and records[0].record_type != RecordType.STATE:
            raise WalCorrupted(
                self._wal.segment_path(records[0].segment), 0, "the log starts without a preamble"
            )
        for position, record in enumerate(records):
            try:
                change = _decode(record)
                if position == 0 and isinstance(change, StateRecord):
                    self._log = _Log(change)
                else:
                    self._log.apply(change)
            except (_Replay, msgspec.DecodeError, msgspec.ValidationError) as error:
                raise WalCorrupted(
                    self._wal.segment_path(record.segment), record.offset, str(error)
                ) from error
            if isinstance(change, tuple):
                self._note_index(record.segment, change[-1].index)
        log = self._log
        if log.base > log.offset:
            segment = self._wal.segments()[0]
            raise WalCorrupted(
                self._wal.segment_path(segment),
                0,
                f"entries {log.offset + 1}..{log.base} are missing (a segment was lost)",
            )

    def _note_index(self, segment: int, index: int) -> None:
        self._segment_index_max[segment] = max(self._segment_index_max.get(segment, 0), index)

    # -- Storage -----------------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        with self._lock:
            return self._log.hard_state, self._snapshot.meta.conf_state

    def hard_state(self) -> HardState:
        with self._lock:
            return self._log.hard_state

    def first_index(self) -> int:
        with self._lock:
            return self._log.offset + 1

    def last_index(self) -> int:
        with self._lock:
            return self._log.last_index()

    def term(self, index: int) -> int:
        with self._lock:
            log = self._log
            if index < log.offset:
                raise LogCompacted(f"index {index} is compacted (first kept: {log.offset + 1})")
            if index > log.last_index():
                raise LogUnavailable(f"index {index} is beyond the last index")
            if index == log.offset:
                return log.offset_term
            return log.entries[index - log.offset - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        with self._lock:
            log = self._log
            if lo <= log.offset:
                raise LogCompacted(f"index {lo} is compacted (first kept: {log.offset + 1})")
            if hi > log.last_index() + 1:
                raise LogUnavailable(f"index {hi - 1} is beyond the last index")
            selected = log.entries[lo - log.offset - 1 : hi - log.offset - 1]
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

    # -- writes ------------------------------------------------------------------------------

    def save(
        self,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
        *,
        sync: bool = True,
    ) -> None:
        """Persist one Ready: install ``snapshot``, append ``entries``, set ``hard_state``.

        Returns once all of it is durable: with one fsync of the log when the entries fit in
        one batch (``batch_entries_max``), plus the snapshot file's own fsyncs when there is
        a snapshot. Breaking a rule of the log raises ``InvariantViolation`` before anything
        is written; an entry too large for a record raises ``TooLarge``.

        ``sync=False`` is for a save that only moves the commit index (no entries, no
        snapshot, a hard state whose term and vote are already durable; etcd's MustSync
        rule): it is written but not fsynced, so a crash may lose it, and a lost commit
        index is learned again from the leader. With entries or a snapshot it is ignored.
        """
        durable = sync or bool(entries) or snapshot is not None
        with self._write_lock:
            self._check_save(entries, snapshot)
            chunks = self._encode_entries(entries)
            batches: list[list[_Write]] = [[]]
            if snapshot is not None:
                self._snapshots.write(snapshot)
                record = SnapshotRecord(snapshot.meta, install=True)
                batches[0].append((record, RecordType.SNAPSHOT, _encoder.encode(record)))
            count = 0
            for chunk, payload in chunks:
                if count and count + len(chunk) > self._limits.batch_entries_max:
                    batches.append([])
                    count = 0
                batches[-1].append((chunk, RecordType.ENTRIES, payload))
                count += len(chunk)
            if hard_state is not None:
                batches[-1].append((hard_state, RecordType.HARD_STATE, _encoder.encode(hard_state)))
            for position, batch in enumerate(batches):
                self._write(batch, snapshot if position == 0 else None, durable=durable)
            self._saves += 1
            if snapshot is not None:
                self._snapshots.remove_except(snapshot.meta)
                self._remove_segments()

    def set_hard_state(self, hard_state: HardState) -> None:
        self.save(hard_state=hard_state)

    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``, truncating any conflicting suffix first (as Raft requires)."""
        self.save(entries=entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the log with ``snapshot`` (a follower installing one from its leader)."""
        self.save(snapshot=snapshot)

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine at ``index`` (which must be applied).

        The entries stay until :meth:`compact`; the previous snapshot's file is removed once
        the log names the new one.
        """
        snapshot = Snapshot(SnapshotMeta(index, self._snapshot_term(index), conf_state), data)
        # The file is written (and fsynced) before taking the write lock, so a large snapshot
        # does not hold up the saves of the Readys meanwhile; only its log record needs it.
        self._snapshots.write(snapshot)
        with self._write_lock:
            # Applied entries are never truncated: the entry must be the one snapshotted.
            invariant(
                self._snapshot_term(index) == snapshot.meta.term,
                f"entry {index} changed while its snapshot was written",
            )
            record = SnapshotRecord(snapshot.meta, install=False)
            self._write([(record, RecordType.SNAPSHOT, _encoder.encode(record))], snapshot)
            self._snapshots.remove_except(snapshot.meta)
            return snapshot

    def _snapshot_term(self, index: int) -> int:
        with self._lock:
            log = self._log
            invariant(index > log.snapshot.index, "snapshot index must move forward")
            invariant(log.offset <= index <= log.last_index(), f"index {index} is not in the log")
            return (
                log.offset_term if index == log.offset else log.entries[index - log.offset - 1].term
            )

    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index``, and the segments holding only those."""
        with self._write_lock:
            with self._lock:
                log = self._log
                if index <= log.offset:
                    return
                invariant(index <= log.last_index(), f"compact({index}) beyond last index")
                record = CompactRecord(index, log.entries[index - log.offset - 1].term)
            self._write([(record, RecordType.COMPACT, _encoder.encode(record))], None)
            self._remove_segments()

    def _check_save(self, entries: Sequence[Entry], snapshot: Snapshot | None) -> None:
        with self._lock:
            offset, last = self._log.offset, self._log.last_index()
            held = self._snapshot.meta.index
        if snapshot is not None:
            meta = snapshot.meta
            invariant(meta.index >= held, f"snapshot at {meta.index} is older than {held}")
            offset = last = meta.index
        if entries:
            first = entries[0].index
            invariant(first > offset, f"append at {first} overlaps the snapshot at {offset}")
            invariant(first <= last + 1, f"append at {first} leaves a gap after {last}")
            for before, after in itertools.pairwise(entries):
                invariant(after.index == before.index + 1, "entries must be contiguous")

    def _encode_entries(self, entries: Sequence[Entry]) -> list[tuple[tuple[Entry, ...], bytes]]:
        """``entries`` packed into records of at most ``record_bytes_max`` bytes and
        ``batch_entries_max`` entries."""
        limit = self._limits.record_bytes_max
        records: list[tuple[tuple[Entry, ...], bytes]] = []
        start = 0
        while start < len(entries):
            end = min(len(entries), start + self._limits.batch_entries_max)
            while True:
                chunk = tuple(entries[start:end])
                payload = _encoder.encode(chunk)
                if len(payload) <= limit:
                    break
                if end - start == 1:
                    raise TooLarge(
                        f"entry {chunk[0].index} takes {len(payload)} bytes, over "
                        f"record_bytes_max ({limit})"
                    )
                end = start + (end - start) // 2
            records.append((chunk, payload))
            start = end
        return records

    def _write(
        self, batch: list[_Write], snapshot: Snapshot | None, *, durable: bool = True
    ) -> None:
        """Append ``batch`` to the log, sync once, then make it visible to readers."""
        if not batch:
            return
        for _, kind, payload in batch:
            self._wal.append(kind, payload)
        segment = self._wal.sync(durable=durable)
        with self._lock:
            for change, _, _ in batch:
                self._log.apply(change)
            if snapshot is not None:
                self._snapshot = snapshot
        for change, _, _ in batch:
            if isinstance(change, tuple):
                self._note_index(segment, change[-1].index)

    def _remove_segments(self) -> None:
        """Delete the oldest segments whose entries are all compacted away."""
        offset = self._log.offset
        segments = self._wal.segments()
        keep_from = segments[-1]
        for seq in segments[:-1]:
            if self._segment_index_max.get(seq, 0) > offset:
                keep_from = seq
                break
        self._wal.remove_segments_before(keep_from)
        for seq in segments:
            if seq < keep_from:
                self._segment_index_max.pop(seq, None)

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        with self._write_lock:
            self._wal.close()

    def __enter__(self) -> DiskStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def statistics(self) -> DiskStorageStatistics:
        with self._lock:
            log = self._log
            first, last, held = log.offset + 1, log.last_index(), len(log.entries)
            snapshot_index = self._snapshot.meta.index
        return DiskStorageStatistics(
            wal=self._wal.statistics(),
            entries_held=held,
            first_index=first,
            last_index=last,
            snapshot_index=snapshot_index,
            saves=self._saves,
            snapshots_written=self._snapshots.files_written,
            snapshot_files_removed=self._snapshots.files_removed,
        )
