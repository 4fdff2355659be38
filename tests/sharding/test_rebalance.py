"""Online rebalancing: rows move while writes continue, every row is checked afterwards, and
a crash at any step resumes to the same end state."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from phalanx.sharding import ShardMap, strategy
from phalanx.sharding.backend import ShardBackend, open_backend
from phalanx.sharding.mapstore import MemoryMapStore
from phalanx.sharding.rebalance import (
    FileJobStore,
    MemoryJobStore,
    Progress,
    RebalanceFailed,
    Rebalancer,
    SimulatedCrash,
    TableSpec,
    plan,
)
from phalanx.sharding.router import Router
from phalanx.sharding.strategies import RangeStrategy

ACCOUNTS = TableSpec(
    name="accounts",
    key_column="owner",
    pk_column="id",
    columns=("id", "owner", "balance"),
    ddl="CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, "
    "balance INTEGER NOT NULL)",
)
INSERT = "INSERT INTO accounts (id, owner, balance) VALUES (?, ?, ?)"


def shard_urls(
    kind: str, names: list[str], tmp_path: Path, make_pg: Callable[[], str] | None
) -> dict[str, str]:
    if kind == "sqlite":
        return {n: f"sqlite:{tmp_path / f'{n}.db'}" for n in names}
    assert make_pg is not None
    return {n: f"postgres:{make_pg()}" for n in names}


async def seeded(
    urls: dict[str, str], old_names: list[str], rows: int
) -> tuple[ShardMap, dict[str, ShardBackend], Router]:
    backends = {n: open_backend(n, u) for n, u in urls.items()}
    old_map = ShardMap.create(strategy("jump", old_names), {n: urls[n] for n in old_names})
    router = Router(old_map, backends)
    for name in old_names:
        await backends[name].run([(ACCOUNTS.ddl, ())])
    by_shard: dict[str, list[tuple[Any, ...]]] = {}
    for i in range(rows):
        owner = f"user:{i % 97}"
        by_shard.setdefault(router.shard_for(owner), []).append((i, owner, 100 + i))
    for shard, batch in by_shard.items():
        await backends[shard].run([(INSERT, row) for row in batch])
    return old_map, backends, router


async def everything(
    backends: dict[str, ShardBackend], shards: tuple[str, ...]
) -> dict[str, list[tuple[Any, ...]]]:
    return {
        s: sorted(
            tuple(r) for r in await backends[s].fetch("SELECT id, owner, balance FROM accounts", ())
        )
        for s in shards
    }


def assert_placed(
    contents: dict[str, list[tuple[Any, ...]]],
    new_map: ShardMap,
    expected: dict[int, tuple[Any, ...]],
) -> None:
    built = new_map.build()
    seen: dict[int, tuple[Any, ...]] = {}
    for shard, rows in contents.items():
        for row in rows:
            assert row[0] not in seen, f"row {row[0]} is on two shards"
            assert built.shard_for(row[1]) == shard, f"row {row} is on {shard}, not its owner"
            seen[row[0]] = row
    assert seen == expected


class Workload:
    """Inserts, updates and deletes through a router until told to stop (and at least
    ``writes_min`` of them), keeping ``expected`` equal to every acknowledged write."""

    def __init__(
        self, router: Router, expected: dict[int, tuple[Any, ...]], writes_min: int = 50
    ) -> None:
        self.router = router
        self.expected = expected
        self.writes_min = writes_min
        self.acknowledged = 0
        self.rng = random.Random(7)

    async def run(self, done: asyncio.Event) -> None:
        next_id = 10_000
        rng, expected = self.rng, self.expected
        while not done.is_set() or self.acknowledged < self.writes_min:
            choice = rng.random()
            if choice < 0.5:
                owner = f"user:{rng.randrange(200)}"
                row = (next_id, owner, rng.randrange(1000))
                await self.router.execute(owner, INSERT, row)
                expected[next_id] = row
                next_id += 1
            elif choice < 0.85:
                pk = rng.choice(list(expected))
                owner = expected[pk][1]
                balance = rng.randrange(1000)
                update = "UPDATE accounts SET balance = ? WHERE id = ?"
                await self.router.execute(owner, update, (balance, pk))
                expected[pk] = (pk, owner, balance)
            else:
                pk = rng.choice(list(expected))
                await self.router.execute(
                    expected[pk][1], "DELETE FROM accounts WHERE id = ?", (pk,)
                )
                del expected[pk]
            self.acknowledged += 1
            await asyncio.sleep(0)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_adding_a_shard_under_continuous_writes_loses_and_duplicates_nothing(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    make_pg = request.getfixturevalue("make_pg_database") if kind == "postgres" else None
    urls = shard_urls(kind, ["s0", "s1", "s2"], tmp_path, make_pg)
    old_map, backends, _ = await seeded(urls, ["s0", "s1"], 600)
    expected = {i: (i, f"user:{i % 97}", 100 + i) for i in range(600)}
    maps = MemoryMapStore(old_map)
    new_map = old_map.with_shards(["s0", "s1", "s2"], {"s2": urls["s2"]})
    jobs = MemoryJobStore()
    jobs.save(plan("grow", old_map, new_map, [ACCOUNTS]))
    # The writer knows only the old shards: it opens s2 from the map once the map names it.
    old_backends = {n: backends[n] for n in ("s0", "s1")}
    writer = Workload(Router(old_map, old_backends, reload=maps.aload), expected)
    done = asyncio.Event()

    async def move() -> None:
        try:
            await Rebalancer(jobs, maps, backends, batch_rows=64, catchup_lag_rows=5).run()
        finally:
            done.set()

    async with asyncio.TaskGroup() as group:
        group.create_task(writer.run(done))
        group.create_task(move())

    state = jobs.load()
    assert state is not None
    assert state.phase == "done"
    assert state.write_fence_s is not None
    assert maps.load().version == 2
    assert writer.router.map_version == 2
    assert state.rows_copied > 0
    assert state.checksums
    assert_placed(await everything(backends, ("s0", "s1", "s2")), new_map, expected)
    assert writer.router.backend("s2") is not backends["s2"]
    await writer.router.close()
    for backend in backends.values():
        await backend.close()


CRASH_POINTS = [
    "prepare",
    "copy-batch",
    "copy",
    "catchup",
    "verify",
    "cutover-fenced",
    "cutover",
    "cleanup",
]


@pytest.mark.parametrize(
    ("kind", "point"),
    [
        *(("sqlite", p) for p in CRASH_POINTS),
        ("postgres", "copy-batch"),
        ("postgres", "cutover-fenced"),
    ],
)
async def test_a_crash_at_any_step_resumes_to_the_same_end(
    kind: str, point: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    make_pg = request.getfixturevalue("make_pg_database") if kind == "postgres" else None
    urls = shard_urls(kind, ["s0", "s1", "s2"], tmp_path, make_pg)
    old_map, backends, _ = await seeded(urls, ["s0", "s1"], 300)
    expected = {i: (i, f"user:{i % 97}", 100 + i) for i in range(300)}
    maps = MemoryMapStore(old_map)
    new_map = old_map.with_shards(["s0", "s1", "s2"], {"s2": urls["s2"]})
    jobs = FileJobStore(tmp_path / "job.json")
    jobs.save(plan("grow", old_map, new_map, [ACCOUNTS]))
    with pytest.raises(SimulatedCrash):
        await Rebalancer(jobs, maps, backends, batch_rows=50, crash_points=[point]).run()
    # A new process: fresh backends, the job file, the published map.
    for backend in backends.values():
        await backend.close()
    reopened = {n: open_backend(n, u) for n, u in urls.items()}
    state = await Rebalancer(jobs, maps, reopened, batch_rows=50).run()
    assert state.phase == "done"
    assert maps.load() == new_map
    assert_placed(await everything(reopened, ("s0", "s1", "s2")), new_map, expected)
    for backend in reopened.values():
        await backend.close()


async def test_verification_stops_a_move_whose_copy_diverged(tmp_path: Path) -> None:
    urls = shard_urls("sqlite", ["s0", "s1", "s2"], tmp_path, None)
    old_map, backends, _ = await seeded(urls, ["s0", "s1"], 200)
    maps = MemoryMapStore(old_map)
    new_map = old_map.with_shards(["s0", "s1", "s2"], {"s2": urls["s2"]})
    jobs = MemoryJobStore()
    jobs.save(plan("grow", old_map, new_map, [ACCOUNTS]))
    with pytest.raises(SimulatedCrash):
        await Rebalancer(jobs, maps, backends, crash_points=["catchup"]).run()
    # Corrupt one copied row behind the rebalancer's back (no change capture on targets).
    await backends["s2"].run(
        [("UPDATE accounts SET balance = -1 WHERE id = (SELECT MIN(id) FROM accounts)", ())]
    )
    with pytest.raises(RebalanceFailed):
        await Rebalancer(jobs, maps, backends, verify_rounds_max=2).run()
    state = jobs.load()
    assert state is not None
    assert state.phase == "verify"
    assert len(state.mismatches) == 1
    assert maps.load() == old_map  # nothing switched
    total = sum(len(rows) for rows in (await everything(backends, ("s0", "s1"))).values())
    assert total == 200  # nothing deleted from the sources
    for backend in backends.values():
        await backend.close()


async def test_splitting_a_range_moves_the_upper_half_and_reports_progress(tmp_path: Path) -> None:
    urls = shard_urls("sqlite", ["a", "b", "c"], tmp_path, None)
    backends = {n: open_backend(n, u) for n, u in urls.items()}
    old_strategy = RangeStrategy(["a", "b"], bounds=["user:5"])
    old_map = ShardMap.create(old_strategy, {"a": urls["a"], "b": urls["b"]})
    for name in ("a", "b"):
        await backends[name].run([(ACCOUNTS.ddl, ())])
    rows = [(i, f"user:{i:03d}", i) for i in range(400)]
    for name in ("a", "b"):
        await backends[name].run(
            [(INSERT, r) for r in rows if old_strategy.shard_for(r[1]) == name]
        )
    split = old_strategy.split("a", "user:2", "c")
    new_map = old_map.advance(split, {"c": urls["c"]})
    maps = MemoryMapStore(old_map)
    jobs = MemoryJobStore()
    jobs.save(plan("split", old_map, new_map, [ACCOUNTS]))
    seen: list[Progress] = []
    await Rebalancer(jobs, maps, backends, batch_rows=40, on_progress=seen.append).run()
    contents = await everything(backends, ("a", "b", "c"))
    assert {r[1][:6] for r in contents["c"]} == {"user:2", "user:3"}
    assert_placed(contents, new_map, {r[0]: r for r in rows})
    assert seen
    assert seen[-1].rows_done == seen[-1].rows_total == 400
    assert all(p.rows_per_s >= 0 for p in seen)
    for backend in backends.values():
        await backend.close()


def test_plans_are_validated() -> None:
    first = ShardMap.create(strategy("jump", ["a"]))
    with pytest.raises(Exception, match="version"):
        plan("x", first, first, [ACCOUNTS])
    bounded = ShardMap.create(strategy("bounded", ["a"]))
    with pytest.raises(Exception, match="strategies"):
        plan("x", bounded, bounded.with_shards(["a", "b"]), [ACCOUNTS])
    jump = ShardMap.create(strategy("jump", ["a"]))
    with pytest.raises(Exception, match="table"):
        plan("x", jump, jump.with_shards(["a", "b"]), [])
