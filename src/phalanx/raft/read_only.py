"""Linearizable reads without writing to the log: ReadIndex (thesis 6.4) and leases (6.4.1).

A leader serves a read at its commit index once it has proven it was still the leader after
the read arrived. The proof is a heartbeat *round*: every heartbeat broadcast gets the next
round number (carried in the heartbeat's ``context`` and echoed back); a quorum that
answered round ``r`` or later confirms every read that arrived before round ``r`` was sent.
One round serves every read queued meanwhile, so a burst of reads costs one round trip.

Lease reads skip the wait while a quorum acknowledged a round sent less than
``lease_ticks`` ago (see ``docs/raft.md`` for the clock assumption).

Reads are held here in arrival order, at most ``PENDING_READS_MAX``; older rounds' send
times are kept for the lease, at most ``ROUND_HISTORY_MAX``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

__all__ = ["PENDING_READS_MAX", "ROUND_HISTORY_MAX", "PendingRead", "ReadOnly", "decode_round"]

#: Reads a leader holds while waiting for confirmation; more are dropped.
PENDING_READS_MAX: Final = 100_000
#: Heartbeat rounds whose send tick is remembered for the lease.
ROUND_HISTORY_MAX: Final = 4096


@dataclass(frozen=True)
class PendingRead:
    index: int  # the leader's commit index when the read arrived
    context: bytes
    requester: int  # the node that asked (the leader itself for local reads)
    round: int  # the heartbeat round whose quorum confirms it


def encode_round(round_number: int) -> bytes:
    return round_number.to_bytes(8, "big")


def decode_round(context: bytes) -> int:
    """The round a heartbeat response answers; 0 if it carries none."""
    if len(context) != 8:
        return 0
    return int.from_bytes(context, "big")


class ReadOnly:
    def __init__(self) -> None:
        self.round_sent = 0
        self.confirmed = 0
        self._acked: dict[int, int] = {}
        self._pending: deque[PendingRead] = deque()
        self._sent_at: deque[tuple[int, int]] = deque()  # (round, tick)

    def pending_count(self) -> int:
        return len(self._pending)

    def add(self, index: int, context: bytes, requester: int) -> bool:
        """Queue a read; True if a new round must be broadcast for it now."""
        in_flight = self.round_sent > self.confirmed
        needed = self.round_sent + 1
        self._pending.append(PendingRead(index, context, requester, needed))
        return not in_flight

    def start_round(self, me: int, tick: int) -> bytes:
        """A heartbeat broadcast starts now; the context it carries."""
        self.round_sent += 1
        self._acked[me] = self.round_sent
        self._sent_at.append((self.round_sent, tick))
        if len(self._sent_at) > ROUND_HISTORY_MAX:
            self._sent_at.popleft()
        return encode_round(self.round_sent)

    def ack(self, node: int, round_number: int) -> None:
        if 0 < round_number <= self.round_sent:
            self._acked[node] = max(self._acked.get(node, 0), round_number)

    def acked(self) -> dict[int, int]:
        return self._acked

    def confirm(self, confirmed: int) -> tuple[list[PendingRead], bool]:
        """A quorum answered ``confirmed``: the reads released, and whether another round is due."""
        released: list[PendingRead] = []
        if confirmed > self.confirmed:
            self.confirmed = confirmed
            while self._pending and self._pending[0].round <= confirmed:
                released.append(self._pending.popleft())
        again = bool(self._pending) and self._pending[-1].round > self.round_sent
        return released, again

    def sent_tick(self, round_number: int) -> int | None:
        for number, tick in reversed(self._sent_at):
            if number == round_number:
                return tick
            if number < round_number:
                break
        return None
