"""Per-call overhead of the resilience primitives on the success path, next to their peers.

"Overhead" is the time a wrapped call takes minus the time the bare call takes, for a
function that does nothing (``def f(x): return x``). Each case runs interleaved with its
bare baseline, ``--repeat`` times, with the garbage collector off; the reported figure is
``min(wrapped) - min(bare)`` per call, the estimate least disturbed by other processes.

Async functions are driven by hand, ``coro.send(None)`` until ``StopIteration``, for the
bare baseline and the wrapped call alike. A coroutine that never suspends finishes on its
first send, so no event-loop scheduling enters the numbers. The driver itself runs inside
a running event loop, because some primitives (``asyncio.timeout``) need a current task.

Usage::

    .venv/bin/python benchmarks/bench_resilience.py                 # print the table
    .venv/bin/python benchmarks/bench_resilience.py --write docs/benchmarks.md
    .venv/bin/python benchmarks/bench_resilience.py --quick         # a few seconds, rough
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from importlib import metadata
from itertools import repeat
from pathlib import Path
from typing import Any, Final, Literal

import pybreaker
import stamina
import tenacity
from rich.console import Console
from rich.table import Table

from phalanx.resilience.breaker import CircuitBreaker
from phalanx.resilience.bulkhead import Bulkhead
from phalanx.resilience.pipeline import Pipeline
from phalanx.resilience.ratelimit import BURST_PERMITS_MAX, RATE_PER_S_MAX, TokenBucket
from phalanx.resilience.retry import Retry
from phalanx.resilience.timeout import TimeLimiter

START_MARKER: Final = "<!-- bench_resilience:start -->"
END_MARKER: Final = "<!-- bench_resilience:end -->"
COMMAND: Final = ".venv/bin/python benchmarks/bench_resilience.py --write docs/benchmarks.md"
REPO: Final = Path(__file__).resolve().parent.parent

# Time spent in one timed loop (one repeat of one case), in seconds.
BUDGET_S: Final = 0.08
QUICK_BUDGET_S: Final = 0.008
REPEAT: Final = 9
QUICK_REPEAT: Final = 3
# Bounds on the number of calls in one timed loop, whatever the calibration says.
CALLS_MIN: Final = 200
CALLS_MAX: Final = 2_000_000
CALIBRATION_STEPS_MAX: Final = 24

Loop = Callable[[int], int]
"""Make ``n`` calls and return the nanoseconds they took."""
Kind = Literal["sync", "async"]


# -- the functions under test -------------------------------------------------------------


def f(x: int) -> int:
    return x


async def af(x: int) -> int:
    return x


# -- timed loops --------------------------------------------------------------------------


def sync_loop(fn: Callable[[int], object]) -> Loop:
    def run(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            fn(1)
        return time.perf_counter_ns() - start

    return run


def async_loop(fn: Callable[[int], Awaitable[object]]) -> Loop:
    afn = fn  # typed as returning an awaitable; every case here returns a coroutine

    def run(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            coro: Any = afn(1)
            try:
                coro.send(None)
            except StopIteration:
                continue
            coro.close()
            raise RuntimeError("the coroutine suspended; this driver needs one that does not")
        return time.perf_counter_ns() - start

    return run


def tenacity_iterator_loop(fn: Callable[[int], object]) -> Loop:
    """The ``for attempt in Retrying(...): with attempt:`` style, inline in the loop."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential(multiplier=0.1, max=5),
    )

    def run(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            for attempt in retrying:
                with attempt:
                    fn(1)
        return time.perf_counter_ns() - start

    return run


def method_call_loop(call: Callable[..., object], fn: Callable[[int], object]) -> Loop:
    """``call(fn, 1)`` inline in the loop: ``breaker.call(f, x)`` style, no extra frame."""

    def run(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            call(fn, 1)
        return time.perf_counter_ns() - start

    return run


def try_acquire_loop(fn: Callable[[int], object]) -> Loop:
    """``if bucket.try_acquire(): f(x)`` inline; the bucket never runs dry."""
    bucket = TokenBucket(rate_per_s=RATE_PER_S_MAX, burst=BURST_PERMITS_MAX)
    try_acquire = bucket.try_acquire

    def run(n: int) -> int:
        refused = 0
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            if try_acquire():
                fn(1)
            else:
                refused += 1
        elapsed = time.perf_counter_ns() - start
        if refused:
            raise RuntimeError(f"token bucket refused {refused} of {n} calls")
        return elapsed

    return run


# -- cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    label: str
    make: Callable[[], Loop]


@dataclass(frozen=True)
class Case:
    name: str
    kind: Kind
    phalanx: Contender
    peers: tuple[Contender, ...] = ()
    target_ns: float | None = None

    @property
    def title(self) -> str:
        return f"{self.name}: `{self.phalanx.label}`"


def _sync(label: str, wrap: Callable[[], Callable[[int], object]]) -> Contender:
    return Contender(label, lambda: sync_loop(wrap()))


def _async(label: str, wrap: Callable[[], Callable[[int], Awaitable[object]]]) -> Contender:
    return Contender(label, lambda: async_loop(wrap()))


def _tenacity_plain() -> Callable[[int], int]:
    return tenacity.retry(stop=tenacity.stop_after_attempt(3))(f)


def _tenacity_wait() -> Callable[[int], int]:
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=5),
    )(f)


def _tenacity_pybreaker() -> Callable[[int], int]:
    inner = tenacity.retry(stop=tenacity.stop_after_attempt(3))(f)
    return pybreaker.CircuitBreaker()(inner)


def cases() -> list[Case]:
    return [
        Case(
            "retry, sync",
            "sync",
            _sync("@Retry()", lambda: Retry()(f)),
            (
                _sync("tenacity @retry(stop_after_attempt(3))", _tenacity_plain),
                _sync("tenacity @retry(stop=3, wait=wait_exponential_jitter)", _tenacity_wait),
                Contender(
                    "tenacity for attempt in Retrying(stop=3, wait=wait_exponential)",
                    lambda: tenacity_iterator_loop(f),
                ),
                _sync(
                    "stamina @retry(on=Exception, attempts=3)",
                    lambda: stamina.retry(on=Exception, attempts=3)(f),
                ),
            ),
            250,
        ),
        Case(
            "retry, sync, no deadline publishing",
            "sync",
            _sync(
                "@Retry(propagate_deadline=False)",
                lambda: Retry(propagate_deadline=False)(f),
            ),
        ),
        Case(
            "retry, async",
            "async",
            _async("@Retry()", lambda: Retry()(af)),
            (
                _async(
                    "tenacity @retry(stop_after_attempt(3))",
                    lambda: tenacity.retry(stop=tenacity.stop_after_attempt(3))(af),
                ),
                _async(
                    "stamina @retry(on=Exception, attempts=3)",
                    lambda: stamina.retry(on=Exception, attempts=3)(af),
                ),
            ),
            1000,
        ),
        Case(
            "breaker closed, sync",
            "sync",
            _sync("@CircuitBreaker()", lambda: CircuitBreaker()(f)),
            (
                Contender(
                    "pybreaker breaker.call(f, x)",
                    lambda: method_call_loop(pybreaker.CircuitBreaker().call, f),
                ),
                _sync("pybreaker @CircuitBreaker()", lambda: pybreaker.CircuitBreaker()(f)),
            ),
            200,
        ),
        Case(
            "breaker closed, sync",
            "sync",
            Contender("breaker.call(f, x)", lambda: method_call_loop(CircuitBreaker().call, f)),
        ),
        Case(
            "breaker closed, async",
            "async",
            _async("@CircuitBreaker()", lambda: CircuitBreaker()(af)),
        ),
        Case(
            "retry + breaker, sync",
            "sync",
            _sync(
                "@Pipeline(CircuitBreaker(), Retry())",
                lambda: Pipeline(CircuitBreaker(), Retry())(f),
            ),
            (
                _sync(
                    "pybreaker @CircuitBreaker() over tenacity @retry(stop=3)", _tenacity_pybreaker
                ),
            ),
            500,
        ),
        Case(
            "bulkhead uncontended, sync",
            "sync",
            _sync("@Bulkhead(max_concurrent=10)", lambda: Bulkhead(max_concurrent=10)(f)),
        ),
        Case(
            "token bucket, sync",
            "sync",
            Contender("if bucket.try_acquire(): f(x)", lambda: try_acquire_loop(f)),
        ),
        Case(
            "token bucket, sync",
            "sync",
            _sync(
                "@TokenBucket(...) (acquire)",
                lambda: TokenBucket(rate_per_s=RATE_PER_S_MAX, burst=BURST_PERMITS_MAX)(f),
            ),
        ),
        Case(
            "time limiter, sync",
            "sync",
            _sync(
                '@TimeLimiter(1.0, sync_mode="cooperative")',
                lambda: TimeLimiter(1.0, sync_mode="cooperative")(f),
            ),
        ),
        Case(
            "retry + per-attempt timeout, async",
            "async",
            _async(
                "@Retry(timeout_per_attempt_s=1.0)", lambda: Retry(timeout_per_attempt_s=1.0)(af)
            ),
        ),
    ]


# -- measuring ----------------------------------------------------------------------------


@dataclass
class Measured:
    """Nanoseconds per call: the minimum and median over repeats."""

    wrapped_min: float
    wrapped_median: float
    bare_min: float
    bare_median: float

    @property
    def overhead(self) -> float:
        return self.wrapped_min - self.bare_min

    @property
    def overhead_median(self) -> float:
        return self.wrapped_median - self.bare_median


@dataclass
class Result:
    case: Case
    phalanx: Measured
    peers: list[tuple[str, Measured]] = field(default_factory=list)


def calibrate(loop: Loop, budget_s: float) -> int:
    """The number of calls that makes one timed loop last about ``budget_s``."""
    n = 16
    elapsed_ns = loop(n)
    for _ in range(CALIBRATION_STEPS_MAX):
        if elapsed_ns >= budget_s * 1e9 / 8 or n >= CALLS_MAX:
            break
        n *= 4
        elapsed_ns = loop(n)
    per_call_ns = max(elapsed_ns / n, 1.0)
    return int(min(max(budget_s * 1e9 / per_call_ns, CALLS_MIN), CALLS_MAX))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


async def measure(loop: Loop, bare: Loop, repeats: int, budget_s: float) -> Measured:
    n_wrapped = calibrate(loop, budget_s)
    n_bare = calibrate(bare, budget_s)
    wrapped: list[float] = []
    baseline: list[float] = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            baseline.append(bare(n_bare) / n_bare)
            wrapped.append(loop(n_wrapped) / n_wrapped)
        finally:
            gc.enable()
        # Let the event loop run once: it drops the timer handles that cancelled
        # asyncio.timeout scopes leave behind, as it would in a real program.
        await asyncio.sleep(0)
    return Measured(min(wrapped), _median(wrapped), min(baseline), _median(baseline))


async def run_all(
    selected: list[Case], repeats: int, budget_s: float, console: Console
) -> tuple[list[Result], dict[Kind, float]]:
    bare: dict[Kind, Loop] = {"sync": sync_loop(f), "async": async_loop(af)}
    results: list[Result] = []
    bare_seen: dict[Kind, list[float]] = {"sync": [], "async": []}
    for case in selected:
        console.print(f"[dim]measuring {case.name}[/dim]")
        measured = await measure(case.phalanx.make(), bare[case.kind], repeats, budget_s)
        bare_seen[case.kind].append(measured.bare_min)
        result = Result(case, measured)
        for peer in case.peers:
            peer_measured = await measure(peer.make(), bare[case.kind], repeats, budget_s)
            bare_seen[case.kind].append(peer_measured.bare_min)
            result.peers.append((peer.label, peer_measured))
        results.append(result)
    bare_ns = {kind: min(values) for kind, values in bare_seen.items() if values}
    return results, bare_ns


# -- reporting ----------------------------------------------------------------------------

Row = tuple[str, str, str, str, str, str]


def _ns(value: float) -> str:
    return f"{value:,.0f}"


def rows(results: list[Result]) -> list[Row]:
    """One row per (case, peer); case, Phalanx figure and target only on a case's first row."""
    table: list[Row] = []
    for result in results:
        case = result.case
        ours = _ns(result.phalanx.overhead)
        target = "—" if case.target_ns is None else f"≤ {_ns(case.target_ns)}"
        met = "—"
        if case.target_ns is not None:
            met = "yes" if result.phalanx.overhead <= case.target_ns else "no"
        peers: list[tuple[str, Measured | None]] = [*result.peers] or [("—", None)]
        for index, (label, measured) in enumerate(peers):
            peer_ns = "—" if measured is None else _ns(measured.overhead)
            if index == 0:
                table.append((case.title, ours, label, peer_ns, target, met))
            else:
                table.append(("", "", label, peer_ns, "", ""))
    return table


HEADERS: Final = ("case", "phalanx ns", "peer", "peer ns", "target", "met?")


def print_table(results: list[Result], console: Console) -> None:
    table = Table(title="Success-path overhead per call (ns over a bare call; lower is better)")
    for header in HEADERS:
        table.add_column(header, justify="right" if header.endswith("ns") else "left")
    for row in rows(results):
        table.add_row(*row)
    console.print(table)
    spread = Table(title="Same runs, median of repeats (shows the noise)")
    for header in ("case", "contender", "overhead min ns", "overhead median ns"):
        spread.add_column(header, justify="right" if header.endswith("ns") else "left")
    for result in results:
        entries = [(result.case.phalanx.label, result.phalanx), *result.peers]
        for label, measured in entries:
            spread.add_row(
                result.case.name,
                label,
                _ns(measured.overhead),
                _ns(measured.overhead_median),
            )
    console.print(spread)


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    if match:
        return match.group(1).strip()
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} (with uncommitted changes under src/)" if dirty else head


def markdown_section(
    results: list[Result], bare_ns: dict[Kind, float], repeats: int, budget_s: float
) -> str:
    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join(["---", "---:", "---", "---:", "---:", "---"]) + "|",
    ]
    for case, ours, peer, peer_ns, target, met in rows(results):
        shown = peer if peer == "—" else f"`{peer}`"
        cells = (case, ours, shown, peer_ns, target, met)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    today = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    bare = ", ".join(f"{kind} {_ns(value)} ns" for kind, value in bare_ns.items())
    versions = ", ".join(
        f"{name} {_version(name)}" for name in ("phalanx", "tenacity", "stamina", "pybreaker")
    )
    lines += [
        "",
        (
            f"- Measured: {today}, {repeats} repeats of about {budget_s * 1000:.0f} ms"
            f" per case; the bare call itself: {bare}."
        ),
        (
            f"- Machine: {cpu_model()}, {cores} cores available,"
            f" {platform.system()} {platform.release()}."
        ),
        f"- Python: {platform.python_implementation()} {platform.python_version()}.",
        f"- Libraries: {versions}; phalanx at commit {_git_revision()}.",
        f"- Rerun: `make bench`, which runs `{COMMAND}`.",
    ]
    return "\n".join(lines)


DOC_INTRO: Final = """# Benchmarks

Per-call overhead of the resilience primitives on the success path, measured by
`benchmarks/bench_resilience.py`. The section below is rewritten by that script.

"""


def write_markdown(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else DOC_INTRO
    if START_MARKER not in text or END_MARKER not in text:
        text = text.rstrip("\n") + f"\n\n{START_MARKER}\n{END_MARKER}\n"
    head, rest = text.split(START_MARKER, 1)
    _, tail = rest.split(END_MARKER, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{START_MARKER}\n{section}\n{END_MARKER}{tail}", encoding="utf-8")


# -- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short loops, few repeats")
    parser.add_argument("--repeat", type=int, default=None, help="timed repeats per case")
    parser.add_argument("--write", type=Path, default=None, help="rewrite the section in FILE")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this")
    args = parser.parse_args(argv)
    if args.repeat is not None and not 1 <= args.repeat <= 100:
        parser.error("--repeat: between 1 and 100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repeats = args.repeat or (QUICK_REPEAT if args.quick else REPEAT)
    budget_s = QUICK_BUDGET_S if args.quick else BUDGET_S
    selected = [c for c in cases() if args.only is None or args.only in c.name]
    if not selected:
        print(f"no case matches {args.only!r}", file=sys.stderr)
        return 2
    console = Console(width=None if sys.stdout.isatty() else 150)
    coro: Coroutine[Any, Any, tuple[list[Result], dict[Kind, float]]]
    coro = run_all(selected, repeats, budget_s, console)
    results, bare_ns = asyncio.run(coro)
    print_table(results, console)
    if args.write is not None:
        write_markdown(args.write, markdown_section(results, bare_ns, repeats, budget_s))
        console.print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
