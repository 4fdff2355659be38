"""Online rebalancing: move rows to the shards a new map assigns them, while writes go on.

A :class:`Rebalancer` takes a job (:class:`JobState`: the current map, the next map, the
tables) through these phases, saving the job after every step and every batch so that a
crash anywhere resumes where it stopped (every step is idempotent):

1. ``prepare``: create the tables on the target shards, give new shards the sources' schema
   version, and install change capture on every source: triggers append each written row's
   primary key and shard key to a ``phalanx_changes`` queue in the same transaction. The
   rebalancer's own writes to a shard that is also a source (a removed shard's rows going to
   the remaining ones, a key range moving to its neighbour) are not captured: they only
   bring rows to their new owner, and queueing them would bury the writers' changes.
2. ``copy``: scan each source table in primary-key order, ``batch_rows`` at a time, and
   upsert each row whose owner under the new map is another shard into that shard.
3. ``catchup``: drain the change queues: for each queued change of a moving key, re-read the
   row on the source and upsert it on the target (or delete it there when it is gone). A
   change is removed from the queue only after it is applied, so nothing is skipped even when
   transactions commit out of order. Rounds repeat until each queue is read to its end and
   fewer than ``catchup_lag_rows`` changes needed applying.
4. ``verify`` (VDiff): compare every moving row on its source with its copy on the target.
   Rows that differ because writes are still arriving are re-checked after another catch-up
   round; a difference that survives ``verify_rounds_max`` rounds fails the job *before*
   anything switched. Per source, target and table the job records rows compared and a
   checksum.
5. ``cutover``: the write fence. Raise the fence of every involved shard to the new map
   version (routers on the old map are now refused, and their writes wait); drain the queues
   to empty; publish the new map (the version bump). Routers reload on their next refusal
   and route with the new map. The fence-to-publish time is ``write_fence_s``.
6. ``cleanup``: remove change capture and delete the moved rows from their sources.

Progress (rows scanned, rows/s, ETA) goes to ``on_progress``. Strategies that remember
placements outside the map (``bounded``, ``directory``) are not rebalanced this way.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import BadRequest, InvariantViolation, PhalanxError
from phalanx.sharding.backend import STATEMENTS_MAX, Row, ShardBackend, Statement
from phalanx.sharding.mapstore import MapStore
from phalanx.sharding.query import check_identifier
from phalanx.sharding.shardmap import ShardMap
from phalanx.sharding.strategies import Strategy

__all__ = [
    "PHASES",
    "FileJobStore",
    "JobState",
    "JobStore",
    "MemoryJobStore",
    "NotRebalanceable",
    "Progress",
    "RebalanceFailed",
    "Rebalancer",
    "SimulatedCrash",
    "TableSpec",
    "plan",
]

#: The phases in order.
PHASES: Final = ("prepare", "copy", "catchup", "verify", "cutover", "cleanup", "done")
#: Largest batch of rows copied, applied, compared or deleted at once.
BATCH_ROWS_MAX: Final = 10_000
#: Most catch-up rounds (each reads up to a batch per source) before the job moves on
#: anyway; whatever is left drains behind the fence at the cut-over.
CATCHUP_ROUNDS_MAX: Final = 200
#: Rounds after which a read-to-the-end queue is enough, however many changes the last round
#: applied (a busy writer keeps some coming; the fence drains the rest).
CATCHUP_SETTLE_ROUNDS: Final = 50
#: Most mismatching rows recorded in a failed job.
MISMATCHES_KEPT_MAX: Final = 100
#: Strategies whose placement is a function of the map alone.
REBALANCEABLE: Final = ("range", "hash", "jump", "ring", "rendezvous", "geo")

_DELETE_CHANGES: Final = "DELETE FROM phalanx_changes WHERE seq IN "
#: Statements that make the rest of a transaction invisible to change capture (SQLite: a row
#: in a table the triggers check, only ever seen by the transaction that inserts it;
#: PostgreSQL: a transaction-local setting the trigger function checks).
_QUIET_BEGIN: Final = {
    "sqlite": ("INSERT INTO phalanx_capture_off (since) VALUES (1)",),
    "postgres": ("SELECT set_config('phalanx.capture_off', 'on', true)",),
}
_QUIET_END: Final = {"sqlite": ("DELETE FROM phalanx_capture_off",), "postgres": ()}


class RebalanceFailed(PhalanxError):
    """Verification found rows that differ; nothing was switched and nothing deleted."""


class NotRebalanceable(BadRequest):
    """The map's strategy places keys by state the map does not hold, so no job can compute
    where every row belongs afterwards (``bounded``, ``directory``), or the job would change
    the strategy itself."""


#: Why each strategy outside :data:`REBALANCEABLE` is refused.
_NOT_REBALANCEABLE_WHY: Final = {
    "bounded": (
        "a bounded ring remembers each key's placement in the process that placed it, not in "
        "the map, so another process cannot tell where a row belongs after the move; use it "
        "to assign work, or shard rows with ring or jump"
    ),
    "directory": (
        "a directory places each key by its entry in the directory store; move keys one at a "
        "time: copy the key's rows, DirectoryStrategy.assign(key, shard), publish the next map "
        "version and fence the source (docs/sharding.md, the directory)"
    ),
}


class SimulatedCrash(Exception):
    """Raised at a named crash point (tests and drills prove resumption with it)."""


class TableSpec(msgspec.Struct, frozen=True):
    """A sharded table: its shard key, primary key, columns, and DDL for new shards."""

    name: str
    key_column: str
    pk_column: str
    columns: tuple[str, ...]
    ddl: str

    def __post_init__(self) -> None:
        check_identifier(self.name, "table")
        for column in (self.key_column, self.pk_column, *self.columns):
            check_identifier(column, "column")
        if self.key_column not in self.columns or self.pk_column not in self.columns:
            raise BadRequest("table: columns must include the shard key and the primary key")


class JobState(msgspec.Struct):
    job_id: str
    old_map: ShardMap
    new_map: ShardMap
    tables: tuple[TableSpec, ...]
    phase: str = "prepare"
    cursors: dict[str, Any] = msgspec.field(default_factory=dict)
    scanned_done: list[str] = msgspec.field(default_factory=list)
    rows_total: int = 0
    rows_scanned: int = 0
    rows_copied: int = 0
    rows_caught_up: int = 0
    rows_verified: int = 0
    rows_cleaned: int = 0
    checksums: dict[str, list[int]] = msgspec.field(default_factory=dict)
    write_fence_s: float | None = None
    mismatches: list[str] = msgspec.field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Progress:
    phase: str
    rows_done: int
    rows_total: int
    rows_per_s: float
    eta_s: float | None


class JobStore(Protocol):
    def save(self, state: JobState) -> None: ...

    def load(self) -> JobState | None: ...


class MemoryJobStore:
    def __init__(self) -> None:
        self._data: bytes | None = None

    def save(self, state: JobState) -> None:
        self._data = msgspec.json.encode(state)

    def load(self) -> JobState | None:
        return None if self._data is None else msgspec.json.decode(self._data, type=JobState)


class FileJobStore:
    """The job as a JSON file, replaced atomically after every step."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def save(self, state: JobState) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("wb") as handle:
            handle.write(msgspec.json.encode(state))
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self.path)

    def load(self) -> JobState | None:
        if not self.path.exists():
            return None
        return msgspec.json.decode(self.path.read_bytes(), type=JobState)


def plan(
    job_id: str, old_map: ShardMap, new_map: ShardMap, tables: Iterable[TableSpec]
) -> JobState:
    """A new job moving from ``old_map`` to ``new_map`` (its next version)."""
    if new_map.version != old_map.version + 1:
        raise BadRequest(f"rebalance: new map must be version {old_map.version + 1}")
    if new_map.strategy != old_map.strategy:
        raise NotRebalanceable(
            f"rebalance: the strategy changes ({old_map.strategy} -> {new_map.strategy}); "
            "a job moves rows between maps of one strategy"
        )
    if old_map.strategy not in REBALANCEABLE:
        why = _NOT_REBALANCEABLE_WHY.get(old_map.strategy, "its placement is not in the map")
        raise NotRebalanceable(
            f"rebalance: {old_map.strategy} maps are not rebalanced ({why}); the rebalanceable "
            f"strategies are {', '.join(REBALANCEABLE)}"
        )
    listed = tuple(tables)
    if not listed:
        raise BadRequest("rebalance: name at least one table")
    return JobState(job_id=job_id, old_map=old_map, new_map=new_map, tables=listed)


def _checksum(row: Row) -> int:
    return int.from_bytes(hashlib.blake2b(repr(row).encode(), digest_size=8).digest(), "little")


def _upsert(table: TableSpec) -> str:
    names = ", ".join(table.columns)
    marks = ", ".join("?" for _ in table.columns)
    others = [c for c in table.columns if c != table.pk_column]
    action = (
        "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in others)
        if others
        else "DO NOTHING"
    )
    conflict = f"ON CONFLICT ({table.pk_column}) {action}"
    return f"INSERT INTO {table.name} ({names}) VALUES ({marks}) {conflict}"  # noqa: S608 - identifiers checked


def _select(table: TableSpec, where: str) -> str:
    return f"SELECT {', '.join(table.columns)} FROM {table.name} WHERE {where}"  # noqa: S608 - identifiers checked


def _delete(table: TableSpec, where: str) -> str:
    return f"DELETE FROM {table.name} WHERE {where}"  # noqa: S608 - identifiers checked


def _in_list(count: int) -> str:
    return "(" + ", ".join("?" for _ in range(count)) + ")"


def _capture_sql(dialect: str, table: TableSpec) -> list[str]:
    t, pk, key = table.name, table.pk_column, table.key_column
    if dialect == "sqlite":
        insert = "INSERT INTO phalanx_changes (tbl, pk, shard_key) VALUES"
        when = "WHEN NOT EXISTS (SELECT 1 FROM phalanx_capture_off) BEGIN"
        return [
            (
                "CREATE TABLE IF NOT EXISTS phalanx_changes "
                "(seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, pk, shard_key)"
            ),
            "CREATE TABLE IF NOT EXISTS phalanx_capture_off (since INTEGER)",
            (
                f"CREATE TRIGGER IF NOT EXISTS phalanx_cdc_{t}_i AFTER INSERT ON {t} {when} "
                f"{insert} ('{t}', NEW.{pk}, NEW.{key}); END"
            ),
            (
                f"CREATE TRIGGER IF NOT EXISTS phalanx_cdc_{t}_u AFTER UPDATE ON {t} {when} "
                f"{insert} ('{t}', OLD.{pk}, OLD.{key}), ('{t}', NEW.{pk}, NEW.{key}); END"
            ),
            (
                f"CREATE TRIGGER IF NOT EXISTS phalanx_cdc_{t}_d AFTER DELETE ON {t} {when} "
                f"{insert} ('{t}', OLD.{pk}, OLD.{key}); END"
            ),
        ]
    insert = "INSERT INTO phalanx_changes (tbl, pk, shard_key) VALUES"
    return [
        (
            "CREATE TABLE IF NOT EXISTS phalanx_changes (seq BIGSERIAL PRIMARY KEY, "
            "tbl TEXT NOT NULL, pk JSONB, shard_key JSONB)"
        ),
        (
            f"CREATE OR REPLACE FUNCTION phalanx_cdc_{t}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN IF current_setting('phalanx.capture_off', true) = 'on' THEN RETURN NULL; "
            f"END IF; IF TG_OP <> 'INSERT' THEN {insert} ('{t}', to_jsonb(OLD.{pk}), "
            f"to_jsonb(OLD.{key})); END IF; IF TG_OP <> 'DELETE' THEN {insert} ('{t}', "
            f"to_jsonb(NEW.{pk}), to_jsonb(NEW.{key})); END IF; RETURN NULL; END $$"
        ),
        f"DROP TRIGGER IF EXISTS phalanx_cdc_{t} ON {t}",
        (
            f"CREATE TRIGGER phalanx_cdc_{t} AFTER INSERT OR UPDATE OR DELETE ON {t} "
            f"FOR EACH ROW EXECUTE FUNCTION phalanx_cdc_{t}()"
        ),
    ]


def _uncapture_sql(dialect: str, tables: Sequence[TableSpec]) -> list[str]:
    statements = []
    for table in tables:
        t = table.name
        if dialect == "sqlite":
            statements += [f"DROP TRIGGER IF EXISTS phalanx_cdc_{t}_{s}" for s in "iud"]
        else:
            statements += [
                f"DROP TRIGGER IF EXISTS phalanx_cdc_{t} ON {t}",
                f"DROP FUNCTION IF EXISTS phalanx_cdc_{t}()",
            ]
    statements.append("DROP TABLE IF EXISTS phalanx_changes")
    if dialect == "sqlite":
        statements.append("DROP TABLE IF EXISTS phalanx_capture_off")
    return statements


class Rebalancer:
    """Runs (or resumes) the job in ``jobs``; see the module docstring."""

    def __init__(
        self,
        jobs: JobStore,
        maps: MapStore,
        backends: Mapping[str, ShardBackend],
        *,
        batch_rows: int = 500,
        catchup_lag_rows: int = 50,
        verify_rounds_max: int = 5,
        clock: Clock = SYSTEM_CLOCK,
        on_progress: Callable[[Progress], None] | None = None,
        crash_points: Iterable[str] = (),
    ) -> None:
        if not 1 <= batch_rows <= BATCH_ROWS_MAX:
            raise ValueError(f"batch_rows: 1..{BATCH_ROWS_MAX}, got {batch_rows}")
        self.jobs = jobs
        self.maps = maps
        self.backends = dict(backends)
        self.batch_rows = batch_rows
        self.catchup_lag_rows = catchup_lag_rows
        self.verify_rounds_max = verify_rounds_max
        self.clock = clock
        self.on_progress = on_progress
        self.crash_points = frozenset(crash_points)
        self._started_s = clock.now_s()
        self._started_rows = 0
        loaded = jobs.load()
        if loaded is None:
            raise BadRequest("rebalance: the job store holds no job (plan one first)")
        self.state = loaded
        self.old: Strategy = loaded.old_map.build()
        self.new: Strategy = loaded.new_map.build()
        missing = sorted((set(self.old.shards) | set(self.new.shards)) - set(self.backends))
        if missing:
            raise BadRequest(f"rebalance: no backend for shards {missing}")

    # -- bookkeeping ------------------------------------------------------------------------

    def _save(self) -> None:
        self.jobs.save(self.state)

    def _crash(self, point: str) -> None:
        if point in self.crash_points:
            raise SimulatedCrash(point)

    def _progress(self, done: int, total: int) -> None:
        if self.on_progress is None:
            return
        elapsed_s = max(self.clock.now_s() - self._started_s, 1e-9)
        rate = (done - self._started_rows) / elapsed_s
        left = max(total - done, 0)
        eta = left / rate if rate > 0 else None
        self.on_progress(Progress(self.state.phase, done, total, rate, eta))

    def _enter(self, phase: str) -> None:
        self.state.phase = phase
        self._save()
        self._started_s = self.clock.now_s()
        self._started_rows = 0

    @property
    def sources(self) -> tuple[str, ...]:
        return self.old.shards

    async def _write(self, target: str, statements: Sequence[Statement]) -> None:
        """Run ``statements`` on ``target``; unseen by its change capture when it has one.
        Long lists go in several transactions (upserts and deletes are idempotent)."""
        backend = self.backends[target]
        if target not in self.sources:
            begin: tuple[str, ...] = ()
            end: tuple[str, ...] = ()
        else:
            begin, end = _QUIET_BEGIN[backend.dialect], _QUIET_END[backend.dialect]
        step = STATEMENTS_MAX - len(begin) - len(end)
        for start in range(0, len(statements), step):
            chunk = list(statements[start : start + step])
            await backend.run([*((sql, ()) for sql in begin), *chunk, *((sql, ()) for sql in end)])

    def _targets(self) -> list[str]:
        return [s for s in self.new.shards if s not in self.old.shards]

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> JobState:
        """Run from the saved phase to ``done``; returns the final job."""
        steps = {
            "prepare": self._prepare,
            "copy": self._copy,
            "catchup": self._catchup_phase,
            "verify": self._verify,
            "cutover": self._cutover,
            "cleanup": self._cleanup,
        }
        while self.state.phase != "done":
            phase = self.state.phase
            if phase not in steps:
                raise InvariantViolation(f"rebalance: unknown phase {phase!r}")
            await steps[phase]()
            self._crash(phase)
        return self.state

    async def _prepare(self) -> None:
        schema = 0
        total = 0
        for source in self.sources:
            backend = self.backends[source]
            schema = max(schema, (await backend.meta()).get("schema_version", 0))
            statements: list[Statement] = []
            for table in self.state.tables:
                statements += [(sql, ()) for sql in _capture_sql(backend.dialect, table)]
            await backend.run(statements)
            for table in self.state.tables:
                rows = await backend.fetch(f"SELECT COUNT(*) FROM {table.name}", ())  # noqa: S608 - identifiers checked
                total += int(rows[0][0])
        for target in self.new.shards:
            backend = self.backends[target]
            await backend.run([(table.ddl, ()) for table in self.state.tables])
            if target not in self.old.shards:
                await backend.set_meta("schema_version", schema)
        self.state.rows_total = total
        self._enter("copy")

    async def _copy(self) -> None:
        for source in self.sources:
            for table in self.state.tables:
                key = f"{source}/{table.name}"
                while key not in self.state.scanned_done:
                    await self._copy_batch(source, table, key)
                    self._crash("copy-batch")
        self._enter("catchup")

    async def _copy_batch(self, source: str, table: TableSpec, cursor_key: str) -> None:
        backend = self.backends[source]
        cursor = self.state.cursors.get(cursor_key)
        order = f" ORDER BY {table.pk_column} LIMIT {self.batch_rows}"
        if cursor is None:
            sql = f"SELECT {', '.join(table.columns)} FROM {table.name}{order}"  # noqa: S608 - identifiers checked
            rows = await backend.fetch(sql, ())
        else:
            rows = await backend.fetch(_select(table, f"{table.pk_column} > ?") + order, (cursor,))
        moving = self._moving(source, table, rows)
        for target, batch in moving.items():
            await self._write(target, [(_upsert(table), row) for row in batch])
            self.state.rows_copied += len(batch)
        self.state.rows_scanned += len(rows)
        if len(rows) < self.batch_rows:
            self.state.scanned_done.append(cursor_key)
        else:
            self.state.cursors[cursor_key] = rows[-1][table.columns.index(table.pk_column)]
        self._save()
        self._progress(self.state.rows_scanned, self.state.rows_total)

    def _moving(self, source: str, table: TableSpec, rows: Sequence[Row]) -> dict[str, list[Row]]:
        at = table.columns.index(table.key_column)
        moving: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            owner = self.new.shard_for(_key(row[at]))
            if owner != source:
                moving[owner].append(row)
        return moving

    async def _catchup_phase(self) -> None:
        await self._catch_up()
        self._enter("verify")

    async def _catch_up(self) -> None:
        """Rounds until every queue was read to its end in a round that applied fewer than
        ``catchup_lag_rows`` changes (after :data:`CATCHUP_SETTLE_ROUNDS`, read to its end is
        enough; at most :data:`CATCHUP_ROUNDS_MAX` rounds)."""
        for rounds in range(1, CATCHUP_ROUNDS_MAX + 1):
            applied, drained = await self._catchup_round()
            if drained and (applied < self.catchup_lag_rows or rounds >= CATCHUP_SETTLE_ROUNDS):
                return

    async def _catchup_round(self) -> tuple[int, bool]:
        """One pass over every source's queue (up to a batch each): the changes applied,
        and whether every queue was read to its end."""
        applied = 0
        drained = True
        for source in self.sources:
            backend = self.backends[source]
            changes = await backend.fetch(
                "SELECT seq, tbl, pk, shard_key FROM phalanx_changes ORDER BY seq LIMIT ?",
                (self.batch_rows,),
            )
            if len(changes) >= self.batch_rows:
                drained = False
            if not changes:
                continue
            tables = {t.name: t for t in self.state.tables}
            for _, name, pk, shard_key in changes:
                table = tables.get(name)
                owner = self.new.shard_for(_key(shard_key))
                if table is None or owner == source:
                    continue
                await self._apply(source, owner, table, pk)
                applied += 1
            seqs = [c[0] for c in changes]
            await backend.run([(_DELETE_CHANGES + _in_list(len(seqs)), seqs)])
            self.state.rows_caught_up += len(changes)
        self._save()
        return applied, drained

    async def _apply(self, source: str, target: str, table: TableSpec, pk: Any) -> None:
        rows = await self.backends[source].fetch(_select(table, f"{table.pk_column} = ?"), (pk,))
        at = table.columns.index(table.key_column)
        if rows and self.new.shard_for(_key(rows[0][at])) == target:
            await self._write(target, [(_upsert(table), rows[0])])
        else:
            await self._write(target, [(_delete(table, f"{table.pk_column} = ?"), (pk,))])

    async def _verify(self) -> None:
        suspects: list[tuple[str, str, TableSpec, Any]] = []
        self.state.checksums = {}
        self.state.rows_verified = 0
        for source in self.sources:
            for table in self.state.tables:
                suspects += await self._verify_table(source, table)
        for _ in range(self.verify_rounds_max):
            if not suspects:
                break
            await self._catch_up()
            suspects = [s for s in suspects if not await self._same(*s)]
        if suspects:
            self.state.mismatches = [f"{s}->{t} {tb.name} {pk!r}" for s, t, tb, pk in suspects][
                :MISMATCHES_KEPT_MAX
            ]
            self.state.error = f"{len(suspects)} rows differ between sources and targets"
            self._save()
            raise RebalanceFailed(f"rebalance {self.state.job_id}: {self.state.error}")
        self._enter("cutover")

    async def _verify_table(
        self, source: str, table: TableSpec
    ) -> list[tuple[str, str, TableSpec, Any]]:
        suspects = []
        backend = self.backends[source]
        pk_at = table.columns.index(table.pk_column)
        cursor: Any = None
        order = f" ORDER BY {table.pk_column} LIMIT {self.batch_rows}"
        while True:
            if cursor is None:
                sql = f"SELECT {', '.join(table.columns)} FROM {table.name}{order}"  # noqa: S608 - identifiers checked
                rows = await backend.fetch(sql, ())
            else:
                rows = await backend.fetch(
                    _select(table, f"{table.pk_column} > ?") + order, (cursor,)
                )
            for target, batch in self._moving(source, table, rows).items():
                pks = [row[pk_at] for row in batch]
                there = await self.backends[target].fetch(
                    _select(table, f"{table.pk_column} IN {_in_list(len(pks))}"), pks
                )
                copies = {row[pk_at]: row for row in there}
                tally = self.state.checksums.setdefault(f"{source}->{target}/{table.name}", [0, 0])
                for row in batch:
                    tally[0] += 1
                    tally[1] = (tally[1] + _checksum(row)) % (1 << 64)
                    if copies.get(row[pk_at]) != row:
                        suspects.append((source, target, table, row[pk_at]))
                self.state.rows_verified += len(batch)
            if len(rows) < self.batch_rows:
                return suspects
            cursor = rows[-1][pk_at]

    async def _same(self, source: str, target: str, table: TableSpec, pk: Any) -> bool:
        sql = _select(table, f"{table.pk_column} = ?")
        here = await self.backends[source].fetch(sql, (pk,))
        there = await self.backends[target].fetch(sql, (pk,))
        at = table.columns.index(table.key_column)
        if here and self.new.shard_for(_key(here[0][at])) != target:
            return True  # the row's key changed: it no longer moves to this target
        return here == there

    async def _cutover(self) -> None:
        version = self.state.new_map.version
        fenced_at = self.clock.now_s()
        involved = sorted(set(self.old.shards) | set(self.new.shards))
        for shard in involved:
            backend = self.backends[shard]
            if (await backend.meta()).get("fence_version", 0) < version:
                await backend.set_meta("fence_version", version)
        self._crash("cutover-fenced")
        for _ in range(CATCHUP_ROUNDS_MAX * 10):
            applied, _ = await self._catchup_round()
            if applied == 0 and await self._queues_empty():
                break
        else:
            raise InvariantViolation("rebalance: change queues did not drain behind the fence")
        if self.maps.load().version < version:
            self.maps.publish(self.state.new_map)
        self.state.write_fence_s = self.clock.now_s() - fenced_at
        self._enter("cleanup")

    async def _queues_empty(self) -> bool:
        for source in self.sources:
            rows = await self.backends[source].fetch("SELECT COUNT(*) FROM phalanx_changes", ())
            if int(rows[0][0]):
                return False
        return True

    async def _cleanup(self) -> None:
        for source in self.sources:
            backend = self.backends[source]
            await backend.run(
                [(sql, ()) for sql in _uncapture_sql(backend.dialect, self.state.tables)]
            )
            for table in self.state.tables:
                await self._delete_moved(source, table)
        self._enter("done")

    async def _delete_moved(self, source: str, table: TableSpec) -> None:
        backend = self.backends[source]
        pk_at = table.columns.index(table.pk_column)
        cursor: Any = None
        order = f" ORDER BY {table.pk_column} LIMIT {self.batch_rows}"
        while True:
            if cursor is None:
                sql = f"SELECT {', '.join(table.columns)} FROM {table.name}{order}"  # noqa: S608 - identifiers checked
                rows = await backend.fetch(sql, ())
            else:
                rows = await backend.fetch(
                    _select(table, f"{table.pk_column} > ?") + order, (cursor,)
                )
            pks = [
                row[pk_at] for batch in self._moving(source, table, rows).values() for row in batch
            ]
            if pks:
                await backend.run(
                    [
                        (
                            _delete(table, f"{table.pk_column} IN {_in_list(len(pks))}"),
                            pks,
                        )
                    ]
                )
                self.state.rows_cleaned += len(pks)
                self._save()
            if len(rows) < self.batch_rows:
                return
            cursor = rows[-1][pk_at]


def _key(value: Any) -> str | bytes:
    """A stored shard key as a strategy key: bytes stay bytes, anything else as text."""
    if isinstance(value, bytes | str):
        return value
    if isinstance(value, memoryview):
        return bytes(value)
    return str(value)
