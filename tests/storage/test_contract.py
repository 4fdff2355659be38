"""MemoryStorage's behaviour is the contract: DiskStorage must show exactly the same.

Every test runs against MemoryStorage, DiskStorage, and DiskStorage reopened after every
write. The seeded random run applies the same operations to both and compares everything the
Raft core can observe after each one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from phalanx.errors import InvariantViolation
from phalanx.raft.storage import LogCompacted, LogUnavailable, MemoryStorage
from phalanx.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from phalanx.storage import DiskStorage

from .conftest import SMALL_LIMITS, Harness

MakeHarness = Callable[[ConfState], Harness]
CONF = ConfState(voters=(1, 2, 3))
BIG = 1 << 30


def ents(first: int, last: int, term: int, size: int = 8) -> list[Entry]:
    return [Entry(term, i, data=bytes([i % 256]) * size) for i in range(first, last + 1)]


def test_fresh_storage(make_harness: MakeHarness) -> None:
    s = make_harness(CONF).storage
    assert s.initial_state() == (HardState(), CONF)
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert s.term(0) == 0
    assert s.entries(1, 1, BIG) == []
    assert s.snapshot() == Snapshot(SnapshotMeta(0, 0, CONF))
    with pytest.raises(LogUnavailable):
        s.term(1)
    with pytest.raises(LogUnavailable):
        s.entries(1, 2, BIG)
    with pytest.raises(LogCompacted):
        s.entries(0, 1, BIG)


def test_append_read_and_hard_state(make_harness: MakeHarness) -> None:
    h = make_harness(CONF)
    h.save(HardState(1, 2, 0), ents(1, 5, 1))
    h.save(HardState(1, 2, 3))
    s = h.storage
    assert s.initial_state() == (HardState(1, 2, 3), CONF)
    assert (s.first_index(), s.last_index()) == (1, 5)
    assert s.entries(2, 5, BIG) == ents(2, 4, 1)
    assert [s.term(i) for i in range(6)] == [0, 1, 1, 1, 1, 1]


def test_max_bytes_returns_at_least_one_and_stops_before_the_limit(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(CONF)
    h.save(entries=ents(1, 5, 1, size=10))  # each entry counts 10 + 16 bytes
    s = h.storage
    assert s.entries(1, 6, 0) == ents(1, 1, 1, size=10)
    assert s.entries(1, 6, 52) == ents(1, 2, 1, size=10)
    assert s.entries(1, 6, 77) == ents(1, 2, 1, size=10)
    assert s.entries(1, 6, 78) == ents(1, 3, 1, size=10)


def test_conflicting_suffix_is_replaced(make_harness: MakeHarness) -> None:
    h = make_harness(CONF)
    h.save(entries=ents(1, 6, 1))
    h.save(entries=ents(4, 4, 2))
    s = h.storage
    assert s.last_index() == 4
    assert [s.term(i) for i in range(1, 5)] == [1, 1, 1, 2]
    h.save(entries=ents(5, 7, 3))
    assert h.storage.entries(1, 8, BIG) == ents(1, 3, 1) + ents(4, 4, 2) + ents(5, 7, 3)


def test_append_rules(make_harness: MakeHarness) -> None:
    h = make_harness(CONF)
    h.save(entries=ents(1, 3, 1))
    with pytest.raises(InvariantViolation):
        h.save(entries=ents(5, 6, 1))  # a gap after 3
    h.create_snapshot(2, CONF, b"s")
    h.compact(2)
    with pytest.raises(InvariantViolation):
        h.save(entries=ents(2, 3, 2))  # overlaps the compacted entries
    h.reopen()
    assert h.storage.entries(3, 4, BIG) == ents(3, 3, 1)


def test_snapshot_then_compact(make_harness: MakeHarness) -> None:
    h = make_harness(CONF)
    h.save(HardState(2, 1, 9), ents(1, 5, 1) + ents(6, 10, 2))
    conf = ConfState(voters=(1, 2, 3, 4))
    snapshot = h.create_snapshot(8, conf, b"state@8")
    assert snapshot == Snapshot(SnapshotMeta(8, 2, conf), b"state@8")
    s = h.storage
    assert s.snapshot() == snapshot
    assert s.first_index() == 1  # creating a snapshot drops nothing
    h.compact(6)
    s = h.storage
    assert (s.first_index(), s.last_index()) == (7, 10)
    assert s.term(6) == 2
    assert s.initial_state() == (HardState(2, 1, 9), conf)
    with pytest.raises(LogCompacted):
        s.term(5)
    with pytest.raises(LogCompacted):
        s.entries(6, 8, BIG)
    assert s.entries(7, 11, BIG) == ents(7, 10, 2)
    h.compact(3)  # already compacted: nothing happens
    assert h.storage.first_index() == 7
    with pytest.raises(InvariantViolation):
        h.compact(11)
    with pytest.raises(InvariantViolation):
        h.create_snapshot(8, conf, b"again")  # must move forward
    with pytest.raises(InvariantViolation):
        h.create_snapshot(11, conf, b"beyond")


def test_installed_snapshot_replaces_the_log(make_harness: MakeHarness) -> None:
    h = make_harness(CONF)
    h.save(HardState(1, 1, 2), ents(1, 4, 1))
    leader = Snapshot(SnapshotMeta(20, 3, ConfState(voters=(1, 2))), b"from the leader")
    h.save(HardState(3, 0, 20), ents(21, 22, 3), leader)
    s = h.storage
    assert (s.first_index(), s.last_index()) == (21, 22)
    assert s.term(20) == 3
    assert s.snapshot() == leader
    assert s.initial_state() == (HardState(3, 0, 20), ConfState(voters=(1, 2)))
    with pytest.raises(InvariantViolation):
        h.save(snapshot=Snapshot(SnapshotMeta(10, 2, CONF)))


def observe(s: MemoryStorage | DiskStorage) -> object:
    first, last = s.first_index(), s.last_index()
    return (
        s.initial_state(),
        first,
        last,
        [s.term(i) for i in range(first - 1, last + 1)],
        s.entries(first, last + 1, BIG),
        s.snapshot(),
    )


def random_ready(
    rng: random.Random, memory: MemoryStorage, term: int, step: int
) -> tuple[HardState | None, list[Entry], Snapshot | None]:
    """A Ready's writes: entries (maybe replacing a suffix), a hard state, or a snapshot."""
    first, last = memory.first_index(), memory.last_index()
    if rng.random() < 0.8:
        start = rng.randint(max(first, last - 3), last + 1)
        entries = ents(start, start + rng.randint(0, 12), term, rng.randint(0, 40))
        hard_state = HardState(term, rng.randint(0, 3), rng.randint(0, last))
        return (hard_state if rng.random() < 0.7 else None), entries, None
    index = rng.randint(memory.snapshot().meta.index, last + 30)
    if index < first - 1 or (first <= index <= last and memory.term(index) == 0):
        return None, [], None
    snap_term = memory.term(index) if first - 1 <= index <= last else term
    conf = ConfState(voters=(step % 5 + 1,))
    data = rng.randbytes(rng.randint(0, 64))
    return None, [], Snapshot(SnapshotMeta(index, max(snap_term, 1), conf), data)


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_memory_storage(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    memory = MemoryStorage(CONF)
    disk = DiskStorage(tmp_path, CONF, limits=SMALL_LIMITS)
    term = 1
    try:
        for step in range(250):
            first, last = memory.first_index(), memory.last_index()
            held = memory.snapshot().meta.index
            roll = rng.random()
            if roll < 0.65:
                term += rng.random() < 0.2
                hard_state, entries, snapshot = random_ready(rng, memory, term, step)
                if snapshot is not None:
                    memory.apply_snapshot(snapshot)
                    entries = []
                memory.append(entries)
                if hard_state is not None:
                    memory.set_hard_state(hard_state)
                disk.save(hard_state, entries, snapshot)
            elif roll < 0.8 and last > held and last >= first:
                index = rng.randint(max(held + 1, first), last)
                conf = ConfState(voters=(1, 2), learners=(step,))
                data = rng.randbytes(8)
                assert memory.create_snapshot(index, conf, data) == disk.create_snapshot(
                    index, conf, data
                )
            elif roll < 0.95 and last >= first:
                index = rng.randint(first - 2, last)
                memory.compact(index)
                disk.compact(index)
            else:
                disk.close()
                disk = DiskStorage(tmp_path, limits=SMALL_LIMITS)
            assert observe(disk) == observe(memory), f"seed {seed} step {step}"
        disk.close()
        disk = DiskStorage(tmp_path, limits=SMALL_LIMITS)
        assert observe(disk) == observe(memory)
        assert disk.statistics().wal.segment_first > 1  # compaction removed old segments
    finally:
        disk.close()
