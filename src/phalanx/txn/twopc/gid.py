"""Global transaction ids: the coordinator's id travels inside every one.

A global id is ``phx1:<coordinator>:<incarnation>.<sequence>``; the branch of one participant
appends ``:<participant>``, because PostgreSQL requires a prepared gid to be unique across
all databases of a server and two participants may share one. A participant that finds a
prepared branch after a crash reads from its gid which coordinator to ask, and the coordinator
recognises its own branches among everything prepared on a server.

``incarnation`` is bumped durably each time a coordinator starts (its decision log keeps the
counter) and ``sequence`` counts transactions within one run, so ids never repeat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from phalanx.txn.twopc.types import PARTICIPANT_NAME_CHARS_MAX

__all__ = ["GID_PREFIX", "BranchId", "Gid", "check_name", "parse_branch"]

GID_PREFIX: Final = "phx1"
_NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{PARTICIPANT_NAME_CHARS_MAX}}}")
_BRANCH = re.compile(
    rf"{GID_PREFIX}:(?P<coordinator>{_NAME.pattern}):(?P<incarnation>\d{{1,18}})"
    rf"\.(?P<sequence>\d{{1,18}}):(?P<participant>{_NAME.pattern})"
)


def check_name(what: str, name: str) -> str:
    """Return ``name`` if it may appear in a gid (letters, digits, ``_``, ``-``; 1-40 chars)."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{what}: {name!r} must be 1-{PARTICIPANT_NAME_CHARS_MAX} characters "
            "of letters, digits, '_' or '-'"
        )
    return name


@dataclass(frozen=True, slots=True, order=True)
class Gid:
    """The id of one global transaction."""

    coordinator: str
    incarnation: int
    sequence: int

    def __str__(self) -> str:
        return f"{GID_PREFIX}:{self.coordinator}:{self.incarnation}.{self.sequence}"

    def branch(self, participant: str) -> str:
        """The gid this transaction's branch on ``participant`` is prepared under."""
        return f"{self}:{check_name('participant', participant)}"

    @classmethod
    def parse(cls, text: str) -> Gid:
        branch = parse_branch(f"{text}:x")
        if branch is None:
            raise ValueError(f"not a phalanx global transaction id: {text!r}")
        return branch.gid


@dataclass(frozen=True, slots=True)
class BranchId:
    """A parsed branch gid."""

    gid: Gid
    participant: str


def parse_branch(text: str) -> BranchId | None:
    """Parse a branch gid; ``None`` when it was not made by Phalanx (leave those alone)."""
    match = _BRANCH.fullmatch(text)
    if match is None:
        return None
    gid = Gid(match["coordinator"], int(match["incarnation"]), int(match["sequence"]))
    return BranchId(gid, match["participant"])
