"""The vocabulary of two-phase commit: decisions, votes, errors and limits.

Errors raised to the caller of a transaction (all in the :mod:`phalanx.errors` tree):

* :class:`TransactionAborted` (FAILED): the transaction is aborted everywhere, or will be;
  nothing it wrote becomes visible.
* :class:`phalanx.errors.Indeterminate`: the coordinator could not learn whether its decision
  reached the log; recovery (:meth:`Coordinator.recover`) settles it one way or the other.
"""

from __future__ import annotations

import enum
from typing import Final

from phalanx.errors import PhalanxError

__all__ = [
    "BRANCHES_MAX",
    "PARTICIPANT_NAME_CHARS_MAX",
    "Decision",
    "PrepareRefused",
    "TransactionAborted",
]

#: Participants one transaction may enlist.
BRANCHES_MAX: Final = 32
#: Longest coordinator id and participant name (PostgreSQL allows 200 bytes per gid).
PARTICIPANT_NAME_CHARS_MAX: Final = 40


class Decision(enum.Enum):
    """The outcome of a global transaction, once decided."""

    COMMIT = "commit"
    ABORT = "abort"


class TransactionAborted(PhalanxError):
    """The transaction aborted: ``reason`` says why (a no vote, a prepare timeout ...)."""

    def __init__(self, message: str, *, gid: str, reason: str) -> None:
        super().__init__(message)
        self.gid = gid
        self.reason = reason


class PrepareRefused(PhalanxError):
    """A participant votes no: raised by a branch's ``prepare`` to refuse on purpose."""
