"""The errors of the key-value state machine, placed in the tree of :mod:`phalanx.errors`.

::

    Rejected
    ├── Compacted          the revision asked for is below the compaction point (or the
    │                      watch event log's floor); ``compact_revision`` says where it is
    ├── LeaseNotFound      the lease does not exist (never granted, revoked or expired)
    ├── SessionExpired     the client session is unknown: never registered, or expired/evicted
    ├── SequenceDiscarded  the response to this sequence number was already acknowledged
    ├── SessionBusy        too many unacknowledged requests in one session
    └── BadRequest
        └── FutureRevision a read asked for a revision the store has not reached
    Unavailable
    └── TooManyWatchers    the node's watcher limit is reached

Inside the replicated state machine every rejection is a value (an ``Error`` response, the
same on every replica); :meth:`phalanx.kv.responses.Error.exception` turns it back into one of
these classes for the caller.
"""

from __future__ import annotations

from phalanx.errors import BadRequest, Outcome, Rejected, Unavailable

__all__ = [
    "Compacted",
    "FutureRevision",
    "LeaseNotFound",
    "SequenceDiscarded",
    "SessionBusy",
    "SessionExpired",
    "TooManyWatchers",
]


class Compacted(Rejected):
    """History below ``compact_revision`` is gone: read newer, or restart the watch."""

    def __init__(self, message: str = "", *, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class FutureRevision(BadRequest):
    """A read at a revision higher than the store's current revision."""


class LeaseNotFound(Rejected):
    """The lease named by the request does not exist."""


class SessionExpired(Rejected):
    """The client session is unknown (never registered, expired, or evicted at the limit).

    This request had no effect, but an earlier attempt of the same request in this session may
    have been applied: its outcome is unknown, so this error is INDETERMINATE.
    """

    outcome = Outcome.INDETERMINATE


class SequenceDiscarded(Rejected):
    """The client already acknowledged this sequence number, so its response was dropped."""


class SessionBusy(Rejected):
    """The session holds ``session_responses_max`` unacknowledged responses; ack some first."""


class TooManyWatchers(Unavailable):
    """The node serves ``watchers_max`` watchers already."""
