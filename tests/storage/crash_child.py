"""A writer the crash tests kill with SIGKILL: ``python crash_child.py DATA_DIR SEED``.

It opens a DiskStorage, then saves batches forever (appends, sometimes a conflicting suffix
replaced under a new term, sometimes a snapshot and a compaction) and prints one line per
write only after the write returned, that is once it is durable:

    W first last term     about to save entries first..last (not acknowledged yet)
    A first last term     entries first..last now have this term, nothing after last
    C compacted snapshot  compact(compacted) and create_snapshot(snapshot) returned

Each entry's data is a function of its index and term, so a reader can check it is intact.
"""

from __future__ import annotations

import random
import sys

from phalanx.raft.types import ConfState, Entry, HardState
from phalanx.storage import DiskStorage, StorageLimits

LIMITS = StorageLimits(segment_bytes_max=16 * 1024, batch_entries_max=32)
CONF = ConfState(voters=(1, 2, 3))
SAVES_MAX = 20_000  # a child the parent forgot still ends


def payload(index: int, term: int) -> bytes:
    return f"{index}/{term};".encode() * (index * 7 % 23 + 1)


def main() -> None:
    data_dir, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    storage = DiskStorage(data_dir, CONF, limits=LIMITS)
    last = storage.last_index()
    term = max(storage.hard_state().term, storage.term(last), 1)
    out = sys.stdout
    for _ in range(SAVES_MAX):
        first = storage.first_index()
        start = last + 1
        if rng.random() < 0.1 and last - 3 >= first:
            term += 1
            start = rng.randint(last - 3, last)
        end = start + rng.randint(0, 40)
        entries = [Entry(term, i, data=payload(i, term)) for i in range(start, end + 1)]
        out.write(f"W {start} {end} {term}\n")
        out.flush()
        storage.save(HardState(term, 1, start - 1), entries)
        last = end
        out.write(f"A {start} {end} {term}\n")
        out.flush()
        snapshot_at = last - 10
        if rng.random() < 0.08 and snapshot_at > storage.snapshot().meta.index:
            storage.create_snapshot(snapshot_at, CONF, f"snap{snapshot_at}".encode())
            storage.compact(snapshot_at - 5)
            out.write(f"C {snapshot_at - 5} {snapshot_at}\n")
            out.flush()


if __name__ == "__main__":
    main()
