"""What the durable storage raises when what it finds on disk cannot be trusted.

::

    PhalanxError
    └── StorageCorrupted     a stored file fails its checks; the node must not start on it
        ├── WalCorrupted     a bad record that is not the torn tail of the log
        └── SnapshotCorrupted a snapshot file is missing, truncated or fails its checksum

A torn tail (the last record of the last segment, cut short by a crash) is not an error: it
was never acknowledged, and opening the log truncates it. Writes beyond a limit raise
:class:`phalanx.errors.TooLarge`; a caller breaking the log's rules (a gap, a snapshot older
than the one held) gets :class:`phalanx.errors.InvariantViolation` before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from phalanx.errors import PhalanxError

__all__ = ["SnapshotCorrupted", "StorageCorrupted", "WalCorrupted"]


class StorageCorrupted(PhalanxError):
    """A stored file is damaged. ``path`` names it; ``offset`` is where, when known."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path} at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class WalCorrupted(StorageCorrupted):
    """A record of the write-ahead log is damaged somewhere other than the torn tail."""


class SnapshotCorrupted(StorageCorrupted):
    """The snapshot the log refers to is missing or damaged."""
