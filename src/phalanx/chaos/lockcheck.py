"""The lock checker: fencing tokens increase, and no two holders hold the lock at once.

A lock workload runs ``acquire`` operations, whose ``ok`` output is the fencing token (an
integer the lock service increases with every grant), and ``release`` operations whose input
is the token being released. A *hold* is the time a client definitely held the lock: from the
completion of its ``ok`` acquire to the invocation of the ``ok`` release of that token. When
the release is missing, failed or unknown, the lock may have expired at any moment, so the
hold is only the instant its acquire completed.

Checked:

- **token order**: an acquire that completed before another was invoked got a smaller
  token; no token is granted twice;
- **overlap**: ordered by token, each hold starts no earlier than the previous hold ended
  (two holders never held the lock at the same time); skipped with ``exclusive=False``, for
  histories where holds may overlap by design (a lease that expired under a holder that kept
  working) and only the fencing of the protected resource is claimed;
- **fencing of the resource**: ``write`` operations whose input is the writer's token stand
  for uses of the resource the lock protects. An ``ok`` write must not be invoked after an
  ``ok`` write of a *larger* token completed: a resource that checks tokens refuses such a
  late holder, one that ignores them lets it overwrite the newer holder's work.

At most :data:`BAD_OPS_LISTED_MAX` offending operations are listed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Final

import msgspec

from phalanx.chaos.history import HistoryError, Operation
from phalanx.chaos.verdict import CheckResult, Verdict
from phalanx.errors import Outcome

__all__ = ["BAD_OPS_LISTED_MAX", "Hold", "check_lock", "holds", "stale_writes"]

#: How many offending operations a result lists (counts are always complete).
BAD_OPS_LISTED_MAX: Final = 50


class Hold(msgspec.Struct, frozen=True):
    token: int
    acquire_op: int
    start_us: int
    end_us: int
    release_op: int | None


def _token(op: Operation, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise HistoryError(f"operation {op.id}: a fencing token is an integer, not {value!r}")
    return value


def holds(ops: Sequence[Operation]) -> list[Hold]:
    """The definite holds of a lock history, by token."""
    releases: dict[int, Operation] = {}
    for op in ops:
        if op.f == "release" and op.outcome is Outcome.OK:
            token = _token(op, op.input)
            first = releases.get(token)
            if first is None or op.invoke_us < first.invoke_us:
                releases[token] = op
    result = []
    for op in ops:
        if op.f != "acquire" or op.outcome is not Outcome.OK or op.complete_us is None:
            continue
        token = _token(op, op.output)
        release = releases.get(token)
        end_us = op.complete_us
        if release is not None and release.invoke_us > op.complete_us:
            end_us = release.invoke_us
        result.append(
            Hold(token, op.id, op.complete_us, end_us, None if release is None else release.id)
        )
    result.sort(key=lambda h: (h.token, h.start_us))
    return result


def stale_writes(ops: Sequence[Operation]) -> list[Operation]:
    """The ``ok`` resource writes invoked after an ``ok`` write of a larger token completed."""
    writes = [op for op in ops if op.f == "write" and op.outcome is Outcome.OK and op.complete_us]
    by_invoke = sorted(writes, key=lambda op: (op.invoke_us, op.id))
    by_complete = sorted(writes, key=lambda op: (op.complete_us or 0, op.id))
    stale = []
    highest: int | None = None
    index = 0
    for op in by_invoke:
        while index < len(by_complete) and (by_complete[index].complete_us or 0) < op.invoke_us:
            token = _token(by_complete[index], by_complete[index].input)
            highest = token if highest is None else max(highest, token)
            index += 1
        if highest is not None and _token(op, op.input) < highest:
            stale.append(op)
    return stale


def check_lock(ops: Sequence[Operation], *, exclusive: bool = True) -> CheckResult:
    """Check a lock history (see the module docstring); ``exclusive=False`` skips the overlap
    check and keeps the token and resource checks."""
    granted = holds(ops)
    bad: set[int] = set()
    duplicates = 0
    overlaps = 0
    # Every earlier-token hold must have ended before a hold starts, not only the previous one.
    ended_us: int | None = None
    for before, after in itertools.pairwise(granted):
        ended_us = before.end_us if ended_us is None else max(ended_us, before.end_us)
        if before.token == after.token:
            duplicates += 1
            bad.add(after.acquire_op)
        elif exclusive and after.start_us < ended_us:
            overlaps += 1
            bad.add(after.acquire_op)
    # Token order: an acquire completed before another was invoked has the smaller token.
    acquires = [
        op
        for op in ops
        if op.f == "acquire" and op.outcome is Outcome.OK and op.complete_us is not None
    ]
    by_invoke = sorted(acquires, key=lambda op: (op.invoke_us, op.id))
    by_complete = sorted(acquires, key=lambda op: (op.complete_us or 0, op.id))
    regressions = 0
    highest = None
    index = 0
    for op in by_invoke:
        while index < len(by_complete) and (by_complete[index].complete_us or 0) < op.invoke_us:
            token = _token(by_complete[index], by_complete[index].output)
            highest = token if highest is None else max(highest, token)
            index += 1
        if highest is not None and _token(op, op.output) <= highest:
            regressions += 1
            bad.add(op.id)
    stale = stale_writes(ops)
    bad.update(op.id for op in stale)
    details: dict[str, object] = {
        "holds": len(granted),
        "overlaps": overlaps,
        "duplicate_tokens": duplicates,
        "token_regressions": regressions,
        "stale_writes": len(stale),
    }
    if bad:
        return CheckResult(
            checker="lock",
            verdict=Verdict.INVALID,
            summary=f"invalid: {overlaps} overlapping holds, {duplicates} duplicate tokens, "
            f"{regressions} tokens not above an earlier grant, "
            f"{len(stale)} resource writes of an older token after a newer one",
            details=details,
            ops_bad=sorted(bad)[:BAD_OPS_LISTED_MAX],
        )
    return CheckResult(
        checker="lock",
        verdict=Verdict.VALID,
        summary=f"valid: {len(granted)} holds, tokens increasing, "
        + ("no overlap" if exclusive else "resource writes in token order"),
        details=details,
    )
