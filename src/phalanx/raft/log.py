"""The Raft log as the core sees it: persisted entries in Storage, then unstable ones.

``committed`` and ``applied`` live here too. Invariants checked: the commit index never
decreases and never passes the last index; a committed entry is never truncated; the applied
index never passes the commit index.
"""

from __future__ import annotations

from phalanx.errors import invariant
from phalanx.raft.storage import LogCompacted, Storage
from phalanx.raft.types import Entry, Snapshot
from phalanx.raft.unstable import Unstable

__all__ = ["RaftLog", "entry_bytes", "payload_bytes"]


def entry_bytes(entry: Entry) -> int:
    """An entry's size on the wire and on disk (as MemoryStorage counts it)."""
    return len(entry.data) + 16


def payload_bytes(entries: tuple[Entry, ...] | list[Entry]) -> int:
    """Bytes of data only: what the uncommitted-bytes cap counts (an empty entry is free)."""
    return sum(len(e.data) for e in entries)


class RaftLog:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applied = first - 1
        #: Committed entries up to here were handed out in a Ready and await ``advance``.
        self.applying = first - 1

    # -- indexes and terms ------------------------------------------------------------------

    def first_index(self) -> int:
        index = self.unstable.first_index()
        return index if index is not None else self.storage.first_index()

    def last_index(self) -> int:
        index = self.unstable.last_index()
        return index if index is not None else self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """The term of ``index``; 0 beyond the last index. Raises LogCompacted below the first."""
        if index < self.first_index() - 1:
            raise LogCompacted(f"index {index} is compacted")
        if index > self.last_index():
            return 0
        term = self.unstable.term(index)
        if term is not None:
            return term
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except LogCompacted:
            return 0

    def match_term(self, index: int, term: int) -> bool:
        return self.term_or_zero(index) == term

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Is a log ending at (``last_index``, ``term``) at least as up to date (paper 5.4.1)?"""
        mine = self.last_term()
        return term > mine or (term == mine and last_index >= self.last_index())

    # -- reading entries --------------------------------------------------------------------

    def entries(self, lo: int, max_bytes: int, max_count: int) -> list[Entry]:
        """Entries from ``lo`` on, at least one if any, within ``max_bytes`` and ``max_count``."""
        last = self.last_index()
        if lo > last:
            return []
        return self.slice(lo, min(last + 1, lo + max_count), max_bytes)

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise LogCompacted(f"index {lo} is compacted")
        result: list[Entry] = []
        offset = self.unstable.offset
        if lo < offset:
            result = self.storage.entries(lo, min(hi, offset), max_bytes)
            if len(result) < min(hi, offset) - lo:
                return result  # the byte limit stopped it
        if hi > offset:
            result.extend(self.unstable.slice(max(lo, offset), hi))
        return _limit_bytes(result, max_bytes)

    def all_entries(self) -> list[Entry]:
        """Every entry held (for tests and status)."""
        return self.slice(self.first_index(), self.last_index() + 1, 1 << 62)

    def snapshot(self) -> Snapshot:
        pending = self.unstable.snapshot
        return pending if pending is not None else self.storage.snapshot()

    def has_pending_snapshot(self) -> bool:
        return self.unstable.snapshot is not None

    def next_committed_entries(self) -> list[Entry]:
        """Committed entries not yet handed out for applying."""
        if self.has_pending_snapshot():
            return []
        lo = max(self.applying + 1, self.first_index())
        return self.slice(lo, self.committed + 1, 1 << 62)

    def has_next_committed_entries(self) -> bool:
        if self.has_pending_snapshot():
            return False
        return self.committed > max(self.applying, self.first_index() - 1)

    # -- changing the log ------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> int:
        if not entries:
            return self.last_index()
        after = entries[0].index - 1
        invariant(
            after >= self.committed,
            f"appending at {after + 1} would overwrite committed entries (commit {self.committed})",
        )
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """AppendEntries (paper 5.3): the index of the last new entry, or None on a mismatch."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            invariant(
                conflict > self.committed,
                f"entry {conflict} conflicts with a committed entry (commit {self.committed})",
            )
            self.append(list(entries[conflict - index - 1 :]))
        self.commit_to(min(committed, last_new))
        return last_new

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """The first index whose term differs from ours or that we lack; 0 if all match."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, with its term.

        Fast backtracking: a follower offers it as its reject hint, and a leader uses it to jump
        over every entry of a term the other log cannot hold.
        """
        while index > 0:
            try:
                ours = self.term(index)
            except LogCompacted:
                return index, 0
            if ours <= term:
                return index, ours
            index -= 1
        return 0, 0

    def commit_to(self, index: int) -> None:
        if index <= self.committed:
            return
        invariant(
            index <= self.last_index(),
            f"commit {index} is beyond the last index {self.last_index()}",
        )
        self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit ``index`` if it is of ``term`` (only current-term entries count: Figure 8)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def applying_to(self, index: int) -> None:
        invariant(index <= self.committed, f"handing out {index} beyond commit {self.committed}")
        self.applying = max(self.applying, index)

    def applied_to(self, index: int) -> None:
        if index <= self.applied:
            return
        invariant(index <= self.committed, f"applied {index} beyond commit {self.committed}")
        self.applied = index
        self.applying = max(self.applying, index)

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def restore(self, snapshot: Snapshot) -> None:
        index = snapshot.meta.index
        invariant(index > self.committed, f"snapshot at {index} is not beyond commit")
        self.committed = index
        self.unstable.restore(snapshot)


def _limit_bytes(entries: list[Entry], max_bytes: int) -> list[Entry]:
    total = 0
    for count, entry in enumerate(entries):
        total += entry_bytes(entry)
        if count > 0 and total > max_bytes:
            return entries[:count]
    return entries
