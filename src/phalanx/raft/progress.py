"""What a leader knows of each follower: how far it matches, what to send next, flow control.

A follower's :class:`Progress` is in one of three states (as in etcd-io/raft):

- ``PROBE``: the leader does not know where the logs match; it sends one append at a time
  and waits for the answer (or the next heartbeat response) before sending another;
- ``REPLICATE``: the logs match up to ``match``; appends stream optimistically, at most
  ``max_inflight_msgs`` unacknowledged at once (:class:`Inflights`);
- ``SNAPSHOT``: the follower needs entries that were compacted; the leader sent a snapshot and
  sends nothing else until ``report_snapshot``.
"""

from __future__ import annotations

import enum
from collections import deque

from phalanx.errors import invariant

__all__ = ["Inflights", "Progress", "ProgressState"]


class ProgressState(enum.IntEnum):
    PROBE = 1
    REPLICATE = 2
    SNAPSHOT = 3


class Inflights:
    """The last index of each append in flight, oldest first, at most ``capacity`` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._last_indexes: deque[int] = deque()

    def add(self, last_index: int) -> None:
        invariant(not self.full(), "add to a full in-flight window")
        invariant(
            not self._last_indexes or self._last_indexes[-1] < last_index,
            "in-flight appends must grow",
        )
        self._last_indexes.append(last_index)

    def free_le(self, index: int) -> None:
        """Acknowledge every append ending at or before ``index``."""
        while self._last_indexes and self._last_indexes[0] <= index:
            self._last_indexes.popleft()

    def free_first_one(self) -> None:
        if self._last_indexes:
            self._last_indexes.popleft()

    def full(self) -> bool:
        return len(self._last_indexes) >= self.capacity

    def count(self) -> int:
        return len(self._last_indexes)

    def reset(self) -> None:
        self._last_indexes.clear()


class Progress:
    def __init__(self, next_index: int, max_inflight: int, *, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        #: In PROBE: an append was sent and its answer has not come yet.
        self.probe_sent = False
        #: In SNAPSHOT: the index of the snapshot sent, and the leader tick it was sent at.
        self.pending_snapshot = 0
        self.snapshot_sent_tick = 0
        #: Heard from since the last check-quorum (a new peer counts as active).
        self.recent_active = True
        self.is_learner = is_learner
        self.inflights = Inflights(max_inflight)

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.name}, match={self.match}, next={self.next}, "
            f"inflight={self.inflights.count()}, learner={self.is_learner})"
        )

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int, tick: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = index
        self.snapshot_sent_tick = tick

    def maybe_update(self, index: int) -> bool:
        """An append up to ``index`` was acknowledged; False if that is old news."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """The append after ``rejected`` was refused; move ``next`` back. False if stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index: int | None) -> None:
        """An append was sent; ``last_index`` is its last entry's index, None if it had none."""
        if self.state == ProgressState.REPLICATE:
            if last_index is not None:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True
