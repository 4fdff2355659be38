"""Injected network faults between nodes: which peers a node cannot hear or reach.

A :class:`LinkFaults` belongs to one node. Its driver asks :meth:`LinkFaults.blocks` before
sending a message and when one arrives, and drops the message when the link is cut: the
same effect as a firewall rule on both directions, with no root needed. Chaos tests and the
partition tests of the node cut and heal links through it while the processes keep running.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LinkFaults"]


class LinkFaults:
    """The cut links of one node (both directions)."""

    def __init__(self) -> None:
        self._cut: set[int] = set()
        self.dropped_out = 0
        self.dropped_in = 0

    def isolate(self, peers: Iterable[int]) -> None:
        """Cut the links to ``peers`` (added to any already cut)."""
        self._cut.update(peers)

    def heal(self) -> None:
        """Restore every link."""
        self._cut.clear()

    @property
    def cut(self) -> frozenset[int]:
        return frozenset(self._cut)

    def blocks_out(self, peer: int) -> bool:
        if peer in self._cut:
            self.dropped_out += 1
            return True
        return False

    def blocks_in(self, peer: int) -> bool:
        if peer in self._cut:
            self.dropped_in += 1
            return True
        return False
