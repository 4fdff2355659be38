"""Every strategy: one interface, str and bytes keys, stable moves when shards change."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phalanx.errors import BadRequest, TooLarge
from phalanx.sharding import STRATEGY_NAMES, ShardMap, Strategy, UnknownShard, strategy
from phalanx.sharding.keys import KEY_BYTES_MAX, hash64, key_bytes
from phalanx.sharding.strategies import (
    BoundedLoadStrategy,
    JumpStrategy,
    RangeStrategy,
    jump_hash,
)

KEYS = [f"user:{i}" for i in range(4000)]


def build(name: str, count: int) -> Strategy:
    if name == "geo":
        shards = [f"{'eu' if i % 2 else 'us'}/{i}" for i in range(count)]
        return strategy(name, shards, default_region="eu")
    if name == "directory":
        return strategy(name, [f"s{i}" for i in range(count)], store="memory:")
    return strategy(name, [f"s{i}" for i in range(count)])


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_answers_str_and_bytes_alike(name: str) -> None:
    built = build(name, 5)
    assert built.name == name
    for key in KEYS[:300]:
        shard = built.shard_for(key)
        assert shard in built.shards
        assert built.shard_for(key.encode()) == shard
        assert built.shard_for(key) == shard  # asking again gives the same answer


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_rejects_other_key_types(name: str) -> None:
    with pytest.raises((TypeError, AttributeError)):
        build(name, 3).shard_for(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [n for n in STRATEGY_NAMES if n not in {"bounded", "directory"}])
def test_the_shard_map_rebuilds_an_equal_strategy(name: str) -> None:
    built = build(name, 7)
    again = ShardMap.from_json(ShardMap.create(built).to_json()).build()
    assert again.shards == built.shards
    assert [again.shard_for(k) for k in KEYS[:500]] == [built.shard_for(k) for k in KEYS[:500]]


def moved(before: Strategy, after: Strategy) -> list[str]:
    return [k for k in KEYS if before.shard_for(k) != after.shard_for(k)]


@pytest.mark.parametrize("name", ["jump", "ring", "rendezvous"])
def test_adding_a_shard_moves_keys_only_to_it_and_about_one_share(name: str) -> None:
    before = build(name, 10)
    after = before.with_shards([*before.shards, "s10"])
    moves = moved(before, after)
    assert all(after.shard_for(k) == "s10" for k in moves)
    # Ideal is 1/11 of the keys; allow sampling noise and ring arc spread.
    assert 0.04 * len(KEYS) < len(moves) < 0.16 * len(KEYS)


@pytest.mark.parametrize("name", ["ring", "rendezvous"])
def test_removing_a_shard_moves_only_its_own_keys(name: str) -> None:
    before = build(name, 10)
    after = before.with_shards([s for s in before.shards if s != "s3"])
    assert moved(before, after) == [k for k in KEYS if before.shard_for(k) == "s3"]


def test_jump_removal_from_the_middle_moves_two_shards_worth() -> None:
    before = JumpStrategy([f"s{i}" for i in range(10)])
    after = before.with_shards([s for s in before.shards if s != "s3"])
    assert after.shards[3] == "s9"
    sources = {before.shard_for(k) for k in moved(before, after)}
    assert sources == {"s3", "s9"}


def test_modulo_hash_moves_most_keys_when_a_shard_is_added() -> None:
    before = build("hash", 10)
    after = before.with_shards([*before.shards, "s10"])
    assert len(moved(before, after)) > 0.8 * len(KEYS)


@pytest.mark.parametrize("name", ["hash", "jump", "ring", "rendezvous", "bounded"])
def test_balanced_strategies_spread_keys(name: str) -> None:
    built = build(name, 8)
    loads = Counter(built.shard_for(k) for k in KEYS)
    assert set(loads) == set(built.shards)
    assert max(loads.values()) < 1.5 * len(KEYS) / 8


def test_jump_hash_matches_the_published_reference_values() -> None:
    # Values from the reference C++ implementation in the paper's appendix.
    assert [jump_hash(k, 1) for k in (0, 1, 2**63)] == [0, 0, 0]
    assert jump_hash(0, 100) == 0  # key 0 never leaves bucket 0
    assert all(0 <= jump_hash(hash64(k), 7) < 7 for k in KEYS[:200])
    with pytest.raises(ValueError):
        jump_hash(1, 0)


def test_keys_over_the_limit_are_refused() -> None:
    with pytest.raises(ValueError):
        key_bytes(b"x" * (KEY_BYTES_MAX + 1))


@pytest.mark.parametrize(
    ("shards", "error"),
    [([], ValueError), (["a", "a"], ValueError), (["a", ""], ValueError), ("ab", TypeError)],
)
def test_shard_lists_are_validated(shards: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        strategy("hash", shards)  # type: ignore[arg-type]


def test_unknown_names_and_options_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown name"):
        strategy("modulo", ["a"])
    with pytest.raises(TypeError):
        strategy("hash", ["a"], vnodes=3)


# -- range ---------------------------------------------------------------------------------


def test_range_bounds_route_by_byte_order() -> None:
    built = RangeStrategy(["a", "b", "c"], bounds=["g", "p"])
    assert [built.shard_for(k) for k in ("alice", "g", "mallory", "p", "zoe")] == [
        "a",
        "b",
        "b",
        "c",
        "c",
    ]
    assert built.range_of("b") == (b"g", b"p")
    assert built.range_of("c") == (b"p", None)


def test_range_split_and_merge_are_inverse() -> None:
    built = RangeStrategy(["a", "b"], bounds=["m"])
    split = built.split("a", "f", "a2")
    assert split.shards == ("a", "a2", "b")
    assert split.shard_for("cat") == "a"
    assert split.shard_for("fox") == "a2"
    merged = split.merge("a", "a2")
    assert merged.shards == built.shards
    assert merged.bounds == built.bounds


def test_range_split_outside_the_range_and_merge_of_non_neighbours_are_refused() -> None:
    built = RangeStrategy(["a", "b", "c"], bounds=["g", "p"])
    with pytest.raises(BadRequest):
        built.split("a", "h", "x")
    with pytest.raises(BadRequest):
        built.merge("a", "c")
    with pytest.raises(UnknownShard):
        built.split("zz", "a", "x")


def test_range_with_shards_splits_the_widest_and_merges_removed_ranges() -> None:
    built = RangeStrategy(["a", "b"])
    grown = built.with_shards(["a", "b", "c"])
    assert isinstance(grown, RangeStrategy)
    assert grown.shards == ("a", "c", "b")  # "c" takes the upper half of "a" (widest, first)
    keys = [bytes([i, j]) for i in range(256) for j in range(0, 256, 16)]
    for key in keys:
        if built.shard_for(key) == "b":
            assert grown.shard_for(key) == "b"  # only "a"'s keys moved
    shrunk = grown.with_shards(["c", "b"])
    assert shrunk.shards == ("c", "b")
    assert all(shrunk.shard_for(k) in {"c", "b"} for k in keys)


@pytest.mark.parametrize("bounds", [["b", "a"], ["a", "a"], ["a"]])
def test_range_bounds_are_validated(bounds: list[str]) -> None:
    with pytest.raises(ValueError):
        RangeStrategy(["x", "y", "z"], bounds=bounds)


@given(st.lists(st.binary(min_size=1, max_size=6), min_size=1, max_size=200))
def test_range_owner_contains_the_key(keys: list[bytes]) -> None:
    built = RangeStrategy([f"s{i}" for i in range(5)])
    for key in keys:
        low, high = built.range_of(built.shard_for(key))
        assert low <= key
        assert high is None or key < high


# -- bounded loads -------------------------------------------------------------------------


def test_bounded_loads_never_exceed_the_capacity() -> None:
    built = BoundedLoadStrategy([f"s{i}" for i in range(10)], load_factor=1.1, vnodes=20)
    for key in KEYS:
        built.shard_for(key)
    assert max(built.loads().values()) <= built.capacity(len(KEYS))
    grown = built.with_shards([*built.shards, "s10"])
    assert isinstance(grown, BoundedLoadStrategy)
    assert max(grown.loads().values()) <= grown.capacity(len(KEYS))
    assert sum(grown.loads().values()) == len(KEYS)


def test_bounded_release_and_keys_max() -> None:
    built = BoundedLoadStrategy(["a", "b"], keys_max=2)
    built.shard_for("k1")
    built.shard_for("k2")
    with pytest.raises(TooLarge):
        built.shard_for("k3")
    assert built.release("k1")
    assert not built.release("k1")
    built.shard_for("k3")


# -- geo -----------------------------------------------------------------------------------


def test_geo_keys_stay_in_their_home_region_with_fallback_and_default() -> None:
    built = strategy("geo", ["eu/1", "eu/2", "us/1"], fallback={"uk": "eu"}, default_region="us")
    assert built.shard_for("eu:anna") in {"eu/1", "eu/2"}
    assert built.shard_for("uk:bob") in {"eu/1", "eu/2"}
    assert built.shard_for("jp:kenji") == "us/1"
    assert built.shard_for("no-region") == "us/1"
    strict = strategy("geo", ["eu/1"])
    with pytest.raises(BadRequest):
        strict.shard_for("us:x")
    with pytest.raises(ValueError):
        strategy("geo", ["nope"])


def test_geo_growing_one_region_leaves_the_others_alone() -> None:
    built = strategy("geo", ["eu/1", "eu/2", "us/1", "us/2"])
    grown = built.with_shards([*built.shards, "eu/3"])
    us_keys = [f"us:{i}" for i in range(500)]
    eu_keys = [f"eu:{i}" for i in range(500)]
    assert all(built.shard_for(k) == grown.shard_for(k) for k in us_keys)
    moves = [k for k in eu_keys if built.shard_for(k) != grown.shard_for(k)]
    assert all(grown.shard_for(k) == "eu/3" for k in moves)
    assert 0 < len(moves) < 0.5 * len(eu_keys)


# -- shard map -----------------------------------------------------------------------------


def test_shard_map_versions_grow_and_locations_follow_shards(tmp_path: Path) -> None:
    first = ShardMap.create(strategy("jump", ["a", "b"]), {"a": "sqlite:a.db", "b": "sqlite:b.db"})
    assert first.version == 1
    second = first.with_shards(["a", "b", "c"], {"c": "sqlite:c.db"})
    assert second.version == 2
    assert second.locations == {"a": "sqlite:a.db", "b": "sqlite:b.db", "c": "sqlite:c.db"}
    third = second.with_shards(["a", "c"])
    assert third.version == 3
    assert "b" not in third.locations
    assert ShardMap.from_json(third.to_json()) == third


@pytest.mark.parametrize(
    "document",
    [b"{", b'{"version": 0, "strategy": "hash", "shards": ["a"]}', b'{"version": 1}'],
)
def test_invalid_shard_map_documents_are_refused(document: bytes) -> None:
    with pytest.raises((BadRequest, ValueError)):
        ShardMap.from_json(document)


def test_a_shard_map_cannot_switch_strategy() -> None:
    first = ShardMap.create(strategy("jump", ["a", "b"]))
    with pytest.raises(BadRequest):
        first.advance(strategy("hash", ["a", "b"]))


@given(st.lists(st.binary(max_size=12), min_size=1, max_size=100), st.integers(1, 40))
def test_the_ring_index_finds_the_same_point_as_a_plain_bisect(
    keys: list[bytes], count: int
) -> None:
    import bisect

    ring = strategy("ring", [f"s{i}" for i in range(count)], vnodes=7)
    placed = sorted((hash64(f"s{i}#{v}"), f"s{i}") for i in range(count) for v in range(7))
    points = [p for p, _ in placed]
    for key in keys:
        index = bisect.bisect_left(points, hash64(key))
        assert ring.shard_for(key) == placed[index % len(placed)][1]


def test_range_move_bound_shifts_keys_between_neighbours_only() -> None:
    built = RangeStrategy(["a", "b", "c"], bounds=["g", "p"])
    shifted = built.move_bound("a", "b", "k")
    assert shifted.range_of("a") == (b"", b"k")
    assert shifted.range_of("b") == (b"k", b"p")
    assert shifted.shard_for("hat") == "a"
    assert shifted.shard_for("zoo") == "c"
    with pytest.raises(BadRequest):
        built.move_bound("a", "b", "q")  # would swallow b's whole range
    with pytest.raises(BadRequest):
        built.move_bound("a", "c", "k")


def test_ring_shares_cover_the_hash_space_and_match_sampled_loads() -> None:
    from phalanx.sharding.strategies import RingStrategy

    ring = RingStrategy([f"s{i}" for i in range(5)], vnodes=20)
    shares = ring.shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    loads = Counter(ring.shard_for(k) for k in KEYS)
    for shard, share in shares.items():
        assert loads[shard] / len(KEYS) == pytest.approx(share, abs=0.03)
