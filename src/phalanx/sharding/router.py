"""The router: single-shard calls by shard key, scatter-gather for the rest.

:class:`Router` holds a :class:`~phalanx.sharding.ShardMap`, its strategy, and one
:class:`~phalanx.sharding.backend.ShardBackend` per shard. Every call to a shard runs inside
that shard's :class:`~phalanx.resilience.Bulkhead` (at most ``concurrent_per_shard`` calls at
once, ``queue_per_shard`` more waiting up to ``queue_wait_s``) and a
:class:`~phalanx.resilience.TimeLimiter` of ``timeout_s``: one slow shard cannot take every
caller with it. A streamed :meth:`Router.select` holds one connection per shard for its whole
length, so streams have a bulkhead of their own (``streams_per_shard``).

Outcomes. A single-shard write that times out is INDETERMINATE (:class:`~phalanx.errors.Timeout`
propagates: it may have committed). A shard that is down, full, or too slow for a *read* is
:class:`~phalanx.sharding.ShardUnavailable`. Under ``policy="fail"`` (default) a
scatter-gather read fails when any shard fails; under ``policy="partial"`` it returns what the
other shards answered with ``partial=True`` and the failed shards named.

Stale maps. Each call carries the map version; a shard fenced at a newer version refuses it
(:class:`~phalanx.sharding.StaleShardMap`). The router then asks ``reload`` for the current
map (and refreshes a directory strategy's cache), adopts it, and routes again, at most
:data:`STALE_RETRIES_MAX` times. When the shard is fenced but no newer map is published yet
(a cut-over is between its fence and its publication) the router waits, with pauses from
:data:`STALE_PAUSE_S_MIN` doubling to :data:`STALE_PAUSE_S_MAX`, for at most
``stale_wait_s``: during a cut-over writes are delayed, not failed.

Cross-shard writes. :meth:`Router.write` runs statements for several keys. When they all land
on one shard they run in one local transaction. When they span shards they go through
``cross_shard`` (a :class:`~phalanx.sharding.crossshard.TwoPhaseCommitWriter` over a
:mod:`phalanx.txn` coordinator: all or nothing); a router without one refuses them with
:class:`~phalanx.sharding.CrossShardWrite`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import sys
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import BadRequest, BulkheadFull, PhalanxError, Timeout
from phalanx.resilience import Bulkhead, TimeLimiter
from phalanx.sharding.backend import Guard, Row, ShardBackend, Statement, open_backend
from phalanx.sharding.crossshard import CrossShardWriter
from phalanx.sharding.errors import (
    CrossShardWrite,
    SchemaVersionUnsupported,
    ShardUnavailable,
    StaleShardMap,
)
from phalanx.sharding.hot import LoadTracker
from phalanx.sharding.keys import Key
from phalanx.sharding.query import Aggregate, AggregateMerger, Select, merge_sorted
from phalanx.sharding.shardmap import ShardMap
from phalanx.sharding.strategies import DirectoryStrategy, Strategy

__all__ = ["POLICIES", "STALE_RETRIES_MAX", "QueryResult", "Router", "RouterStatistics"]

#: Failing-shard policies of scatter-gather reads.
POLICIES: Final = ("fail", "partial")
#: Times one call re-routes after a stale-map refusal before giving up.
STALE_RETRIES_MAX: Final = 3
#: First and longest pause while a shard is fenced and the next map is not yet published.
STALE_PAUSE_S_MIN: Final = 0.002
STALE_PAUSE_S_MAX: Final = 0.05
#: Largest batch of rows one streamed shard read returns.
BATCH_ROWS_DEFAULT: Final = 1_000

T = TypeVar("T")


def _unreachable() -> tuple[type[BaseException], ...]:
    """Errors meaning "the shard could not be reached". psycopg's are included only once
    psycopg is loaded (by a PostgreSQL backend): without it no call can raise them, and
    importing it here would cost every router start-up."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return (OSError, sqlite3.OperationalError)
    return (OSError, sqlite3.OperationalError, psycopg.OperationalError)


#: What the "partial" policy tolerates from one shard of a scatter-gather read.
_SHARD_FAULTS = (ShardUnavailable, StaleShardMap, SchemaVersionUnsupported)


@dataclass(frozen=True)
class QueryResult:
    """Rows of a scatter-gather read; ``partial`` when some shards failed (named in
    ``failed`` with their error)."""

    rows: list[Row]
    partial: bool = False
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RouterStatistics:
    map_version: int
    calls: dict[str, int]
    failures: dict[str, int]
    stale_refusals: int
    cross_shard_refusals: int


class Router:
    """Routes calls to the shards of a :class:`ShardMap` (see the module docstring)."""

    def __init__(
        self,
        shard_map: ShardMap,
        backends: Mapping[str, ShardBackend],
        *,
        strategy: Strategy | None = None,
        reload: Callable[[], Awaitable[ShardMap]] | None = None,
        policy: str = "fail",
        timeout_s: float = 5.0,
        concurrent_per_shard: int = 8,
        queue_per_shard: int = 64,
        queue_wait_s: float = 1.0,
        batch_rows: int = BATCH_ROWS_DEFAULT,
        schema_versions: tuple[int, int] | None = None,
        stale_wait_s: float = 5.0,
        load_tracker: LoadTracker | None = None,
        cross_shard: CrossShardWriter | None = None,
        streams_per_shard: int = 4,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.timeout_s = timeout_s
        self.batch_rows = batch_rows
        self.schema_versions = schema_versions
        self.stale_wait_s = stale_wait_s
        self.load_tracker = load_tracker
        self.cross_shard = cross_shard
        self.streams_per_shard = streams_per_shard
        self._stream_bulkheads: dict[str, Bulkhead] = {}
        self._backends = dict(backends)
        self._reload = reload
        self._clock = clock
        self._concurrent_per_shard = concurrent_per_shard
        self._queue_per_shard = queue_per_shard
        self._queue_wait_s = queue_wait_s
        self._bulkheads: dict[str, Bulkhead] = {}
        self._limiters: dict[str, TimeLimiter] = {}
        self._calls: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._stale = 0
        self._cross = 0
        self.shard_map = shard_map
        self.strategy = strategy if strategy is not None else shard_map.build()
        self._check_backends()

    # -- the map ----------------------------------------------------------------------------

    def _check_backends(self) -> None:
        for shard in self.strategy.shards:
            location = self.shard_map.locations.get(shard)
            if shard not in self._backends and location is not None:
                # A shard added by a rebalance: open it from the location the map names.
                self._backends[shard] = open_backend(shard, location)
        missing = sorted(set(self.strategy.shards) - set(self._backends))
        if missing:
            raise BadRequest(f"router: no backend for shards {missing}")

    @classmethod
    def from_map(cls, shard_map: ShardMap, **options: Any) -> Router:
        """A router with a backend opened for every shard location of ``shard_map``."""
        return cls(shard_map, {}, **options)

    @property
    def map_version(self) -> int:
        return self.shard_map.version

    def adopt(
        self,
        shard_map: ShardMap,
        *,
        strategy: Strategy | None = None,
        backends: Mapping[str, ShardBackend] | None = None,
    ) -> bool:
        """Switch to ``shard_map`` if it is newer; True when adopted."""
        if shard_map.version <= self.shard_map.version:
            return False
        if backends:
            self._backends.update(backends)
        previous = self.strategy
        self.shard_map = shard_map
        if strategy is not None:
            self.strategy = strategy
        elif (
            isinstance(previous, DirectoryStrategy)
            and shard_map.strategy == "directory"
            and shard_map.options.get("store") == previous.store.url
        ):
            # Same directory: keep its store connection and its cache, only the shards change.
            self.strategy = previous.with_shards(shard_map.shards)
        else:
            self.strategy = shard_map.build()
        self._check_backends()
        return True

    async def refresh(self) -> None:
        """Reload the map (when a ``reload`` source is set) and any directory cache."""
        if self._reload is not None:
            self.adopt(await self._reload())
        if isinstance(self.strategy, DirectoryStrategy):
            await asyncio.to_thread(self.strategy.refresh)

    def shard_for(self, key: Key) -> str:
        return self.strategy.shard_for(key)

    def backend(self, shard: str) -> ShardBackend:
        return self._backends[shard]

    def _guard(self) -> Guard:
        low, high = self.schema_versions or (None, None)
        return Guard(self.shard_map.version, low, high)

    # -- one shard --------------------------------------------------------------------------

    def _policies(self, shard: str) -> tuple[Bulkhead, TimeLimiter]:
        bulkhead = self._bulkheads.get(shard)
        if bulkhead is None:
            bulkhead = Bulkhead(
                max_concurrent=self._concurrent_per_shard,
                max_queue=self._queue_per_shard,
                max_wait_s=self._queue_wait_s,
                name=f"shard-{shard}",
                clock=self._clock,
            )
            self._bulkheads[shard] = bulkhead
            self._limiters[shard] = TimeLimiter(
                self.timeout_s, name=f"shard-{shard}", clock=self._clock
            )
        return bulkhead, self._limiters[shard]

    async def _call(self, shard: str, fn: Callable[[], Awaitable[T]], *, read: bool) -> T:
        """``fn`` inside the shard's bulkhead and time limit; errors made typed."""
        bulkhead, limiter = self._policies(shard)
        self._calls[shard] += 1
        if self.load_tracker is not None:
            self.load_tracker.record(shard)
        try:
            return await bulkhead.acall(limiter.acall, fn)
        except StaleShardMap:
            raise
        except BulkheadFull as exc:
            self._failures[shard] += 1
            raise ShardUnavailable(f"shard {shard!r}: {exc}", shard=shard) from exc
        except Timeout as exc:
            self._failures[shard] += 1
            if read:
                raise ShardUnavailable(f"shard {shard!r}: {exc}", shard=shard) from exc
            raise
        except _unreachable() as exc:
            self._failures[shard] += 1
            raise ShardUnavailable(f"shard {shard!r}: {exc}", shard=shard) from exc

    async def _routed(
        self, key: Key, work: Callable[[ShardBackend, Guard], Awaitable[T]], *, read: bool
    ) -> T:
        waited_s = 0.0
        pause_s = STALE_PAUSE_S_MIN
        reroutes = 0
        while True:
            shard = self.strategy.shard_for(key)
            backend, guard = self._backends[shard], self._guard()
            try:
                return await self._call(shard, functools.partial(work, backend, guard), read=read)
            except StaleShardMap:
                self._stale += 1
                if self._reload is None and not isinstance(self.strategy, DirectoryStrategy):
                    raise
                before = self.shard_map.version
                await self.refresh()
                if self.shard_map.version > before:
                    reroutes += 1
                    if reroutes > STALE_RETRIES_MAX:
                        raise
                    continue
                # Fenced, but the next map is not published yet: a cut-over is in progress.
                # Wait for it (the caller sees a slow write, not a failed one), within bounds.
                if waited_s >= self.stale_wait_s:
                    raise
                await self._clock.asleep(pause_s)
                waited_s += pause_s
                pause_s = min(pause_s * 2, STALE_PAUSE_S_MAX)

    async def run(self, key: Key, statements: Sequence[Statement]) -> list[int]:
        """Run ``statements`` in one transaction on ``key``'s shard; their row counts."""
        return await self._routed(key, lambda b, g: b.run(statements, g), read=False)

    async def execute(self, key: Key, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement on ``key``'s shard; its row count."""
        return (await self.run(key, [(sql, params)]))[0]

    async def fetch(self, key: Key, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """One query on ``key``'s shard."""
        return await self._routed(key, lambda b, g: b.fetch(sql, params, g), read=True)

    async def write(self, items: Iterable[tuple[Key, str, Sequence[Any]]]) -> list[int]:
        """Statements for several keys, atomically; row counts in the order given.

        One local transaction when they share a shard; two-phase commit through
        ``cross_shard`` when they do not, or :class:`CrossShardWrite` without one (see the
        module docstring)."""
        listed = list(items)
        if not listed:
            return []
        owners = [self.strategy.shard_for(key) for key, _, _ in listed]
        if len(set(owners)) == 1:
            return await self.run(listed[0][0], [(sql, params) for _, sql, params in listed])
        if self.cross_shard is None:
            self._cross += 1
            raise CrossShardWrite(
                f"write spans shards {sorted(set(owners))} and this router has no cross-shard "
                "writer: pass Router(cross_shard=TwoPhaseCommitWriter(coordinator)) "
                "(phalanx.txn two-phase commit), write per shard, or choose a shard key that "
                "keeps these rows together"
            )
        work: dict[str, list[Statement]] = {}
        for owner, (_, sql, params) in zip(owners, listed, strict=True):
            work.setdefault(owner, []).append((sql, params))
        counts = await self.cross_shard.write(work, self._guard())
        positions = dict.fromkeys(work, 0)
        ordered = []
        for owner in owners:
            ordered.append(counts[owner][positions[owner]])
            positions[owner] += 1
        return ordered

    # -- every shard ------------------------------------------------------------------------

    async def _gather(
        self, shards: Sequence[str], work: Callable[[str], Awaitable[T]]
    ) -> tuple[dict[str, T], dict[str, str]]:
        results: dict[str, T] = {}
        failed: dict[str, str] = {}

        async def one(shard: str) -> None:
            try:
                results[shard] = await work(shard)
            except _SHARD_FAULTS as exc:
                if self.policy == "fail":
                    raise
                failed[shard] = str(exc)

        try:
            async with asyncio.TaskGroup() as group:
                for shard in shards:
                    group.create_task(one(shard))
        except BaseExceptionGroup as grouped:
            # The first failure cancelled the other shards' reads: report it, typed.
            first = grouped.exceptions[0]
            raise first  # noqa: B904 - the original cause stays in __cause__
        return results, failed

    async def scatter(
        self, sql: str, params: Sequence[Any] = (), *, shards: Sequence[str] | None = None
    ) -> QueryResult:
        """Run one query on every shard (or ``shards``) in parallel; rows concatenated in
        shard order."""
        targets = list(shards if shards is not None else self.strategy.shards)
        guard = self._guard()
        try:
            results, failed = await self._gather(
                targets,
                lambda s: self._call(
                    s, lambda: self._backends[s].fetch(sql, params, guard), read=True
                ),
            )
        except* (ShardUnavailable, StaleShardMap) as group:
            raise group.exceptions[0] from None
        rows = [row for shard in targets if shard in results for row in results[shard]]
        return QueryResult(rows, partial=bool(failed), failed=failed)

    async def aggregate(self, query: Aggregate) -> QueryResult:
        """COUNT/SUM/MIN/MAX/AVG (optionally grouped) over every shard."""
        answer = await self.scatter(query.shard_sql(), query.params)
        if answer.partial and len(answer.failed) == len(self.strategy.shards):
            raise ShardUnavailable("every shard failed", shard=sorted(answer.failed)[0])
        merger = AggregateMerger(query)
        merger.add(answer.rows)
        return QueryResult(merger.rows(), partial=answer.partial, failed=answer.failed)

    async def select(self, query: Select) -> QueryResult:
        """Rows of every shard, merged in global order with LIMIT and OFFSET."""
        failed: dict[str, str] = {}
        rows = [row async for row in self.iter_select(query, failed=failed)]
        return QueryResult(rows, partial=bool(failed), failed=failed)

    async def iter_select(
        self, query: Select, *, failed: dict[str, str] | None = None
    ) -> AsyncGenerator[Row, None]:
        """Stream the rows of :meth:`select`: each shard read in batches of ``batch_rows``,
        merged with one pending batch per shard. Under ``policy="partial"`` a shard failing
        mid-stream is dropped and recorded in ``failed``."""
        sql = query.shard_sql()
        guard = self._guard()
        shards = list(self.strategy.shards)
        lost = failed if failed is not None else {}
        streams = [self._shard_stream(s, sql, query.params, guard, lost) for s in shards]
        try:
            merged = merge_sorted(
                streams, query.sort_positions(), limit=query.limit, offset=query.offset
            )
            try:
                async for row in merged:
                    yield row
            finally:
                await merged.aclose()
        finally:
            for stream in streams:
                await stream.aclose()

    def _stream_slot(self, shard: str) -> Bulkhead:
        slot = self._stream_bulkheads.get(shard)
        if slot is None:
            slot = Bulkhead(
                max_concurrent=self.streams_per_shard,
                max_queue=self._queue_per_shard,
                max_wait_s=self._queue_wait_s,
                name=f"shard-{shard}-streams",
                clock=self._clock,
            )
            self._stream_bulkheads[shard] = slot
        return slot

    async def _shard_stream(
        self, shard: str, sql: str, params: Sequence[Any], guard: Guard, lost: dict[str, str]
    ) -> AsyncGenerator[list[Row], None]:
        async with contextlib.AsyncExitStack() as stack:
            # A stream holds a connection for its whole length: at most streams_per_shard.
            try:
                await stack.enter_async_context(self._stream_slot(shard))
            except BulkheadFull as exc:
                self._failures[shard] += 1
                error = ShardUnavailable(f"shard {shard!r}: {exc}", shard=shard)
                if self.policy == "fail":
                    raise error from exc
                lost[shard] = str(error)
                return
            source = self._backends[shard].stream(sql, params, guard, batch_rows=self.batch_rows)
            try:
                while True:
                    try:
                        batch = await self._call(shard, lambda: anext(source, None), read=True)
                    except _SHARD_FAULTS as exc:
                        if self.policy == "fail":
                            raise
                        lost[shard] = str(exc)
                        return
                    if batch is None:
                        return
                    yield batch
            finally:
                with contextlib.suppress(PhalanxError, *_unreachable()):
                    await source.aclose()

    # -- statistics -------------------------------------------------------------------------

    def statistics(self) -> RouterStatistics:
        return RouterStatistics(
            map_version=self.shard_map.version,
            calls=dict(self._calls),
            failures=dict(self._failures),
            stale_refusals=self._stale,
            cross_shard_refusals=self._cross,
        )

    async def close(self) -> None:
        """Close every backend and time limiter."""
        for backend in self._backends.values():
            await backend.close()
        for limiter in self._limiters.values():
            limiter.shutdown()
