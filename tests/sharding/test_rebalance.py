"""Online rebalancing: rows move while writes continue, every row is checked afterwards, and
a crash at any step resumes to the same end state."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from phalanx.sharding import ShardMap, strategy
from phalanx.sharding.backend import ShardBackend, open_backend
from phalanx.sharding.mapstore import MemoryMapStore
from phalanx.sharding.rebalance import (
    FileJobStore,
    MemoryJobStore,
    NotRebalanceable,
    Progress,
    RebalanceFailed,
    Rebalancer,
    SimulatedCrash,
    TableSpec,
    plan,
)
from phalanx.sharding.router import Router
from phalanx.sharding.strategies import RangeStrategy, Strategy

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
    """Inserts, updates and deletes through a router until told to stop, and then
    ``writes_after`` more (so the writer always crosses the cut-over), keeping ``expected``
    equal to every acknowledged write. New rows go to owners drawn from ``owners``."""

    def __init__(
        self,
        router: Router,
        expected: dict[int, tuple[Any, ...]],
        owners: Sequence[str],
        writes_after: int = 20,
    ) -> None:
        self.router = router
        self.expected = expected
        self.owners = owners
        self.writes_after = writes_after
        self.acknowledged = 0
        self.rng = random.Random(7)

    async def run(self, done: asyncio.Event) -> None:
        next_id = 10_000
        rng, expected = self.rng, self.expected
        after = 0
        while after < self.writes_after:
            if done.is_set():
                after += 1
            choice = rng.random()
            if choice < 0.5:
                owner = rng.choice(self.owners)
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
            # A paced writer (under 1,000 writes/s): an unpaced one on the same event loop
            # can queue changes faster than any catch-up drains them.
            await asyncio.sleep(0.001)


#: Owners of the hash-family moves.
OWNERS: Final = tuple(f"user:{i}" for i in range(200))
#: Zero-padded owners, so that range maps order them as numbers.
PADDED_OWNERS: Final = tuple(f"user:{i:03d}" for i in range(200))


@dataclass(frozen=True)
class Operation:
    """One online operation: the strategy before and after, and the owners its rows use."""

    before: Strategy
    after: Strategy
    owners: Sequence[str]

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.before.shards) | set(self.after.shards))


def operation(name: str) -> Operation:
    if name == "add":
        before = strategy("jump", ["s0", "s1"])
        return Operation(before, before.with_shards(["s0", "s1", "s2"]), OWNERS)
    if name == "remove":
        # The middle shard: jump then also moves keys of the last shard into the freed
        # bucket, so s2 is a source and a target of the same move.
        before = strategy("jump", ["s0", "s1", "s2"])
        return Operation(before, before.with_shards(["s0", "s2"]), OWNERS)
    if name == "split":
        # The hot range [user:000, user:100) splits at user:050; c takes the upper half.
        ranges = RangeStrategy(["a", "b"], bounds=["user:100"])
        return Operation(ranges, ranges.split("a", "user:050", "c"), PADDED_OWNERS)
    if name == "move-range":
        # [user:100, user:150) moves from b to its neighbour c.
        ranges = RangeStrategy(["a", "b", "c"], bounds=["user:050", "user:150"])
        return Operation(ranges, ranges.move_bound("b", "c", "user:100"), PADDED_OWNERS)
    if name == "move-shard":
        # Every row of s1 moves to a new shard s1b (a bigger machine); s1 leaves the map.
        before = strategy("ring", ["s0", "s1", "s2"])
        return Operation(before, strategy("ring", ["s0", "s1b", "s2"]), OWNERS)
    raise ValueError(name)


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("sqlite", "add"),
        ("sqlite", "remove"),
        ("sqlite", "split"),
        ("sqlite", "move-range"),
        ("sqlite", "move-shard"),
        ("postgres", "add"),
        ("postgres", "remove"),
        ("postgres", "split"),
    ],
)
async def test_an_online_move_under_continuous_writes_loses_and_duplicates_nothing(
    kind: str,
    name: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    make_pg = request.getfixturevalue("make_pg_database") if kind == "postgres" else None
    op = operation(name)
    urls = shard_urls(kind, op.shards, tmp_path, make_pg)
    backends = {n: open_backend(n, u) for n, u in urls.items()}
    old_map = ShardMap.create(op.before, {n: urls[n] for n in op.before.shards})
    expected: dict[int, tuple[Any, ...]] = {}
    by_shard: dict[str, list[tuple[Any, ...]]] = {}
    for i in range(600):
        row = (i, op.owners[i % len(op.owners)], 100 + i)
        expected[i] = row
        by_shard.setdefault(op.before.shard_for(row[1]), []).append(row)
    for shard in op.before.shards:
        await backends[shard].run([(ACCOUNTS.ddl, ())])
        await backends[shard].run([(INSERT, row) for row in by_shard.get(shard, [])])
    moving = sum(
        1 for r in expected.values() if op.before.shard_for(r[1]) != op.after.shard_for(r[1])
    )
    assert moving > 0
    maps = MemoryMapStore(old_map)
    new_map = old_map.advance(op.after, {n: urls[n] for n in op.after.shards})
    jobs = MemoryJobStore()
    jobs.save(plan(name, old_map, new_map, [ACCOUNTS]))
    # The writer knows only the old shards: it opens new ones from the map once it names them.
    writer_backends = {n: open_backend(n, urls[n]) for n in op.before.shards}
    writer = Workload(Router(old_map, writer_backends, reload=maps.aload), expected, op.owners)
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
    # Recorded, not asserted (timings are not test outcomes): the run's summary lists it.
    request.node.user_properties.append(("write_fence_ms", state.write_fence_s * 1000))
    request.node.user_properties.append(("writes_during_move", writer.acknowledged))
    assert maps.load() == new_map
    assert writer.router.map_version == new_map.version
    assert state.rows_copied >= moving
    assert state.checksums
    assert_placed(await everything(backends, tuple(op.shards)), new_map, expected)
    # The writer wrote across the cut-over: the fence refused it at least once.
    assert writer.router.statistics().stale_refusals > 0
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
    with pytest.raises(NotRebalanceable, match="remembers each key's placement"):
        plan("x", bounded, bounded.with_shards(["a", "b"]), [ACCOUNTS])
    directory = ShardMap.create(strategy("directory", ["a"], store="memory:"))
    with pytest.raises(NotRebalanceable, match=r"assign\(key, shard\)"):
        plan("x", directory, directory.with_shards(["a", "b"]), [ACCOUNTS])
    ranges = ShardMap.create(strategy("range", ["a", "b"]))
    with pytest.raises(NotRebalanceable, match="strategy changes"):
        plan("x", ranges, ShardMap.create(strategy("jump", ["a", "b"]), version=2), [ACCOUNTS])
    jump = ShardMap.create(strategy("jump", ["a"]))
    with pytest.raises(Exception, match="table"):
        plan("x", jump, jump.with_shards(["a", "b"]), [])


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_the_rebalancers_own_writes_stay_out_of_the_change_queues(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Removing the middle jump shard: s1's rows go to s2, which is also a source. Copying
    # them must not queue hundreds of changes on s2 that the catch-up would have to wade
    # through before it reaches the writers' changes.
    make_pg = request.getfixturevalue("make_pg_database") if kind == "postgres" else None
    op = operation("remove")
    urls = shard_urls(kind, op.shards, tmp_path, make_pg)
    backends = {n: open_backend(n, u) for n, u in urls.items()}
    old_map = ShardMap.create(op.before, urls)
    for shard in op.before.shards:
        await backends[shard].run([(ACCOUNTS.ddl, ())])
    rows = [(i, OWNERS[i % len(OWNERS)], i) for i in range(300)]
    for shard in op.before.shards:
        mine = [r for r in rows if op.before.shard_for(r[1]) == shard]
        await backends[shard].run([(INSERT, r) for r in mine])
    new_map = old_map.advance(op.after)
    jobs = MemoryJobStore()
    jobs.save(plan("remove", old_map, new_map, [ACCOUNTS]))
    maps = MemoryMapStore(old_map)
    with pytest.raises(SimulatedCrash):
        await Rebalancer(jobs, maps, backends, batch_rows=50, crash_points=["copy"]).run()
    state = jobs.load()
    assert state is not None
    assert state.rows_copied > 0
    copied_to_s2 = await backends["s2"].fetch("SELECT COUNT(*) FROM accounts", ())
    assert copied_to_s2[0][0] > sum(1 for r in rows if op.before.shard_for(r[1]) == "s2")
    for shard in op.before.shards:
        queued = await backends[shard].fetch("SELECT COUNT(*) FROM phalanx_changes", ())
        assert queued[0][0] == 0, f"{shard} queued the rebalancer's own writes"
    # A writer's change on s2 is still captured.
    on_s2 = next(r for r in rows if op.before.shard_for(r[1]) == "s2")
    await backends["s2"].run([("UPDATE accounts SET balance = 0 WHERE id = ?", (on_s2[0],))])
    queued = await backends["s2"].fetch("SELECT COUNT(*) FROM phalanx_changes", ())
    assert queued[0][0] == 2  # the row before and after
    await Rebalancer(jobs, maps, backends, batch_rows=50).run()
    assert maps.load() == new_map
    for backend in backends.values():
        await backend.close()
