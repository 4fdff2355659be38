"""The pure parts of scatter-gather: per-shard SQL, the k-way merge, partial aggregates."""

from __future__ import annotations

import statistics
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phalanx.errors import BadRequest, TooLarge
from phalanx.sharding.query import (
    ROWS_PER_SHARD_MAX,
    Aggregate,
    AggregateMerger,
    Select,
    merge_sorted,
    sort_key,
)


async def batches(
    rows: list[tuple[Any, ...]], size: int
) -> AsyncGenerator[list[tuple[Any, ...]], None]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


async def merged(
    shards: list[list[tuple[Any, ...]]], query: Select, size: int
) -> list[tuple[Any, ...]]:
    positions = query.sort_positions()
    streams = [
        batches(
            sorted(rows, key=lambda r: sort_key(r, positions))[
                : None if query.limit is None else query.limit + query.offset
            ],
            size,
        )
        for rows in shards
    ]
    return [
        r async for r in merge_sorted(streams, positions, limit=query.limit, offset=query.offset)
    ]


rows_strategy = st.lists(
    st.tuples(st.integers(0, 50), st.one_of(st.none(), st.integers(-5, 5))), max_size=30
)


@given(
    shards=st.lists(rows_strategy, min_size=1, max_size=4),
    descending=st.booleans(),
    limit=st.one_of(st.none(), st.integers(0, 20)),
    offset=st.integers(0, 10),
    size=st.integers(1, 5),
)
async def test_merge_equals_sorting_everything(
    shards: list[list[tuple[Any, ...]]], descending: bool, limit: int | None, offset: int, size: int
) -> None:
    # Number the rows so every row is distinct and ties are broken the same way everywhere.
    numbered = [
        [(v, n, f"{i}-{j}") for j, (n, v) in enumerate(rows)] for i, rows in enumerate(shards)
    ]
    query = Select(
        "t",
        ("v", "n", "id"),
        order_by=(("v", "desc" if descending else "asc"), ("id", "asc")),
        limit=limit,
        offset=offset,
    )
    everything = sorted(
        (r for rows in numbered for r in rows), key=lambda r: sort_key(r, query.sort_positions())
    )
    expected = everything[offset:][: None if limit is None else limit]
    assert await merged(numbered, query, size) == expected


def test_nulls_sort_first_ascending_and_last_descending() -> None:
    rows = [(None,), (2,), (1,)]
    assert sorted(rows, key=lambda r: sort_key(r, [(0, False)])) == [(None,), (1,), (2,)]
    assert sorted(rows, key=lambda r: sort_key(r, [(0, True)])) == [(2,), (1,), (None,)]


def test_select_sql_pushes_order_and_the_whole_page_to_each_shard() -> None:
    query = Select(
        "orders", ("id", "total"), "total > ?", (5,), (("total", "desc"),), limit=10, offset=20
    )
    assert query.shard_sql() == (
        "SELECT id, total FROM orders WHERE total > ? ORDER BY total DESC NULLS LAST LIMIT 30"
    )


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"table": "x; drop table y"}, BadRequest),
        ({"columns": ("a b",)}, BadRequest),
        ({"order_by": (("missing", "asc"),)}, BadRequest),
        ({"order_by": (("id", "sideways"),)}, BadRequest),
        ({"offset": 3}, BadRequest),
        ({"limit": -1}, BadRequest),
        ({"limit": ROWS_PER_SHARD_MAX, "offset": 1, "order_by": (("id", "asc"),)}, TooLarge),
    ],
)
def test_bad_selects_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    base: dict[str, Any] = {"table": "t", "columns": ("id",)}
    base.update(kwargs)
    with pytest.raises(error):
        Select(**base)


@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from("abc"), st.one_of(st.none(), st.integers(-100, 100))),
            max_size=20,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_partial_aggregates_combine_to_the_global_answer(
    shards: list[list[tuple[str, int | None]]],
) -> None:
    query = Aggregate(
        "t",
        (("count", "*"), ("count", "v"), ("sum", "v"), ("min", "v"), ("max", "v"), ("avg", "v")),
        group_by=("g",),
    )
    merger = AggregateMerger(query)
    for rows in shards:
        groups: dict[str, list[int | None]] = {}
        for g, v in rows:
            groups.setdefault(g, []).append(v)
        partial = []
        for g, values in groups.items():
            present = [v for v in values if v is not None]
            partial.append(
                (
                    g,
                    len(values),
                    len(present),
                    sum(present) if present else None,
                    min(present) if present else None,
                    max(present) if present else None,
                    sum(present) if present else None,
                    len(present),
                )
            )
        merger.add(partial)
    expected = []
    everything: dict[str, list[int | None]] = {}
    for rows in shards:
        for g, v in rows:
            everything.setdefault(g, []).append(v)
    for g in sorted(everything):
        values = everything[g]
        present = [v for v in values if v is not None]
        expected.append(
            (
                g,
                len(values),
                len(present),
                sum(present) if present else None,
                min(present) if present else None,
                max(present) if present else None,
                statistics.fmean(present) if present else None,
            )
        )
    assert _close(merger.rows(), expected)


def _close(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> bool:
    if len(got) != len(want):
        return False
    for a, b in zip(got, want, strict=True):
        if a[:-1] != b[:-1]:
            return False
        if (a[-1] is None) != (b[-1] is None) or (a[-1] is not None and abs(a[-1] - b[-1]) > 1e-9):
            return False
    return True


def test_aggregate_sql_sends_avg_as_sum_and_count() -> None:
    query = Aggregate("orders", (("avg", "total"), ("count", "*")), group_by=("region",))
    assert query.shard_sql() == (
        "SELECT region, SUM(total), COUNT(total), COUNT(*) FROM orders GROUP BY region"
    )


def test_groups_max_is_enforced() -> None:
    merger = AggregateMerger(Aggregate("t", (("count", "*"),), group_by=("g",), groups_max=2))
    merger.add([("a", 1), ("b", 1)])
    with pytest.raises(TooLarge):
        merger.add([("c", 1)])


def test_bad_aggregates_are_refused() -> None:
    with pytest.raises(BadRequest):
        Aggregate("t", (("median", "v"),))
    with pytest.raises(BadRequest):
        Aggregate("t", (("sum", "*"),))
    with pytest.raises(BadRequest):
        Aggregate("t", ())
