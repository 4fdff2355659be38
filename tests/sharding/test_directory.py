"""Directory sharding: the store, the client cache, outages and stale entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from phalanx.sharding import DirectoryUnavailable, strategy
from phalanx.sharding.directory_store import (
    DirectoryStore,
    MemoryDirectoryStore,
    SqliteDirectoryStore,
    open_directory_store,
)
from phalanx.sharding.strategies import DirectoryStrategy


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory:"
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'directory.db'}"
    return f"postgres:{request.getfixturevalue('pg_dsn')}"


def test_store_contract(store_url: str) -> None:
    store: DirectoryStore = open_directory_store(store_url)
    try:
        assert store.lookup(b"k") == (0, None)
        assert store.assign(b"k", "a", only_if_absent=True) == "a"
        assert store.assign(b"k", "b", only_if_absent=True) == "a"  # first writer wins
        assert store.assign(b"k", "b") == "b"
        assert store.assign(b"j", "c") == "c"
        version, shard = store.lookup(b"k")
        assert shard == "b"
        changes = store.changes(0)
        assert [(key, shard) for _, key, shard in changes] == [(b"k", "b"), (b"j", "c")]
        assert changes[-1][0] == version
        assert store.changes(version) == []
        store.assign(b"j", None)
        assert store.lookup(b"j")[1] is None
        assert store.changes(version)[0][1:] == (b"j", None)  # the tombstone reaches caches
    finally:
        store.close()


def test_two_clients_share_assignments_through_the_store(store_url: str) -> None:
    if store_url == "memory:":
        shared: DirectoryStore = MemoryDirectoryStore()
        one = DirectoryStrategy(["a", "b", "c"], store=shared)
        two = DirectoryStrategy(["a", "b", "c"], store=shared)
    else:
        one = DirectoryStrategy(["a", "b", "c"], store=store_url)
        two = DirectoryStrategy(["a", "b", "c"], store=store_url)
    try:
        placed = {k: one.shard_for(k) for k in (f"user:{i}" for i in range(50))}
        assert {k: two.shard_for(k) for k in placed} == placed
        one.assign("user:1", "c" if placed["user:1"] != "c" else "a")
        moved_to = one.shard_for("user:1")
        assert two.shard_for("user:1") == placed["user:1"]  # two's cache is stale...
        assert two.refresh() >= 1
        assert two.shard_for("user:1") == moved_to  # ...until it refreshes
    finally:
        one.store.close()
        two.store.close()


def test_an_outage_keeps_cached_keys_routing_and_fails_the_rest_clearly() -> None:
    store = MemoryDirectoryStore()
    client = DirectoryStrategy(["a", "b"], store=store)
    cached = {k: client.shard_for(k) for k in ("x", "y")}
    store.fail = True
    assert {k: client.shard_for(k) for k in cached} == cached
    with pytest.raises(DirectoryUnavailable):
        client.shard_for("never-seen")
    with pytest.raises(DirectoryUnavailable):
        client.refresh()
    store.fail = False
    assert client.shard_for("never-seen") in {"a", "b"}


def test_a_sqlite_outage_is_a_typed_error(tmp_path: Path) -> None:
    store = SqliteDirectoryStore(str(tmp_path / "d.db"))
    client = DirectoryStrategy(["a"], store=store)
    assert client.shard_for("k") == "a"
    store.close()  # every call now fails inside sqlite3
    assert client.shard_for("k") == "a"
    with pytest.raises(DirectoryUnavailable):
        client.shard_for("other")


def test_the_cache_is_bounded_and_counts_hits() -> None:
    client = DirectoryStrategy(["a", "b"], store=MemoryDirectoryStore(), cache_keys_max=10)
    for i in range(30):
        client.shard_for(f"k{i}")
    client.shard_for("k29")
    assert len(client.cache.entries) == 10
    assert client.cache.hits == 1
    assert client.cache.misses == 30


def test_with_shards_shares_the_store_and_places_new_keys_on_new_shards() -> None:
    client = strategy("directory", ["a", "b"], store="memory:")
    assert isinstance(client, DirectoryStrategy)
    old = {f"k{i}": client.shard_for(f"k{i}") for i in range(100)}
    grown = client.with_shards(["a", "b", "c"])
    assert {k: grown.shard_for(k) for k in old} == old  # assignments are sticky
    fresh = {grown.shard_for(f"new{i}") for i in range(100)}
    assert "c" in fresh
    shrunk = grown.with_shards(["a", "c"])
    assert all(shrunk.shard_for(k) in {"a", "c"} for k in old)
    assert client.options()["store"] == "memory:"


async def test_a_moved_key_is_found_after_the_fence_sends_the_router_to_refresh(
    tmp_path: Path,
) -> None:
    from phalanx.sharding import ShardMap
    from phalanx.sharding.backend import open_backend
    from phalanx.sharding.mapstore import MemoryMapStore
    from phalanx.sharding.router import Router

    urls = {n: f"sqlite:{tmp_path / f'{n}.db'}" for n in ("a", "b")}
    backends = {n: open_backend(n, u) for n, u in urls.items()}
    for backend in backends.values():
        await backend.run([("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)", ())])
    directory = DirectoryStrategy(["a", "b"], store=f"sqlite:{tmp_path / 'dir.db'}")
    v1 = ShardMap.create(directory, urls)
    maps = MemoryMapStore(v1)
    router = Router(v1, backends, reload=maps.aload)
    source = router.shard_for("tenant:1")
    target = "b" if source == "a" else "a"
    await router.execute("tenant:1", "INSERT INTO t VALUES (?, ?)", ("tenant:1", 1))
    # The mover: copy the row, reassign the key, publish the next map version, fence the source.
    await backends[target].run([("INSERT INTO t VALUES (?, ?)", ("tenant:1", 1))])
    mover = DirectoryStrategy(["a", "b"], store=f"sqlite:{tmp_path / 'dir.db'}")
    mover.assign("tenant:1", target)
    maps.publish(ShardMap.create(directory, urls, version=2))
    await backends[source].set_meta("fence_version", 2)
    await backends[source].run([("DELETE FROM t WHERE k = ?", ("tenant:1",))])
    # The router's cache still says "source": the fence refuses it, it reloads and refreshes.
    assert await router.fetch("tenant:1", "SELECT v FROM t WHERE k = ?", ("tenant:1",)) == [(1,)]
    assert router.shard_for("tenant:1") == target
    assert router.map_version == 2
    mover.store.close()
    directory.store.close()
    await router.close()
