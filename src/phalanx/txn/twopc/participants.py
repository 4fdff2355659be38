"""What the coordinator needs from a participant: the :class:`Participant` and :class:`Branch`
Protocols.

A :class:`Participant` is one database (or shard) as recovery sees it: it starts branches,
lists the branches it holds prepared, and commits or rolls one back by gid from any
connection. A :class:`Branch` is one transaction's work on that participant, from
``begin`` to its outcome.

Phase 2 must be idempotent, and both ``commit_prepared`` and ``rollback_prepared`` treat an
unknown gid as already done: the coordinator repeats phase 2 after a crash without knowing how
far it got, and presumed abort means nobody commits a gid the log has not committed.

Implementations: :class:`~phalanx.txn.twopc.memory.MemoryParticipant` (the in-memory twin),
:class:`~phalanx.txn.twopc.postgres.PostgresParticipant`,
:class:`~phalanx.txn.twopc.sqlite.SqliteParticipant`. A Phalanx KV shard would be one more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from phalanx.txn.twopc.types import Decision

__all__ = ["Branch", "Participant", "PreparedBranch"]


@dataclass(frozen=True, slots=True)
class PreparedBranch:
    """A branch a participant holds prepared; ``prepared_at_s`` is wall-clock seconds."""

    gid: str
    prepared_at_s: float


@runtime_checkable
class Branch(Protocol):
    """One transaction's work on one participant."""

    def prepare(self) -> None:
        """Make the work durable and promise to commit it on request.

        Returning is a yes vote. Raising is a no vote (and the work is rolled back):
        :class:`~phalanx.txn.twopc.types.PrepareRefused` on purpose, anything else when the
        participant could not prepare.
        """
        ...

    def finish(self, decision: Decision) -> None:
        """Apply the decision: commit (only after prepare) or roll back. Idempotent."""
        ...

    def close(self) -> None:
        """Release the branch's connection; an unprepared branch is rolled back."""
        ...


@runtime_checkable
class Participant(Protocol):
    """One participant, outside any single transaction."""

    @property
    def name(self) -> str: ...

    def begin(self, branch_gid: str) -> Branch:
        """Start a branch that will be prepared under ``branch_gid``."""
        ...

    def prepared(self) -> list[PreparedBranch]:
        """Every branch this participant holds prepared (Phalanx's and others')."""
        ...

    def commit_prepared(self, branch_gid: str) -> None:
        """Commit a prepared branch; an unknown gid was committed already."""
        ...

    def rollback_prepared(self, branch_gid: str) -> None:
        """Roll back a prepared branch; an unknown gid is already gone."""
        ...
