"""Cross-shard queries as data, the SQL each shard runs, and how the answers combine.

Pure: no I/O. The router (:mod:`phalanx.sharding.router`) sends the per-shard SQL built here
and feeds the answers back.

* :class:`Select`: rows with an optional global ``ORDER BY`` and ``LIMIT``/``OFFSET``. Each
  shard sorts its own rows and returns at most ``offset + limit``; :func:`merge_sorted` merges
  the sorted streams (a k-way merge over a heap: one pending row per shard), skips ``offset``
  rows and stops after ``limit``.
* :class:`Aggregate`: ``COUNT``/``SUM``/``MIN``/``MAX``/``AVG`` with optional ``GROUP BY``.
  Each shard returns partial aggregates per group (``AVG`` as a sum and a count), and
  :class:`AggregateMerger` combines them: counts and sums add, minima and maxima compare,
  averages divide the total sum by the total count. Groups come out sorted by their key.

Ordering is the same on every backend: ``NULLS FIRST`` ascending and ``NULLS LAST``
descending (``NULL`` is the smallest value), pushed to each shard explicitly because SQLite
and PostgreSQL disagree by default. Rows that tie on the sort columns come out in shard order.

Table and column names must be plain identifiers (:func:`check_identifier`); ``where`` is SQL
written by the application with ``?`` placeholders, never text from end users.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from phalanx.errors import BadRequest, TooLarge
from phalanx.sharding.backend import Row

__all__ = [
    "AGGREGATES",
    "GROUPS_MAX",
    "ROWS_PER_SHARD_MAX",
    "Aggregate",
    "AggregateMerger",
    "Select",
    "check_identifier",
    "merge_sorted",
    "sort_key",
]

#: Most rows one shard may be asked for (``offset + limit``): deep pages cost every shard.
ROWS_PER_SHARD_MAX: Final = 1_000_000
#: Most groups an aggregate may produce (they are combined in memory).
GROUPS_MAX: Final = 1_000_000
#: The aggregate functions understood.
AGGREGATES: Final = ("count", "sum", "min", "max", "avg")

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_identifier(name: str, what: str = "identifier") -> str:
    """``name`` when it is a plain SQL identifier; :class:`BadRequest` otherwise."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise BadRequest(f"{what}: {name!r} is not a plain SQL identifier")
    return name


def _where(where: str) -> str:
    return f" WHERE {where}" if where else ""


@dataclass(frozen=True)
class Select:
    """``SELECT columns FROM table [WHERE ...] [ORDER BY ...] [LIMIT ... OFFSET ...]``."""

    table: str
    columns: tuple[str, ...]
    where: str = ""
    params: tuple[Any, ...] = ()
    order_by: tuple[tuple[str, str], ...] = ()
    limit: int | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        check_identifier(self.table, "table")
        if not self.columns:
            raise BadRequest("select: name at least one column")
        for column in self.columns:
            check_identifier(column, "column")
        for column, direction in self.order_by:
            if column not in self.columns:
                raise BadRequest(f"order_by: {column!r} must be one of the selected columns")
            if direction.lower() not in {"asc", "desc"}:
                raise BadRequest(f"order_by: direction must be asc or desc, got {direction!r}")
        if self.limit is not None and self.limit < 0:
            raise BadRequest(f"limit: must be >= 0, got {self.limit}")
        if self.offset < 0:
            raise BadRequest(f"offset: must be >= 0, got {self.offset}")
        if self.offset and not self.order_by:
            raise BadRequest("offset: needs an order_by, or the page is not well defined")
        if self.limit is not None and self.limit + self.offset > ROWS_PER_SHARD_MAX:
            raise TooLarge(f"limit + offset over ROWS_PER_SHARD_MAX ({ROWS_PER_SHARD_MAX})")

    def shard_sql(self) -> str:
        """What every shard runs: its own sorted top ``offset + limit`` rows."""
        sql = f"SELECT {', '.join(self.columns)} FROM {self.table}{_where(self.where)}"  # noqa: S608 - identifiers checked
        if self.order_by:
            terms = [
                f"{c} {'DESC NULLS LAST' if d.lower() == 'desc' else 'ASC NULLS FIRST'}"
                for c, d in self.order_by
            ]
            sql += " ORDER BY " + ", ".join(terms)
        if self.limit is not None:
            sql += f" LIMIT {self.limit + self.offset}"
        return sql

    def sort_positions(self) -> list[tuple[int, bool]]:
        """``(column index, descending)`` for each sort term."""
        return [(self.columns.index(c), d.lower() == "desc") for c, d in self.order_by]


class _Reversed:
    """Inverts the order of a value, for descending sort terms."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]


def sort_key(row: Row, positions: Sequence[tuple[int, bool]]) -> tuple[Any, ...]:
    """A key ordering ``row`` as the shards do: NULL smallest, descending terms reversed."""
    parts: list[Any] = []
    for index, descending in positions:
        value = row[index]
        part = (0, 0) if value is None else (1, value)
        parts.append(_Reversed(part) if descending else part)
    return tuple(parts)


async def merge_sorted(
    streams: Sequence[AsyncIterator[list[Row]]],
    positions: Sequence[tuple[int, bool]],
    *,
    limit: int | None,
    offset: int,
) -> AsyncGenerator[Row, None]:
    """Merge per-shard sorted batch streams into one sorted row stream (see module notes).

    Holds one batch per shard. Errors of a stream propagate; the caller closes the streams.
    """
    heap: list[tuple[tuple[Any, ...], int, int, list[Row]]] = []
    for index, stream in enumerate(streams):
        batch = await anext(stream, None)
        if batch:
            heap.append((sort_key(batch[0], positions), index, 0, batch))
    heapq.heapify(heap)
    skipped = produced = 0
    while heap and (limit is None or produced < limit):
        _, index, at, batch = heap[0]
        row = batch[at]
        at += 1
        if at == len(batch):
            batch = await anext(streams[index], None) or []
            at = 0
        if batch:
            heapq.heapreplace(heap, (sort_key(batch[at], positions), index, at, batch))
        else:
            heapq.heappop(heap)
        if skipped < offset:
            skipped += 1
            continue
        produced += 1
        yield row


@dataclass(frozen=True)
class Aggregate:
    """``SELECT group_by..., f(column)... FROM table [WHERE ...] GROUP BY group_by``."""

    table: str
    aggregates: tuple[tuple[str, str], ...]
    group_by: tuple[str, ...] = ()
    where: str = ""
    params: tuple[Any, ...] = ()
    groups_max: int = GROUPS_MAX

    def __post_init__(self) -> None:
        check_identifier(self.table, "table")
        if not self.aggregates:
            raise BadRequest("aggregate: name at least one aggregate")
        for function, column in self.aggregates:
            if function.lower() not in AGGREGATES:
                raise BadRequest(f"aggregate: {function!r} is not one of {AGGREGATES}")
            if column != "*" or function.lower() != "count":
                check_identifier(column, "column")
        for column in self.group_by:
            check_identifier(column, "group_by")
        if not 1 <= self.groups_max <= GROUPS_MAX:
            raise BadRequest(f"groups_max: 1..{GROUPS_MAX}, got {self.groups_max}")

    def shard_sql(self) -> str:
        """Partial aggregates per group: AVG travels as SUM and COUNT."""
        terms = list(self.group_by)
        for function, column in self.aggregates:
            name = function.lower()
            if name == "avg":
                terms += [f"SUM({column})", f"COUNT({column})"]
            else:
                terms.append(f"{name.upper()}({column})")
        sql = f"SELECT {', '.join(terms)} FROM {self.table}{_where(self.where)}"  # noqa: S608 - identifiers checked
        if self.group_by:
            sql += " GROUP BY " + ", ".join(self.group_by)
        return sql


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None else a + b


def _pick(a: Any, b: Any, smallest: bool) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b) if smallest else max(a, b)


@dataclass
class AggregateMerger:
    """Combines per-shard partial rows of one :class:`Aggregate`."""

    query: Aggregate
    groups: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)

    def add(self, rows: Sequence[Row]) -> None:
        width = len(self.query.group_by)
        for row in rows:
            key, values = tuple(row[:width]), list(row[width:])
            current = self.groups.get(key)
            if current is None:
                if len(self.groups) >= self.query.groups_max:
                    raise TooLarge(f"aggregate: more than groups_max ({self.query.groups_max})")
                self.groups[key] = values
                continue
            at = 0
            for function, _ in self.query.aggregates:
                name = function.lower()
                if name == "avg":
                    current[at] = _add(current[at], values[at])
                    current[at + 1] = _add(current[at + 1], values[at + 1])
                    at += 2
                    continue
                if name in {"count", "sum"}:
                    current[at] = _add(current[at], values[at])
                else:
                    current[at] = _pick(current[at], values[at], smallest=name == "min")
                at += 1

    def rows(self) -> list[Row]:
        """Final rows: group columns then one value per aggregate, sorted by group key."""
        if not self.groups and not self.query.group_by:
            # No shard answered a row: the SQL answer of an ungrouped aggregate on no rows.
            return [tuple(0 if f.lower() == "count" else None for f, _ in self.query.aggregates)]
        out = []
        for key in sorted(
            self.groups, key=lambda k: sort_key(k, [(i, False) for i in range(len(k))])
        ):
            values = self.groups[key]
            final: list[Any] = []
            at = 0
            for function, _ in self.query.aggregates:
                if function.lower() == "avg":
                    total, count = values[at], values[at + 1]
                    final.append(total / count if count else None)
                    at += 2
                else:
                    final.append(values[at])
                    at += 1
            out.append((*key, *final))
        return out
