"""A keyspace growing from 2 to 3 shards while writes continue: the sharding showcase.

:func:`grow_under_writes` builds a keyspace of SQLite shards in ``directory``, fills it, starts
a writer that inserts and updates rows through a router for the whole run, adds a third shard
online with the :class:`~phalanx.sharding.rebalance.Rebalancer`, stops the writer, and checks
every row: each acknowledged write is on exactly one shard, the one that owns its key, with
its last acknowledged value. ``phalanx shard demo`` runs it with a progress bar.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from phalanx.sharding.backend import ShardBackend, open_backend
from phalanx.sharding.mapstore import FileMapStore
from phalanx.sharding.rebalance import FileJobStore, Progress, Rebalancer, TableSpec, plan
from phalanx.sharding.router import Router
from phalanx.sharding.shardmap import ShardMap
from phalanx.sharding.strategies import strategy

__all__ = ["ACCOUNTS", "ShowcaseResult", "grow_under_writes"]

#: Most rows the showcase seeds.
ROWS_MAX: Final = 1_000_000

ACCOUNTS: Final = TableSpec(
    name="accounts",
    key_column="owner",
    pk_column="id",
    columns=("id", "owner", "balance"),
    ddl="CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, "
    "balance INTEGER NOT NULL)",
)
_INSERT: Final = "INSERT INTO accounts (id, owner, balance) VALUES (?, ?, ?)"
_UPDATE: Final = "UPDATE accounts SET balance = ? WHERE id = ?"


@dataclass(frozen=True)
class ShowcaseResult:
    rows_before: dict[str, int]
    rows_after: dict[str, int]
    rows_moved: int
    writes: int
    write_ms_max: float
    write_fence_ms: float
    seconds: float
    lost: int
    duplicated: int
    misplaced: int
    stale: int

    @property
    def ok(self) -> bool:
        return self.lost == self.duplicated == self.misplaced == self.stale == 0


async def _counts(backends: dict[str, ShardBackend], shards: tuple[str, ...]) -> dict[str, int]:
    return {
        s: int((await backends[s].fetch("SELECT COUNT(*) FROM accounts", ()))[0][0]) for s in shards
    }


class _Run:
    """The state of one showcase run."""

    def __init__(self, directory: Path, rows: int, seed: int) -> None:
        self.rows = rows
        self.urls = {n: f"sqlite:{(directory / f'{n}.db').resolve()}" for n in ("s0", "s1", "s2")}
        self.maps = FileMapStore(directory / "shardmap.json")
        self.jobs = FileJobStore(directory / "job.json")
        self.old_map = ShardMap.create(
            strategy("jump", ["s0", "s1"]), {n: self.urls[n] for n in ("s0", "s1")}
        )
        self.backends = {n: open_backend(n, u) for n, u in self.urls.items()}
        self.router = Router(self.old_map, self.backends, reload=self.maps.aload)
        self.expected: dict[int, tuple[Any, ...]] = {}
        self.latencies_ms: list[float] = []
        self.rng = random.Random(seed)

    async def fill(self) -> None:
        self.maps.create(self.old_map)
        for name in ("s0", "s1"):
            await self.backends[name].run([(ACCOUNTS.ddl, ())])
        by_shard: dict[str, list[tuple[Any, ...]]] = {}
        for i in range(self.rows):
            row = (i, f"user:{i % 5_000}", 100)
            by_shard.setdefault(self.router.shard_for(row[1]), []).append(row)
            self.expected[i] = row
        for name, batch in by_shard.items():
            for start in range(0, len(batch), 5_000):
                await self.backends[name].run([(_INSERT, r) for r in batch[start : start + 5_000]])

    async def write(self, done: asyncio.Event) -> None:
        next_id = self.rows
        rng, expected = self.rng, self.expected
        while not done.is_set():
            started = time.perf_counter()
            if rng.random() < 0.5:
                row = (next_id, f"user:{rng.randrange(5_000)}", 100)
                await self.router.execute(row[1], _INSERT, row)
                expected[next_id] = row
                next_id += 1
            else:
                pk = rng.randrange(next_id)
                owner, balance = expected[pk][1], rng.randrange(1_000)
                await self.router.execute(owner, _UPDATE, (balance, pk))
                expected[pk] = (pk, owner, balance)
            self.latencies_ms.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0)

    async def move(
        self, done: asyncio.Event, on_progress: Callable[[Progress], None] | None
    ) -> tuple[int, float]:
        new_map = self.old_map.with_shards(["s0", "s1", "s2"], {"s2": self.urls["s2"]})
        self.jobs.save(plan("grow-to-3", self.old_map, new_map, [ACCOUNTS]))
        try:
            state = await Rebalancer(
                self.jobs, self.maps, self.backends, on_progress=on_progress
            ).run()
        finally:
            done.set()
        return state.rows_copied, state.write_fence_s or 0.0

    async def check(self) -> tuple[int, int, int, int]:
        """Rows lost, duplicated, misplaced, and holding a stale value."""
        final = self.maps.load().build()
        seen: dict[int, int] = {}
        misplaced = stale = 0
        for name in final.shards:
            rows = await self.backends[name].fetch("SELECT id, owner, balance FROM accounts", ())
            for row in rows:
                seen[row[0]] = seen.get(row[0], 0) + 1
                misplaced += final.shard_for(row[1]) != name
                stale += self.expected.get(row[0]) != tuple(row)
        lost = sum(1 for pk in self.expected if pk not in seen)
        duplicated = sum(1 for count in seen.values() if count > 1)
        return lost, duplicated, misplaced, stale

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.close()


async def grow_under_writes(
    directory: Path,
    *,
    rows: int = 20_000,
    seed: int = 1,
    on_progress: Callable[[Progress], None] | None = None,
) -> ShowcaseResult:
    """Run the showcase in ``directory`` (created; must not hold a keyspace yet)."""
    if not 1 <= rows <= ROWS_MAX:
        raise ValueError(f"rows: 1..{ROWS_MAX}, got {rows}")
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    run = _Run(directory, rows, seed)
    try:
        await run.fill()
        before = await _counts(run.backends, ("s0", "s1"))
        done = asyncio.Event()
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            group.create_task(run.write(done))
            moving = group.create_task(run.move(done, on_progress))
        seconds = time.perf_counter() - started
        moved, fence_s = moving.result()
        lost, duplicated, misplaced, stale = await run.check()
        after = await _counts(run.backends, ("s0", "s1", "s2"))
    finally:
        await run.close()
    return ShowcaseResult(
        rows_before=before,
        rows_after=after,
        rows_moved=moved,
        writes=len(run.latencies_ms),
        write_ms_max=max(run.latencies_ms, default=0.0),
        write_fence_ms=fence_s * 1000,
        seconds=seconds,
        lost=lost,
        duplicated=duplicated,
        misplaced=misplaced,
        stale=stale,
    )
