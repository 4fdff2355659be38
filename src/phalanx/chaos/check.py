"""One entry point per workload: which checkers judge a history of that kind.

==============  ===========================================================================
``--model``     checkers run
==============  ===========================================================================
``register``    linearizability against :class:`~phalanx.chaos.models.RegisterModel`
``kv``          linearizability against :class:`~phalanx.chaos.models.KVModel`, per key
``lock``        linearizability against :class:`~phalanx.chaos.models.LockModel`, and the
                fencing-token checker (:mod:`phalanx.chaos.lockcheck`)
``fencing``     the fencing-token checker alone, without the overlap check: holds may
                overlap (a lease expired under a holder), the resource's writes may not
                go back in token order
``bank``        the bank checker (:mod:`phalanx.chaos.bank`)
``set``         the set checker (:mod:`phalanx.chaos.setcheck`)
``monotonic``   monotonic reads per session (:mod:`phalanx.chaos.monotonic`)
==============  ===========================================================================

The verdict of a history is the worst of its checkers' (invalid, then unknown, then valid).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from phalanx.chaos.bank import check_bank
from phalanx.chaos.history import Operation
from phalanx.chaos.lockcheck import check_lock
from phalanx.chaos.models import drop_unobservable_acquires, model_named
from phalanx.chaos.monotonic import check_monotonic_reads
from phalanx.chaos.partition import (
    TIMEOUT_S_DEFAULT,
    WORKERS_MAX_DEFAULT,
    LinearizabilityReport,
    check_linearizable,
)
from phalanx.chaos.report_html import render_timeline, render_violations
from phalanx.chaos.setcheck import check_set
from phalanx.chaos.verdict import CheckResult, Verdict, combine

__all__ = ["CHECKED_MODELS", "HistoryCheck", "check_history", "write_timeline"]

CHECKED_MODELS: Final = ("register", "kv", "lock", "fencing", "bank", "set", "monotonic")


class HistoryCheck(msgspec.Struct, kw_only=True):
    """Every checker's result for one history, and the linearizability search if one ran."""

    model: str
    verdict: Verdict
    results: list[CheckResult]
    linearizability: LinearizabilityReport | None = None


def check_history(
    ops: Sequence[Operation],
    model: str,
    *,
    timeout_s: float = TIMEOUT_S_DEFAULT,
    workers_max: int = WORKERS_MAX_DEFAULT,
    bank_total: int | None = None,
) -> HistoryCheck:
    """Run the checkers of ``model`` (one of :data:`CHECKED_MODELS`) over ``ops``."""
    if model not in CHECKED_MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(CHECKED_MODELS)}")
    results: list[CheckResult] = []
    report = None
    if model in {"register", "kv", "lock"}:
        searched = drop_unobservable_acquires(ops) if model == "lock" else ops
        report = check_linearizable(
            searched, model_named(model), timeout_s=timeout_s, workers_max=workers_max
        )
        results.append(report.result)
    if model == "lock":
        results.append(check_lock(ops))
    elif model == "fencing":
        results.append(check_lock(ops, exclusive=False))
    elif model == "bank":
        results.append(check_bank(ops, total=bank_total))
    elif model == "set":
        results.append(check_set(ops))
    elif model == "monotonic":
        results.append(check_monotonic_reads(ops))
    return HistoryCheck(
        model=model,
        verdict=combine([r.verdict for r in results]),
        results=results,
        linearizability=report,
    )


def write_timeline(ops: Sequence[Operation], check: HistoryCheck, path: Path) -> bool:
    """Write the HTML timeline of a violation; False when nothing was violated.

    A linearizability violation is drawn for its smallest failing partition; otherwise the
    first invalid checker's witnesses are drawn over the whole history.
    """
    report = check.linearizability
    failure = report.smallest_failure() if report is not None else None
    if failure is not None:
        partition = [op for op in ops if op.key == failure.key]
        page = render_timeline(
            partition,
            failure,
            model_named(check.model),
            title=f"{path.stem}: not linearizable",
        )
    else:
        invalid = [r for r in check.results if r.verdict is Verdict.INVALID]
        if not invalid:
            return False
        page = render_violations(ops, invalid[0], title=f"{path.stem}: {invalid[0].checker}")
    path.write_text(page, encoding="utf-8")
    return True
