"""Cross-shard writes through phalanx.txn two-phase commit: all shards or none."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from phalanx.sharding import CrossShardWrite, ShardMap, StaleShardMap, strategy
from phalanx.sharding.backend import open_backend
from phalanx.sharding.crossshard import TwoPhaseCommitWriter
from phalanx.sharding.router import Router
from phalanx.txn.twopc import Coordinator, MemoryDecisionLog, SqliteParticipant

CREATE = "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER)"
INSERT = "INSERT INTO accounts VALUES (?, ?, ?)"


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Router, dict[str, str]]]:
    paths = {n: str(tmp_path / f"{n}.db") for n in ("s0", "s1")}
    backends = {n: open_backend(n, f"sqlite:{p}") for n, p in paths.items()}
    for backend in backends.values():
        await backend.run([(CREATE, ())])
    participants = [SqliteParticipant(n, p) for n, p in paths.items()]
    coordinator = Coordinator("router", MemoryDecisionLog(), participants)
    shard_map = ShardMap.create(strategy("jump", ["s0", "s1"]))
    router = Router(shard_map, backends, cross_shard=TwoPhaseCommitWriter(coordinator))
    # Two keys on different shards.
    keys = {}
    for i in range(100):
        keys.setdefault(router.shard_for(f"user:{i}"), f"user:{i}")
    yield router, keys
    await router.close()
    coordinator.close()
    for participant in participants:
        participant.close()


async def balances(router: Router) -> list[tuple[int, int]]:
    result = await router.scatter("SELECT id, balance FROM accounts ORDER BY id")
    return sorted(result.rows)


async def test_a_transfer_across_shards_commits_on_both(
    setup: tuple[Router, dict[str, str]],
) -> None:
    router, keys = setup
    counts = await router.write(
        [(keys["s0"], INSERT, (1, keys["s0"], 90)), (keys["s1"], INSERT, (2, keys["s1"], 110))]
    )
    assert counts == [1, 1]
    assert await balances(router) == [(1, 90), (2, 110)]


async def test_a_failing_statement_on_one_shard_applies_nothing_anywhere(
    setup: tuple[Router, dict[str, str]],
) -> None:
    router, keys = setup
    await router.execute(keys["s1"], INSERT, (2, keys["s1"], 0))
    with pytest.raises(sqlite3.IntegrityError):
        await router.write(
            [(keys["s0"], INSERT, (1, keys["s0"], 5)), (keys["s1"], INSERT, (2, keys["s1"], 5))]
        )
    assert await balances(router) == [(2, 0)]


async def test_a_fenced_shard_refuses_its_branch(setup: tuple[Router, dict[str, str]]) -> None:
    router, keys = setup
    await router.backend("s1").set_meta("fence_version", 5)
    with pytest.raises(StaleShardMap):
        await router.write(
            [(keys["s0"], INSERT, (1, keys["s0"], 5)), (keys["s1"], INSERT, (2, keys["s1"], 5))]
        )
    assert await router.backend("s0").fetch("SELECT COUNT(*) FROM accounts", ()) == [(0,)]


async def test_without_a_writer_cross_shard_writes_are_refused(
    setup: tuple[Router, dict[str, str]],
) -> None:
    router, keys = setup
    bare = Router(router.shard_map, {s: router.backend(s) for s in ("s0", "s1")})
    with pytest.raises(CrossShardWrite, match="cross_shard"):
        await bare.write(
            [(keys["s0"], INSERT, (1, keys["s0"], 5)), (keys["s1"], INSERT, (2, keys["s1"], 5))]
        )
