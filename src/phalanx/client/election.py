"""Leader election: campaign, proclaim, resign, the current leader, and observing changes.

An election named ``svc`` is the same queue as a lock (:mod:`phalanx.client.lock`): each
candidate grants a lease and creates ``<prefix>svc/<lease id in hex>`` holding its value, and
the key with the lowest create revision is the leader. :meth:`Election.campaign` returns once
our key is the lowest; candidates behind it each watch the key just before their own, so a
resignation or an expired lease hands leadership to the next candidate in arrival order.

The leader's ``token`` (the revision that created its key) strictly increases from one leader
to the next. Being elected does not stop a paused former leader from acting: like a lock
holder, a leader must send its token to whatever it changes and the resource must refuse
older tokens (:mod:`phalanx.client.fencing`; see ``docs/coordination.md``).

Errors (besides the client's and :class:`~phalanx.client.lock.LeaseLost`,
:class:`~phalanx.client.lock.TooManyContenders`)::

    Rejected
    └── Conflict
        └── LeadershipLost   proclaim() found our key gone or replaced: we no longer lead
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, cast

from phalanx.client.client import AsyncClient
from phalanx.client.lock import (
    CONTENDERS_MAX,
    TTL_S_DEFAULT,
    Claim,
    ClaimView,
    Contender,
    SyncContender,
    TooManyContenders,
    lowest,
    relay_event,
)
from phalanx.client.results import KeyValue, WatchEvent
from phalanx.errors import Conflict, PhalanxError, Unavailable
from phalanx.kv.commands import Compare, CompareOp, CompareTarget, Put
from phalanx.kv.errors import Compacted

if TYPE_CHECKING:
    from phalanx.client.sync import Client

__all__ = [
    "ELECTION_PREFIX",
    "OBSERVE_RESTARTS_MAX",
    "Election",
    "Leader",
    "Leadership",
    "LeadershipLost",
    "SyncElection",
    "SyncLeadership",
]

#: Where elections keep their queues.
ELECTION_PREFIX: Final = b"/phalanx/election/"
#: Times :meth:`Election.observe` lists the candidates again after its history was compacted.
OBSERVE_RESTARTS_MAX: Final = 100


class LeadershipLost(Conflict):
    """Our candidate key is gone or belongs to a newer campaign: we do not lead."""


@dataclass(frozen=True, slots=True)
class Leader:
    """The current leader: its ``value``, its ``token`` (the revision that created its key,
    increasing from leader to leader), its ``key`` and the ``revision`` of its last value."""

    value: bytes
    token: int
    key: bytes
    revision: int

    @classmethod
    def of(cls, kv: KeyValue) -> Leader:
        return cls(kv.value, kv.create_revision, kv.key, kv.mod_revision)


class Leadership(ClaimView):
    """What winning a campaign gives: the ``token`` to send with every change the leader
    makes, and ``lost``, set once leadership can no longer be trusted (the lease ended, a
    keep-alive went unanswered for a TTL, the key was deleted, or we resigned)."""

    __slots__ = ("value",)

    def __init__(self, name: str, value: bytes, claim: Claim) -> None:
        super().__init__(name, claim)
        self.value = value

    @property
    def token(self) -> int:
        return self._claim.token

    def __repr__(self) -> str:
        return f"Leadership({self.name!r}, value={self.value!r}, token={self.token})"


class Election(Contender):
    """The election ``name``: one candidate at a time per ``Election`` object.

    ``ttl_s`` is the candidate's lease: a leader that stops renewing it (crashed, paused,
    partitioned away) is replaced within about ``ttl_s``.
    """

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        *,
        ttl_s: float = TTL_S_DEFAULT,
        prefix: bytes = ELECTION_PREFIX,
        contenders_max: int = CONTENDERS_MAX,
    ) -> None:
        super().__init__(client, name, ttl_s=ttl_s, prefix=prefix, contenders_max=contenders_max)
        self._leadership: Leadership | None = None
        self._elected = 0

    @property
    def leadership(self) -> Leadership | None:
        """Ours, while we lead (None otherwise)."""
        return self._leadership

    async def campaign(self, value: bytes, *, timeout_s: float | None = None) -> Leadership:
        """Stand with ``value`` and wait until elected (at most ``timeout_s``: then
        ``Timeout``, the candidacy withdrawn; its outcome stays unknown, since observers may
        have seen us lead just before the withdrawal). Raises ``LeaseLost`` when our lease
        ends while waiting; every failure withdraws the candidacy."""
        if self._claim is not None:
            raise RuntimeError(f"election {self.name!r}: already campaigning or leading")
        claim = await self._take_turn(value, timeout_s, f"election {self.name!r} not won")
        self._leadership = Leadership(self.name, value, claim)
        self._elected += 1
        return self._leadership

    async def proclaim(self, value: bytes) -> None:
        """Change the leader's value without an election; ``LeadershipLost`` when we no
        longer lead (our key is gone)."""
        leadership = self._leadership
        if leadership is None:
            raise RuntimeError(f"election {self.name!r}: not the leader")
        result = await self.client.txn(
            [
                Compare(
                    leadership.key, CompareTarget.CREATE_REVISION, CompareOp.EQUAL, leadership.token
                )
            ],
            [Put(leadership.key, value, leadership.lease_id)],
        )
        if not result.succeeded:
            raise LeadershipLost(f"election {self.name!r}: our key {leadership.key!r} is gone")
        leadership.value = value

    async def resign(self) -> None:
        """Step down (or stop campaigning): revoke our lease, deleting our key, so the next
        candidate is elected at once."""
        claim, self._claim, self._leadership = self._claim, None, None
        if claim is None:
            raise RuntimeError(f"election {self.name!r}: not campaigning")
        await claim.leave()

    async def leader(self) -> Leader | None:
        """The current leader, or None when there is no candidate (a linearizable read)."""
        listing = await self.client.range(self.queue, prefix=True, limit=self.contenders_max)
        if listing.more:
            raise TooManyContenders(
                f"{listing.count} candidates under {self.queue!r} > {self.contenders_max}"
            )
        first = lowest(listing.kvs)
        return None if first is None else Leader.of(first)

    async def observe(self) -> AsyncIterator[Leader]:
        """The leader now (if any), then every change of leader or of its value, in order.

        Driven by one watch of the election's keys: no polling, no missed leader.
        """
        last: tuple[bytes, int] | None = None
        for _ in range(OBSERVE_RESTARTS_MAX):
            listing = await self.client.range(self.queue, prefix=True, limit=self.contenders_max)
            if listing.more:
                raise TooManyContenders(
                    f"{listing.count} candidates under {self.queue!r} > {self.contenders_max}"
                )
            candidates = {kv.key: kv for kv in listing.kvs}
            current = self._changed(candidates.values(), last)
            if current is not None:
                last = (current.key, current.revision)
                yield current
            events = cast(
                "AsyncGenerator[WatchEvent, None]",
                self.client.watch(self.queue, prefix=True, start_revision=listing.revision + 1),
            )
            try:
                async with contextlib.aclosing(events):
                    async for event in events:
                        if event.type == "put":
                            candidates[event.key] = event.kv
                        else:
                            candidates.pop(event.key, None)
                        if len(candidates) > self.contenders_max:
                            raise TooManyContenders(
                                f"more than {self.contenders_max} candidates under {self.queue!r}"
                            )
                        if not candidates:
                            last = None
                        current = self._changed(candidates.values(), last)
                        if current is not None:
                            last = (current.key, current.revision)
                            yield current
            except Compacted:
                continue  # the history we needed is gone: list the candidates again
        raise Unavailable(f"observe restarted {OBSERVE_RESTARTS_MAX} times after compaction")

    @staticmethod
    def _changed(candidates: Iterable[KeyValue], last: tuple[bytes, int] | None) -> Leader | None:
        first = lowest(list(candidates))
        if first is None or (first.key, first.mod_revision) == last:
            return None
        return Leader.of(first)

    def statistics(self) -> dict[str, int]:
        stats = {"elected": self._elected, "leading": int(self._leadership is not None)}
        if self._claim is not None:
            stats.update(self._claim.statistics())
        return stats


class SyncLeadership:
    """:class:`Leadership` for :class:`SyncElection`: ``lost`` is a ``threading.Event``."""

    __slots__ = ("key", "lease_id", "lost", "name", "token", "value")

    def __init__(self, leadership: Leadership) -> None:
        self.name = leadership.name
        self.value = leadership.value
        self.token = leadership.token
        self.key = leadership.key
        self.lease_id = leadership.lease_id
        self.lost = threading.Event()


class SyncElection(SyncContender):
    """The blocking form of :class:`Election`, for code without an event loop.

    It runs on its own thread with its own event loop and connection to ``client``'s
    endpoints (a :class:`~phalanx.client.lock.LoopThread`), from first use to
    :meth:`close` (or the end of ``with``), which also resigns.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        ttl_s: float = TTL_S_DEFAULT,
        prefix: bytes = ELECTION_PREFIX,
        contenders_max: int = CONTENDERS_MAX,
    ) -> None:
        super().__init__(
            client, name, kind="election", ttl_s=ttl_s, prefix=prefix, contenders_max=contenders_max
        )
        self._election: Election | None = None
        self._leadership: SyncLeadership | None = None

    @property
    def leadership(self) -> SyncLeadership | None:
        return self._leadership

    def campaign(self, value: bytes, *, timeout_s: float | None = None) -> SyncLeadership:
        """Block until elected (see :meth:`Election.campaign`)."""
        return self._thread.run(self._campaign(self._started(), value, timeout_s))

    def proclaim(self, value: bytes) -> None:
        self._thread.run(self._started().proclaim(value))
        if self._leadership is not None:
            self._leadership.value = value

    def resign(self) -> None:
        self._thread.run(self._resign(self._started()))

    def leader(self) -> Leader | None:
        return self._thread.run(self._started().leader())

    def close(self) -> None:
        """Resign if leading or campaigning, and stop the thread."""
        election = self._election
        try:
            if election is not None and self._thread.running:
                with contextlib.suppress(RuntimeError, PhalanxError):  # nothing to resign
                    self._thread.run(self._resign(election))
        finally:
            self._election = None
            self._thread.stop()

    def _started(self) -> Election:
        if self._election is None:
            self._thread.start()
            self._election = Election(self._thread.client, self.name, **self._options())
        return self._election

    async def _campaign(
        self, election: Election, value: bytes, timeout_s: float | None
    ) -> SyncLeadership:
        leadership = await election.campaign(value, timeout_s=timeout_s)
        self._leadership = SyncLeadership(leadership)
        self._relay = asyncio.create_task(relay_event(leadership.lost, self._leadership.lost))
        return self._leadership

    async def _resign(self, election: Election) -> None:
        await self._stop_relay()
        leadership, self._leadership = self._leadership, None
        try:
            await election.resign()
        finally:
            if leadership is not None:
                leadership.lost.set()  # as for Leadership: no longer leading

    def __enter__(self) -> SyncElection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
