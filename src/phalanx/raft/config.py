"""The settings of one Raft node, validated on construction.

Every limit has a named bound; an invalid value raises ``ValueError`` naming the field.
Times are in ticks (the driver decides how long a tick is); sizes are in bytes of entry data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "ELECTION_TICKS_MAX",
    "MAX_ENTRIES_PER_MSG_MAX",
    "MAX_INFLIGHT_MSGS_MAX",
    "READ_ONLY_OPTIONS",
    "Config",
]

#: Longest election timeout; a longer one would leave a cluster leaderless for too long.
ELECTION_TICKS_MAX: Final = 1_000_000
#: Largest in-flight window per follower.
MAX_INFLIGHT_MSGS_MAX: Final = 1_000_000
#: Most entries one append message carries.
MAX_ENTRIES_PER_MSG_MAX: Final = 1_000_000
#: How a leader confirms it still leads before serving a read (see ``docs/raft.md``).
READ_ONLY_OPTIONS: Final = ("safe", "lease")


@dataclass(frozen=True)
class Config:
    """How one node behaves.

    - ``id``: this node's id (> 0; 0 means "none" in messages).
    - ``election_ticks``: a follower that hears from no leader for a randomized timeout in
      ``[election_ticks, 2 * election_ticks)`` starts an election; also the check-quorum
      period and the leadership-transfer deadline. Must exceed ``heartbeat_ticks``.
    - ``heartbeat_ticks``: a leader sends heartbeats this often.
    - ``pre_vote``: ask for a pre-vote before raising the term (thesis 9.6).
    - ``check_quorum``: a leader that heard from no quorum in an election timeout steps down,
      and followers that heard from a leader within one ignore vote requests.
    - ``max_inflight_msgs``: appends in flight to one follower in the replicate state.
    - ``max_size_per_msg_bytes``: entry data per append (at least one entry is always sent).
    - ``max_uncommitted_entries_bytes``: data a leader accepts beyond its commit index;
      proposals past it are dropped.
    - ``read_only``: ``"safe"`` (ReadIndex confirmed by a heartbeat round) or ``"lease"``
      (served under the leader's lease; needs ``check_quorum``).
    - ``applied``: the last index whose effects the state machine holds durably at a restart
      (CONF_CHANGE entries included); at most the stored commit index. The core applies the
      membership changes between the snapshot and it, and hands out entries from the next.
    - ``max_entries_per_msg``: entries per append.
    """

    id: int
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight_msgs: int = 256
    max_size_per_msg_bytes: int = 1 << 20
    max_uncommitted_entries_bytes: int = 1 << 30
    read_only: str = "safe"
    applied: int = 0
    max_entries_per_msg: int = 10_000

    def __post_init__(self) -> None:
        _positive("id", self.id)
        _positive("heartbeat_ticks", self.heartbeat_ticks)
        _positive("election_ticks", self.election_ticks)
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError(
                f"election_ticks must exceed heartbeat_ticks ({self.heartbeat_ticks}), "
                f"got {self.election_ticks}"
            )
        _at_most("election_ticks", self.election_ticks, ELECTION_TICKS_MAX)
        _positive("max_inflight_msgs", self.max_inflight_msgs)
        _at_most("max_inflight_msgs", self.max_inflight_msgs, MAX_INFLIGHT_MSGS_MAX)
        _positive("max_size_per_msg_bytes", self.max_size_per_msg_bytes)
        _positive("max_uncommitted_entries_bytes", self.max_uncommitted_entries_bytes)
        _positive("max_entries_per_msg", self.max_entries_per_msg)
        _at_most("max_entries_per_msg", self.max_entries_per_msg, MAX_ENTRIES_PER_MSG_MAX)
        if self.read_only not in READ_ONLY_OPTIONS:
            raise ValueError(
                f"read_only must be one of {READ_ONLY_OPTIONS}, got {self.read_only!r}"
            )
        if self.read_only == "lease" and not self.check_quorum:
            raise ValueError("read_only='lease' needs check_quorum=True (the lease rests on it)")
        if isinstance(self.applied, bool) or not isinstance(self.applied, int) or self.applied < 0:
            raise ValueError(f"applied must be an int >= 0, got {self.applied!r}")
        for name in ("pre_vote", "check_quorum"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _at_most(name: str, value: int, bound: int) -> None:
    if value > bound:
        raise ValueError(f"{name} must be <= {bound}, got {value}")
