"""P-compositionality: check a history per key, in parallel worker processes.

Linearizability is *local* (Herlihy & Wing): a history of independent objects is
linearizable exactly when the sub-history of every object is. Horn & Kroening turn that into
speed: split the history by key (:attr:`Operation.key`), search each partition alone (the
search is exponential in the worst case, so many small searches beat one big one), and run
the partitions on several cores.

The check runs in passes, so that one hard partition cannot hide an easy violation: every
partition is searched with a small cache (``pass_cache_entries[0]``, 10,000 configurations),
then the partitions that needed more are searched again with a larger one (100,000), and so
on up to the full limit, stopping as soon as a pass finds a partition invalid. A history of
one partition gets one pass with the full limit. Repeating a search costs at most the sum of
the smaller bounds, about a tenth of the final one.

Once one partition is invalid, the history is; a partition still undecided then stays
``unknown`` in the details and does not change the verdict. Partitions run in at most
``workers_max`` worker processes (default :data:`WORKERS_MAX_DEFAULT`, at most the number of
CPUs). The first pass of a history under ``parallel_ops_min`` operations runs in the calling
process, where starting workers would cost more than it saves; the later passes, over the
partitions the earlier ones could not decide, use the workers whenever there are two or more.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Final

import msgspec

from phalanx.chaos.history import Operation
from phalanx.chaos.linearizability import PartitionResult, SearchLimits, search
from phalanx.chaos.models import Keyed, Model
from phalanx.chaos.verdict import CheckResult, Verdict

__all__ = [
    "PARALLEL_OPS_MIN",
    "PASS_CACHE_ENTRIES",
    "WORKERS_MAX_DEFAULT",
    "LinearizabilityReport",
    "check_linearizable",
    "split_by_key",
]

#: Worker processes used by default: min(CPUs, 4).
WORKERS_MAX_DEFAULT: Final = min(os.cpu_count() or 1, 4)
#: Histories smaller than this are checked in the calling process.
PARALLEL_OPS_MIN: Final = 20_000
#: The cache bounds of the passes before the last (which uses the full limit).
PASS_CACHE_ENTRIES: Final = (10_000, 100_000)
#: Default total time budget of one check.
TIMEOUT_S_DEFAULT: Final = 60.0


class LinearizabilityReport(msgspec.Struct, kw_only=True):
    """The checker's result with every partition's search, for reports."""

    result: CheckResult
    partitions: list[PartitionResult]

    def smallest_failure(self) -> PartitionResult | None:
        """The invalid partition with the fewest operations (ties: the first key)."""
        bad = [p for p in self.partitions if p.verdict is Verdict.INVALID]
        return min(bad, key=lambda p: (p.ops, p.key or "")) if bad else None


def split_by_key(ops: Sequence[Operation]) -> dict[str | None, list[Operation]]:
    """The operations of each key, in their original order; keys in first-seen order."""
    parts: dict[str | None, list[Operation]] = {}
    for op in ops:
        parts.setdefault(op.key, []).append(op)
    return parts


_OPS_DECODER: Final = msgspec.msgpack.Decoder(list[Operation])


def _search_one(
    packed: bytes, model: Model, key: str | None, deadline_s: float, limits: SearchLimits
) -> PartitionResult:
    # Runs in a worker: time.monotonic is one clock for every process of the machine.
    # Operations travel as msgpack, several times cheaper than pickling each record.
    ops = _OPS_DECODER.decode(packed)
    return search(ops, model, key=key, deadline_s=deadline_s, limits=limits)


def _run(
    jobs: list[tuple[str | None, list[Operation]]],
    model: Model,
    deadline_s: float,
    limits: SearchLimits,
    workers: int,
    now_s: Callable[[], float],
) -> list[PartitionResult]:
    if workers <= 1 or len(jobs) <= 1:
        return [
            search(part, model, key=key, deadline_s=deadline_s, now_s=now_s, limits=limits)
            for key, part in jobs
        ]
    # forkserver: workers do not inherit the caller's threads or event loop.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        encode = msgspec.msgpack.Encoder().encode
        futures = [
            pool.submit(_search_one, encode(part), model, key, deadline_s, limits)
            for key, part in jobs
        ]
        return [future.result() for future in futures]


def check_linearizable(
    ops: Sequence[Operation],
    model: Model,
    *,
    partition: bool = True,
    timeout_s: float = TIMEOUT_S_DEFAULT,
    workers_max: int = WORKERS_MAX_DEFAULT,
    parallel_ops_min: int = PARALLEL_OPS_MIN,
    limits: SearchLimits | None = None,
    pass_cache_entries: Sequence[int] = PASS_CACHE_ENTRIES,
    now_s: Callable[[], float] = time.monotonic,
) -> LinearizabilityReport:
    """Check ``ops`` against ``model``, per key when ``partition`` (else whole, with Keyed)."""
    if workers_max < 1:
        raise ValueError("workers_max must be at least 1")
    limits = limits or SearchLimits()
    started_s = now_s()
    deadline_s = started_s + timeout_s
    parts = split_by_key(ops)
    if partition or len(parts) <= 1:
        jobs = list(parts.items())
        checked: Model = model
    else:
        jobs = [(None, list(ops))]
        checked = Keyed(model)
    # Large partitions first, so the slowest do not start last.
    jobs.sort(key=lambda job: -len(job[1]))
    workers = workers_max if len(ops) >= parallel_ops_min else 1

    # Passes with growing caches: a cheap violation anywhere ends the check before any
    # partition gets expensive. One partition has nothing to be quicker than.
    bounds = (
        [b for b in pass_cache_entries if b < limits.cache_entries_max] if len(jobs) > 1 else []
    )
    bounds.append(limits.cache_entries_max)
    results: list[PartitionResult] = []
    pending = list(range(len(jobs)))
    for number, bound in enumerate(bounds):
        bounded = msgspec.structs.replace(limits, cache_entries_max=bound)
        # After the first pass only the expensive partitions are left: worth the workers.
        pool = workers if number == 0 else workers_max
        found = _run([jobs[i] for i in pending], checked, deadline_s, bounded, pool, now_s)
        if number == 0:
            results = found
        else:
            for i, r in zip(pending, found, strict=True):
                results[i] = r
        if any(r.verdict is Verdict.INVALID for r in found):
            break
        pending = [
            i
            for i in pending
            if results[i].verdict is Verdict.UNKNOWN
            and results[i].reason.startswith("cache_entries_max")
        ]
        if not pending:
            break
    return LinearizabilityReport(
        result=_summarise(results, model, len(ops), now_s() - started_s),
        partitions=results,
    )


def _summarise(
    results: list[PartitionResult], model: Model, ops: int, elapsed_s: float
) -> CheckResult:
    verdicts = [r.verdict for r in results]
    counts = {v.value: verdicts.count(v) for v in Verdict}
    details: dict[str, object] = {
        "model": model.name,
        "ops": ops,
        "partitions": len(results),
        "partitions_valid": counts["valid"],
        "partitions_invalid": counts["invalid"],
        "partitions_unknown": counts["unknown"],
        "cache_entries": sum(r.cache_entries for r in results),
        "elapsed_s": round(elapsed_s, 3),
    }
    bad = [r for r in results if r.verdict is Verdict.INVALID]
    if bad:
        worst = min(bad, key=lambda p: (p.ops, p.key or ""))
        details.update(
            failing_key=worst.key,
            failing_partition_ops=worst.ops,
            stuck_op=worst.stuck_op,
            prefix_ops=worst.prefix_ops,
            witness_ops=worst.witness_ops,
            linearized_ops=len(worst.linearization),
        )
        where = "" if worst.key is None else f" (key {worst.key!r}, {worst.ops} operations)"
        return CheckResult(
            checker="linearizability",
            verdict=Verdict.INVALID,
            summary=f"not linearizable{where}: operation {worst.stuck_op} cannot be placed "
            f"after the first {worst.prefix_ops} completed operations",
            details=details,
            ops_bad=[] if worst.stuck_op is None else [worst.stuck_op],
        )
    unknown = [r for r in results if r.verdict is Verdict.UNKNOWN]
    if unknown:
        reasons = sorted({r.reason for r in unknown})
        details["unknown_reasons"] = reasons
        return CheckResult(
            checker="linearizability",
            verdict=Verdict.UNKNOWN,
            summary=f"unknown: {len(unknown)} of {len(results)} partitions undecided "
            f"({'; '.join(reasons)})",
            details=details,
        )
    return CheckResult(
        checker="linearizability",
        verdict=Verdict.VALID,
        summary=f"linearizable ({len(results)} partitions, {ops} operations)",
        details=details,
    )
