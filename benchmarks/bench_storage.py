"""A small benchmark of the durable storage, run by hand (numbers go to docs/storage.md):

    .venv/bin/python benchmarks/bench_storage.py [DIRECTORY]

It reports; it asserts nothing. DIRECTORY defaults to a temporary directory (on the same
file system as the system's temporary files).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from phalanx.raft.types import ConfState, Entry, HardState
from phalanx.storage import DiskStorage

VALUE = b"v" * 256


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(name: str, samples_s: list[float], per_op: int = 1) -> None:
    total = sum(samples_s)
    p50, p99 = percentile(samples_s, 0.5) * 1e3, percentile(samples_s, 0.99) * 1e3
    rate = len(samples_s) * per_op / total
    sys.stdout.write(f"{name:44s} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  {rate:10.0f} /s\n")


def bench_fdatasync(directory: Path, count: int) -> None:
    fd = os.open(directory / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        os.write(fd, VALUE)
        os.fdatasync(fd)
        samples.append(time.perf_counter() - start)
    os.close(fd)
    report("raw write(256 B) + fdatasync", samples)


def bench_save(directory: Path, count: int, batch: int) -> int:
    samples = []
    with DiskStorage(directory, ConfState(voters=(1,))) as storage:
        index = 1
        for _ in range(count):
            entries = [Entry(1, i, data=VALUE) for i in range(index, index + batch)]
            start = time.perf_counter()
            storage.save(HardState(1, 1, index - 1), entries)
            samples.append(time.perf_counter() - start)
            index += batch
    report(f"save(hard state + {batch} x 256 B entries)", samples)
    if batch > 1:
        report(f"  the same, per entry (batches of {batch})", samples, per_op=batch)
    return index - 1


def bench_replay(directory: Path, entries: int) -> None:
    start = time.perf_counter()
    with DiskStorage(directory) as storage:
        assert storage.last_index() == entries
    elapsed = time.perf_counter() - start
    sys.stdout.write(
        f"{'open + replay':44s} {entries} entries in {elapsed * 1e3:.0f} ms "
        f"({entries / elapsed:,.0f} entries/s)\n"
    )


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    root.mkdir(parents=True, exist_ok=True)
    bench_fdatasync(root, 2000)
    bench_save(root / "one", 2000, 1)
    bench_save(root / "sixteen", 1000, 16)
    total = bench_save(root / "batched", 500, 256)
    bench_replay(root / "batched", total)


if __name__ == "__main__":
    main()
