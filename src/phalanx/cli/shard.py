"""``phalanx shard``: a sharded keyspace from the command line.

A keyspace lives in a directory (``--dir``, default ``./shards`` or ``$PHALANX_SHARD_DIR``):
``shardmap.json`` (the versioned map), ``tables.json`` (the sharded tables), ``job.json``
(the rebalance in progress, if any) and, for shards kept in SQLite, ``<shard>.db``::

    phalanx shard init --strategy jump --shards s0,s1
    phalanx shard table accounts --key owner --pk id --columns id,owner,balance \\
        --ddl "CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, owner TEXT, \\
               balance INTEGER)"
    phalanx shard route user:1 user:2
    phalanx shard query "SELECT COUNT(*) FROM accounts"
    phalanx shard query --table accounts --columns id,balance --order-by "balance desc" --limit 10
    phalanx shard add s2                  # online: copy, catch up, verify, cut over, clean up
    phalanx shard status
    phalanx shard migrate migrations/
    phalanx shard advise --database postgres:"host=db dbname=app"
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import click
import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from phalanx.errors import PhalanxError
from phalanx.sharding import STRATEGY_NAMES, ShardMap, strategy
from phalanx.sharding.advise import SAMPLE_S_MAX as ADVISE_SAMPLE_S_MAX
from phalanx.sharding.advise import DatabaseMetrics, advise, read_postgres
from phalanx.sharding.backend import ShardBackend, open_backend
from phalanx.sharding.mapstore import FileMapStore
from phalanx.sharding.migrate import Migrator, load_migrations
from phalanx.sharding.query import Aggregate, Select
from phalanx.sharding.rebalance import FileJobStore, Rebalancer, TableSpec, plan
from phalanx.sharding.rebalance import Progress as MoveProgress
from phalanx.sharding.router import Router
from phalanx.sharding.strategies import RangeStrategy

__all__ = ["shard"]

T = TypeVar("T")

#: Longest sampling interval of ``advise`` (it waits this long between two readings).
SAMPLE_S_MAX: Final = ADVISE_SAMPLE_S_MAX
#: Most rows ``query`` prints.
PRINT_ROWS_MAX: Final = 1_000

DIR_HELP = "The keyspace directory (default ./shards or $PHALANX_SHARD_DIR)."


def _dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--dir",
        "directory",
        type=click.Path(file_okay=False, path_type=Path),
        default=lambda: os.environ.get("PHALANX_SHARD_DIR", "shards"),
        show_default="./shards",
        help=DIR_HELP,
    )(fn)


class Keyspace:
    """The files of one keyspace directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.maps = FileMapStore(directory / "shardmap.json")
        self.jobs = FileJobStore(directory / "job.json")
        self.tables_path = directory / "tables.json"

    def load(self) -> ShardMap:
        if not self.maps.exists():
            raise click.ClickException(f"no keyspace in {self.directory}: run `phalanx shard init`")
        return self.maps.load()

    def tables(self) -> list[TableSpec]:
        if not self.tables_path.exists():
            return []
        return msgspec.json.decode(self.tables_path.read_bytes(), type=list[TableSpec])

    def save_tables(self, tables: Sequence[TableSpec]) -> None:
        self.tables_path.write_bytes(msgspec.json.encode(list(tables)))

    def default_location(self, shard: str) -> str:
        return f"sqlite:{(self.directory / f'{shard}.db').resolve()}"

    def backends(
        self, shard_map: ShardMap, extra: dict[str, str] | None = None
    ) -> dict[str, ShardBackend]:
        locations = {
            s: shard_map.locations.get(s, self.default_location(s)) for s in shard_map.shards
        }
        locations.update(extra or {})
        return {name: open_backend(name, url) for name, url in locations.items()}


def _run(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(work())
    except PhalanxError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


async def _close(backends: dict[str, ShardBackend]) -> None:
    for backend in backends.values():
        await backend.close()


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        name, equals, raw = pair.partition("=")
        if not equals:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--option")
        try:
            options[name] = json.loads(raw)
        except json.JSONDecodeError:
            options[name] = raw
    return options


@click.group()
def shard() -> None:
    """Sharded keyspaces: strategies, routing, online rebalancing, migrations, advice."""


@shard.command()
@_dir_option
@click.option(
    "--strategy", "name", type=click.Choice(STRATEGY_NAMES), default="jump", show_default=True
)
@click.option("--shards", required=True, help="Comma-separated shard names.")
@click.option("--option", "options", multiple=True, help="Strategy option NAME=VALUE (JSON value).")
@click.option(
    "--location",
    "locations",
    multiple=True,
    help="SHARD=URL (sqlite:PATH or postgres:CONNINFO); default a SQLite file in the directory.",
)
def init(
    directory: Path, name: str, shards: str, options: tuple[str, ...], locations: tuple[str, ...]
) -> None:
    """Create a keyspace: a version-1 map over SHARDS."""
    keyspace = Keyspace(directory)
    if keyspace.maps.exists():
        raise click.ClickException(f"{keyspace.maps.path} already exists")
    directory.mkdir(parents=True, exist_ok=True)
    names = [s.strip() for s in shards.split(",") if s.strip()]
    given = dict(_parse_options(locations))
    try:
        built = strategy(name, names, **_parse_options(options))
    except (ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc
    where = {s: str(given.get(s, keyspace.default_location(s))) for s in names}
    shard_map = ShardMap.create(built, where)

    async def work() -> None:
        backends = keyspace.backends(shard_map)
        await _close(backends)  # opening creates each shard's metadata table

    _run(work)
    keyspace.maps.create(shard_map)
    click.echo(f"keyspace {directory}: {name} over {len(names)} shards, map version 1")


@shard.command()
@_dir_option
@click.argument("name")
@click.option("--key", "key_column", required=True, help="The shard key column.")
@click.option("--pk", "pk_column", required=True, help="The primary key column.")
@click.option("--columns", required=True, help="Comma-separated columns, in order.")
@click.option("--ddl", required=True, help="CREATE TABLE IF NOT EXISTS ... run on every shard.")
def table(
    directory: Path, name: str, key_column: str, pk_column: str, columns: str, ddl: str
) -> None:
    """Register a sharded table and create it on every shard."""
    keyspace = Keyspace(directory)
    shard_map = keyspace.load()
    try:
        spec = TableSpec(
            name, key_column, pk_column, tuple(c.strip() for c in columns.split(",")), ddl
        )
    except PhalanxError as exc:
        raise click.ClickException(str(exc)) from exc

    async def work() -> None:
        backends = keyspace.backends(shard_map)
        try:
            for backend in backends.values():
                await backend.run([(ddl, ())])
        finally:
            await _close(backends)

    _run(work)
    keyspace.save_tables([*(t for t in keyspace.tables() if t.name != name), spec])
    click.echo(f"table {name} on {len(shard_map.shards)} shards")


@shard.command(name="map")
@_dir_option
def show_map(directory: Path) -> None:
    """Print the current shard map (JSON)."""
    shard_map = Keyspace(directory).load()
    click.echo(json.dumps(msgspec.to_builtins(shard_map), indent=2))


@shard.command()
@_dir_option
@click.argument("keys", nargs=-1, required=True)
def route(directory: Path, keys: tuple[str, ...]) -> None:
    """Print the shard of each KEY."""
    built = Keyspace(directory).load().build()
    for key in keys:
        click.echo(f"{key}\t{built.shard_for(key)}")


def _parse_order(spec: str) -> tuple[tuple[str, str], ...]:
    """``"balance desc, id"`` -> ``(("balance", "desc"), ("id", "asc"))``."""
    order = []
    for part in spec.split(","):
        words = part.split()
        if not words:
            continue
        if len(words) > 2 or (len(words) == 2 and words[1].lower() not in {"asc", "desc"}):
            raise click.BadParameter(
                f"expected COLUMN [asc|desc], got {part!r}", param_hint="--order-by"
            )
        order.append((words[0], words[1].lower() if len(words) == 2 else "asc"))
    return tuple(order)


def _parse_aggregates(specs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``("count:*", "sum:balance")`` -> ``(("count", "*"), ("sum", "balance"))``."""
    parsed = []
    for spec in specs:
        function, colon, column = spec.partition(":")
        if not colon or not function or not column:
            raise click.BadParameter(
                f"expected FUNCTION:COLUMN (count:*, sum:balance), got {spec!r}",
                param_hint="--aggregate",
            )
        parsed.append((function.lower(), column))
    return tuple(parsed)


def _split_names(value: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in value.split(",") if n.strip())


def _merged_query(
    table_name: str,
    columns: str,
    where: str,
    values: tuple[Any, ...],
    order_by: str,
    limit: int | None,
    offset: int,
    aggregates: tuple[str, ...],
    group_by: str,
) -> Select | Aggregate:
    """The router query the ``--table`` options describe."""
    if aggregates and (order_by or limit is not None or offset):
        raise click.UsageError(
            "--aggregate answers sorted groups; drop --order-by/--limit/--offset"
        )
    if group_by and not aggregates:
        raise click.UsageError("--group-by needs --aggregate")
    if not aggregates and not columns:
        raise click.UsageError("--table needs --columns (or --aggregate)")
    try:
        if aggregates:
            return Aggregate(
                table_name,
                _parse_aggregates(aggregates),
                group_by=_split_names(group_by),
                where=where,
                params=values,
            )
        return Select(
            table_name,
            _split_names(columns),
            where=where,
            params=values,
            order_by=_parse_order(order_by),
            limit=limit,
            offset=offset,
        )
    except PhalanxError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@shard.command()
@_dir_option
@click.argument("sql", required=False)
@click.option("--key", default=None, help="Run SQL on this key's shard only.")
@click.option("--params", default="[]", help="JSON list of values bound to the SQL's ? parameters.")
@click.option(
    "--partial", is_flag=True, help="Answer from the shards that respond; flag the result."
)
@click.option("--table", "table_name", default=None, help="Query TABLE on every shard, merged.")
@click.option(
    "--columns",
    default="",
    help="With --table: comma-separated columns to return (ORDER BY ones too).",
)
@click.option(
    "--where", default="", help="With --table: a condition (? parameters bound from --params)."
)
@click.option("--order-by", "order_by", default="", help='With --table: "col [asc|desc], ...".')
@click.option("--limit", type=click.IntRange(0), default=None, help="With --table: rows at most.")
@click.option("--offset", type=click.IntRange(0), default=0, help="With --table: rows skipped.")
@click.option(
    "--aggregate",
    "aggregates",
    multiple=True,
    help="With --table: FUNCTION:COLUMN (count, sum, min, max, avg; count:*), repeatable.",
)
@click.option("--group-by", "group_by", default="", help="With --aggregate: comma-separated.")
def query(
    directory: Path,
    sql: str | None,
    key: str | None,
    params: str,
    partial: bool,
    table_name: str | None,
    columns: str,
    where: str,
    order_by: str,
    limit: int | None,
    offset: int,
    aggregates: tuple[str, ...],
    group_by: str,
) -> None:
    """Run SQL on one shard (--key) or every shard (rows concatenated); or, with --table,
    a query merged across shards: global --order-by/--limit/--offset (k-way merge), or
    --aggregate (COUNT/SUM/MIN/MAX/AVG, optionally --group-by) from partial aggregates."""
    keyspace = Keyspace(directory)
    shard_map = keyspace.load()
    values = json.loads(params)
    structured = bool(
        columns or where or order_by or limit is not None or offset or aggregates or group_by
    )
    if (sql is None) == (table_name is None):
        raise click.UsageError("give SQL or --table, not both and not neither")
    if sql is not None and structured:
        raise click.UsageError("--where/--order-by/--limit/--offset/--aggregate need --table")
    if table_name is not None and key is not None:
        raise click.UsageError("--key routes raw SQL; with --table put the key in --where")
    request = (
        None
        if table_name is None
        else _merged_query(
            table_name, columns, where, tuple(values), order_by, limit, offset, aggregates, group_by
        )
    )

    async def work() -> tuple[list[tuple[Any, ...]], dict[str, str]]:
        backends = keyspace.backends(shard_map)
        router = Router(shard_map, backends, policy="partial" if partial else "fail")
        try:
            if isinstance(request, Aggregate):
                result = await router.aggregate(request)
            elif isinstance(request, Select):
                result = await router.select(request)
            elif key is not None:
                return await router.fetch(key, str(sql), values), {}
            else:
                result = await router.scatter(str(sql), values)
            return result.rows, result.failed
        finally:
            await router.close()

    rows, failed = _run(work)
    for row in rows[:PRINT_ROWS_MAX]:
        click.echo("\t".join("NULL" if v is None else str(v) for v in row))
    if len(rows) > PRINT_ROWS_MAX:
        click.echo(f"... {len(rows) - PRINT_ROWS_MAX} more rows", err=True)
    if failed:
        click.echo(f"PARTIAL: shards failed: {', '.join(sorted(failed))}", err=True)


def _rebalance(keyspace: Keyspace, new_map: ShardMap, *, resume: bool = False) -> None:
    old_map = keyspace.load()
    tables = keyspace.tables()
    if not resume:
        pending = keyspace.jobs.load()
        if pending is not None and pending.phase != "done":
            raise click.ClickException(
                f"rebalance {pending.job_id} is at phase {pending.phase}: "
                "run `phalanx shard resume`"
            )
        if not tables:
            raise click.ClickException("no tables registered: `phalanx shard table ...` first")
        try:
            job = plan(f"v{new_map.version}", old_map, new_map, tables)
        except PhalanxError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
        keyspace.jobs.save(job)
    loaded = keyspace.jobs.load()
    if loaded is None:
        raise click.ClickException("no rebalance to resume")
    job = loaded
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description:9s}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[eta]}"),
    )

    async def work() -> float | None:
        everything = keyspace.backends(job.old_map, dict(job.new_map.locations))
        for name in job.new_map.shards:
            everything.setdefault(name, open_backend(name, keyspace.default_location(name)))
        with Progress(*columns, console=console, transient=False) as bar:
            task: TaskID = bar.add_task("prepare", total=1, rate="", eta="")

            def show(step: MoveProgress) -> None:
                eta = "" if step.eta_s is None else f"ETA {step.eta_s:,.1f}s"
                bar.update(
                    task,
                    description=step.phase,
                    completed=step.rows_done,
                    total=max(step.rows_total, step.rows_done, 1),
                    rate=f"{step.rows_per_s:,.0f} rows/s",
                    eta=eta,
                )

            try:
                state = await Rebalancer(
                    keyspace.jobs, keyspace.maps, everything, on_progress=show
                ).run()
            finally:
                await _close(everything)
            bar.update(
                task,
                description="done",
                completed=max(state.rows_total, 1),
                total=max(state.rows_total, 1),
                eta="",
            )
        return state.write_fence_s

    started = time.monotonic()
    fence_s = _run(work)
    final = keyspace.jobs.load()
    if final is None:  # pragma: no cover - the rebalancer saved it at every step
        raise click.ClickException("the rebalance job disappeared")
    keyspace.jobs.path.replace(keyspace.directory / f"job-{final.job_id}.done.json")
    fence = "" if fence_s is None else f"; writes fenced for {fence_s * 1000:,.0f} ms"
    click.echo(
        f"map version {final.new_map.version}: {final.rows_copied:,} rows copied, "
        f"{final.rows_caught_up:,} changes caught up, {final.rows_verified:,} verified, "
        f"{final.rows_cleaned:,} cleaned in {time.monotonic() - started:,.1f}s{fence}"
    )


@shard.command()
@_dir_option
@click.argument("name")
@click.option(
    "--location", default=None, help="sqlite:PATH or postgres:CONNINFO (default: a SQLite file)."
)
def add(directory: Path, name: str, location: str | None) -> None:
    """Add shard NAME and move its share of rows to it, online."""
    keyspace = Keyspace(directory)
    old = keyspace.load()
    if name in old.shards:
        raise click.ClickException(f"{name} is already a shard")
    where = {name: location or keyspace.default_location(name)}
    _rebalance(keyspace, old.with_shards([*old.shards, name], where))


@shard.command()
@_dir_option
@click.argument("name")
def remove(directory: Path, name: str) -> None:
    """Move every row off shard NAME, online, and drop it from the map."""
    keyspace = Keyspace(directory)
    old = keyspace.load()
    if name not in old.shards:
        raise click.ClickException(f"{name} is not a shard")
    _rebalance(keyspace, old.with_shards([s for s in old.shards if s != name]))


@shard.command()
@_dir_option
@click.argument("name")
@click.option("--new", "new_name", required=True, help="The shard taking the upper part.")
@click.option("--at", "at", default=None, help="Split key (default: the range's midpoint).")
@click.option("--location", default=None, help="Location of the new shard.")
def split(directory: Path, name: str, new_name: str, at: str | None, location: str | None) -> None:
    """Split range shard NAME: NEW takes the keys from --at up (range strategy only)."""
    keyspace = Keyspace(directory)
    old = keyspace.load()
    built = old.build()
    if not isinstance(built, RangeStrategy):
        raise click.ClickException("split needs the range strategy; use `add` for the others")
    try:
        point = at.encode() if at is not None else built.split_point(name)
        after = built.split(name, point, new_name)
    except PhalanxError as exc:
        raise click.ClickException(str(exc)) from exc
    _rebalance(
        keyspace, old.advance(after, {new_name: location or keyspace.default_location(new_name)})
    )


@shard.command()
@_dir_option
@click.argument("name")
@click.option("--to", "new_name", required=True, help="The shard receiving the rows.")
@click.option(
    "--at",
    default=None,
    help="Range maps: move only the keys between the shared bound and this key to the "
    "neighbour --to. Without it --to is a new shard taking NAME's place.",
)
@click.option("--location", default=None, help="Location of a new shard.")
def move(directory: Path, name: str, new_name: str, at: str | None, location: str | None) -> None:
    """Move shard NAME's rows to a new shard (e.g. a bigger machine), or with --at move a
    key range to the neighbouring range shard --to."""
    keyspace = Keyspace(directory)
    old = keyspace.load()
    if at is not None:
        built = old.build()
        if not isinstance(built, RangeStrategy):
            raise click.ClickException("--at needs the range strategy")
        if name not in old.shards or new_name not in old.shards:
            raise click.ClickException(f"need existing shards {name} and {new_name}")
        left, right = sorted((name, new_name), key=old.shards.index)
        try:
            after = built.move_bound(left, right, at.encode())
        except PhalanxError as exc:
            raise click.ClickException(str(exc)) from exc
        _rebalance(keyspace, old.advance(after))
        return
    if name not in old.shards or new_name in old.shards:
        raise click.ClickException(f"need an existing {name} and a new {new_name}")
    renamed = [new_name if s == name else s for s in old.shards]
    after_map = strategy(old.strategy, renamed, **old.options)
    where = {new_name: location or keyspace.default_location(new_name)}
    _rebalance(keyspace, old.advance(after_map, where))


@shard.command()
@_dir_option
def resume(directory: Path) -> None:
    """Continue the rebalance that stopped (crash, interrupt) where it was."""
    keyspace = Keyspace(directory)
    job = keyspace.jobs.load()
    if job is None or job.phase == "done":
        raise click.ClickException("no rebalance in progress")
    _rebalance(keyspace, job.new_map, resume=True)


@shard.command()
@_dir_option
def status(directory: Path) -> None:
    """Map version, shards with their fence, schema version and row counts, and any job."""
    keyspace = Keyspace(directory)
    shard_map = keyspace.load()
    tables = keyspace.tables()

    async def work() -> list[list[str]]:
        backends = keyspace.backends(shard_map)
        rows = []
        try:
            for name in shard_map.shards:
                backend = backends[name]
                meta = await backend.meta()
                counts = [
                    str((await backend.fetch(f"SELECT COUNT(*) FROM {t.name}", ()))[0][0])  # noqa: S608 - checked identifier
                    for t in tables
                ]
                rows.append(
                    [
                        name,
                        str(meta.get("fence_version", 0)),
                        str(meta.get("schema_version", 0)),
                        *counts,
                    ]
                )
        finally:
            await _close(backends)
        return rows

    rows = _run(work)
    console = Console()
    console.print(f"map version {shard_map.version}, strategy {shard_map.strategy}")
    grid = Table("shard", "fence", "schema", *(t.name for t in tables))
    for row in rows:
        grid.add_row(*row)
    console.print(grid)
    job = keyspace.jobs.load()
    if job is not None and job.phase != "done":
        console.print(
            f"rebalance {job.job_id} stopped at phase {job.phase}: `phalanx shard resume`"
        )


@shard.command()
@_dir_option
@click.argument("migrations", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--to", "target", type=int, default=None, help="Target version (default: latest).")
def migrate(directory: Path, migrations: Path, target: int | None) -> None:
    """Apply the versioned migrations in MIGRATIONS to every shard."""
    keyspace = Keyspace(directory)
    shard_map = keyspace.load()
    try:
        loaded = load_migrations(migrations)
    except PhalanxError as exc:
        raise click.ClickException(str(exc)) from exc

    async def work() -> Any:
        backends = keyspace.backends(shard_map)
        try:
            return await Migrator(backends, loaded).migrate(
                target, on_applied=lambda s, m: click.echo(f"{s}: applied {m.version} {m.name}")
            )
        finally:
            await _close(backends)

    report = _run(work)
    for name in sorted(report.after):
        note = f"  ERROR {report.errors[name]}" if name in report.errors else ""
        click.echo(f"{name}: version {report.before[name]} -> {report.after[name]}{note}")
    if not report.ok:
        raise click.ClickException("some shards did not reach the target; fix and rerun")


@shard.command(name="advise")
@click.option("--database", required=True, help="sqlite:PATH or postgres:CONNINFO")
@click.option(
    "--sample-s",
    type=click.FloatRange(0.0, SAMPLE_S_MAX),
    default=1.0,
    show_default=True,
    help="PostgreSQL: seconds between the two write-counter readings.",
)
@click.option(
    "--writes-per-s", type=float, default=None, help="Write rate, when it cannot be read (SQLite)."
)
@click.option(
    "--cpu-percent", type=float, default=None, help="Sustained CPU use of the database host."
)
@click.option("--latency-ms-p99", type=float, default=None, help="Current p99 query latency.")
@click.option(
    "--baseline-latency-ms-p99", type=float, default=None, help="p99 latency when things were fine."
)
@click.option("--no-indexes", is_flag=True, help="The slow queries do not use indexes yet.")
def advise_command(
    database: str,
    sample_s: float,
    writes_per_s: float | None,
    cpu_percent: float | None,
    latency_ms_p99: float | None,
    baseline_latency_ms_p99: float | None,
    no_indexes: bool,
) -> None:
    """Should this database be sharded? The guide's indicators and what to try first."""
    engine, size_bytes, measured_writes, notes = _measure(database, sample_s)
    metrics = DatabaseMetrics(
        engine=engine,
        size_bytes=size_bytes,
        writes_per_s=writes_per_s if writes_per_s is not None else measured_writes,
        cpu_percent=cpu_percent,
        latency_ms_p99=latency_ms_p99,
        latency_ms_p99_baseline=baseline_latency_ms_p99,
        uses_indexes=not no_indexes,
    )
    advice = advise(metrics)
    grid = Table("indicator", "measured", "threshold", "fired")
    for indicator in advice.indicators:
        grid.add_row(
            indicator.name,
            indicator.measured,
            indicator.threshold,
            "YES" if indicator.fired else "no",
        )
    console = Console()
    console.print(grid)
    for note in notes:
        console.print(f"[dim]{note}[/dim]")
    for index, step in enumerate(advice.try_first, 1):
        console.print(f"{index}. {step}")
    console.print(advice.summary)


def _measure(database: str, sample_s: float) -> tuple[str, int, float | None, list[str]]:
    """Engine, size, write rate (None when unknown) and notes on what was not read."""
    scheme, _, rest = database.partition(":")
    if scheme == "sqlite":
        path = Path(rest)
        if not path.exists():
            raise click.ClickException(f"no such file: {path}")
        wal = path.with_name(path.name + "-wal")
        size = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return "sqlite", size, None, ["write rate, CPU, latency: SQLite keeps none; use the flags"]
    if scheme in {"postgres", "postgresql"}:
        conninfo = rest if scheme == "postgres" else database
        try:
            reading = read_postgres(conninfo, sample_s)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        notes = ["CPU: PostgreSQL does not expose the host's CPU use; give --cpu-percent"]
        if reading.has_pg_stat_statements:
            mean = reading.statement_ms_mean
            notes.append(
                "latency: pg_stat_statements mean statement time "
                + ("(no statements in the sample)" if mean is None else f"{mean:,.2f} ms")
                + "; it keeps no p99, give --latency-ms-p99 and --baseline-latency-ms-p99"
            )
        else:
            notes.append(
                "latency: pg_stat_statements is not installed; give --latency-ms-p99 and "
                "--baseline-latency-ms-p99"
            )
        return "postgres", reading.size_bytes, reading.writes_per_s, notes
    raise click.BadParameter(f"expected sqlite:PATH or postgres:CONNINFO, got {database!r}")


@shard.command(name="demo")
@click.option("--rows", type=click.IntRange(1, 1_000_000), default=20_000, show_default=True)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the keyspace here (default: a temporary directory, removed afterwards).",
)
def demo_command(rows: int, directory: Path | None) -> None:
    """Grow a keyspace from 2 to 3 shards while a writer keeps writing, then check every row."""
    import tempfile

    from phalanx.sharding.showcase import grow_under_writes

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description:9s}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
        TextColumn("{task.fields[rate]}"),
    )

    async def work(where: Path) -> Any:
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("prepare", total=1, rate="")

            def show(step: MoveProgress) -> None:
                bar.update(
                    task,
                    description=step.phase,
                    completed=step.rows_done,
                    total=max(step.rows_total, step.rows_done, 1),
                    rate=f"{step.rows_per_s:,.0f} rows/s",
                )

            return await grow_under_writes(where, rows=rows, on_progress=show)

    if directory is not None:
        if (directory / "shardmap.json").exists():
            raise click.ClickException(f"{directory} already holds a keyspace")
        result = _run(lambda: work(directory))
    else:
        with tempfile.TemporaryDirectory(prefix="phalanx-shards-") as temporary:
            result = _run(lambda: work(Path(temporary)))
    click.echo(f"before: {result.rows_before}")
    click.echo(f"after:  {result.rows_after}  ({result.rows_moved:,} rows moved to s2)")
    click.echo(
        f"{result.writes:,} writes during the move, slowest {result.write_ms_max:,.0f} ms; "
        f"writes fenced at cut-over for {result.write_fence_ms:,.0f} ms"
    )
    click.echo(
        f"checked every row: {result.lost} lost, {result.duplicated} duplicated, "
        f"{result.misplaced} misplaced, {result.stale} stale"
    )
    if not result.ok:
        raise click.ClickException("the keyspace does not hold every acknowledged write")
