"""The decision log: the one place where the outcome of a global transaction is decided.

:class:`DecisionLog` is the Protocol; :class:`MemoryDecisionLog` its in-memory twin (for
tests and the simulator); :class:`~phalanx.txn.twopc.log_sqlite.SqliteDecisionLog` the
durable default.

Rules every implementation keeps:

* :meth:`DecisionLog.decide` is a compare-and-set: the first decision written for a gid wins
  and every later call returns it. The coordinator writes COMMIT this way after all votes;
  a participant in doubt writes ABORT this way (presumed abort). Whichever comes first is the
  outcome, so a slow coordinator can never commit what an inquirer was told is aborted.
* A decision is durable when ``decide`` returns: the coordinator starts phase 2 only then.
* :meth:`end` forgets a committed transaction once every participant applied it. Aborts that
  inquiries wrote stay until :meth:`prune` removes those older than the retention period, so
  a coordinator that wakes up late still finds them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from phalanx.txn.twopc.gid import Gid
from phalanx.txn.twopc.types import Decision

__all__ = ["DecisionLog", "DecisionRecord", "MemoryDecisionLog", "commit_records"]


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A decided transaction: its participants and when (wall-clock seconds) it was decided."""

    gid: Gid
    decision: Decision
    participants: tuple[str, ...]
    decided_at_s: float


def commit_records(coordinator: str, rows: Iterable[Sequence[Any]]) -> list[DecisionRecord]:
    """The commit records of ``coordinator`` from SQL rows of (incarnation, sequence,
    comma-joined participants, decided_at_s), as the SQL decision logs store them."""
    return [
        DecisionRecord(
            Gid(coordinator, int(inc), int(seq)),
            Decision.COMMIT,
            tuple(str(parts).split(",")),
            float(at_s),
        )
        for inc, seq, parts, at_s in rows
    ]


@runtime_checkable
class DecisionLog(Protocol):
    """Durable decisions of one or more coordinators (see the module docstring)."""

    def new_incarnation(self, coordinator: str) -> int:
        """Durably bump and return the run counter of ``coordinator`` (starts at 1)."""
        ...

    def decide(
        self, gid: Gid, decision: Decision, participants: tuple[str, ...], *, now_s: float
    ) -> Decision:
        """Write ``decision`` unless one exists; return the decision the log holds."""
        ...

    def end(self, gid: Gid) -> None:
        """Forget a transaction every participant has applied. Idempotent."""
        ...

    def unfinished(self, coordinator: str) -> list[DecisionRecord]:
        """The commits of ``coordinator`` not yet ended, oldest first."""
        ...

    def prune(self, *, before_s: float) -> int:
        """Delete abort records decided before ``before_s`` (wall clock); return how many."""
        ...


class MemoryDecisionLog:
    """The in-memory twin of :class:`DecisionLog`. Thread-safe.

    ``fail_next_decide`` makes the next ``decide`` raise ``OSError`` before writing (a full
    disk); ``lose_next_decide`` writes and then raises (a reply lost after the write).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[Gid, DecisionRecord] = {}
        self._incarnations: dict[str, int] = {}
        self.fail_next_decide = False
        self.lose_next_decide = False

    def new_incarnation(self, coordinator: str) -> int:
        with self._lock:
            value = self._incarnations.get(coordinator, 0) + 1
            self._incarnations[coordinator] = value
            return value

    def decide(
        self, gid: Gid, decision: Decision, participants: tuple[str, ...], *, now_s: float
    ) -> Decision:
        with self._lock:
            if self.fail_next_decide:
                self.fail_next_decide = False
                raise OSError("decision log: injected write failure")
            record = self._records.setdefault(
                gid, DecisionRecord(gid, decision, participants, now_s)
            )
            if self.lose_next_decide:
                self.lose_next_decide = False
                raise OSError("decision log: injected lost reply")
            return record.decision

    def outcome(self, gid: Gid) -> Decision | None:
        with self._lock:
            record = self._records.get(gid)
            return None if record is None else record.decision

    def end(self, gid: Gid) -> None:
        with self._lock:
            record = self._records.get(gid)
            if record is not None and record.decision is Decision.COMMIT:
                del self._records[gid]

    def unfinished(self, coordinator: str) -> list[DecisionRecord]:
        with self._lock:
            found = [
                r
                for r in self._records.values()
                if r.gid.coordinator == coordinator and r.decision is Decision.COMMIT
            ]
        return sorted(found, key=lambda r: r.gid)

    def prune(self, *, before_s: float) -> int:
        with self._lock:
            old = [
                gid
                for gid, r in self._records.items()
                if r.decision is Decision.ABORT and r.decided_at_s < before_s
            ]
            for gid in old:
                del self._records[gid]
            return len(old)
