"""The router on real databases: SQLite files and PostgreSQL databases, three shards each."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from phalanx.errors import Timeout
from phalanx.sharding import (
    CrossShardWrite,
    SchemaVersionUnsupported,
    ShardMap,
    ShardUnavailable,
    StaleShardMap,
    strategy,
)
from phalanx.sharding.backend import ShardBackend
from phalanx.sharding.query import Aggregate, Select
from phalanx.sharding.router import Router
from sharding.shardtest import FlakyBackend, locations, open_all

SHARDS = ("s0", "s1", "s2")
CREATE = (
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, "
    "region TEXT NOT NULL, total INTEGER)"
)
ORDERS = [
    (i, f"user:{i % 17}", ("eu", "us", "ap")[i % 3], None if i % 11 == 0 else (i * 37) % 101)
    for i in range(1, 121)
]


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def urls(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    make_pg = request.getfixturevalue("make_pg_database") if kind == "postgres" else None
    return locations(kind, SHARDS, tmp_path, make_pg)


async def make_router(
    urls: dict[str, str], wrap: Callable[[ShardBackend], ShardBackend] = lambda b: b, **options: Any
) -> Router:
    shard_map = ShardMap.create(strategy("jump", SHARDS), urls)
    backends = {name: wrap(b) for name, b in open_all(urls).items()}
    router = Router(shard_map, backends, **options)
    for backend in backends.values():
        await backend.run([(CREATE, ())])
    users = sorted({o[1] for o in ORDERS})
    for user in users:  # one local transaction per user: all of a user's rows share a shard
        await router.write(
            [(user, "INSERT INTO orders VALUES (?, ?, ?, ?)", o) for o in ORDERS if o[1] == user]
        )
    return router


@pytest.fixture
async def router(urls: dict[str, str]) -> AsyncIterator[Router]:
    built = await make_router(urls, batch_rows=7)
    yield built
    await built.close()


async def test_rows_land_on_their_key_shard_and_single_shard_reads_find_them(
    router: Router,
) -> None:
    for shard in SHARDS:
        rows = await router.backend(shard).fetch("SELECT user_id FROM orders", ())
        assert {router.shard_for(user) for (user,) in rows} == {shard}
    found = await router.fetch(
        "user:3", "SELECT id FROM orders WHERE user_id = ? ORDER BY id", ("user:3",)
    )
    assert [i for (i,) in found] == [o[0] for o in ORDERS if o[1] == "user:3"]


def reference_sort(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    # total DESC NULLS LAST, then id ASC
    return sorted(rows, key=lambda r: (r[3] is None, -(r[3] or 0), r[0]))


async def test_global_order_by_limit_offset(router: Router) -> None:
    query = Select(
        "orders",
        ("id", "user_id", "region", "total"),
        order_by=(("total", "desc"), ("id", "asc")),
        limit=15,
        offset=10,
    )
    result = await router.select(query)
    assert not result.partial
    assert result.rows == reference_sort(ORDERS)[10:25]


async def test_streaming_select_reads_every_row_in_order(router: Router) -> None:
    query = Select(
        "orders", ("id", "user_id", "region", "total"), "region = ?", ("eu",), (("id", "asc"),)
    )
    streamed = [row async for row in router.iter_select(query)]
    assert streamed == [o for o in ORDERS if o[2] == "eu"]


async def test_aggregates_with_and_without_group_by(router: Router) -> None:
    grouped = await router.aggregate(
        Aggregate(
            "orders",
            (
                ("count", "*"),
                ("sum", "total"),
                ("min", "total"),
                ("max", "total"),
                ("avg", "total"),
            ),
            group_by=("region",),
        )
    )
    expected = []
    for region in sorted({o[2] for o in ORDERS}):
        totals = [o[3] for o in ORDERS if o[2] == region and o[3] is not None]
        count = sum(1 for o in ORDERS if o[2] == region)
        expected.append(
            (region, count, sum(totals), min(totals), max(totals), statistics.fmean(totals))
        )
    assert [r[:-1] for r in grouped.rows] == [e[:-1] for e in expected]
    assert [float(r[-1]) for r in grouped.rows] == pytest.approx([e[-1] for e in expected])
    whole = await router.aggregate(
        Aggregate("orders", (("count", "*"),), where="total > ?", params=(50,))
    )
    assert whole.rows == [(sum(1 for o in ORDERS if o[3] is not None and o[3] > 50),)]


async def test_a_failing_shard_fails_the_query_or_flags_it_partial(urls: dict[str, str]) -> None:
    flaky: dict[str, FlakyBackend] = {}

    def wrap(backend: ShardBackend) -> ShardBackend:
        flaky[backend.name] = FlakyBackend(backend)
        return flaky[backend.name]

    strict = await make_router(urls, wrap)
    try:
        flaky["s1"].fail = True
        query = Select("orders", ("id",), order_by=(("id", "asc"),))
        with pytest.raises(ShardUnavailable) as caught:
            await strict.select(query)
        assert caught.value.shard == "s1"
        with pytest.raises(ShardUnavailable):
            await strict.aggregate(Aggregate("orders", (("count", "*"),)))
        lenient = Router(strict.shard_map, flaky, policy="partial")
        result = await lenient.select(query)
        assert result.partial
        assert set(result.failed) == {"s1"}
        alive = sorted(o[0] for o in ORDERS if strict.shard_for(o[1]) != "s1")
        assert [i for (i,) in result.rows] == alive
        counted = await lenient.aggregate(Aggregate("orders", (("count", "*"),)))
        assert counted.partial
        assert counted.rows == [(len(alive),)]
        assert strict.statistics().failures["s1"] >= 2
    finally:
        await strict.close()


async def test_a_hanging_shard_times_out_and_its_bulkhead_fills(urls: dict[str, str]) -> None:
    flaky: dict[str, FlakyBackend] = {}

    def wrap(backend: ShardBackend) -> ShardBackend:
        flaky[backend.name] = FlakyBackend(backend)
        return flaky[backend.name]

    router = await make_router(urls, wrap)
    try:
        impatient = Router(router.shard_map, flaky, timeout_s=0.05)
        flaky["s0"].hang = True
        key = next(o[1] for o in ORDERS if router.shard_for(o[1]) == "s0")
        with pytest.raises(ShardUnavailable):  # a read that times out is simply unavailable
            await impatient.fetch(key, "SELECT 1", ())
        with pytest.raises(Timeout):  # a write that times out may have happened
            await impatient.execute(key, "UPDATE orders SET total = 0 WHERE id = -1")
        # One call holding the only slot: the next is refused at once.
        router_long = Router(
            router.shard_map, flaky, timeout_s=5.0, concurrent_per_shard=1, queue_per_shard=0
        )
        holder = asyncio.create_task(router_long.fetch(key, "SELECT 1", ()))
        await asyncio.sleep(0.01)
        with pytest.raises(ShardUnavailable, match="full"):
            await router_long.fetch(key, "SELECT 1", ())
        flaky["s0"].gate.set()
        assert await holder == [(1,)]
    finally:
        flaky["s0"].gate.set()
        await router.close()


async def test_a_stale_map_is_refused_and_a_reload_recovers(urls: dict[str, str]) -> None:
    router = await make_router(urls)
    try:
        newer = ShardMap.create(router.strategy, urls, version=2)
        for shard in SHARDS:
            await router.backend(shard).set_meta("fence_version", 2)
        with pytest.raises(StaleShardMap):
            await router.fetch("user:1", "SELECT 1", ())

        async def reload() -> ShardMap:
            return newer

        healed = Router(router.shard_map, {s: router.backend(s) for s in SHARDS}, reload=reload)
        assert await healed.fetch("user:1", "SELECT 1", ()) == [(1,)]
        assert healed.map_version == 2
        assert healed.statistics().stale_refusals == 1
    finally:
        await router.close()


async def test_shards_on_an_unsupported_schema_version_are_refused(urls: dict[str, str]) -> None:
    router = await make_router(urls, schema_versions=(0, 0))
    try:
        await router.backend("s2").set_meta("schema_version", 3)
        key = next(o[1] for o in ORDERS if router.shard_for(o[1]) == "s2")
        with pytest.raises(SchemaVersionUnsupported):
            await router.fetch(key, "SELECT 1", ())
        with pytest.raises(SchemaVersionUnsupported):
            await router.aggregate(Aggregate("orders", (("count", "*"),)))
    finally:
        await router.close()


async def test_cross_shard_writes_are_refused_and_one_shard_writes_are_atomic(
    router: Router,
) -> None:
    by_shard: dict[str, str] = {}
    for _, user, _, _ in ORDERS:
        by_shard.setdefault(router.shard_for(user), user)
    a, b = by_shard["s0"], by_shard["s1"]
    with pytest.raises(CrossShardWrite, match=r"phalanx\.txn"):
        await router.write(
            [
                (a, "INSERT INTO orders VALUES (?, ?, ?, ?)", (1000, a, "eu", 1)),
                (b, "INSERT INTO orders VALUES (?, ?, ?, ?)", (1001, b, "eu", 1)),
            ]
        )
    assert router.statistics().cross_shard_refusals == 1
    # The duplicate id fails the whole local transaction.
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):
        await router.write(
            [
                (a, "INSERT INTO orders VALUES (?, ?, ?, ?)", (1002, a, "eu", 1)),
                (a, "INSERT INTO orders VALUES (?, ?, ?, ?)", (1002, a, "eu", 1)),
            ]
        )
    assert await router.fetch(a, "SELECT id FROM orders WHERE id = ?", (1002,)) == []
    assert await router.write(
        [(a, "INSERT INTO orders VALUES (?, ?, ?, ?)", (1003, a, "eu", 1))]
    ) == [1]


async def test_a_shard_failing_mid_stream_is_dropped_and_flagged(urls: dict[str, str]) -> None:
    flaky: dict[str, FlakyBackend] = {}

    def wrap(backend: ShardBackend) -> ShardBackend:
        flaky[backend.name] = FlakyBackend(backend)
        return flaky[backend.name]

    router = await make_router(urls, wrap, policy="partial", batch_rows=5)
    try:
        flaky["s2"].fail_after_batches = 1
        query = Select("orders", ("id",), order_by=(("id", "asc"),))
        result = await router.select(query)
        assert result.partial
        assert set(result.failed) == {"s2"}
        on_s2 = sorted(o[0] for o in ORDERS if router.shard_for(o[1]) == "s2")
        others = sorted(o[0] for o in ORDERS if router.shard_for(o[1]) != "s2")
        got = [i for (i,) in result.rows]
        assert set(others) <= set(got)  # every healthy shard's rows
        assert set(got) - set(others) == set(on_s2[:5])  # and s2's first batch only
        assert got == sorted(got)
        strict = Router(router.shard_map, flaky, batch_rows=5)
        with pytest.raises(ShardUnavailable):
            await strict.select(query)
    finally:
        await router.close()


async def test_a_fenced_shard_without_a_newer_map_delays_the_call_within_its_bound(
    tmp_path: Path,
) -> None:
    from phalanx.clock import ManualClock

    urls = locations("sqlite", SHARDS, tmp_path, None)
    shard_map = ShardMap.create(strategy("jump", SHARDS), urls)
    clock = ManualClock()

    async def reload() -> ShardMap:
        return shard_map  # the cut-over has not published its map yet

    router = Router(shard_map, open_all(urls), reload=reload, stale_wait_s=0.1, clock=clock)
    try:
        for shard in SHARDS:
            await router.backend(shard).set_meta("fence_version", 2)
        with pytest.raises(StaleShardMap):
            await router.fetch("user:1", "SELECT 1")
        # Pauses double from 2 ms up to the bound, on the injected clock: no real waiting.
        assert clock.sleeps_s[:4] == [0.002, 0.004, 0.008, 0.016]
        assert sum(clock.sleeps_s) >= 0.1
        assert sum(clock.sleeps_s[:-1]) < 0.1
    finally:
        await router.close()


async def test_open_streams_per_shard_are_bounded(urls: dict[str, str]) -> None:
    router = await make_router(urls, batch_rows=2, streams_per_shard=1, queue_per_shard=0)
    try:
        query = Select("orders", ("id",), order_by=(("id", "asc"),))
        holding = router.iter_select(query)
        assert await anext(holding) == (1,)  # every shard's stream is now open
        with pytest.raises(ShardUnavailable, match="full"):
            await router.select(query)
        await holding.aclose()
        assert len((await router.select(query)).rows) == len(ORDERS)  # the slots came back
    finally:
        await router.close()
