"""Classic Raft bugs, planted on purpose, to prove the simulator finds them.

Each :class:`PlantedBug` breaks one rule of the protocol, either inside the core (by patching
one method of :mod:`phalanx.raft` for the duration of a ``with bug.planted():`` block) or in
the driver (a :class:`~phalanx.sim.cluster.Cluster` subclass or a broken-driver setting).
:func:`hunt` runs seeds until the simulator reports a violation and says how many it took.

=============================  ===============================================================
bug                            what is broken
=============================  ===============================================================
``figure-8``                   a leader commits an entry of an earlier term by counting its
                               replicas (the paper's Figure 8; 5.4.2)
``vote-without-log-check``     votes are granted without the "candidate's log is at least as
                               up to date" check (5.4.1)
``vote-not-persisted``         the driver sends a Ready's messages (vote grants included)
                               before its hard state is on disk
``apply-before-commit``        the driver applies a leader's new entries as soon as it appends
                               them, before they are committed
``append-without-prev-check``  a follower accepts AppendEntries whose previous entry does not
                               match its log (5.3)
``no-step-down``               a leader that sees a higher term adopts it but keeps leading
=============================  ===============================================================

These patch private parts of the core (``RaftLog``, ``Raft``): they are test instruments and
follow the core's internals, which may move.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from phalanx.raft.types import Entry, Ready, Role
from phalanx.sim.cluster import Cluster, SimSettings, SimulationFailed
from phalanx.sim.node import SimNode
from phalanx.sim.run import settings_for

__all__ = ["BUGS", "HuntResult", "PlantedBug", "hunt"]

# The replacement methods keep the signatures of the ones they replace, arguments they
# ignore (that being the bug) included.
# ruff: noqa: ARG001


@dataclass(frozen=True)
class PlantedBug:
    """One bug: how to plant it, and the fault scenario that gives it a chance to show."""

    name: str
    description: str
    plant: Callable[[], contextlib.AbstractContextManager[None]]
    faults: str = "all"
    nodes: int = 5
    duration_s: float = 6.0
    settings: dict[str, Any] = field(default_factory=dict)
    cluster_class: type[Cluster] = Cluster

    @contextlib.contextmanager
    def planted(self) -> Iterator[None]:
        with self.plant():
            yield


@contextlib.contextmanager
def _patched(owner: Any, name: str, replacement: Any) -> Iterator[None]:
    original = owner.__dict__[name]
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def _plant_figure_8() -> contextlib.AbstractContextManager[None]:
    from phalanx.raft.log import RaftLog

    def maybe_commit(self: Any, index: int, term: int) -> bool:
        if index > self.committed:  # BUG: no "the entry is of the current term" check
            self.commit_to(index)
            return True
        return False

    return _patched(RaftLog, "maybe_commit", maybe_commit)


def _plant_vote_without_log_check() -> contextlib.AbstractContextManager[None]:
    from phalanx.raft.log import RaftLog

    def is_up_to_date(self: Any, last_index: int, term: int) -> bool:
        return True  # BUG: any candidate's log is "up to date"

    return _patched(RaftLog, "is_up_to_date", is_up_to_date)


def _plant_append_without_prev_check() -> contextlib.AbstractContextManager[None]:
    from phalanx.errors import invariant
    from phalanx.raft.log import RaftLog

    def maybe_append(
        self: Any, index: int, log_term: int, committed: int, entries: tuple[Entry, ...]
    ) -> int | None:
        if index > self.last_index():
            return None  # (a gap cannot even be written)
        # BUG: the term of our entry at ``index`` is not compared with ``log_term``.
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            invariant(conflict > self.committed, "entry conflicts with a committed entry")
            self.append(list(entries[conflict - index - 1 :]))
        self.commit_to(min(committed, last_new))
        return last_new

    return _patched(RaftLog, "maybe_append", maybe_append)


def _plant_no_step_down() -> contextlib.AbstractContextManager[None]:
    from phalanx.raft.raft import Raft

    original = Raft.__dict__["_accept_higher_term"]

    def accept_higher_term(self: Any, m: Any) -> bool:
        if self.role == Role.LEADER:
            # BUG: adopt the higher term, but stay leader.
            self.term = m.term
            self.vote = 0
            return True
        result: bool = original(self, m)
        return result

    return _patched(Raft, "_accept_higher_term", accept_higher_term)


class ApplyBeforeCommitCluster(Cluster):
    """A driver that applies a leader's new entries as it appends them (a bug)."""

    def _persist(self, node: SimNode, ready: Ready) -> bool:
        wrote = super()._persist(node, ready)
        if node.role == Role.LEADER and ready.entries:
            fresh = tuple(e for e in ready.entries if e.index > node.sm.applied)
            if fresh and fresh[0].index == node.sm.applied + 1:
                self._apply(node, fresh)  # BUG: not committed yet
        return wrote

    def _apply(self, node: SimNode, entries: tuple[Entry, ...]) -> bool:
        # Entries the buggy path applied already are skipped when they come committed.
        entries = tuple(e for e in entries if e.index > node.sm.applied)
        return super()._apply(node, entries) if entries else True


BUGS: dict[str, PlantedBug] = {
    bug.name: bug
    for bug in (
        PlantedBug(
            "figure-8",
            "commit an entry of an earlier term by counting replicas",
            _plant_figure_8,
            # The figure8 nemesis strands an old-term entry and a rival later-term entry, then
            # crashes the leader holding the old one as it first advances its commit index.
            # One entry per append lets followers acknowledge the old entry before the new
            # leader's own, which is the window Figure 8 describes. The nemesis times its
            # crash for a driver that sends after persisting, so the leader's early appends
            # are turned off here.
            faults="figure8",
            duration_s=8.0,
            settings={"max_size_per_msg_bytes": 1, "early_send": ""},
        ),
        PlantedBug(
            "vote-without-log-check",
            "grant votes without the up-to-date log check",
            _plant_vote_without_log_check,
            faults="crash,partition",
        ),
        PlantedBug(
            "vote-not-persisted",
            "send messages (vote grants) before the hard state is durable",
            _nothing,
            # The window is an fsync: a vote sent, its node crashed before the vote reached
            # the disk, restarted, and asked again in the same term by another candidate.
            # The unsynced-vote nemesis makes each step happen (default core settings).
            faults="unsynced-vote",
            settings={"early_send": "votes"},
        ),
        PlantedBug(
            "apply-before-commit",
            "a leader applies entries before they are committed",
            _nothing,
            faults="crash,partition",
            cluster_class=ApplyBeforeCommitCluster,
        ),
        PlantedBug(
            "append-without-prev-check",
            "accept AppendEntries without the previous index/term match",
            _plant_append_without_prev_check,
            faults="crash,partition",
        ),
        PlantedBug(
            "no-step-down",
            "a leader adopts a higher term without stepping down",
            _plant_no_step_down,
            faults="partition",
        ),
    )
}


@dataclass(frozen=True)
class HuntResult:
    """The first seed that caught the bug, how many seeds ran, and which check fired."""

    bug: str
    seed: int | None
    seeds_run: int
    check: str | None
    failure: SimulationFailed | None


def hunt(
    bug: PlantedBug,
    seeds_max: int,
    *,
    first_seed: int = 0,
    duration_s: float | None = None,
    settings: SimSettings | None = None,
) -> HuntResult:
    """Run seeds with ``bug`` planted until one fails (or ``seeds_max`` pass)."""
    if settings is None:
        settings = settings_for(
            nodes=bug.nodes,
            faults=bug.faults,
            duration_s=bug.duration_s if duration_s is None else duration_s,
            **bug.settings,
        )
    with bug.planted():
        for count, seed in enumerate(range(first_seed, first_seed + seeds_max), start=1):
            cluster = bug.cluster_class(seed, settings)
            try:
                cluster.run()
            except SimulationFailed as failure:
                return HuntResult(bug.name, seed, count, failure.check, failure)
    return HuntResult(bug.name, None, seeds_max, None, None)
