"""The named limits of the durable storage, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StorageLimits"]

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StorageLimits:
    """Bounds on every file and batch the storage writes.

    ``record_bytes_max``: the payload of one WAL record. Entries are packed into records up to
    this size; a single entry that does not fit raises ``TooLarge``. Replay refuses longer
    records, so lowering it makes an existing log unreadable.

    ``segment_bytes_max``: a segment is closed once it holds this many bytes; the next batch
    starts a new one. Batches are never split across segments, so a segment may exceed the
    limit by at most one batch.

    ``batch_entries_max``: entries written between two fsyncs. A ``save`` with more entries
    writes them in several batches, each fsynced, the hard state with the last.

    ``snapshot_bytes_max``: the encoded size of one snapshot file.

    ``fsync``: when false, a batch is written but not fdatasynced. A process crash (even
    SIGKILL) still loses nothing, because the kernel holds the written pages; an operating
    system crash or power loss may lose acknowledged writes. Meant for benchmarks and for
    comparing with systems that never fsync; never for data that matters.
    """

    record_bytes_max: int = 16 * _MIB
    segment_bytes_max: int = 64 * _MIB
    batch_entries_max: int = 8192
    snapshot_bytes_max: int = 1024 * _MIB
    fsync: bool = True

    def __post_init__(self) -> None:
        for name in (
            "record_bytes_max",
            "segment_bytes_max",
            "batch_entries_max",
            "snapshot_bytes_max",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
