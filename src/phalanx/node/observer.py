"""``NodeObserver``: what a ``RaftNode`` reports about its own work, as it happens.

The node calls these methods from its event loop, synchronously, on its hot paths; an
observer must return at once and never raise. ``NullObserver`` ignores everything and is the
default. ``phalanx.node.metrics`` turns the calls into Prometheus series.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NodeObserver", "NullObserver"]


class NodeObserver(Protocol):
    def on_persist(self, seconds: float, entries: int) -> None:
        """One ``DiskStorage.save`` (one fsync unless disabled) took ``seconds``."""

    def on_apply(self, commit_index: int, applied_index: int) -> None:
        """Entries were applied; the node's commit and apply indexes are now these."""

    def on_proposal(self, kind: str) -> None:
        """A proposal of ``kind`` (``"kv"``, ``"conf_change"``, ``"lease_expire"``) was made."""

    def on_request(self, op: str, seconds: float, outcome: str) -> None:
        """A client request ``op`` finished after ``seconds``; ``outcome`` is ``"ok"``,
        ``"fail"`` (definitely not applied) or ``"unknown"``."""

    def on_role(self, term: int, role: str, leader: int) -> None:
        """The node's term, role or known leader changed."""


class NullObserver:
    """Observes nothing."""

    def on_persist(self, seconds: float, entries: int) -> None:
        pass

    def on_apply(self, commit_index: int, applied_index: int) -> None:
        pass

    def on_proposal(self, kind: str) -> None:
        pass

    def on_request(self, op: str, seconds: float, outcome: str) -> None:
        pass

    def on_role(self, term: int, role: str, leader: int) -> None:
        pass
