"""The "when to shard" advisor: the guide's indicators applied to one database's figures.

Pure: :func:`advise` takes :class:`DatabaseMetrics` (the CLI gathers them from PostgreSQL's
statistics views or a SQLite file) and returns which indicators fired and what to try, in the
order the guide recommends: vertical scaling, read replicas, query optimisation, archiving,
and only then sharding.

Thresholds (:data:`THRESHOLDS`): PostgreSQL 1 TB or 10,000 writes/s, MySQL 100 GB or 5,000
writes/s (the guide's figures); SQLite 50 GB or 1,000 writes/s (Phalanx's own choice: one
writer at a time, one file). CPU above 80% sustained, and p99 latency at least twice its
baseline although the queries use indexes, fire on every engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["THRESHOLDS", "Advice", "DatabaseMetrics", "Indicator", "advise"]

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
