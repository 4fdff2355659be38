"""The resilience demo: a fleet of callers riding out a flaky dependency.

Sixteen async workers call a simulated inventory service through one pipeline,
``bulkhead -> breaker -> retry -> timeout``, while the service goes through a latency spike
and an outage. A live table shows the breaker state, bulkhead occupancy, the retry budget and
the readiness probe; a summary at the end says what each policy did.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics as stats_module
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from phalanx.clock import SYSTEM_CLOCK
from phalanx.demo.consensus import run_consensus
from phalanx.demo.epilogue import run_epilogue
from phalanx.demo.flaky import PHASES, FlakyDependency
from phalanx.errors import BulkheadFull, CircuitOpen, Timeout
from phalanx.health import HealthRegistry, breaker_check
from phalanx.resilience.breaker import CircuitBreaker
from phalanx.resilience.budget import RetryBudget
from phalanx.resilience.bulkhead import Bulkhead
from phalanx.resilience.events import Event
from phalanx.resilience.pipeline import Pipeline
from phalanx.resilience.retry import Retry
from phalanx.resilience.timeout import TimeLimiter

__all__ = ["run"]

WORKERS = 16
THINK_TIME_S = 0.01
REFRESH_PER_S = 4
TRANSITIONS_SHOWN = 8


@dataclass
class Tally:
    ok: int = 0
    failed_fast: int = 0  # refused by the breaker or the bulkhead: no load on the dependency
    timed_out: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    by_phase: dict[str, list[int]] = field(default_factory=dict)

    def record(self, phase: str, outcome: str, latency_ms: float) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        counts = self.by_phase.setdefault(phase, [0, 0])
        counts[0 if outcome == "ok" else 1] += 1
        if outcome == "ok":
            self.latencies_ms.append(latency_ms)
            del self.latencies_ms[:-2000]  # a bounded sample of recent latencies


def _p(values: list[float], quantile: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return stats_module.quantiles(values, n=100)[int(quantile * 100) - 1]


class Demo:
    def __init__(self, *, duration_s: float, seed: int) -> None:
        clock = SYSTEM_CLOCK
        self.duration_s = duration_s
        self.dependency = FlakyDependency(duration_s=duration_s, clock=clock, seed=seed)
        self.transitions: list[str] = []
        self.bulkhead = Bulkhead(max_concurrent=8, max_queue=4, max_wait_s=0.05, name="inventory")
        self.breaker = CircuitBreaker(
            "inventory",
            failure_rate_threshold="50%",
            consecutive_failures=10,
            open_timeout_s=max(duration_s / 12, 0.5),
            half_open_requests=3,
            window_size_calls=40,
            minimum_calls=10,
            listeners=(self._on_breaker,),
        )
        self.budget = RetryBudget(ratio=0.2, min_retries_per_s=5.0, window_s=2.0, name="inventory")
        self.retry = Retry(
            attempts_max=3,
            base_delay_s=0.02,
            max_delay_s=0.2,
            total_timeout_s=1.0,
            budget=self.budget,
            name="inventory",
        )
        self.limiter = TimeLimiter(0.1, name="inventory")
        self.pipeline = Pipeline(self.bulkhead, self.breaker, self.retry, self.limiter)
        self.call = self.pipeline(self.dependency.__call__)
        self.health = HealthRegistry(cache_s=0.0)
        self.health.add("inventory-breaker", breaker_check(self.breaker), probes=("readiness",))
        self.ready = "ready"
        self.tally = Tally()

    def _on_breaker(self, event: Event) -> None:
        if event.kind == "state_change":
            to = getattr(event.data.get("to"), "value", event.data.get("to"))
            self.transitions.append(
                f"{self.dependency.elapsed_s():5.1f}s  {self.dependency.phase().name:<14} -> {to}"
            )

    async def worker(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while self.dependency.elapsed_s() < self.duration_s:
            phase = self.dependency.phase().name
            started = loop.time()
            try:
                await self.call(index)
                outcome = "ok"
            except (CircuitOpen, BulkheadFull):
                outcome = "failed_fast"
            except Timeout:
                outcome = "timed_out"
            except ConnectionError:
                outcome = "errors"
            self.tally.record(phase, outcome, (loop.time() - started) * 1000.0)
            await asyncio.sleep(THINK_TIME_S)

    async def probe(self) -> None:
        while self.dependency.elapsed_s() < self.duration_s:
            report = await self.health.run_probe("readiness")
            self.ready = f"{report.http_status} {report.status.value}"
            await asyncio.sleep(1 / REFRESH_PER_S)

    def table(self) -> Table:
        breaker = self.breaker.statistics()
        bulkhead = self.bulkhead.statistics()
        budget = self.budget.statistics()
        retry = self.retry.statistics()
        phase = self.dependency.phase()
        colour = {"closed": "green", "open": "red", "half_open": "yellow"}[breaker.state.value]
        grid = Table(title="Phalanx resilience demo: inventory service", show_header=True)
        grid.add_column("what")
        grid.add_column("now", justify="right")
        grid.add_row("elapsed / phase", f"{self.dependency.elapsed_s():4.1f}s  {phase.name}")
        grid.add_row("circuit breaker", Text(breaker.state.value, style=f"bold {colour}"))
        grid.add_row("readiness probe /ready", self.ready)
        grid.add_row(
            "bulkhead active / queued / rejected",
            f"{bulkhead.active}/8  {bulkhead.queued}/4  {bulkhead.rejected}",
        )
        grid.add_row(
            "retries spent / refused by budget",
            f"{retry.retries}  {budget.retries_refused}",
        )
        grid.add_row(
            "calls ok / failed fast / timed out / errors",
            f"{self.tally.ok} / {self.tally.failed_fast} / {self.tally.timed_out} / "
            f"{self.tally.errors}",
        )
        grid.add_row("calls reaching the dependency", str(self.dependency.calls))
        latencies = self.tally.latencies_ms
        grid.add_row(
            "ok latency p50 / p99", f"{_p(latencies, 0.5):.1f} ms / {_p(latencies, 0.99):.1f} ms"
        )
        return grid

    def view(self) -> Group:
        shown = self.transitions[-TRANSITIONS_SHOWN:]
        transitions = Text("\n".join(shown) or "(no transitions yet)")
        heading = "breaker transitions"
        if len(self.transitions) > len(shown):
            heading += f" (last {len(shown)} of {len(self.transitions)})"
        return Group(self.table(), Text(f"{heading}:", style="bold"), transitions)

    def summary(self) -> Table:
        table = Table(title="What each phase looked like to callers", show_header=True)
        for column in ("phase", "seconds", "calls ok", "calls failed", "dependency calls"):
            table.add_column(column, justify="right")
        for phase in PHASES:
            ok, failed = self.tally.by_phase.get(phase.name, [0, 0])
            table.add_row(
                phase.name,
                f"{phase.share * self.duration_s:.1f}",
                str(ok),
                str(failed),
                str(self.dependency.calls_by_phase[phase.name]),
            )
        return table

    async def run(self, console: Console, *, live: bool) -> None:
        display = (
            Live(self.view(), console=console, refresh_per_second=REFRESH_PER_S) if live else None
        )
        with display if display is not None else contextlib.nullcontext():
            async with asyncio.TaskGroup() as group:
                for index in range(WORKERS):
                    group.create_task(self.worker(index))
                group.create_task(self.probe())
                while self.dependency.elapsed_s() < self.duration_s:
                    await asyncio.sleep(1 / REFRESH_PER_S)
                    if display is not None:
                        display.update(self.view())
        await self.health.aclose()
        self.limiter.shutdown()


def run(*, seed: int = 7, duration_s: float = 12.0, live: bool | None = None) -> None:
    """Run the demo for ``duration_s`` seconds and print a summary."""
    console = Console()
    demo = Demo(duration_s=duration_s, seed=seed)
    console.print(
        f"[bold]{WORKERS} callers -> Pipeline(bulkhead, breaker, retry, timeout) -> a flaky "
        f"inventory service[/bold] for {duration_s:.0f}s (seed {seed})"
    )
    asyncio.run(demo.run(console, live=console.is_terminal if live is None else live))
    if not console.is_terminal or live is False:
        console.print(demo.view())
    if len(demo.transitions) > TRANSITIONS_SHOWN:
        console.print("[bold]every breaker transition:[/bold]")
        console.print("\n".join(demo.transitions))
    console.print(demo.summary())
    outage = demo.dependency.calls_by_phase["outage"]
    healthy = demo.dependency.calls_by_phase["healthy"]
    console.print(
        f"During the outage the dependency received {outage} calls, against {healthy} while "
        "healthy: the open breaker failed callers fast instead of piling load on a service "
        "that was down, and the retry budget kept retries from multiplying it."
    )
    run_epilogue(console, demo.breaker, demo.bulkhead, demo.budget, demo.retry)
    run_consensus(console)
