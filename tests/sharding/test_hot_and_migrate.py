"""Hot-shard detection and schema migrations across shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from phalanx.clock import ManualClock
from phalanx.errors import BadRequest
from phalanx.sharding import SchemaVersionUnsupported, ShardMap, strategy
from phalanx.sharding.backend import open_backend
from phalanx.sharding.hot import LoadTracker, propose_splits
from phalanx.sharding.migrate import Migration, Migrator, load_migrations
from phalanx.sharding.router import Router
from phalanx.sharding.strategies import RangeStrategy


def test_the_tracker_forgets_load_older_than_its_window() -> None:
    clock = ManualClock()
    tracker = LoadTracker(window_s=10.0, buckets=10, clock=clock)
    tracker.record("a", 50)
    clock.advance(5.0)
    tracker.record("b", 20)
    assert tracker.rates() == {"a": 5.0, "b": 2.0}
    clock.advance(6.0)  # "a"'s slice is now out of the window
    assert tracker.rates() == {"b": 2.0}


def test_a_hot_range_is_split_at_the_median_of_its_sampled_keys() -> None:
    ranges = RangeStrategy(["a", "b", "c"], bounds=["g", "p"])
    rates = {"a": 10.0, "b": 100.0, "c": 10.0}
    samples = {"b": ["h1", "i2", "k3", "m4", "n5"]}
    (proposal,) = propose_splits(ranges, rates, samples=samples)
    assert proposal.shard == "b"
    assert proposal.action == "split"
    assert proposal.split_at == b"k3"
    assert propose_splits(ranges, {"a": 10.0, "b": 15.0, "c": 10.0}) == []
    (no_sample,) = propose_splits(ranges, rates)
    assert no_sample.split_at is not None
    assert b"g" < no_sample.split_at < b"p"


def test_hash_shards_get_more_shards_unless_one_key_is_the_load() -> None:
    jump = strategy("jump", ["a", "b", "c", "d"])
    rates = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 20.0}
    assert propose_splits(jump, rates)[0].action == "add-shard"
    hot = propose_splits(jump, rates, samples={"d": ["k"] * 8 + ["x", "y"]})[0]
    assert hot.action == "hot-key"
    assert hot.hot_key == b"k"


async def test_the_router_feeds_the_tracker(tmp_path: Path) -> None:
    clock = ManualClock()
    tracker = LoadTracker(window_s=1.0, clock=clock)
    urls = {n: f"sqlite:{tmp_path / f'{n}.db'}" for n in ("a", "b")}
    router = Router(
        ShardMap.create(strategy("jump", ["a", "b"]), urls),
        {n: open_backend(n, u) for n, u in urls.items()},
        load_tracker=tracker,
    )
    for _ in range(5):
        await router.fetch("k", "SELECT 1")
    assert tracker.rates() == {router.shard_for("k"): 5.0}
    await router.close()


MIGRATIONS = [
    Migration(1, "accounts", ("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)",)),
    Migration(2, "balance", ("ALTER TABLE accounts ADD COLUMN balance INTEGER DEFAULT 0",)),
    Migration(3, "index", ("CREATE INDEX accounts_owner ON accounts (owner)",)),
]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_migrations_reach_every_shard_and_resume_after_a_failure(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        urls = {n: f"sqlite:{tmp_path / f'{n}.db'}" for n in ("a", "b", "c")}
    else:
        make = request.getfixturevalue("make_pg_database")
        urls = {n: f"postgres:{make()}" for n in ("a", "b", "c")}
    backends = {n: open_backend(n, u) for n, u in urls.items()}
    # Shard "b" already has a conflicting index: migration 3 fails there.
    await backends["b"].run([("CREATE TABLE accounts_owner (x INTEGER)", ())])
    applied: list[tuple[str, int]] = []
    migrator = Migrator(backends, MIGRATIONS)
    report = await migrator.migrate(on_applied=lambda shard, m: applied.append((shard, m.version)))
    assert not report.ok
    assert report.after == {"a": 3, "b": 2, "c": 3}
    assert "migration 3" in report.errors["b"]
    assert ("b", 3) not in applied
    router = Router(
        ShardMap.create(strategy("jump", ["a", "b", "c"]), urls), backends, schema_versions=(3, 3)
    )
    key_on_b = next(k for k in (f"k{i}" for i in range(100)) if router.shard_for(k) == "b")
    with pytest.raises(SchemaVersionUnsupported):
        await router.fetch(key_on_b, "SELECT COUNT(*) FROM accounts")
    await backends["b"].run([("DROP TABLE accounts_owner", ())])
    again = await migrator.migrate()
    assert again.ok
    assert again.before == {"a": 3, "b": 2, "c": 3}
    assert await migrator.versions() == {"a": 3, "b": 3, "c": 3}
    assert await router.fetch(key_on_b, "SELECT COUNT(*) FROM accounts") == [(0,)]
    await router.close()


def test_migration_files_are_read_in_order_and_gaps_refused(tmp_path: Path) -> None:
    (tmp_path / "2_more.sql").write_text(
        "CREATE TABLE b (x INTEGER);\nCREATE TABLE c (y INTEGER);\n"
    )
    (tmp_path / "1_first.sql").write_text("CREATE TABLE a (x INTEGER);\n")
    loaded = load_migrations(tmp_path)
    assert [(m.version, m.name, len(m.statements)) for m in loaded] == [
        (1, "first", 1),
        (2, "more", 2),
    ]
    with pytest.raises(BadRequest):
        Migrator({}, [loaded[1]])
    (tmp_path / "notes.sql").write_text("")
    with pytest.raises(BadRequest):
        load_migrations(tmp_path)
