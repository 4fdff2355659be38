"""Snapshot files: one per snapshot, written whole to a temporary file, fsynced, renamed.

A snapshot lives in ``<dir>/IIIIIIIIIIIIIIII-TTTTTTTTTTTTTTTT.snap`` (its index and term, 16
digits each) as a single frame (see :mod:`.frame`) holding the msgpack :class:`Snapshot`.
Writing goes to ``<name>.tmp``, fsyncs it, renames it over the final name and fsyncs the
directory: a crash leaves either no file or the whole file, never a part of it.

The file alone does not make the snapshot current: the write-ahead log's snapshot record does,
once it is synced. A file written but not yet named by the log is ignored and removed on the
next open; the previous snapshot's file is removed only after the log names the new one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

from phalanx.errors import TooLarge
from phalanx.raft.types import Snapshot, SnapshotMeta
from phalanx.storage.errors import SnapshotCorrupted
from phalanx.storage.frame import encode_frame, read_frame
from phalanx.storage.wal import fsync_directory

__all__ = ["SNAPSHOT_FRAME_TYPE", "SnapshotStore", "snapshot_name"]

SNAPSHOT_FRAME_TYPE = 1
_NAME_RE = re.compile(r"^\d{16}-\d{16}\.snap(\.tmp)?$")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)


def snapshot_name(meta: SnapshotMeta) -> str:
    return f"{meta.index:016d}-{meta.term:016d}.snap"


class SnapshotStore:
    """The snapshot files of one node, in ``directory``."""

    def __init__(self, directory: Path, snapshot_bytes_max: int) -> None:
        self._directory = directory
        self._bytes_max = snapshot_bytes_max
        directory.mkdir(parents=True, exist_ok=True)
        self.files_written = 0
        self.files_removed = 0

    def path(self, meta: SnapshotMeta) -> Path:
        return self._directory / snapshot_name(meta)

    def write(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` durably (temporary file, fsync, rename, fsync the directory)."""
        payload = _encoder.encode(snapshot)
        if len(payload) > self._bytes_max:
            raise TooLarge(
                f"snapshot of {len(payload)} bytes exceeds snapshot_bytes_max ({self._bytes_max})"
            )
        final = self.path(snapshot.meta)
        temporary = final.with_name(final.name + ".tmp")
        with temporary.open("wb") as file:
            file.write(encode_frame(SNAPSHOT_FRAME_TYPE, payload))
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(final)
        fsync_directory(self._directory)
        self.files_written += 1

    def read(self, meta: SnapshotMeta) -> Snapshot:
        """The snapshot ``meta`` names, checked against its checksum and its metadata."""
        path = self.path(meta)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SnapshotCorrupted(path, 0, "the snapshot file is missing") from None
        frame = read_frame(data, 0, self._bytes_max) if data else None
        if frame is None or frame.damage is not None or frame.end != len(data):
            reason = "the file is empty" if frame is None else "trailing bytes after the frame"
            if frame is not None and frame.damage is not None:
                reason = frame.damage.value
            raise SnapshotCorrupted(path, 0, reason)
        if frame.frame_type != SNAPSHOT_FRAME_TYPE:
            raise SnapshotCorrupted(path, 0, "not a snapshot frame")
        snapshot = _decoder.decode(frame.payload)
        if snapshot.meta != meta:
            raise SnapshotCorrupted(path, 0, "the metadata differs from the log's")
        return snapshot

    def remove_except(self, meta: SnapshotMeta) -> None:
        """Remove every snapshot file (and leftover temporary file) but the one ``meta`` names."""
        keep = snapshot_name(meta)
        removed = 0
        for path in self._directory.iterdir():
            if _NAME_RE.match(path.name) and path.name != keep:
                path.unlink()
                removed += 1
        if removed:
            fsync_directory(self._directory)
            self.files_removed += removed
