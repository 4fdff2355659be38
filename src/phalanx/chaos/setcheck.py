"""The set checker: every acknowledged add survives, and nothing else appears.

A set workload runs ``add`` operations (``input``: the element) and ``read`` operations that
return every element (``output``: a list). The last ``ok`` read (by invocation) is the final
state. Counted, for elements (compared by their JSON value):

- **lost**: an ``ok`` add that completed before the final read began, missing from it;
- **unexpected**: in some read, but never added by an ``ok`` or ``info`` add (a ``fail``
  add definitely did not happen);
- **stale**: an ``ok`` add that completed before some read began but is missing from that
  read, while present in the final one (a read that travelled back in time);
- **recovered** (not an error): ``info`` adds present in the final read.

The history is valid when nothing is lost, unexpected or stale; with no ``ok`` read the
verdict is unknown. Histories of more than :data:`SET_ELEMENTS_MAX` distinct elements are
refused (the stale check costs elements x reads).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from phalanx.chaos.history import HistoryError, Operation
from phalanx.chaos.verdict import CheckResult, Verdict
from phalanx.errors import Outcome

__all__ = ["BAD_OPS_LISTED_MAX", "SET_ELEMENTS_MAX", "check_set"]

#: The most distinct elements a set history may add.
SET_ELEMENTS_MAX: Final = 200_000
#: How many offending operations a result lists (counts are always complete).
BAD_OPS_LISTED_MAX: Final = 50


def _element(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def check_set(ops: Sequence[Operation]) -> CheckResult:
    adds = [op for op in ops if op.f == "add"]
    reads = sorted(
        (op for op in ops if op.f == "read" and op.outcome is Outcome.OK),
        key=lambda op: (op.invoke_us, op.id),
    )
    if len({_element(op.input) for op in adds}) > SET_ELEMENTS_MAX:
        raise HistoryError(f"more than SET_ELEMENTS_MAX={SET_ELEMENTS_MAX} elements")
    if not reads:
        return CheckResult(
            checker="set", verdict=Verdict.UNKNOWN, summary="unknown: no successful read"
        )
    contents: list[set[str]] = []
    for op in reads:
        if not isinstance(op.output, list):
            raise HistoryError(f"operation {op.id}: a set read returns a list")
        contents.append({_element(v) for v in op.output})
    final_op, final = reads[-1], contents[-1]
    acked = sorted(
        (op for op in adds if op.outcome is Outcome.OK and op.complete_us is not None),
        key=lambda op: (op.complete_us or 0, op.id),
    )
    attempted = {_element(op.input) for op in adds if op.outcome is not Outcome.FAILED}

    lost = [
        op
        for op in acked
        if (op.complete_us or 0) < final_op.invoke_us and _element(op.input) not in final
    ]
    unexpected_ops = [op.id for op, seen in zip(reads, contents, strict=True) if seen - attempted]
    unexpected = set().union(*contents) - attempted
    # Stale: sweep reads in invocation order, with the adds acknowledged before each began.
    stale: set[str] = set()
    stale_ops: list[int] = []
    known: list[str] = []
    index = 0
    for op, seen in zip(reads, contents, strict=True):
        while index < len(acked) and (acked[index].complete_us or 0) < op.invoke_us:
            known.append(_element(acked[index].input))
            index += 1
        missing = {e for e in known if e not in seen and e in final}
        if missing:
            stale |= missing
            stale_ops.append(op.id)
    recovered = {_element(op.input) for op in adds if op.outcome is Outcome.INDETERMINATE} & final
    # Acknowledged once the last successful read had begun: that read cannot vouch for them
    # (none in a run whose final read succeeded, since it starts after every add ends).
    unchecked = [op for op in acked if (op.complete_us or 0) >= final_op.invoke_us]
    details: dict[str, object] = {
        "adds": len(adds),
        "acknowledged": len(acked),
        "reads": len(reads),
        "final_read": final_op.id,
        "final_size": len(final),
        "lost": len(lost),
        "unexpected": len(unexpected),
        "stale": len(stale),
        "recovered": len(recovered),
        "unchecked": len(unchecked),
    }
    counts = f"lost {len(lost)}, unexpected {len(unexpected)}, stale {len(stale)}"
    if lost or unexpected or stale:
        bad = sorted({*(op.id for op in lost), *unexpected_ops, *stale_ops})
        return CheckResult(
            checker="set",
            verdict=Verdict.INVALID,
            summary=f"invalid: {counts}",
            details=details,
            ops_bad=bad[:BAD_OPS_LISTED_MAX],
        )
    if unchecked:
        return CheckResult(
            checker="set",
            verdict=Verdict.UNKNOWN,
            summary=f"unknown: {len(unchecked)} adds acknowledged after the last successful "
            f"read began (did the final read fail?); {counts}",
            details=details,
        )
    return CheckResult(
        checker="set",
        verdict=Verdict.VALID,
        summary=f"valid: {len(acked)} acknowledged adds all present; {counts}",
        details=details,
    )
