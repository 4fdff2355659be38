"""The disk model: fsync makes writes durable, a crash loses (a suffix of) the rest."""

import random

import pytest

from phalanx.errors import InvariantViolation
from phalanx.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from phalanx.sim.disk import SimDisk

CONF = ConfState(voters=(1, 2, 3))


def entries(lo: int, hi: int, term: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(term=term, index=i, data=f"e{i}".encode()) for i in range(lo, hi + 1))


def test_synced_writes_survive_a_crash() -> None:
    disk = SimDisk(CONF)
    disk.write(HardState(1, 1, 2), entries(1, 3), None)
    disk.sync()
    assert disk.crash(random.Random(0), torn=False) == 0
    storage = disk.load()
    assert storage.last_index() == 3
    assert storage.hard_state() == HardState(1, 1, 2)
    assert storage.initial_state()[1] == CONF


def test_unsynced_writes_are_lost_by_a_crash() -> None:
    disk = SimDisk(CONF)
    disk.write(HardState(1, 1, 0), entries(1, 2), None)
    disk.sync()
    disk.write(HardState(2, 3, 2), entries(3, 5, term=2), None)
    assert disk.crash(random.Random(0), torn=False) == 4  # three entries and a hard state
    storage = disk.load()
    assert storage.last_index() == 2
    assert storage.hard_state() == HardState(1, 1, 0)
    assert disk.stats.ops_lost == 4


def test_torn_writes_keep_a_prefix_in_write_order() -> None:
    kept = set()
    for seed in range(40):
        disk = SimDisk(CONF)
        disk.write(HardState(2, 2, 0), entries(1, 4, term=2), None)
        disk.crash(random.Random(seed), torn=True)
        storage = disk.load()
        last = storage.last_index()
        hard = storage.hard_state()
        # The hard state comes after the entries: it survives only if all of them did.
        assert hard == HardState() or last == 4
        kept.add((last, hard.term))
    assert len(kept) > 3  # different prefixes survive different crashes


def test_a_conflicting_append_truncates_the_durable_suffix() -> None:
    disk = SimDisk(CONF)
    disk.write(None, entries(1, 5), None)
    disk.write(None, entries(3, 3, term=2), None)
    disk.sync()
    storage = disk.load()
    assert storage.last_index() == 3
    assert storage.term(3) == 2
    with pytest.raises(InvariantViolation, match="gap"):
        disk.write(None, entries(9, 9, term=2), None)
        disk.sync()


def test_snapshots_and_compaction() -> None:
    disk = SimDisk(CONF)
    disk.write(None, entries(1, 10), None)
    snap = Snapshot(SnapshotMeta(8, 1, CONF), b"state")
    disk.compact(snap, 6)
    disk.sync()
    assert disk.durable.offset == 6
    storage = disk.load()
    assert storage.snapshot() == snap
    assert storage.first_index() == 9
    assert storage.last_index() == 10
    received = Snapshot(SnapshotMeta(20, 3, CONF), b"newer")
    disk.write(HardState(3, 0, 20), (), received)
    disk.sync()
    storage = disk.load()
    assert storage.last_index() == 20
    assert storage.snapshot().data == b"newer"
