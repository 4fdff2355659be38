"""Replay, torn tails, corruption, snapshots on disk, and the named limits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from phalanx.errors import InvariantViolation, TooLarge
from phalanx.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from phalanx.storage import (
    DiskStorage,
    SnapshotCorrupted,
    StorageLimits,
    WalCorrupted,
)
from phalanx.storage.frame import read_frame

CONF = ConfState(voters=(1, 2, 3))
BIG = 1 << 30


def ents(first: int, last: int, term: int, size: int = 8) -> list[Entry]:
    return [Entry(term, i, data=bytes([i % 256]) * size) for i in range(first, last + 1)]


def frame_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset = read_frame(data, offset, BIG).end
    return offsets


def segments(directory: Path) -> list[Path]:
    return sorted((directory / "wal").glob("*.wal"))


def test_replay_after_clean_close(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, CONF) as storage:
        storage.save(HardState(1, 1, 0), ents(1, 3, 1))
        storage.save(HardState(2, 2, 3), ents(3, 5, 2))
    with DiskStorage(tmp_path) as storage:
        assert storage.initial_state() == (HardState(2, 2, 3), CONF)
        assert storage.entries(1, 6, BIG) == ents(1, 2, 1) + ents(3, 5, 2)
        assert storage.statistics().wal.torn_tail_bytes == 0


def test_torn_tail_at_every_byte_of_the_last_batch(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, CONF) as storage:
        storage.save(HardState(1, 1, 0), ents(1, 3, 1))
        # The last batch: an entries record, then a hard-state record.
        storage.save(HardState(1, 1, 4), ents(4, 5, 1, size=30))
    (segment,) = segments(tmp_path)
    intact = segment.read_bytes()
    entries_at, hard_state_at = frame_offsets(segment)[-2:]
    for cut in range(entries_at, len(intact) + 1):
        segment.write_bytes(intact[:cut])
        with DiskStorage(tmp_path) as storage:
            stats = storage.statistics().wal
            if cut < hard_state_at:  # the entries record is torn: the batch is gone
                assert storage.last_index() == 3, cut
                assert storage.hard_state() == HardState(1, 1, 0)
            else:  # every fully written record is kept
                assert storage.entries(1, 6, BIG) == ents(1, 3, 1) + ents(4, 5, 1, size=30)
                expected = HardState(1, 1, 4) if cut == len(intact) else HardState(1, 1, 0)
                assert storage.hard_state() == expected
            torn = cut - (hard_state_at if cut >= hard_state_at else entries_at)
            assert stats.torn_tail_bytes == (0 if cut == len(intact) else torn)
        # The truncated log takes new writes and keeps them.
        assert segment.stat().st_size == (cut if cut == len(intact) else cut - torn)


def test_a_checksum_mismatch_in_the_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, CONF) as storage:
        storage.save(entries=ents(1, 3, 1))
        storage.save(entries=ents(4, 4, 1, size=100))
    (segment,) = segments(tmp_path)
    last_record_at = frame_offsets(segment)[-1]
    data = bytearray(segment.read_bytes())
    data[-10] ^= 0xFF
    segment.write_bytes(bytes(data))
    with DiskStorage(tmp_path) as storage:
        assert storage.last_index() == 3
        stats = storage.statistics().wal
        assert (stats.torn_tail_segment, stats.torn_tail_offset) == (1, last_record_at)
        storage.save(entries=ents(4, 4, 2))
    with DiskStorage(tmp_path) as storage:
        assert storage.entries(4, 5, BIG) == ents(4, 4, 2)


def test_a_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, CONF) as storage:
        storage.save(entries=ents(1, 3, 1))
    (segment,) = segments(tmp_path)
    size = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(bytes(4096))  # the file grew, the data never reached the disk
    with DiskStorage(tmp_path) as storage:
        assert storage.last_index() == 3
        assert storage.statistics().wal.torn_tail_bytes == 4096
    assert segment.stat().st_size == size


@pytest.mark.parametrize("where", ["header", "payload", "length"])
def test_corruption_before_the_last_record_raises(tmp_path: Path, where: str) -> None:
    with DiskStorage(tmp_path, CONF) as storage:
        for i in range(1, 6):
            storage.save(HardState(1, 1, i - 1), ents(i, i, 1, size=20))
    (segment,) = segments(tmp_path)
    target = frame_offsets(segment)[3]
    data = bytearray(segment.read_bytes())
    data[target + {"header": 0, "length": 5, "payload": 20}[where]] ^= 0x01
    segment.write_bytes(bytes(data))
    with pytest.raises(WalCorrupted) as caught:
        DiskStorage(tmp_path)
    assert caught.value.path == segment
    assert caught.value.offset == target
    assert segment.read_bytes() == bytes(data)  # nothing was truncated


def test_corruption_in_an_older_segment_raises_even_at_its_end(tmp_path: Path) -> None:
    limits = StorageLimits(segment_bytes_max=200)
    with DiskStorage(tmp_path, CONF, limits=limits) as storage:
        for i in range(1, 20):
            storage.save(entries=ents(i, i, 1, size=30))
    first = segments(tmp_path)[0]
    assert len(segments(tmp_path)) > 2
    data = bytearray(first.read_bytes())
    data[-3] ^= 0x01  # the last record of a segment that is not the last one
    first.write_bytes(bytes(data))
    with pytest.raises(WalCorrupted) as caught:
        DiskStorage(tmp_path, limits=limits)
    assert caught.value.path == first
    assert caught.value.offset == frame_offsets(first)[-1]


def test_a_missing_segment_raises(tmp_path: Path) -> None:
    limits = StorageLimits(segment_bytes_max=200)
    with DiskStorage(tmp_path, CONF, limits=limits) as storage:
        for i in range(1, 20):
            storage.save(entries=ents(i, i, 1, size=30))
    segments(tmp_path)[1].unlink()
    with pytest.raises(WalCorrupted, match="missing"):
        DiskStorage(tmp_path, limits=limits)


def test_a_lost_first_segment_is_detected_by_the_missing_entries(tmp_path: Path) -> None:
    limits = StorageLimits(segment_bytes_max=200)
    with DiskStorage(tmp_path, CONF, limits=limits) as storage:
        for i in range(1, 20):
            storage.save(entries=ents(i, i, 1, size=30))
    segments(tmp_path)[0].unlink()  # its entries were never compacted
    with pytest.raises(WalCorrupted, match="missing"):
        DiskStorage(tmp_path, limits=limits)


def test_segments_roll_and_compaction_deletes_those_below_the_first_index(
    tmp_path: Path,
) -> None:
    limits = StorageLimits(segment_bytes_max=300)
    with DiskStorage(tmp_path, CONF, limits=limits) as storage:
        for i in range(1, 41):
            storage.save(HardState(1, 1, i), ents(i, i, 1, size=40))
        stats = storage.statistics().wal
        assert stats.segments == len(segments(tmp_path)) > 5
        for path in segments(tmp_path)[:-1]:  # over the limit by at most one batch
            assert 300 <= path.stat().st_size < 300 + 200
        storage.create_snapshot(30, CONF, b"state@30")
        storage.compact(25)
        kept = storage.statistics().wal
        assert kept.segments_removed > 0
        assert kept.segments == len(segments(tmp_path))
    with DiskStorage(tmp_path, limits=limits) as storage:
        assert (storage.first_index(), storage.last_index()) == (26, 40)
        assert storage.hard_state() == HardState(1, 1, 40)
        assert storage.snapshot() == Snapshot(SnapshotMeta(30, 1, CONF), b"state@30")
        assert storage.entries(26, 41, BIG) == ents(26, 40, 1, size=40)


def test_only_the_current_snapshot_file_is_kept(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, CONF) as storage:
        storage.save(entries=ents(1, 10, 1))
        storage.create_snapshot(4, CONF, b"four")
        storage.create_snapshot(8, CONF, b"eight")
    names = sorted(p.name for p in (tmp_path / "snap").iterdir())
    assert names == ["0000000000000008-0000000000000001.snap"]
    # A snapshot file written but never named by the log (a crash in between) is ignored.
    stray = tmp_path / "snap" / "0000000000000009-0000000000000001.snap"
    shutil.copy(tmp_path / "snap" / names[0], stray)
    (tmp_path / "snap" / "0000000000000010-0000000000000001.snap.tmp").write_bytes(b"part")
    with DiskStorage(tmp_path) as storage:
        assert storage.snapshot().data == b"eight"
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == names


def test_a_damaged_or_missing_snapshot_raises(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, CONF) as storage:
        storage.save(entries=ents(1, 10, 1))
        storage.create_snapshot(8, CONF, b"eight")
    (path,) = (tmp_path / "snap").iterdir()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorrupted, match="checksum"):
        DiskStorage(tmp_path)
    path.unlink()
    with pytest.raises(SnapshotCorrupted, match="missing"):
        DiskStorage(tmp_path)


def test_record_bytes_max(tmp_path: Path) -> None:
    limits = StorageLimits(record_bytes_max=1000)
    with DiskStorage(tmp_path, CONF, limits=limits) as storage:
        storage.save(entries=ents(1, 1, 1, size=950))  # the largest entry that fits
        with pytest.raises(TooLarge, match="record_bytes_max"):
            storage.save(HardState(1, 1, 1), ents(2, 2, 1, size=1000))
        assert storage.last_index() == 1  # nothing of the refused save was written
        assert storage.hard_state() == HardState()
        # Many small entries are packed into several records of at most the limit.
        storage.save(entries=ents(2, 101, 1, size=50))
        assert storage.statistics().wal.syncs == 2
    with DiskStorage(tmp_path, limits=limits) as storage:
        assert storage.entries(2, 102, BIG) == ents(2, 101, 1, size=50)


def test_batch_entries_max(tmp_path: Path) -> None:
    limits = StorageLimits(batch_entries_max=10)
    with DiskStorage(tmp_path, CONF, limits=limits) as storage:
        storage.save(HardState(1, 1, 10), ents(1, 10, 1))  # at the limit: one fsync
        assert storage.statistics().wal.syncs == 1
        storage.save(HardState(1, 1, 35), ents(11, 35, 1))  # 25 entries: three batches
        assert storage.statistics().wal.syncs == 4
    with DiskStorage(tmp_path, limits=limits) as storage:
        assert storage.entries(1, 36, BIG) == ents(1, 35, 1)
        assert storage.hard_state() == HardState(1, 1, 35)


def test_snapshot_bytes_max(tmp_path: Path) -> None:
    limits = StorageLimits(snapshot_bytes_max=100)
    with DiskStorage(tmp_path, CONF, limits=limits) as storage:
        storage.save(entries=ents(1, 3, 1))
        storage.create_snapshot(2, CONF, bytes(50))
        with pytest.raises(TooLarge, match="snapshot_bytes_max"):
            storage.create_snapshot(3, CONF, bytes(100))
        assert storage.snapshot().meta.index == 2


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="segment_bytes_max"):
        StorageLimits(segment_bytes_max=0)


def test_a_closed_storage_refuses_writes(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path, CONF)
    storage.close()
    with pytest.raises(InvariantViolation, match="closed"):
        storage.save(entries=ents(1, 1, 1))


def test_one_fsync_per_save(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, CONF) as storage:
        for i in range(1, 21):
            storage.save(HardState(1, 1, i - 1), ents(i, i, 1))
        storage.save()  # an empty Ready writes nothing
        stats = storage.statistics()
        assert (stats.saves, stats.wal.syncs) == (21, 20)
