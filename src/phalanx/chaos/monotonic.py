"""Monotonic reads per session: a session never sees an older version than it has seen.

Each process is a session (Jepsen gives a client a new process after an ``info``). Its
``ok`` reads (``f`` = ``read`` or ``get``) of one key, in invocation order, must return
non-decreasing versions. A read's output is the version itself (an integer) or a map with
an integer ``version`` (or ``revision``) field.

At most :data:`BAD_OPS_LISTED_MAX` offending reads are listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from phalanx.chaos.history import HistoryError, Operation
from phalanx.chaos.verdict import CheckResult, Verdict
from phalanx.errors import Outcome

__all__ = ["BAD_OPS_LISTED_MAX", "check_monotonic_reads", "version_of"]

#: How many offending operations a result lists (counts are always complete).
BAD_OPS_LISTED_MAX: Final = 50


def version_of(op: Operation) -> int:
    out: Any = op.output
    if isinstance(out, dict):
        out = out.get("version", out.get("revision"))
    if not isinstance(out, int) or isinstance(out, bool):
        raise HistoryError(f"operation {op.id}: a read returns a version, not {op.output!r}")
    return out


def check_monotonic_reads(ops: Sequence[Operation]) -> CheckResult:
    reads = sorted(
        (op for op in ops if op.f in {"read", "get"} and op.outcome is Outcome.OK),
        key=lambda op: (op.invoke_us, op.id),
    )
    last: dict[tuple[int, str | None], int] = {}
    bad: list[int] = []
    sessions: set[int] = set()
    for op in reads:
        sessions.add(op.process)
        version = version_of(op)
        where = (op.process, op.key)
        seen = last.get(where)
        if seen is not None and version < seen:
            bad.append(op.id)
        else:
            last[where] = version
    details: dict[str, object] = {"reads": len(reads), "sessions": len(sessions)}
    details["regressions"] = len(bad)
    if bad:
        return CheckResult(
            checker="monotonic-reads",
            verdict=Verdict.INVALID,
            summary=f"invalid: {len(bad)} reads saw an older version than their session had",
            details=details,
            ops_bad=bad[:BAD_OPS_LISTED_MAX],
        )
    return CheckResult(
        checker="monotonic-reads",
        verdict=Verdict.VALID,
        summary=f"valid: {len(reads)} reads in {len(sessions)} sessions never went back",
        details=details,
    )
