"""A segmented, append-only write-ahead log with group commit and torn-tail recovery.

The log is a directory of segments named ``NNNNNNNNNNNNNNNN.wal`` (a 16-digit sequence number,
starting at 1, without gaps). Each segment is a run of frames (see :mod:`.frame`): a typed,
checksummed record. The log does not interpret payloads; its owner does.

Writing is group commit: :meth:`Wal.append` only buffers a record; :meth:`Wal.sync` writes
every buffered record with one ``write`` and makes them durable with one ``fdatasync``.
Nothing appended is durable, or may be acknowledged, before ``sync`` returns.

Segments roll at batch boundaries: when the active segment holds ``segment_bytes_max`` bytes
or more, the next batch goes to a new segment, which starts with the records of the
``preamble`` callback (the owner's state as of that point, so that older segments can be
deleted without losing it). Creating a segment also fsyncs the directory.

Opening replays every segment and classifies any damage:

- in the last segment, a record cut short (short header or payload), a record whose payload
  checksum fails and that ends exactly at the end of the file, or a damaged record followed
  only by zero bytes, is the torn tail of an interrupted write: the file is truncated there
  (and fsynced) and :meth:`Wal.statistics` reports it;
- any other damage, anywhere, raises :class:`~.errors.WalCorrupted` naming the file and the
  offset. A record is never skipped.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from phalanx.errors import InvariantViolation, TooLarge, invariant
from phalanx.storage.errors import WalCorrupted
from phalanx.storage.frame import Damage, encode_frame, read_frame
from phalanx.storage.limits import StorageLimits

__all__ = ["Preamble", "Wal", "WalRecord", "WalStatistics", "fsync_directory", "segment_name"]

#: Returns the records that begin every new segment: ``(type, payload)`` pairs.
Preamble = Callable[[], Sequence[tuple[int, bytes]]]

_SEGMENT_RE = re.compile(r"^(\d{16})\.wal$")
_TORN = (Damage.SHORT_HEADER, Damage.SHORT_PAYLOAD)


def segment_name(seq: int) -> str:
    return f"{seq:016d}.wal"


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (files created, renamed, removed) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(frozen=True, slots=True)
class WalRecord:
    """A record found on replay: where it is, its type, its payload."""

    segment: int
    offset: int
    record_type: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class WalStatistics:
    segments: int
    segment_first: int
    segment_active: int
    active_segment_bytes: int
    records_appended: int
    bytes_written: int
    syncs: int
    segments_created: int
    segments_removed: int
    torn_tail_bytes: int
    torn_tail_segment: int
    torn_tail_offset: int


class Wal:
    """The open log. Use :meth:`open`; single writer, not thread-safe."""

    def __init__(
        self,
        directory: Path,
        limits: StorageLimits,
        preamble: Preamble,
        segments: list[int],
        active_bytes: int,
    ) -> None:
        self._directory = directory
        self._limits = limits
        self._preamble = preamble
        self._segments = segments
        self._active_bytes = active_bytes
        self._fd = os.open(
            self.segment_path(segments[-1]), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        )
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._failed: BaseException | None = None
        self._records_appended = 0
        self._bytes_written = 0
        self._syncs = 0
        self._segments_created = 0
        self._segments_removed = 0
        self._torn_tail_bytes = 0
        self._torn_tail_segment = 0
        self._torn_tail_offset = 0

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        limits: StorageLimits,
        preamble: Preamble,
        record_types: Collection[int],
    ) -> tuple[Wal, list[WalRecord]]:
        """Open (or create) the log in ``directory``; return it and every record it holds.

        ``record_types`` are the types the owner writes; any other type is damage.
        """
        directory.mkdir(parents=True, exist_ok=True)
        segments = cls._list_segments(directory)
        records: list[WalRecord] = []
        torn = (0, 0, 0)
        active_bytes = 0
        for position, seq in enumerate(segments):
            last = position == len(segments) - 1
            found, good_end, cut = cls._scan(
                directory / segment_name(seq), seq, limits, record_types, last=last
            )
            records.extend(found)
            active_bytes = good_end
            if cut:
                torn = (cut, seq, good_end)
        if segments and active_bytes == 0:
            # The last segment was created but its first batch never reached the disk.
            (directory / segment_name(segments[-1])).unlink()
            fsync_directory(directory)
            segments.pop()
            if segments:
                active_bytes = (directory / segment_name(segments[-1])).stat().st_size
        created = False
        if not segments:
            active_bytes = cls._create_segment(directory, 1, preamble)
            segments = [1]
            created = True
        wal = cls(directory, limits, preamble, segments, active_bytes)
        wal._torn_tail_bytes, wal._torn_tail_segment, wal._torn_tail_offset = torn
        wal._segments_created = int(created)
        return wal, records

    @staticmethod
    def _list_segments(directory: Path) -> list[int]:
        segments = sorted(
            int(match.group(1))
            for path in directory.iterdir()
            if (match := _SEGMENT_RE.match(path.name)) is not None
        )
        for previous, seq in itertools.pairwise(segments):
            if seq != previous + 1:
                raise WalCorrupted(
                    directory / segment_name(previous + 1), 0, "segment missing from the sequence"
                )
        return segments

    @staticmethod
    def _scan(
        path: Path,
        seq: int,
        limits: StorageLimits,
        record_types: Collection[int],
        *,
        last: bool,
    ) -> tuple[list[WalRecord], int, int]:
        """The records of one segment, where the good part ends, and the torn bytes cut off."""
        data = path.read_bytes()
        records: list[WalRecord] = []
        offset = 0
        while offset < len(data):
            frame = read_frame(data, offset, limits.record_bytes_max)
            damage = frame.damage
            if damage is None and frame.frame_type not in record_types:
                damage = Damage.BAD_TYPE
            if damage is None:
                records.append(WalRecord(seq, offset, frame.frame_type, frame.payload))
                offset = frame.end
                continue
            torn = last and (
                damage in _TORN
                or (damage is Damage.PAYLOAD_CRC and frame.end == len(data))
                or not any(data[offset:])
            )
            if not torn:
                raise WalCorrupted(path, offset, damage.value)
            with path.open("r+b") as file:
                file.truncate(offset)
                file.flush()
                os.fsync(file.fileno())
            return records, offset, len(data) - offset
        if not records and not last:
            raise WalCorrupted(path, 0, "a segment other than the last is empty")
        return records, offset, 0

    @staticmethod
    def _create_segment(directory: Path, seq: int, preamble: Preamble) -> int:
        """Create segment ``seq`` holding only the preamble, durably; return its size."""
        data = b"".join(encode_frame(kind, payload) for kind, payload in preamble())
        fd = os.open(
            directory / segment_name(seq), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        )
        try:
            _write_all(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        fsync_directory(directory)
        return len(data)

    # -- writing -----------------------------------------------------------------------------

    def segment_path(self, seq: int) -> Path:
        return self._directory / segment_name(seq)

    def segments(self) -> list[int]:
        """The sequence numbers of the segments, oldest first; the last is the active one."""
        return list(self._segments)

    def append(self, record_type: int, payload: bytes) -> None:
        """Buffer one record; it is written and made durable by the next :meth:`sync`."""
        self._check_usable()
        if len(payload) > self._limits.record_bytes_max:
            raise TooLarge(
                f"record of {len(payload)} bytes exceeds record_bytes_max "
                f"({self._limits.record_bytes_max})"
            )
        frame = encode_frame(record_type, payload)
        self._pending.append(frame)
        self._pending_bytes += len(frame)

    def sync(self, *, durable: bool = True) -> int:
        """Write the buffered records and fsync once; return the segment they went to.

        ``durable=False`` writes without the fsync (a later fsync makes it durable); a write
        that starts a new segment is always fsynced.

        On any I/O error the log refuses further use: after a failed fsync the kernel may
        have dropped the dirty pages, so what is on disk is unknown until the log is reopened.
        """
        self._check_usable()
        if not self._pending:
            return self._segments[-1]
        try:
            created = False
            data = b"".join(self._pending)
            if self._active_bytes >= self._limits.segment_bytes_max:
                data = self._roll() + data
                created = True
            _write_all(self._fd, data)
            if self._limits.fsync and (durable or created):
                os.fdatasync(self._fd)
            if created:
                fsync_directory(self._directory)
        except BaseException as error:
            self._failed = error
            raise
        self._active_bytes += len(data)
        self._bytes_written += len(data)
        self._records_appended += len(self._pending)
        self._syncs += 1
        self._pending.clear()
        self._pending_bytes = 0
        return self._segments[-1]

    def _roll(self) -> bytes:
        """Open a new segment as the active one; return its preamble bytes (not yet written)."""
        seq = self._segments[-1] + 1
        preamble = b"".join(encode_frame(kind, payload) for kind, payload in self._preamble())
        fd = os.open(
            self.segment_path(seq),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
        )
        os.close(self._fd)
        self._fd = fd
        self._segments.append(seq)
        self._active_bytes = 0
        self._segments_created += 1
        return preamble

    def remove_segments_before(self, seq: int) -> int:
        """Delete the segments older than ``seq`` (never the active one), oldest first.

        The directory is fsynced after each removal so that a crash never leaves a hole in
        the sequence, only a shorter prefix removed. Returns how many were removed.
        """
        self._check_usable()
        invariant(seq <= self._segments[-1], "the active segment is never removed")
        removed = 0
        while self._segments[0] < seq:
            self.segment_path(self._segments[0]).unlink()
            fsync_directory(self._directory)
            self._segments.pop(0)
            removed += 1
        self._segments_removed += removed
        return removed

    def _check_usable(self) -> None:
        if self._fd < 0:
            raise InvariantViolation("the log is closed")
        if self._failed is not None:
            raise InvariantViolation(f"the log failed earlier and must be reopened: {self._failed}")

    def close(self) -> None:
        """Close the active segment. Records appended but not synced are dropped."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._pending.clear()

    def statistics(self) -> WalStatistics:
        return WalStatistics(
            segments=len(self._segments),
            segment_first=self._segments[0],
            segment_active=self._segments[-1],
            active_segment_bytes=self._active_bytes,
            records_appended=self._records_appended,
            bytes_written=self._bytes_written,
            syncs=self._syncs,
            segments_created=self._segments_created,
            segments_removed=self._segments_removed,
            torn_tail_bytes=self._torn_tail_bytes,
            torn_tail_segment=self._torn_tail_segment,
            torn_tail_offset=self._torn_tail_offset,
        )
