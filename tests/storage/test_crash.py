"""Crash tests with real processes: a writer is killed with SIGKILL at seeded random moments.

After each kill the log is reopened: every write the child acknowledged (printed after
``save`` returned) must be there and intact, the log must have no gap, and the next child
carries on from it. Several rounds share a data directory, so a log recovered from one crash
takes the writes that the next crash interrupts.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phalanx.storage import DiskStorage, StorageLimits

CHILD = Path(__file__).with_name("crash_child.py")
LIMITS = StorageLimits(segment_bytes_max=16 * 1024, batch_entries_max=32)
ROUNDS = 8


def payload(index: int, term: int) -> bytes:
    return f"{index}/{term};".encode() * (index * 7 % 23 + 1)


class Acked:
    """What the children acknowledged: the term of each index, the compaction and snapshot."""

    def __init__(self) -> None:
        self.terms: dict[int, int] = {}
        self.compacted = 0
        self.snapshot = 0
        #: The save in progress when the child was killed: (first, last, term), or None.
        self.pending: tuple[int, int, int] | None = None

    def record(self, line: str) -> None:
        kind, *fields = line.split()
        if kind == "W":
            first, last, term = map(int, fields)
            self.pending = (first, last, term)
        elif kind == "A":
            self.pending = None
            first, last, term = map(int, fields)
            for index in [i for i in self.terms if i > last]:
                del self.terms[index]
            self.terms.update(dict.fromkeys(range(first, last + 1), term))
        else:
            self.compacted, self.snapshot = map(int, fields)


def run_child(data_dir: Path, seed: int, rng: random.Random, acked: Acked) -> int:
    """Start a writer, let it acknowledge some writes, SIGKILL it; return how many it acked."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(data_dir), str(seed)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    target, lines = rng.randint(1, 120), 0
    try:
        while lines < target:
            line = child.stdout.readline()
            if not line:
                break
            acked.record(line)
            lines += 1
        time.sleep(rng.uniform(0, 0.004))  # land anywhere inside the next write
    finally:
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
    for line in rest.splitlines():  # printed before the kill: acknowledged too
        acked.record(line)
        lines += 1
    assert child.returncode == -signal.SIGKILL, "the child ended before it was killed"
    return lines


def check(data_dir: Path, acked: Acked) -> None:
    with DiskStorage(data_dir, limits=LIMITS) as storage:
        first, last = storage.first_index(), storage.last_index()
        assert first - 1 >= acked.compacted
        snapshot = storage.snapshot()
        assert snapshot.meta.index >= acked.snapshot
        if snapshot.meta.index:
            assert snapshot.data == f"snap{snapshot.meta.index}".encode()
        top = max(acked.terms, default=0)
        if acked.pending is not None and acked.pending[0] <= top:
            # The save in progress replaces a conflicting suffix; once (part of) it is
            # durable the log may end before the last index acknowledged earlier.
            assert last >= min(top, acked.pending[0])
        else:
            assert last >= top
        entries = storage.entries(first, last + 1, 1 << 40)
        # No gap: exactly one entry per index from first to last.
        assert [e.index for e in entries] == list(range(first, last + 1))
        for entry in entries:
            assert entry.data == payload(entry.index, entry.term)
        stored = {e.index: e.term for e in entries}
        expected = {i: t for i, t in acked.terms.items() if i >= first}
        if stored != expected:
            # Only the save in progress may differ: wholly or partly written (one fsynced
            # batch of it), never anything acknowledged before it.
            assert acked.pending is not None, "acknowledged entries differ"
            start, end, term = acked.pending
            assert start <= last <= end
            assert {i: t for i, t in stored.items() if i < start} == {
                i: t for i, t in expected.items() if i < start
            }
            assert all(stored[i] == term for i in range(start, last + 1))
        assert storage.hard_state().commit <= last
        # Written but not acknowledged before the kill is allowed to survive: adopt it.
        acked.terms = stored
        acked.pending = None


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_loses_no_acknowledged_write(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    acked = Acked()
    total = 0
    for round_ in range(ROUNDS):
        total += run_child(tmp_path, seed * 1000 + round_, rng, acked)
        check(tmp_path, acked)
    assert total > ROUNDS
    with DiskStorage(tmp_path, limits=LIMITS) as storage:
        # The runs rolled segments and compaction removed some.
        assert storage.statistics().wal.segment_first > 1
