"""The three-valued verdict of every checker, and the result record they share.

A checker says ``valid`` (the history satisfies the property), ``invalid`` (it does not, and
the result names a witness), or ``unknown``: the check ran out of time or hit a named limit
before it could decide. An unknown verdict is never reported as valid.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

__all__ = ["CheckResult", "Verdict", "combine"]


class Verdict(enum.StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"


def combine(verdicts: list[Verdict]) -> Verdict:
    """Invalid if any is invalid, else unknown if any is unknown, else valid."""
    if Verdict.INVALID in verdicts:
        return Verdict.INVALID
    if Verdict.UNKNOWN in verdicts:
        return Verdict.UNKNOWN
    return Verdict.VALID


class CheckResult(msgspec.Struct, kw_only=True):
    """What one checker found: the verdict, a one-line summary, and checker-specific details.

    ``details`` holds JSON-compatible values only (counts, operation ids, short strings).
    ``ops_bad`` are the ids of the operations that witness a violation.
    """

    checker: str
    verdict: Verdict
    summary: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    ops_bad: list[int] = msgspec.field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.verdict is Verdict.VALID
