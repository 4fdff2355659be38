"""The in-memory twin of a participant: a key-value table with real prepare semantics.

:class:`MemoryParticipant` keeps committed values in :attr:`MemoryParticipant.data`, and the
writes of each prepared branch aside, with their keys locked until the outcome: a branch that
touches a key another prepared branch holds votes no. Prepared branches survive
:meth:`MemoryParticipant.crash` (they are "durable"); unprepared branches do not.

Fault switches for tests: ``vote_no`` (every prepare refuses), ``down`` (every call raises
:class:`~phalanx.errors.Unavailable`, as a database that is unreachable), and
``prepare_gate`` (a ``threading.Event`` a prepare waits on, to hold it in flight).
"""

from __future__ import annotations

import threading

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import Unavailable, invariant
from phalanx.txn.twopc.gid import check_name
from phalanx.txn.twopc.participants import PreparedBranch
from phalanx.txn.twopc.types import Decision, PrepareRefused

__all__ = ["MemoryBranch", "MemoryParticipant"]

#: How long a prepare waits on ``prepare_gate`` at most, so a forgotten gate cannot hang.
PREPARE_GATE_WAIT_S_MAX = 30.0


class MemoryParticipant:
    """A participant whose data lives in a dict (see the module docstring)."""

    def __init__(self, name: str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._name = check_name("participant", name)
        self._clock = clock
        self._lock = threading.Lock()
        self.data: dict[str, object] = {}
        self._prepared: dict[str, tuple[dict[str, object], float]] = {}
        self._generation = 0  # bumped by crash(): branches begun before it are lost
        self.vote_no = False
        self.down = False
        self.prepare_gate: threading.Event | None = None

    @property
    def name(self) -> str:
        return self._name

    def begin(self, branch_gid: str) -> MemoryBranch:
        self._check_up()
        return MemoryBranch(self, branch_gid, self._generation)

    def prepared(self) -> list[PreparedBranch]:
        self._check_up()
        with self._lock:
            return [PreparedBranch(gid, at_s) for gid, (_, at_s) in sorted(self._prepared.items())]

    def commit_prepared(self, branch_gid: str) -> None:
        self._check_up()
        with self._lock:
            entry = self._prepared.pop(branch_gid, None)
            if entry is not None:
                self.data.update(entry[0])

    def rollback_prepared(self, branch_gid: str) -> None:
        self._check_up()
        with self._lock:
            self._prepared.pop(branch_gid, None)

    def crash(self) -> None:
        """Lose every unprepared branch; prepared ones survive."""
        with self._lock:
            self._generation += 1

    def _prepare(self, branch: MemoryBranch) -> None:
        gate = self.prepare_gate
        if gate is not None:
            gate.wait(PREPARE_GATE_WAIT_S_MAX)
        self._check_up()
        if self.vote_no:
            raise PrepareRefused(f"{self._name}: votes no")
        with self._lock:
            if branch.generation != self._generation:
                raise Unavailable(f"{self._name}: the branch was lost in a crash")
            held = {key for writes, _ in self._prepared.values() for key in writes}
            busy = sorted(held & branch.writes.keys())
            if busy:
                raise PrepareRefused(f"{self._name}: keys held by a prepared branch: {busy}")
            self._prepared[branch.gid] = (dict(branch.writes), self._clock.wall_s())

    def _check_up(self) -> None:
        if self.down:
            raise Unavailable(f"participant {self._name} is down")


class MemoryBranch:
    """Writes buffered by one transaction on a :class:`MemoryParticipant`."""

    def __init__(self, participant: MemoryParticipant, gid: str, generation: int) -> None:
        self.participant = participant
        self.gid = gid
        self.generation = generation
        self.writes: dict[str, object] = {}
        self._prepared = False

    def put(self, key: str, value: object) -> None:
        invariant(not self._prepared, f"{self.gid}: write after prepare")
        self.writes[key] = value

    def prepare(self) -> None:
        self.participant._prepare(self)
        self._prepared = True

    def finish(self, decision: Decision) -> None:
        if decision is Decision.COMMIT:
            invariant(self._prepared, f"{self.gid}: commit before prepare")
            self.participant.commit_prepared(self.gid)
        elif self._prepared:
            self.participant.rollback_prepared(self.gid)
        else:
            self.writes.clear()

    def close(self) -> None:
        if not self._prepared:
            self.writes.clear()
