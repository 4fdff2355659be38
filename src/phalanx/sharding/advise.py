"""The "when to shard" advisor: the guide's indicators applied to one database's figures.

:func:`advise` is pure: it takes :class:`DatabaseMetrics` and returns which indicators fired
and what to try, in the order the guide recommends: vertical scaling, read replicas, query
optimisation, archiving, and only then sharding.

:func:`read_postgres` gathers what a PostgreSQL server exposes about itself: the database's
size (``pg_database_size``), its write rate (the change of ``pg_stat_database``'s inserted,
updated and deleted row counters over a sampling interval), and, when the
``pg_stat_statements`` extension is installed, the mean statement time over the same
interval. PostgreSQL does not expose the host's CPU use, and no statistics view holds a p99:
those stay command-line figures (``--cpu-percent``, ``--latency-ms-p99``).

Thresholds (:data:`THRESHOLDS`): PostgreSQL 1 TB or 10,000 writes/s, MySQL 100 GB or 5,000
writes/s (the guide's figures); SQLite 50 GB or 1,000 writes/s (Phalanx's own choice: one
writer at a time, one file). CPU above 80% sustained, and p99 latency at least twice its
baseline although the queries use indexes, fire on every engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "THRESHOLDS",
    "Advice",
    "DatabaseMetrics",
    "Indicator",
    "PostgresReading",
    "advise",
    "read_postgres",
]

#: engine -> (size in bytes, writes per second) beyond which sharding is on the table.
THRESHOLDS: Final = {
    "postgres": (1_000_000_000_000, 10_000.0),
    "mysql": (100_000_000_000, 5_000.0),
    "sqlite": (50_000_000_000, 1_000.0),
}
CPU_PERCENT_MAX: Final = 80.0
LATENCY_GROWTH_MAX: Final = 2.0


@dataclass(frozen=True)
class DatabaseMetrics:
    engine: str
    size_bytes: int
    writes_per_s: float | None = None
    cpu_percent: float | None = None
    latency_ms_p99: float | None = None
    latency_ms_p99_baseline: float | None = None
    uses_indexes: bool = True


@dataclass(frozen=True)
class Indicator:
    name: str
    fired: bool
    measured: str
    threshold: str


@dataclass(frozen=True)
class Advice:
    indicators: tuple[Indicator, ...]
    try_first: tuple[str, ...]
    shard: bool
    summary: str


def advise(metrics: DatabaseMetrics) -> Advice:
    if metrics.engine not in THRESHOLDS:
        raise ValueError(f"engine: expected one of {sorted(THRESHOLDS)}, got {metrics.engine!r}")
    size_max, writes_max = THRESHOLDS[metrics.engine]
    size_fired = metrics.size_bytes > size_max
    writes_fired = metrics.writes_per_s is not None and metrics.writes_per_s > writes_max
    cpu_fired = metrics.cpu_percent is not None and metrics.cpu_percent > CPU_PERCENT_MAX
    latency_fired = (
        metrics.latency_ms_p99 is not None
        and metrics.latency_ms_p99_baseline is not None
        and metrics.latency_ms_p99_baseline > 0
        and metrics.latency_ms_p99 >= LATENCY_GROWTH_MAX * metrics.latency_ms_p99_baseline
        and metrics.uses_indexes
    )

    def show(value: float | None, unit: str) -> str:
        return "unknown" if value is None else f"{value:,.0f} {unit}"

    indicators = (
        Indicator(
            "size", size_fired, f"{metrics.size_bytes / 1e9:,.1f} GB", f"> {size_max / 1e9:,.0f} GB"
        ),
        Indicator(
            "write rate",
            writes_fired,
            show(metrics.writes_per_s, "writes/s"),
            f"> {writes_max:,.0f} writes/s",
        ),
        Indicator(
            "CPU (sustained)",
            cpu_fired,
            show(metrics.cpu_percent, "%"),
            f"> {CPU_PERCENT_MAX:.0f}%",
        ),
        Indicator(
            "p99 latency despite indexes",
            latency_fired,
            show(metrics.latency_ms_p99, "ms"),
            f">= {LATENCY_GROWTH_MAX:.0f}x baseline "
            f"({show(metrics.latency_ms_p99_baseline, 'ms')})",
        ),
    )
    steps = []
    if cpu_fired or writes_fired:
        steps.append("vertical scaling: more CPU, memory and faster disks for the primary")
    if cpu_fired or latency_fired:
        steps.append("read replicas: move read traffic off the primary")
    if latency_fired or cpu_fired or not metrics.uses_indexes:
        steps.append("query optimisation: indexes, query plans, connection pooling, caching")
    if size_fired:
        steps.append("archiving: move cold rows to cheaper storage and partition by time")
    shard = size_fired or writes_fired
    if shard:
        summary = (
            "Sharding is justified by data volume or write rate, which a single primary cannot "
            "absorb however it is tuned; try the steps above first if they have not been."
        )
    elif steps:
        summary = "Not yet: the pressure can be relieved without sharding (steps above)."
    else:
        summary = "Not needed: no indicator fired."
    return Advice(indicators, tuple(steps), shard, summary)


#: Longest sampling interval of :func:`read_postgres`.
SAMPLE_S_MAX: Final = 60.0

_COUNTERS: Final = (
    "SELECT pg_database_size(current_database()), tup_inserted + tup_updated + tup_deleted "
    "FROM pg_stat_database WHERE datname = current_database()"
)
_HAS_STATEMENTS: Final = "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"
_STATEMENT_TIME: Final = (
    "SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(total_exec_time), 0) FROM pg_stat_statements "
    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


@dataclass(frozen=True)
class PostgresReading:
    """What :func:`read_postgres` measured; ``None`` where the server could not say."""

    size_bytes: int
    writes_per_s: float | None
    statement_ms_mean: float | None
    has_pg_stat_statements: bool


def read_postgres(
    conninfo: str, sample_s: float = 1.0, *, sleep: Callable[[float], Any] = time.sleep
) -> PostgresReading:
    """Read size, write rate and (with ``pg_stat_statements``) mean statement time of the
    database at ``conninfo``, sampling the counters ``sample_s`` apart (0: no rate)."""
    if not 0.0 <= sample_s <= SAMPLE_S_MAX:
        raise ValueError(f"sample_s: 0..{SAMPLE_S_MAX}, got {sample_s}")
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        has_statements = conn.execute(_HAS_STATEMENTS).fetchone() is not None
        first = conn.execute(_COUNTERS).fetchone()
        first_time = conn.execute(_STATEMENT_TIME).fetchone() if has_statements else None
        sleep(sample_s)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        second = conn.execute(_COUNTERS).fetchone()
        second_time = conn.execute(_STATEMENT_TIME).fetchone() if has_statements else None
    if first is None or second is None:
        raise ValueError("pg_stat_database has no row for this database")
    rate = (int(second[1]) - int(first[1])) / sample_s if sample_s > 0 else None
    mean_ms = None
    if first_time is not None and second_time is not None:
        calls = int(second_time[0]) - int(first_time[0])
        if calls > 0:
            mean_ms = (float(second_time[1]) - float(first_time[1])) / calls
    return PostgresReading(int(second[0]), rate, mean_ms, has_statements)
