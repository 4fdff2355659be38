"""One chaos run: a local cluster, a workload, a nemesis, a history, a verdict, a report.

:func:`run_chaos` does, in order, each step bounded:

1. start a :class:`~phalanx.chaos.cluster.ChaosCluster` of ``nodes`` processes under
   ``out/cluster`` and wait for a leader (``LEADER_WAIT_S_MAX``);
2. prepare the workload's keys;
3. for ``time_limit_s``: ``concurrency`` client tasks run the workload (each with its own
   client, preferring a different node first, and a reader kept on that node, at
   ``rate_hz`` operations per second in all),
   while the nemesis opens and closes the fault windows of :func:`~phalanx.chaos.nemesis.plan`;
4. the final heal (every process resumed or restarted, every link restored), then
   ``recovery_s`` of calm and a leader again;
5. the workload's final operations (e.g. the set's final read);
6. kill every process (always, whatever failed before);
7. check the client history with the workload's checker
   (:func:`~phalanx.chaos.check.check_history`) and write into ``out``: ``history.jsonl``
   (client operations: ``phalanx chaos check --model <model> out/history.jsonl`` gives the
   same verdict), ``nemesis.jsonl`` (the faults, as operations of process -1 on the same
   clock), ``results.json`` and ``index.html`` (:mod:`phalanx.chaos.report`), plus the
   node logs under ``out/cluster``.

The verdict is the checker's: valid, invalid, or unknown (including a run too short to
decide, e.g. no successful read).
"""

from __future__ import annotations

import asyncio
import random
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from phalanx.chaos.check import HistoryCheck, check_history, write_timeline
from phalanx.chaos.cluster import SPARES_MAX, ChaosCluster
from phalanx.chaos.history import Operation, Recorder, write_jsonl
from phalanx.chaos.nemesis import PROXY_KINDS, FaultWindow, Nemesis, plan
from phalanx.chaos.netns import refused_faults
from phalanx.chaos.verdict import Verdict
from phalanx.chaos.workloads import Workload, workload_named
from phalanx.client import AsyncClient
from phalanx.errors import Outcome, PhalanxError

__all__ = [
    "HISTORY_OPS_MAX",
    "RunOptions",
    "RunResult",
    "run_chaos",
]

#: Most client operations one run records; the clients stop issuing more at this bound.
HISTORY_OPS_MAX: Final = 200_000
#: Most client tasks.
CONCURRENCY_MAX: Final = 64
#: How long the cluster may take to elect its first leader, and again after the heal.
LEADER_WAIT_S_MAX: Final = 30.0
#: Attempts of one client call with ``client_retries`` (the client's default).
CLIENT_ATTEMPTS_MAX: Final = 50
#: Attempts of a final operation that keeps failing (the cluster may still be recovering).
FINAL_ATTEMPTS_MAX: Final = 10
#: Attempts of the workload's setup.
SETUP_ATTEMPTS_MAX: Final = 10
_RETRY_S: Final = 0.5


class RunOptions(msgspec.Struct, kw_only=True):
    """Everything that defines a run (``results.json`` keeps it, to reproduce the run)."""

    nodes: int = 3
    workload: str = "register"
    nemesis: list[str] = msgspec.field(default_factory=lambda: ["partition", "kill"])
    time_limit_s: float = 30.0
    seed: int = 0
    concurrency: int = 5
    rate_hz: float = 100.0
    recovery_s: float = 3.0
    tick_ms: int = 20
    fsync: bool = True
    op_timeout_s: float = 3.0
    fault_s: tuple[float, float] = (1.0, 3.0)
    quiet_s: tuple[float, float] = (1.0, 3.0)
    check_timeout_s: float = 60.0
    client_retries: bool = False
    node_command: list[str] | None = None
    #: Each node in its own network namespace, partitions as iptables rules (root only).
    netns: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= CONCURRENCY_MAX:
            raise ValueError(f"concurrency: 1..{CONCURRENCY_MAX}, got {self.concurrency}")
        if self.time_limit_s <= 0 or self.rate_hz <= 0:
            raise ValueError("time_limit_s and rate_hz must be > 0")
        refused = refused_faults(self.nemesis) if self.netns else []
        if refused:
            raise ValueError(
                f"--netns cannot apply {', '.join(refused)} (they need the nodes' loopback "
                "admin endpoint or the peer proxies); use partition, kill, pause, restart, "
                "membership"
            )

    def command(self, out: Path) -> str:
        """The ``phalanx chaos run`` command line of these options."""
        argv = [
            "phalanx",
            "chaos",
            "run",
            "--nodes",
            str(self.nodes),
            "--workload",
            self.workload,
            "--nemesis",
            ",".join(self.nemesis) or "none",
            "--time-limit",
            f"{self.time_limit_s:g}",
            "--seed",
            str(self.seed),
            "--concurrency",
            str(self.concurrency),
            "--rate",
            f"{self.rate_hz:g}",
            *(["--client-retries"] if self.client_retries else []),
            *(
                ["--recovery", f"{self.recovery_s:g}"]
                if self.recovery_s != _DEFAULTS.recovery_s
                else []
            ),
            *(["--tick-ms", str(self.tick_ms)] if self.tick_ms != _DEFAULTS.tick_ms else []),
            *([] if self.fsync else ["--no-fsync"]),
            *(["--netns"] if self.netns else []),
            "--out",
            str(out),
        ]
        return shlex.join(argv)


_DEFAULTS: Final = RunOptions()


class RunResult(msgspec.Struct, kw_only=True):
    """What a run found (also ``results.json``)."""

    verdict: Verdict
    options: RunOptions
    command: str
    checker: HistoryCheck
    counts: dict[str, int]
    faults: list[FaultWindow]
    nemesis_applied: int
    nemesis_failed: int
    duration_s: float
    check_s: float
    out: str
    error: str | None = None


def _clock_us(t0_ns: int) -> int:
    return (time.monotonic_ns() - t0_ns) // 1000


async def _worker(
    index: int,
    options: RunOptions,
    cluster: ChaosCluster,
    workload: Workload,
    recorder: Recorder,
    stop_at_s: float,
) -> None:
    rng = random.Random(options.seed * 1_000_003 + index)
    first = cluster.ids[index % len(cluster.ids)]
    # One attempt per operation by default: its error then tells exactly what happened
    # (with the client's own retries, the last attempt's error is reported; see docs).
    client = AsyncClient(
        cluster.endpoints(first),
        request_timeout_s=options.op_timeout_s,
        connect_timeout_s=min(1.0, options.op_timeout_s),
        total_timeout_s=options.op_timeout_s,
        attempts_max=CLIENT_ATTEMPTS_MAX if options.client_retries else 1,
    )
    # Reads through a client kept on one member (see phalanx.chaos.workloads).
    reader = AsyncClient(
        cluster.endpoints(first)[:1],
        request_timeout_s=options.op_timeout_s,
        connect_timeout_s=min(1.0, options.op_timeout_s),
        total_timeout_s=options.op_timeout_s,
        attempts_max=CLIENT_ATTEMPTS_MAX if options.client_retries else 1,
    )
    process = index
    mean_gap_s = options.concurrency / options.rate_hz
    try:
        while time.monotonic() < stop_at_s and not recorder.full():
            outcome = await workload.invoke(client, rng, process, recorder, reader=reader)
            if outcome is Outcome.INDETERMINATE:
                # The operation may still be in flight: the next one is another process.
                process += options.concurrency
            await asyncio.sleep(min(rng.expovariate(1 / mean_gap_s), 10 * mean_gap_s))
    finally:
        await workload.stop(client, process, recorder)
        await client.aclose()
        await reader.aclose()


async def _final(
    options: RunOptions, cluster: ChaosCluster, workload: Workload, recorder: Recorder, process: int
) -> None:
    client = AsyncClient(cluster.endpoints(), total_timeout_s=options.op_timeout_s)
    try:
        for _ in range(FINAL_ATTEMPTS_MAX):
            outcome = await workload.final(client, process, recorder)
            if outcome is Outcome.OK:
                return
            if outcome is Outcome.INDETERMINATE:
                process += options.concurrency
            await asyncio.sleep(_RETRY_S)
    finally:
        await client.aclose()


async def _setup(options: RunOptions, cluster: ChaosCluster, workload: Workload) -> None:
    client = AsyncClient(cluster.endpoints(), total_timeout_s=max(5.0, options.op_timeout_s))
    try:
        for attempt in range(SETUP_ATTEMPTS_MAX):
            try:
                await workload.setup(client)
            except Exception:
                if attempt + 1 == SETUP_ATTEMPTS_MAX:
                    raise
                await asyncio.sleep(_RETRY_S)
            else:
                return
    finally:
        await client.aclose()


class _Run(msgspec.Struct, kw_only=True):
    ops: list[Operation]
    fault_ops: list[Operation]
    faults: list[FaultWindow]
    applied: int
    failed: int
    duration_s: float
    logs: dict[int, Path]
    error: str | None


async def _drive(options: RunOptions, root: Path, workload: Workload) -> _Run:
    t0_ns = time.monotonic_ns()
    recorder = Recorder(lambda: _clock_us(t0_ns), ops_max=HISTORY_OPS_MAX)
    faults_recorder = Recorder(lambda: _clock_us(t0_ns))
    windows = plan(
        options.seed,
        options.nemesis,
        time_limit_s=options.time_limit_s,
        ids=range(1, options.nodes + 1),
        fault_s=options.fault_s,
        quiet_s=options.quiet_s,
    )
    replacements = sum(w.kind == "membership" and w.shape == "replace" for w in windows)
    cluster = ChaosCluster(
        root,
        options.nodes,
        tick_ms=options.tick_ms,
        fsync=options.fsync,
        node_command=options.node_command,
        proxied=any(kind in PROXY_KINDS for kind in options.nemesis),
        seed=options.seed,
        netns=options.netns,
        spares=min(replacements, SPARES_MAX),
    )
    nemesis = Nemesis(cluster, faults_recorder, seed=options.seed)
    error: str | None = None
    began_s = time.monotonic()
    async with cluster:
        await cluster.wait_leader(LEADER_WAIT_S_MAX)
        await _setup(options, cluster, workload)
        started_at_s = time.monotonic()
        stop_at_s = started_at_s + options.time_limit_s
        try:
            async with asyncio.TaskGroup() as tasks:
                for index in range(options.concurrency):
                    tasks.create_task(
                        _worker(index, options, cluster, workload, recorder, stop_at_s)
                    )
                tasks.create_task(nemesis.run(windows, started_at_s=started_at_s))
        finally:
            await nemesis.heal()
        await asyncio.sleep(options.recovery_s)
        try:
            await cluster.wait_leader(LEADER_WAIT_S_MAX)
        except PhalanxError as exc:
            error = f"after the heal: {exc}"
        await _final(options, cluster, workload, recorder, 10 * options.concurrency)
    if cluster.teardown_errors:
        removal = "removing the network namespaces failed: " + "; ".join(cluster.teardown_errors)
        error = removal if error is None else f"{error}; {removal}"
    return _Run(
        ops=recorder.operations(),
        fault_ops=faults_recorder.operations(),
        faults=windows,
        applied=nemesis.applied,
        failed=nemesis.failed,
        duration_s=round(time.monotonic() - began_s, 3),
        logs={i: cluster.log_path(i) for i in cluster.slots if cluster.log_path(i).exists()},
        error=error,
    )


def run_chaos(options: RunOptions, out: Path, *, workload: Workload | None = None) -> RunResult:
    """Run once (see the module docstring); the report files are written into ``out``.

    ``workload`` replaces the one ``options.workload`` names (the tests pass deliberately
    weakened ones). Runs its own event loop: call it from synchronous code (or a worker
    thread).
    """
    from phalanx.chaos.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    if workload is None:
        workload = workload_named(options.workload, op_timeout_s=options.op_timeout_s)
    run = asyncio.run(_drive(options, out / "cluster", workload))
    write_jsonl(out / "history.jsonl", run.ops)
    write_jsonl(out / "nemesis.jsonl", run.fault_ops)
    check_began = time.monotonic()
    checked = check_history(
        run.ops, workload.model, timeout_s=options.check_timeout_s, bank_total=workload.bank_total
    )
    result = RunResult(
        verdict=checked.verdict,
        options=options,
        command=options.command(out),
        checker=checked,
        counts=_counts(run.ops),
        faults=run.faults,
        nemesis_applied=run.applied,
        nemesis_failed=run.failed,
        duration_s=run.duration_s,
        check_s=round(time.monotonic() - check_began, 3),
        out=str(out),
        error=run.error,
    )
    (out / "results.json").write_bytes(msgspec.json.format(msgspec.json.encode(result)))
    timeline_path = out / "timeline.html"
    timeline = timeline_path if write_timeline(run.ops, checked, timeline_path) else None
    if timeline is None:
        timeline_path.unlink(missing_ok=True)
    write_report(out / "index.html", result, run.ops, run.fault_ops, run.logs, timeline)
    return result


def _counts(ops: Sequence[Operation]) -> dict[str, int]:
    counts = {"operations": len(ops), "ok": 0, "fail": 0, "info": 0}
    for op in ops:
        counts[op.outcome.value] = counts.get(op.outcome.value, 0) + 1
    return counts
