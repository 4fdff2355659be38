"""Distributed locks on leases, with fencing tokens; the contender queue elections share.

A lock named ``jobs`` is a queue of keys under ``<prefix>jobs/``. Each contender grants a
lease, creates ``<prefix>jobs/<lease id in hex>`` attached to it (a txn guarded by
``create_revision == 0``, so a retried request never overwrites), and the key with the
lowest create revision holds the lock. The others each watch the one key just before their
own for its deletion, then list the queue again: waiting is first come, first served, one
watch per waiter and no polling. Releasing revokes the lease, which deletes the key; a holder
that dies stops renewing its lease and the cluster deletes its key when the lease expires.

The holder's **fencing token** is the revision that created its key. Tokens strictly increase
from one holder to the next (a later holder's key was created after the earlier holder's
key was the lowest). A lock alone is **not** safe: a holder paused longer than its lease (a
garbage-collection pause, a stopped VM) still believes it holds while the next holder works,
which is what Jepsen found with etcd's lock. It is safe only when the protected resource
checks the token (:mod:`phalanx.client.fencing`): see ``docs/coordination.md``.

A :class:`Claim` is one place in such a queue; :class:`Lock` and
:class:`~phalanx.client.election.Election` are built on it. Each claim owns two background
tasks, the lease's keep-alive and (once it holds) a watch of its own key; both are cancelled
and awaited when the claim is given up. ``lost`` is set as soon as the claim can no longer be
trusted: the lease is gone, a keep-alive went unanswered for a whole TTL, the key was deleted,
or the claim was released.

Errors (in the tree of :mod:`phalanx.errors`)::

    Unavailable
    ├── LeaseLost            the claim's lease ended (expired, revoked) or its key vanished
    │                        while waiting: nothing is held
    └── TooManyContenders    more than ``contenders_max`` keys in the queue
    Timeout                  ``acquire(timeout_s=...)`` ran out and withdrawing the claim
    │                        failed: its lease may hold the lock until it expires (unknown)
    └── NotAcquired          the wait ran out (or a call's effect was unknown) and the claim
                             is confirmed withdrawn: nothing is held, nor will be (failed)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from phalanx.client.client import AsyncClient
from phalanx.client.results import KeyValue, WatchEvent
from phalanx.errors import BadRequest, Outcome, PhalanxError, Timeout, Unavailable, invariant
from phalanx.kv.commands import Compare, CompareOp, CompareTarget, Put, Range
from phalanx.kv.errors import Compacted, LeaseNotFound
from phalanx.kv.responses import RangeResult

if TYPE_CHECKING:
    from phalanx.client.sync import Client

__all__ = [
    "CONTENDERS_MAX",
    "LEAVE_REVOKES_MAX",
    "LOCK_PREFIX",
    "TTL_S_DEFAULT",
    "Claim",
    "Held",
    "LeaseLost",
    "Lock",
    "LoopThread",
    "NotAcquired",
    "SyncContender",
    "SyncHeld",
    "SyncLock",
    "TooManyContenders",
    "predecessor",
    "queue_prefix",
    "relay_event",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where locks keep their queues.
LOCK_PREFIX: Final = b"/phalanx/lock/"
#: A lease's time to live when none is given.
TTL_S_DEFAULT: Final = 10.0
#: Keep-alives sent per TTL: a renewal can fail twice before the lease is at risk.
KEEP_ALIVES_PER_TTL: Final = 3
#: Revokes one ``leave`` sends before giving up (the lease then expires within its TTL), and
#: the pause between two: a leader change or a paused leader fails one, the next may land.
#: Revoking is idempotent (a lease already gone is done), so a retry is always safe.
LEAVE_REVOKES_MAX: Final = 5
LEAVE_RETRY_S: Final = 0.2
#: Contenders listed per wait (one range read); a longer queue raises ``TooManyContenders``.
CONTENDERS_MAX: Final = 1000
#: Names are path segments: bounded, and without the separator.
NAME_BYTES_MAX: Final = 256


class LeaseLost(Unavailable):
    """The lease behind a claim ended, or its key vanished, before the claim was won."""


class TooManyContenders(Unavailable):
    """The queue holds more than ``contenders_max`` keys."""


class NotAcquired(Timeout):
    """A lock's wait ran out, or a call's effect was unknown, and the claim was then withdrawn
    and the withdrawal confirmed: the caller holds nothing, nor will it (outcome FAILED; still
    a ``Timeout``, so ``except Timeout`` catches it). Our key may briefly have been first in
    the queue before the withdrawal, but no holding, fencing token or lease reached the
    caller, so nothing could act under it."""

    outcome = Outcome.FAILED


def queue_prefix(prefix: bytes, name: str) -> bytes:
    """The key prefix of ``name``'s queue; ``BadRequest`` for an empty name, one holding
    ``/`` (its queue would overlap another's) or one over ``NAME_BYTES_MAX`` bytes."""
    encoded = name.encode()
    if not encoded or b"/" in encoded or len(encoded) > NAME_BYTES_MAX:
        raise BadRequest(f"name {name!r}: 1..{NAME_BYTES_MAX} bytes without '/' expected")
    return prefix + encoded + b"/"


def predecessor(kvs: Sequence[KeyValue], own_revision: int) -> KeyValue | None:
    """The contender created just before ``own_revision`` (the one to wait for), or None
    when ``own_revision`` is the lowest: its owner holds."""
    before = [kv for kv in kvs if kv.create_revision < own_revision]
    return max(before, key=lambda kv: kv.create_revision, default=None)


def lowest(kvs: Sequence[KeyValue]) -> KeyValue | None:
    """The holder of a queue: the key with the lowest create revision."""
    return min(kvs, key=lambda kv: kv.create_revision, default=None)


async def wait_deleted(client: AsyncClient, key: bytes, start_revision: int) -> None:
    """Return once ``key`` is deleted at or after ``start_revision``; also when that history
    was compacted (the caller lists again and decides)."""
    events = cast(
        "AsyncGenerator[WatchEvent, None]", client.watch(key, start_revision=start_revision)
    )
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                if event.type == "delete":
                    return
    except Compacted:
        return


async def first_of(*awaitables: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines until the first one ends; cancel and await the rest. The first's
    exception, if any, is raised."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


class Claim:
    """One place in a queue under ``queue``: a lease, the key holding it, the tasks that keep
    them. :meth:`enter`, then :meth:`wait_turn`, then :meth:`hold`; :meth:`leave` at the end
    (also after a failure)."""

    def __init__(
        self,
        client: AsyncClient,
        queue: bytes,
        *,
        ttl_s: float = TTL_S_DEFAULT,
        contenders_max: int = CONTENDERS_MAX,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s: must be > 0, got {ttl_s}")
        if contenders_max < 1:
            raise ValueError(f"contenders_max: must be >= 1, got {contenders_max}")
        self.client = client
        self.queue = queue
        self.ttl_s = ttl_s
        self.contenders_max = contenders_max
        self.lease_id = 0
        self.key = b""
        #: The revision that created the key: the fencing token once the claim holds.
        self.token = 0
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._deadline = 0.0  # loop time by which the lease surely lives (if not revoked)
        self._tasks: list[asyncio.Task[None]] = []
        self._renewals = 0
        self._waits = 0

    async def enter(self, value: bytes) -> None:
        """Grant the lease, start renewing it, and create our key holding ``value``."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        self.lease_id = await self.client.grant(self.ttl_s)
        self._deadline = sent + self.ttl_s
        self._spawn(self._keep_alive())
        self.key = self.queue + b"%x" % self.lease_id
        try:
            result = await self.client.txn(
                [Compare(self.key, CompareTarget.CREATE_REVISION, CompareOp.EQUAL, 0)],
                [Put(self.key, value, self.lease_id)],
                [Range(self.key)],
            )
        except LeaseNotFound:
            raise LeaseLost(f"lease {self.lease_id:x} expired before its key was made") from None
        if result.succeeded:
            self.token = result.revision
        else:  # an earlier attempt of this same txn was applied: the key is ours
            found = result.responses[0]
            invariant(isinstance(found, RangeResult) and bool(found.kvs), "txn read our key")
            self.token = cast("RangeResult", found).kvs[0].create_revision

    async def wait_turn(self) -> None:
        """Return once our key is the lowest of the queue; ``LeaseLost`` if the claim is lost
        first, ``TooManyContenders`` if the queue is longer than ``contenders_max``."""
        while True:
            self._check_alive()
            listing = await self.client.range(
                self.queue, prefix=True, keys_only=True, limit=self.contenders_max
            )
            if listing.more:
                raise TooManyContenders(
                    f"{listing.count} contenders under {self.queue!r} > {self.contenders_max}"
                )
            if all(kv.key != self.key for kv in listing.kvs):
                self._lose("our key is gone (its lease expired or it was deleted)")
                self._check_alive()
            before = predecessor(listing.kvs, self.token)
            if before is None:
                return
            self._waits += 1
            await first_of(
                wait_deleted(self.client, before.key, listing.revision + 1), self._wait_lost()
            )

    def hold(self) -> None:
        """We hold: watch our key, so that its deletion sets ``lost`` at once."""
        self._spawn(self._watch_own_key())

    async def leave(self) -> None:
        """Stop the background tasks and revoke the lease (deleting our key). A lease that
        is already gone is fine; a revoke that fails is sent again, up to
        :data:`LEAVE_REVOKES_MAX` times, then the last error is raised (the lease expires
        within ``ttl_s`` anyway)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._lose("released")
        lease_id, self.lease_id = self.lease_id, 0
        for attempt in range(1, LEAVE_REVOKES_MAX + 1) if lease_id else ():
            try:
                await self.client.revoke(lease_id)
            except LeaseNotFound:
                return
            except PhalanxError:
                if attempt == LEAVE_REVOKES_MAX:
                    raise
                await asyncio.sleep(LEAVE_RETRY_S)
            else:
                return

    def statistics(self) -> dict[str, int]:
        return {"renewals": self._renewals, "waits": self._waits, "token": self.token}

    def _check_alive(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"{self.key!r}: {self.lost_reason}")

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()
            if reason != "released":
                _log.warning("claim %r lost: %s", self.key, reason)

    async def _wait_lost(self) -> None:
        await self.lost.wait()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coroutine))

    async def _keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        interval_s = self.ttl_s / KEEP_ALIVES_PER_TTL
        while True:
            await asyncio.sleep(interval_s)
            sent = loop.time()
            left_s = self._deadline - sent
            if left_s <= 0:
                self._lose(f"no keep-alive of lease {self.lease_id:x} answered for its TTL")
                return
            try:
                async with asyncio.timeout(left_s):
                    await self.client.keep_alive(self.lease_id)
            except LeaseNotFound:
                self._lose(f"lease {self.lease_id:x} expired or was revoked")
                return
            except TimeoutError:
                self._lose(f"no keep-alive of lease {self.lease_id:x} answered for its TTL")
                return
            except PhalanxError as exc:  # transient: try again while the lease surely lives
                _log.info("keep-alive of lease %x failed: %s", self.lease_id, exc)
                continue
            except Exception as exc:  # e.g. the client was closed: nothing renews the lease
                self._lose(f"keep-alive of lease {self.lease_id:x} failed: {exc!r}")
                return
            self._deadline = sent + self.ttl_s
            self._renewals += 1

    async def _watch_own_key(self) -> None:
        try:
            await wait_deleted(self.client, self.key, self.token + 1)
        except Exception as exc:  # whatever it was, we can no longer see our key
            self._lose(f"cannot watch our key: {exc!r}")
        else:
            self._lose("our key was deleted (its lease expired or was revoked)")


class ClaimView:
    """What a claim (a lock held, an election won) shows its owner: ``lost``, set once it can
    no longer be trusted (see :class:`Claim`), why, and the key and lease behind it."""

    __slots__ = ("_claim", "name")

    def __init__(self, name: str, claim: Claim) -> None:
        self.name = name
        self._claim = claim

    @property
    def lost(self) -> asyncio.Event:
        return self._claim.lost

    @property
    def lost_reason(self) -> str:
        return self._claim.lost_reason

    @property
    def key(self) -> bytes:
        return self._claim.key

    @property
    def lease_id(self) -> int:
        return self._claim.lease_id


class Held(ClaimView):
    """What holding a lock gives: the ``fencing_token`` to send with every write to the
    protected resource, and ``lost``. Check ``lost`` before acting, and let the resource
    check the token."""

    __slots__ = ()

    @property
    def fencing_token(self) -> int:
        return self._claim.token

    def __repr__(self) -> str:
        return f"Held({self.name!r}, fencing_token={self.fencing_token}, lost={self.lost.is_set()})"


class Contender:
    """What a lock and an election share: a named queue of claims on leases, one claim at a
    time per object, taken in turn by create revision (see :class:`Claim`)."""

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        *,
        ttl_s: float,
        prefix: bytes,
        contenders_max: int,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s: must be > 0, got {ttl_s}")
        self.client = client
        self.name = name
        self.ttl_s = ttl_s
        self.contenders_max = contenders_max
        self.queue = queue_prefix(prefix, name)
        self._claim: Claim | None = None

    async def _take_turn(
        self, value: bytes, timeout_s: float | None, what: str, *, definite: bool = False
    ) -> Claim:
        """Enter the queue with ``value`` and wait for our turn; every failure withdraws the
        claim (``Timeout`` after ``timeout_s``, saying ``what`` did not happen). With
        ``definite``, a timeout or unknown outcome whose withdrawal is confirmed raises
        ``NotAcquired`` (FAILED) instead: right for a lock, whose holding only its caller can
        use; not for an election, whose observers may have seen us lead meanwhile."""
        claim = Claim(self.client, self.queue, ttl_s=self.ttl_s, contenders_max=self.contenders_max)
        self._claim = claim
        try:
            async with asyncio.timeout(timeout_s):
                await claim.enter(value)
                await claim.wait_turn()
        except TimeoutError:
            message = f"{what} within {timeout_s} s"
            if await self._withdraw(claim) and definite:
                raise NotAcquired(f"{message}; claim withdrawn") from None
            raise Timeout(
                f"{message}; withdrawing the claim failed, its lease ends within {self.ttl_s} s"
            ) from None
        except PhalanxError as exc:
            if await self._withdraw(claim) and definite and exc.outcome is Outcome.INDETERMINATE:
                raise NotAcquired(f"{what}: {exc}; claim withdrawn") from exc
            raise
        except BaseException:
            await self._withdraw(claim)
            raise
        claim.hold()
        return claim

    async def _withdraw(self, claim: Claim) -> bool:
        """Give the claim up; True when the lease is confirmed gone (revoked or expired)."""
        self._claim = None
        try:
            await claim.leave()
        except PhalanxError:  # the lease expires by itself within its TTL
            return False
        return True


class Lock(Contender):
    """A distributed lock named ``name``: fair (first come, first served), held as long as
    its lease of ``ttl_s`` is renewed, with a fencing token per holder.

    Use ``async with Lock(client, "jobs") as held:`` or :meth:`acquire` / :meth:`release`.
    One ``Lock`` object holds at most once at a time (not re-entrant); make one per task.
    """

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        *,
        ttl_s: float = TTL_S_DEFAULT,
        prefix: bytes = LOCK_PREFIX,
        contenders_max: int = CONTENDERS_MAX,
    ) -> None:
        super().__init__(client, name, ttl_s=ttl_s, prefix=prefix, contenders_max=contenders_max)
        self._held: Held | None = None
        self._acquired = 0

    @property
    def held(self) -> Held | None:
        """The current holding, or None."""
        return self._held

    async def acquire(self, *, timeout_s: float | None = None) -> Held:
        """Wait for the lock (at most ``timeout_s``: then ``Timeout``, our claim withdrawn).

        Also raises ``LeaseLost`` when our lease ends while waiting, ``TooManyContenders``,
        and the client's errors; in every failure the claim is withdrawn.
        """
        if self._claim is not None:
            raise RuntimeError(f"lock {self.name!r} is already held or being acquired")
        claim = await self._take_turn(
            b"", timeout_s, f"lock {self.name!r} not acquired", definite=True
        )
        self._held = Held(self.name, claim)
        self._acquired += 1
        return self._held

    async def release(self) -> None:
        """Give the lock up: stop renewing, revoke the lease (deleting our key)."""
        claim, self._claim, self._held = self._claim, None, None
        if claim is None:
            raise RuntimeError(f"lock {self.name!r} is not held")
        await claim.leave()

    def statistics(self) -> dict[str, int]:
        stats = {"acquired": self._acquired, "holding": int(self._held is not None)}
        if self._claim is not None:
            stats.update(self._claim.statistics())
        return stats

    async def __aenter__(self) -> Held:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.release()
            return
        # Do not hide the body's error behind a failed revoke: the lease expires anyway.
        try:
            await self.release()
        except PhalanxError as release_error:
            _log.warning("lock %r: release failed: %s", self.name, release_error)


class LoopThread:
    """An event loop on a daemon thread, with its own ``AsyncClient`` of ``endpoints``.

    The blocking recipes run their asyncio forms here, so that leases are renewed while the
    caller's thread is busy. A daemon thread: a program that exits without releasing is not
    kept alive by it (the lease then expires within its TTL).
    """

    def __init__(self, endpoints: Sequence[str | tuple[str, int]], name: str) -> None:
        self.endpoints = list(endpoints)
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: AsyncClient | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError(f"{self.name}: the thread is not running")
        return self._client

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        self._client = AsyncClient(self.endpoints)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the thread's loop and wait for its result."""
        if self._loop is None:
            coroutine.close()
            raise RuntimeError(f"{self.name}: the thread is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def stop(self) -> None:
        """Close the client, stop the loop and join the thread."""
        loop, thread, client = self._loop, self._thread, self._client
        self._loop, self._thread, self._client = None, None, None
        if loop is None or thread is None:
            return
        if client is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(client.aclose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def relay_event(source: asyncio.Event, target: threading.Event) -> None:
    """Set ``target`` once ``source`` is set (an asyncio event seen from other threads)."""
    await source.wait()
    target.set()


class SyncHeld:
    """:class:`Held` for :class:`SyncLock`: ``lost`` is a ``threading.Event``."""

    __slots__ = ("fencing_token", "key", "lease_id", "lost", "name")

    def __init__(self, held: Held) -> None:
        self.name = held.name
        self.fencing_token = held.fencing_token
        self.key = held.key
        self.lease_id = held.lease_id
        self.lost = threading.Event()


class SyncContender:
    """What the blocking forms of :class:`Lock` and
    :class:`~phalanx.client.election.Election` share: the contender's options, checked at
    once, a :class:`LoopThread` of ``client``'s endpoints (named ``phalanx-<kind>-<name>``)
    for the asyncio form to run on, and the task relaying its ``lost`` event."""

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        kind: str,
        ttl_s: float,
        prefix: bytes,
        contenders_max: int,
    ) -> None:
        queue_prefix(prefix, name)  # fail now on a bad name
        self.name = name
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.contenders_max = contenders_max
        self._thread = LoopThread(client.aio.endpoints, f"phalanx-{kind}-{name}")
        self._relay: asyncio.Task[None] | None = None

    def _options(self) -> dict[str, Any]:
        """The asyncio form's options, to build it on the thread's client."""
        return {"ttl_s": self.ttl_s, "prefix": self.prefix, "contenders_max": self.contenders_max}

    async def _stop_relay(self) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)


class SyncLock(SyncContender):
    """The blocking form of :class:`Lock`, for code without an event loop.

    The lease must be renewed while the caller's thread is busy, so the lock runs on its own
    thread with its own event loop and its own connection to ``client``'s endpoints (a
    :class:`LoopThread`); the thread lives from :meth:`acquire` to :meth:`release`.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        ttl_s: float = TTL_S_DEFAULT,
        prefix: bytes = LOCK_PREFIX,
        contenders_max: int = CONTENDERS_MAX,
    ) -> None:
        super().__init__(
            client, name, kind="lock", ttl_s=ttl_s, prefix=prefix, contenders_max=contenders_max
        )
        self._lock: Lock | None = None
        self._held: SyncHeld | None = None

    @property
    def held(self) -> SyncHeld | None:
        return self._held

    def acquire(self, *, timeout_s: float | None = None) -> SyncHeld:
        """Block until the lock is held (see :meth:`Lock.acquire`)."""
        if self._thread.running:
            raise RuntimeError(f"lock {self.name!r} is already held")
        self._thread.start()
        try:
            return self._thread.run(self._acquire(timeout_s))
        except BaseException:
            self._thread.stop()
            raise

    def release(self) -> None:
        """Give the lock up and stop the lock's thread."""
        if not self._thread.running:
            raise RuntimeError(f"lock {self.name!r} is not held")
        try:
            self._thread.run(self._release())
        finally:
            if self._held is not None:
                self._held.lost.set()  # as for Held: no longer held
            self._held, self._lock = None, None
            self._thread.stop()

    async def _acquire(self, timeout_s: float | None) -> SyncHeld:
        self._lock = Lock(self._thread.client, self.name, **self._options())
        held = await self._lock.acquire(timeout_s=timeout_s)
        self._held = SyncHeld(held)
        self._relay = asyncio.create_task(relay_event(held.lost, self._held.lost))
        return self._held

    async def _release(self) -> None:
        await self._stop_relay()
        if self._lock is not None and self._lock.held is not None:
            await self._lock.release()

    def __enter__(self) -> SyncHeld:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
