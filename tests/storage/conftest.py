"""Shared fixtures of the storage tests: a harness that drives either storage the same way.

``MemoryStorage`` has no ``save``; its harness performs a Ready's writes in the order the
simulator does (snapshot, entries, hard state). The "disk-reopen" variant closes and reopens
the ``DiskStorage`` after every write, so every read is served from what the files hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from phalanx.raft.storage import MemoryStorage
from phalanx.raft.types import ConfState, Entry, HardState, Snapshot
from phalanx.storage import DiskStorage, StorageLimits

#: Small enough that a few dozen entries roll segments and compaction deletes some.
SMALL_LIMITS = StorageLimits(segment_bytes_max=512, batch_entries_max=8, record_bytes_max=4096)


class Harness:
    def __init__(self, kind: str, directory: Path, conf_state: ConfState) -> None:
        self.kind = kind
        self.directory = directory
        self.storage: MemoryStorage | DiskStorage
        if kind == "memory":
            self.storage = MemoryStorage(conf_state)
        else:
            self.storage = DiskStorage(directory, conf_state, limits=SMALL_LIMITS)

    def save(
        self,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        storage = self.storage
        if isinstance(storage, DiskStorage):
            storage.save(hard_state, entries, snapshot)
        else:
            if snapshot is not None:
                storage.apply_snapshot(snapshot)
            if entries:
                storage.append(list(entries))
            if hard_state is not None:
                storage.set_hard_state(hard_state)
        self.maybe_reopen()

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        snapshot = self.storage.create_snapshot(index, conf_state, data)
        self.maybe_reopen()
        return snapshot

    def compact(self, index: int) -> None:
        self.storage.compact(index)
        self.maybe_reopen()

    def maybe_reopen(self) -> None:
        if self.kind == "disk-reopen":
            self.reopen()

    def reopen(self) -> None:
        storage = self.storage
        if isinstance(storage, DiskStorage):
            storage.close()
            # No conf_state: the log must hold the membership it started with.
            self.storage = DiskStorage(self.directory, limits=SMALL_LIMITS)

    def close(self) -> None:
        if isinstance(self.storage, DiskStorage):
            self.storage.close()


KINDS = ["memory", "disk", "disk-reopen"]


@pytest.fixture(params=KINDS)
def make_harness(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[ConfState], Harness]]:
    made: list[Harness] = []

    def make(conf_state: ConfState) -> Harness:
        harness = Harness(request.param, tmp_path / f"node{len(made)}", conf_state)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()
