"""The named limits of the key-value state machine.

Every replica of a cluster must run with the same :class:`Limits`: the limits that shape
what a command does (sizes, op counts, session and lease bounds, the event log length) are part
of the replicated behaviour. ``range_limit_max`` and ``watchers_max`` bound work done for one
node's clients; they are here so one object lists every bound. ``docs/kv.md`` explains each.
"""

from __future__ import annotations

import msgspec

__all__ = ["DEFAULT_LIMITS", "Limits"]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds on input sizes and on every collection the state machine keeps."""

    #: An encoded proposal (command plus session envelope).
    proposal_bytes_max: int = 1_572_864
    #: A key; keys are non-empty.
    key_bytes_max: int = 4096
    #: A value.
    value_bytes_max: int = 1_048_576
    #: Each of a txn's lists: compares, then-ops, else-ops.
    txn_ops_max: int = 128
    #: Key-values returned by one range read (``limit=0`` means this many).
    range_limit_max: int = 10_000
    #: Watchers registered on one node's hub.
    watchers_max: int = 10_000
    #: Client sessions; registering one more evicts the least recently used.
    sessions_max: int = 10_000
    #: Unacknowledged responses cached per session.
    session_responses_max: int = 64
    #: A session unused for this long (in the leader's time carried by commands) expires.
    session_ttl_ms: int = 3_600_000
    #: Events kept for watchers; older events are dropped a whole revision at a time.
    event_log_len_max: int = 100_000
    #: Live leases.
    leases_max: int = 100_000
    #: The longest lease TTL.
    lease_ttl_ms_max: int = 30 * 24 * 3_600_000
    #: Lease ids in one LeaseExpire command.
    lease_expire_ids_max: int = 1000


DEFAULT_LIMITS = Limits()
