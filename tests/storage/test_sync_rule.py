"""MustSync: a save that only moves the commit index is written but not fsynced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from phalanx.raft.types import ConfState, Entry, HardState
from phalanx.storage import DiskStorage


def test_commit_only_saves_skip_the_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = DiskStorage(tmp_path, ConfState(voters=(1,)))
    syncs: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    storage.save(HardState(term=1, vote=1), [Entry(index=1, term=1, data=b"a")])
    assert len(syncs) == 1
    storage.save(HardState(term=1, vote=1, commit=1), sync=False)
    assert len(syncs) == 1  # written, not synced
    assert storage.hard_state().commit == 1  # but visible
    storage.save(entries=[Entry(index=2, term=1, data=b"b")], sync=False)
    assert len(syncs) == 2  # entries are always synced
    storage.close()
    reopened = DiskStorage(tmp_path)
    assert reopened.hard_state() == HardState(term=1, vote=1, commit=1)
    assert reopened.last_index() == 2
    reopened.close()
