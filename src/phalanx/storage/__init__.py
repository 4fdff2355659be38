"""Durable storage for a Raft node: a segmented write-ahead log, snapshot files, and
:class:`DiskStorage`, the :class:`~phalanx.raft.storage.Storage` built on them.

See ``docs/storage.md`` for the file formats, the fsync points and the recovery rules.
"""

from phalanx.storage.disk import DiskStorage, DiskStorageStatistics, RecordType
from phalanx.storage.errors import SnapshotCorrupted, StorageCorrupted, WalCorrupted
from phalanx.storage.limits import StorageLimits
from phalanx.storage.snapshot import SnapshotStore
from phalanx.storage.wal import Wal, WalRecord, WalStatistics

__all__ = [
    "DiskStorage",
    "DiskStorageStatistics",
    "RecordType",
    "SnapshotCorrupted",
    "SnapshotStore",
    "StorageCorrupted",
    "StorageLimits",
    "Wal",
    "WalCorrupted",
    "WalRecord",
    "WalStatistics",
]
