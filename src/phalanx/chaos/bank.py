"""The bank checker: money moves between accounts, but never appears or disappears.

A bank workload runs ``transfer`` operations (``input``: ``{"from": a, "to": b, "amount": n}``)
and ``read`` operations that return every balance at once (``output``: ``{account: balance}``).
Under snapshot isolation or anything stronger, every ``ok`` read must show:

- the same total as the initial one (``total``, or the first ``ok`` read's total when not
  given), and
- no negative balance (transfers that would overdraw are refused).

Transfers themselves are not judged (their effects are only seen through reads). At most
:data:`BAD_OPS_LISTED_MAX` offending reads are listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from phalanx.chaos.history import Operation
from phalanx.chaos.verdict import CheckResult, Verdict
from phalanx.errors import Outcome

__all__ = ["BAD_OPS_LISTED_MAX", "check_bank"]

#: How many offending operations a result lists (counts are always complete).
BAD_OPS_LISTED_MAX: Final = 50


def _balances(op: Operation) -> dict[str, int] | None:
    out = op.output
    if not isinstance(out, dict):
        return None
    balances: dict[str, int] = {}
    for account, value in out.items():
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        balances[str(account)] = value
    return balances


def check_bank(ops: Sequence[Operation], *, total: int | None = None) -> CheckResult:
    """Check every ``ok`` read of a bank history."""
    reads = sorted(
        (op for op in ops if op.f == "read" and op.outcome is Outcome.OK),
        key=lambda op: (op.invoke_us, op.id),
    )
    if not reads:
        return CheckResult(
            checker="bank", verdict=Verdict.UNKNOWN, summary="unknown: no successful read"
        )
    expected = total
    wrong_total: list[int] = []
    negative: list[int] = []
    malformed: list[int] = []
    for op in reads:
        balances = _balances(op)
        if balances is None:
            malformed.append(op.id)
            continue
        seen = sum(balances.values())
        if expected is None:
            expected = seen
        if seen != expected:
            wrong_total.append(op.id)
        if any(v < 0 for v in balances.values()):
            negative.append(op.id)
    bad = sorted({*wrong_total, *negative, *malformed})
    details: dict[str, object] = {
        "reads": len(reads),
        "total": expected,
        "wrong_total_reads": len(wrong_total),
        "negative_reads": len(negative),
        "malformed_reads": len(malformed),
    }
    if not bad:
        return CheckResult(
            checker="bank",
            verdict=Verdict.VALID,
            summary=f"valid: {len(reads)} reads, total {expected}, no negative balance",
            details=details,
        )
    parts = []
    if wrong_total:
        parts.append(f"{len(wrong_total)} reads with a total other than {expected}")
    if negative:
        parts.append(f"{len(negative)} reads with a negative balance")
    if malformed:
        parts.append(f"{len(malformed)} reads that are not a map of integer balances")
    return CheckResult(
        checker="bank",
        verdict=Verdict.INVALID,
        summary="invalid: " + ", ".join(parts),
        details=details,
        ops_bad=bad[:BAD_OPS_LISTED_MAX],
    )
