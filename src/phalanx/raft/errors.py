"""The errors the Raft core raises to its caller.

``ProposalDropped`` is the only expected failure: the proposal (or read request) was not
accepted and had no effect. Broken invariants raise ``phalanx.errors.InvariantViolation``.
"""

from __future__ import annotations

from phalanx.errors import Unavailable

__all__ = ["ProposalDropped"]


class ProposalDropped(Unavailable):
    """The node refused the proposal: no known leader, a leadership transfer in progress,
    the uncommitted-bytes cap reached, or this node is no longer in the configuration.

    The proposal definitely did not enter the log (a FAILED outcome); retrying later may work.
    """
