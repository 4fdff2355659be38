"""Raft's safety properties as incremental checks, run as the simulation goes.

The node harness reports what each node does the moment it does it (a Ready persisted, a
message sent, an entry applied, a client answered) and :class:`Checker` compares it with
everything seen so far, across all nodes and all their lives. Each check costs O(1) or
O(entries involved) per report, so the simulator can afford them after every event.

===========================  ====================================================================
check                        what it asserts (Raft paper section)
===========================  ====================================================================
``election-safety``          at most one leader per term (5.2)
``single-vote``              a node grants at most one vote per term, across restarts (5.2)
``log-matching``             entries with the same index and term hold the same data and
                             follow the same term, so logs agreeing on an entry agree on the
                             whole prefix (5.3); a log's terms never decrease
``leader-completeness``      a new leader of term T holds every entry committed in a term < T
                             (5.4.1)
``commit-agreement``         no two nodes ever commit different entries at one index
``commit-monotonic``         a node's commit index never decreases, even across a restart
                             (never below what it had persisted); never beyond its log
``apply-order``              entries are applied in index order, without gaps, only once
                             committed at that node
``state-machine-safety``     every node applies the same entry at the same index (5.4.3)
``acknowledged-put-lost``    every put acknowledged ``ok`` is applied by every member at the
                             end, at the index it was acknowledged at
``stale-read``               a read returns a value at least as new as every put acknowledged
                             before the read was invoked (a necessary condition of
                             linearizability; the full check belongs to the chaos tooling)
``liveness``                 after the last heal a leader is elected and a new put commits
                             and is applied everywhere within a bounded virtual time
===========================  ====================================================================

A broken property raises :class:`Violation`, naming the check.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from phalanx.errors import InvariantViolation
from phalanx.raft.types import Entry
from phalanx.sim.kv import put_value

__all__ = ["CHECKS", "Checker", "Violation"]

CHECKS = (
    "election-safety",
    "single-vote",
    "log-matching",
    "leader-completeness",
    "commit-agreement",
    "commit-monotonic",
    "apply-order",
    "state-machine-safety",
    "acknowledged-put-lost",
    "stale-read",
    "liveness",
)

#: The term of an index in a node's log: None when compacted into a snapshot; raises
#: IndexError when beyond the last index.
TermAt = Callable[[int], "int | None"]


class Violation(InvariantViolation):
    """A safety or liveness property does not hold."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"[{check}] {message}")
        self.check = check
        self.detail = message


class Checker:
    """Everything observed so far, and the checks that compare new observations with it."""

    __slots__ = (
        "_acked_by_key",
        "_entries",
        "applied",
        "applied_index",
        "commit_by_term",
        "commit_durable",
        "commit_seen",
        "committed",
        "leaders",
        "value_index",
        "votes",
    )

    def __init__(self) -> None:
        #: term -> the node that led it
        self.leaders: dict[int, int] = {}
        #: (voter, term) -> the candidate it voted for
        self.votes: dict[tuple[int, int], int] = {}
        # (index, term) -> (entry type, data, term of the previous entry or -1 if unknown)
        self._entries: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        #: index -> term of the entry committed there
        self.committed: dict[int, int] = {}
        #: a term of an observing node -> the highest index it saw committed in that term
        self.commit_by_term: dict[int, int] = {}
        #: node -> commit index in its current life / as last persisted
        self.commit_seen: dict[int, int] = {}
        self.commit_durable: dict[int, int] = {}
        #: index -> the entry applied there (first application anywhere)
        self.applied: dict[int, Entry] = {}
        #: node -> last index applied in its current life
        self.applied_index: dict[int, int] = {}
        #: put value -> the log index it was applied at (first application)
        self.value_index: dict[str, int] = {}
        # key -> ([completion times of ok puts], [running max of their indexes])
        self._acked_by_key: dict[str, tuple[list[int], list[int]]] = {}

    # -- elections ---------------------------------------------------------------------------

    def on_leader(self, node: int, term: int, last_index: int, term_at: TermAt) -> None:
        """``node`` became leader of ``term``; its log ends at ``last_index``."""
        other = self.leaders.setdefault(term, node)
        if other != node:
            raise Violation(
                "election-safety", f"nodes {other} and {node} are both leaders of term {term}"
            )
        best = 0
        for observed_term, index in self.commit_by_term.items():
            if observed_term < term and index > best:
                best = index
        if not best:
            return
        want = self.committed[best]
        if best > last_index:
            raise Violation(
                "leader-completeness",
                f"node {node} leads term {term} with a log ending at {last_index}, but entry "
                f"{best} (term {want}) was committed in an earlier term",
            )
        got = term_at(best)
        if got is not None and got != want:
            raise Violation(
                "leader-completeness",
                f"node {node} leads term {term} holding term {got} at index {best}, where "
                f"an entry of term {want} was committed in an earlier term",
            )

    def on_vote(self, voter: int, term: int, candidate: int) -> None:
        """``voter`` sent a granting (non pre-) vote to ``candidate`` in ``term``."""
        other = self.votes.setdefault((voter, term), candidate)
        if other != candidate:
            raise Violation(
                "single-vote",
                f"node {voter} voted for {other} and then for {candidate} in term {term}",
            )

    # -- logs --------------------------------------------------------------------------------

    def on_persist(self, node: int, entries: Iterable[Entry], prev_term: int | None) -> None:
        """``node`` wrote ``entries`` (consecutive); ``prev_term`` is its entry before them."""
        prev = -1 if prev_term is None else prev_term
        registry = self._entries
        for entry in entries:
            if prev > entry.term:
                raise Violation(
                    "log-matching",
                    f"node {node} wrote index {entry.index} with term {entry.term} after "
                    f"an entry of term {prev}: a log's terms never decrease",
                )
            key = (entry.index, entry.term)
            seen = registry.get(key)
            if seen is None:
                registry[key] = (entry.type, entry.data, prev)
            else:
                etype, data, seen_prev = seen
                if etype != entry.type or data != entry.data:
                    raise Violation(
                        "log-matching",
                        f"node {node} holds a different entry at index {entry.index} term "
                        f"{entry.term} than another node: {data!r} vs {entry.data!r}",
                    )
                if seen_prev == -1:
                    registry[key] = (etype, data, prev)
                elif prev not in (-1, seen_prev):
                    raise Violation(
                        "log-matching",
                        f"node {node} holds index {entry.index} term {entry.term} after an "
                        f"entry of term {prev}, another node after one of term {seen_prev}: "
                        "the logs differ before an entry they share",
                    )
            prev = entry.term

    def on_start(self, node: int, commit: int) -> None:
        """``node`` (re)started with ``commit`` as its commit index."""
        durable = self.commit_durable.get(node, 0)
        if commit < durable:
            raise Violation(
                "commit-monotonic",
                f"node {node} restarted with commit {commit}, below the {durable} it persisted",
            )
        self.commit_seen[node] = commit
        self.applied_index[node] = 0

    def on_commit(
        self, node: int, term: int, commit: int, last_index: int, term_at: TermAt
    ) -> None:
        """``node``, at ``term``, wrote a hard state with ``commit``."""
        old = self.commit_seen.get(node, 0)
        if commit < old:
            raise Violation(
                "commit-monotonic",
                f"node {node} moved its commit index back from {old} to {commit}",
            )
        if commit == old:
            return
        if commit > last_index:
            raise Violation(
                "commit-monotonic",
                f"node {node} set commit {commit} beyond its last index {last_index}",
            )
        committed = self.committed
        for index in range(old + 1, commit + 1):
            entry_term = term_at(index)
            if entry_term is None:
                continue
            known = committed.setdefault(index, entry_term)
            if known != entry_term:
                raise Violation(
                    "commit-agreement",
                    f"node {node} committed term {entry_term} at index {index}, where term "
                    f"{known} was committed before",
                )
        self.commit_seen[node] = commit
        if commit > self.commit_by_term.get(term, 0):
            self.commit_by_term[term] = commit

    def on_durable_commit(self, node: int, commit: int) -> None:
        """``node``'s hard state with ``commit`` reached the disk."""
        if commit > self.commit_durable.get(node, 0):
            self.commit_durable[node] = commit

    # -- state machines ----------------------------------------------------------------------

    def on_snapshot_installed(self, node: int, index: int) -> None:
        """``node``'s state machine was replaced by a snapshot at ``index``."""
        self.applied_index[node] = index

    def on_apply(self, node: int, entry: Entry) -> None:
        """``node`` applies ``entry`` to its state machine."""
        last = self.applied_index.get(node, 0)
        if last and entry.index != last + 1:
            raise Violation(
                "apply-order", f"node {node} applied index {entry.index} right after {last}"
            )
        commit = self.commit_seen.get(node, 0)
        if entry.index > commit:
            raise Violation(
                "apply-order",
                f"node {node} applied index {entry.index} beyond its commit index {commit}",
            )
        self.applied_index[node] = entry.index
        first = self.applied.setdefault(entry.index, entry)
        if first is not entry and first != entry:
            raise Violation(
                "state-machine-safety",
                f"node {node} applied {entry} at index {entry.index}, another node {first}",
            )

    def on_put_applied(self, value: str, index: int) -> None:
        self.value_index.setdefault(value, index)

    # -- clients -----------------------------------------------------------------------------

    def on_put_ok(self, key: str, value: str, index: int, complete_us: int) -> None:
        """A put was acknowledged to its client as applied at ``index``."""
        first = self.value_index.get(value)
        if first is not None and first != index:
            raise Violation(
                "acknowledged-put-lost",
                f"put {key}={value} was acknowledged at index {index} but first applied at {first}",
            )
        times, best = self._acked_by_key.setdefault(key, ([], []))
        times.append(complete_us)
        best.append(max(index, best[-1]) if best else index)

    def on_read_ok(self, key: str, value: str | None, invoke_us: int) -> None:
        """A read of ``key`` invoked at ``invoke_us`` returned ``value``."""
        if value is None:
            got = 0
        else:
            found = self.value_index.get(value)
            if found is None:
                raise Violation("stale-read", f"read {key} returned {value!r}, never applied")
            got = found
        acked = self._acked_by_key.get(key)
        if acked is None:
            return
        times, best = acked
        before = bisect.bisect_left(times, invoke_us)
        if before and best[before - 1] > got:
            raise Violation(
                "stale-read",
                f"read {key} invoked at {invoke_us} us returned {value!r} (index {got}), but a put "
                f"applied at index {best[before - 1]} was acknowledged before the read began",
            )

    def check_acknowledged(
        self,
        acked: Iterable[tuple[int, str, str, int]],
        members: dict[int, Callable[[int], bool]],
    ) -> None:
        """Every acknowledged put ``(op id, key, value, index)`` is held by every member.

        ``members`` maps each node that must hold them to a predicate: "has applied op id".
        """
        for op_id, key, value, index in acked:
            entry = self.applied.get(index)
            if entry is None or put_value(entry) != value:
                raise Violation(
                    "acknowledged-put-lost",
                    f"put {key}={value} was acknowledged at index {index}, which now holds {entry}",
                )
            for node, holds in members.items():
                if not holds(op_id):
                    raise Violation(
                        "acknowledged-put-lost",
                        f"node {node} lacks the acknowledged put {key}={value} (index {index})",
                    )
