"""Measure the in-memory KV state machine against embedded engines.

Run: ``.venv/bin/python benchmarks/bench_kv.py``.

Applies ``--keys`` puts (8-byte keys, 256-byte values, the sizes of the cluster benchmark) as
committed entries, one at a time as a node applies them, and reports apply throughput, memory
per key (``tracemalloc``), snapshot size and time, restore time, and read latency. For
comparison it applies the same puts to SQLite (an MVCC table keyed by key and revision, one
transaction per entry, and one per batch of 1000 entries) and, when the ``lmdb`` package is
importable, to LMDB. The results table goes to ``docs/kv.md``.
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from phalanx.kv.commands import Proposal, Put, encode_proposal
from phalanx.kv.store import KVStore

__all__ = ["main"]

VALUE_BYTES = 256


def _key(i: int) -> bytes:
    return b"%08d" % i


def _entries(keys: int) -> list[bytes]:
    value = b"v" * VALUE_BYTES
    return [encode_proposal(Proposal(Put(_key(i), value))) for i in range(keys)]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _memory_bytes(fn: Callable[[], object]) -> tuple[int, object]:
    gc.collect()
    tracemalloc.start()
    result = fn()
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current, result


def bench_memory_store(keys: int) -> dict[str, float]:
    entries = _entries(keys)

    def fill() -> KVStore:
        store = KVStore()
        for index, entry in enumerate(entries, 1):
            store.apply(index, entry)
        return store

    store = fill()
    elapsed = _timed(fill)
    overwrite = KVStore()
    for index, entry in enumerate(entries, 1):
        overwrite.apply(index, entry)
    over_s = _timed(
        lambda: [overwrite.apply(keys + i, e) for i, e in enumerate(entries, 1)],
    )
    memory, _ = _memory_bytes(fill)
    compacted = fill()
    compacted.compact(compacted.revision)  # drops the event log: only the keyspace is left
    gc.collect()
    tracemalloc.start()
    probe = fill()
    probe.compact(probe.revision)
    gc.collect()
    keyspace_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del probe
    snapshot = store.snapshot()
    snap_s = _timed(store.snapshot)
    restored = KVStore()
    restore_s = _timed(lambda: restored.restore(snapshot))
    get_s = _timed(lambda: [store.get(_key(i)) for i in range(0, keys, 10)]) / (keys // 10)
    range_s = _timed(lambda: [store.get(_key(i), _key(i + 100)) for i in range(0, keys, 1000)])
    return {
        "apply_per_s": keys / elapsed,
        "overwrite_apply_per_s": keys / over_s,
        "bytes_per_key": memory / keys,
        "bytes_per_key_compacted": keyspace_bytes / keys,
        "snapshot_bytes": len(snapshot),
        "snapshot_s": snap_s,
        "restore_s": restore_s,
        "get_us": get_s * 1e6,
        "range100_us": range_s / (keys // 1000) * 1e6,
    }


def bench_sqlite(keys: int, batch: int, directory: Path) -> dict[str, float]:
    path = directory / f"kv-{batch}.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    # The Raft WAL makes entries durable: the engine needs no fsync of its own.
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute(
        "CREATE TABLE kv (key BLOB, mod_revision INTEGER, create_revision INTEGER,"
        " version INTEGER, value BLOB, lease INTEGER, PRIMARY KEY (key, mod_revision))"
    )
    value = b"v" * VALUE_BYTES
    latest = (
        "SELECT create_revision, version FROM kv WHERE key=? ORDER BY mod_revision DESC LIMIT 1"
    )

    def fill() -> None:
        db.execute("BEGIN")
        for i in range(keys):
            key = _key(i)
            revision = i + 1
            row = db.execute(latest, (key,)).fetchone()
            create, version = (row[0], row[1] + 1) if row else (revision, 1)
            db.execute(
                "INSERT INTO kv VALUES (?, ?, ?, ?, ?, 0)", (key, revision, create, version, value)
            )
            if revision % batch == 0:
                db.execute("COMMIT")
                db.execute("BEGIN")
        db.execute("COMMIT")

    elapsed = _timed(fill)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    get_s = _timed(
        lambda: [db.execute(latest, (_key(i),)).fetchone() for i in range(0, keys, 10)]
    ) / (keys // 10)
    db.close()
    return {"apply_per_s": keys / elapsed, "bytes_per_key": size / keys, "get_us": get_s * 1e6}


def bench_lmdb(keys: int, batch: int, directory: Path) -> dict[str, float] | None:
    try:
        import lmdb  # type: ignore[import-not-found]
    except ImportError:
        return None
    env = lmdb.open(str(directory / f"lmdb-{batch}"), map_size=1 << 32, sync=False)
    value = b"v" * VALUE_BYTES

    def fill() -> None:
        txn = env.begin(write=True)
        for i in range(keys):
            key = _key(i)
            revision = i + 1
            # One record per version (key + revision), plus the latest revision of the key.
            txn.put(key + b"@" + revision.to_bytes(8, "big"), value)
            txn.put(b"latest/" + key, revision.to_bytes(8, "big"))
            if revision % batch == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()

    elapsed = _timed(fill)
    info = env.info()
    stat = env.stat()
    used = info["last_pgno"] * stat["psize"]

    def gets() -> None:
        with env.begin() as txn:
            for i in range(0, keys, 10):
                txn.get(b"latest/" + _key(i))

    get_s = _timed(gets) / (keys // 10)
    env.close()
    return {"apply_per_s": keys / elapsed, "bytes_per_key": used / keys, "get_us": get_s * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args(argv)
    keys: int = args.keys
    out = sys.stdout
    memory = bench_memory_store(keys)
    out.write(f"# {keys} keys, 8-byte keys, {VALUE_BYTES}-byte values\n\n")
    out.write("in-memory KVStore:\n")
    for name, number in memory.items():
        out.write(f"  {name}: {number:,.1f}\n")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 1000):
            sqlite = bench_sqlite(keys, batch, Path(tmp))
            out.write(f"SQLite, commit every {batch} entries: ")
            out.write(", ".join(f"{k} {v:,.1f}" for k, v in sqlite.items()) + "\n")
            lm = bench_lmdb(keys, batch, Path(tmp))
            if lm is None:
                out.write("LMDB: the lmdb package is not installed\n")
            else:
                out.write(f"LMDB, commit every {batch} entries: ")
                out.write(", ".join(f"{k} {v:,.1f}" for k, v in lm.items()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
