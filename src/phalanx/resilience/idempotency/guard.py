"""The idempotency executor: run an operation at most once per key while its record lives.

This module owns :class:`Idempotency`, which drives an :class:`~.store.IdempotencyStore`
through the cases every caller meets:

1. the first call with a key claims it, runs, and stores the encoded result;
2. a duplicate after completion returns the stored result without running;
3. a duplicate while the first is still running waits for it (up to ``wait_s``, polling the
   store with the injected clock) and returns its result, or fails at once with
   :class:`KeyInProgress` when ``wait_s`` is 0;
4. a call that reuses a key with a different fingerprint fails with
   :class:`FingerprintMismatch`.

A failed execution (any exception, including cancellation) releases the key, so a retry of
the same request runs again: an exception says nothing was stored and Phalanx cannot know
that the failure is definitive. To make a failure stick, return it as a value.

Errors, both subclasses of :class:`phalanx.errors.Conflict`::

    Conflict
    ├── KeyInProgress        another execution holds the key (``retry_after_s`` is a hint)
    └── FingerprintMismatch  the key was first used with a different request

plus a plain :class:`~phalanx.errors.Conflict` for a duplicate whose original result was too
large to store (``result_bytes_max``), and :class:`~phalanx.errors.BadRequest` for a malformed
key. :class:`~phalanx.errors.Unavailable` comes from a store full of in-progress records.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import BadRequest, Conflict
from phalanx.resilience.config import parse_count, parse_duration_s
from phalanx.resilience.deadline import remaining_s
from phalanx.resilience.events import Emitter, Listener, Observable
from phalanx.resilience.idempotency.fingerprint import fingerprint_call
from phalanx.resilience.idempotency.store import IdempotencyRecord, IdempotencyStore, RecordState
from phalanx.resilience.keys import IDEMPOTENCY_KEY_BYTES_MAX, current_idempotency_key
from phalanx.resilience.stats import Counter

__all__ = [
    "FingerprintMismatch",
    "Idempotency",
    "IdempotencyStatistics",
    "KeyInProgress",
    "Ticket",
    "scoped_key",
    "validate_key",
]

_log = logging.getLogger("phalanx.resilience.idempotency")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# Stored results carry a one-byte tag so that "ran, but the result could not be stored" is
# remembered too: the operation must not run again even though nothing can be replayed.
_TAG_VALUE = b"="
_TAG_UNSTORED = b"!"


class KeyInProgress(Conflict):
    """Another execution holds the key and did not finish within the allowed wait.

    ``retry_after_s`` estimates when asking again may find a result (at most the time left on
    the holder's lease).
    """

    def __init__(self, message: str, *, key: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.retry_after_s = retry_after_s


class FingerprintMismatch(Conflict):
    """The key was first used with a request whose fingerprint differs from this one."""

    def __init__(self, message: str, *, key: str, stored: str, given: str) -> None:
        super().__init__(message)
        self.key = key
        self.stored_fingerprint = stored
        self.given_fingerprint = given


@dataclass(frozen=True, slots=True)
class IdempotencyStatistics:
    """Counters since construction.

    ``misses`` are executions started (the key was claimed), ``hits`` duplicates answered
    from a stored result, ``conflicts`` duplicates refused because the key was in progress
    (or its result was not stored), ``mismatches`` keys reused with another fingerprint,
    ``waits`` duplicates that waited for an in-progress execution, ``failures`` executions
    that raised and released their key, ``takeovers`` keys taken from an owner whose lease
    expired, ``leases_lost`` executions that finished after losing their key, ``unstored``
    results too large (or not encodable) to store.
    """

    hits: int
    misses: int
    conflicts: int
    mismatches: int
    waits: int
    failures: int
    takeovers: int
    leases_lost: int
    unstored: int


@dataclass(frozen=True, slots=True)
class Ticket:
    """The outcome of :meth:`Idempotency.begin`.

    When ``acquired`` the caller owns ``key`` as ``owner`` and must end with
    :meth:`Idempotency.finish` or :meth:`Idempotency.abandon`. Otherwise ``payload`` is the
    stored result of the earlier execution, to replay. ``namespace`` is the one passed to
    :meth:`~Idempotency.begin`; ``store_key`` the key the record is kept under.
    """

    key: str
    fingerprint: str
    acquired: bool
    owner: str = ""
    payload: bytes = b""
    namespace: str | None = None

    @property
    def store_key(self) -> str:
        return self.key if self.namespace is None else scoped_key(self.namespace, self.key)


def validate_key(key: object) -> str:
    """Return ``key`` if it is a usable idempotency key, else raise :class:`BadRequest`.

    A key is a non-empty string of at most ``IDEMPOTENCY_KEY_BYTES_MAX`` (255) UTF-8 bytes.
    """
    if not isinstance(key, str) or not key.strip():
        raise BadRequest("idempotency key: must be a non-empty string")
    if len(key.encode("utf-8")) > IDEMPOTENCY_KEY_BYTES_MAX:
        raise BadRequest(
            f"idempotency key: longer than {IDEMPOTENCY_KEY_BYTES_MAX} bytes "
            "(IDEMPOTENCY_KEY_BYTES_MAX)"
        )
    return key


def scoped_key(namespace: str, key: str) -> str:
    """The store key of ``key`` inside ``namespace``: a SHA-256 over both, 71 characters.

    Namespaces keep equal keys of different owners (accounts, decorated functions) apart. A
    hash rather than a concatenation keeps the store key within ``IDEMPOTENCY_KEY_BYTES_MAX``
    however long the namespace is, and cannot be forged by choosing a key with a separator.
    """
    if not isinstance(namespace, str):
        raise TypeError(f"namespace: must be a str, got {namespace!r}")
    ns = namespace.encode("utf-8")
    raw = key.encode("utf-8")
    data = len(ns).to_bytes(8, "big") + ns + len(raw).to_bytes(8, "big") + raw
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _function_namespace(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _json_encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _json_decode(data: bytes) -> Any:
    return json.loads(data)


class Idempotency(Observable):
    """Run operations at most once per idempotency key, remembering their results.

    ``ttl_s``: how long a completed result is kept (and replayed) after completion, and the
    longest an in-progress record lives. ``lease_s`` (<= ``ttl_s``): how long an in-progress
    owner holds the key before another caller with the same fingerprint may take it over; set
    it above the longest expected execution. ``wait_s``: how long a duplicate waits for an
    in-progress execution (0: fail at once with :class:`KeyInProgress`), polling every
    ``poll_interval_s``; a deadline from :func:`phalanx.resilience.deadline` shortens it.
    ``result_bytes_max``: the largest encoded result stored. ``purge_interval_s``: how often
    a call also deletes expired records from the store.

    Results are encoded with ``encode``/``decode`` (JSON by default: a tuple comes back as a
    list). Every method is safe from many threads and tasks.
    """

    def __init__(
        self,
        store: IdempotencyStore,
        *,
        ttl_s: float | str = 86_400.0,
        lease_s: float | str = 60.0,
        wait_s: float | str = 0.0,
        poll_interval_s: float | str = 0.05,
        result_bytes_max: int = 1 << 20,
        purge_interval_s: float | str = 60.0,
        encode: Callable[[Any], bytes] = _json_encode,
        decode: Callable[[bytes], Any] = _json_decode,
        key_required: bool = False,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "idempotency",
        listeners: tuple[Listener, ...] = (),
        owner_prefix: str | None = None,
    ) -> None:
        if not isinstance(store, IdempotencyStore):
            raise ValueError(
                f"store: must be an IdempotencyStore (claim, complete, release, get, purge), "
                f"got {store!r}"
            )
        if not callable(encode):
            raise ValueError(f"encode: must be callable, got {encode!r}")
        if not callable(decode):
            raise ValueError(f"decode: must be callable, got {decode!r}")
        self.store = store
        self.ttl_s = parse_duration_s("ttl_s", ttl_s)
        self.lease_s = parse_duration_s("lease_s", lease_s)
        if self.lease_s > self.ttl_s:
            raise ValueError(f"lease_s: must be <= ttl_s ({self.ttl_s}), got {self.lease_s}")
        self.wait_s = parse_duration_s("wait_s", wait_s, allow_zero=True)
        self.poll_interval_s = parse_duration_s("poll_interval_s", poll_interval_s)
        self.result_bytes_max = parse_count("result_bytes_max", result_bytes_max, minimum=1)
        self.purge_interval_s = parse_duration_s("purge_interval_s", purge_interval_s)
        self.key_required = key_required
        self.clock = clock
        self.name = name
        self._encode = encode
        self._decode = decode
        self._emitter = Emitter("idempotency", name, listeners)
        if owner_prefix is None:
            # Unique across hosts, processes and instances: owners compare by this token.
            owner_prefix = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._owner_prefix = owner_prefix
        self._owner_seq = itertools.count(1)
        self._purge_lock = threading.Lock()
        self._purged_at_s = clock.now_s()
        self._hits = Counter()
        self._misses = Counter()
        self._conflicts = Counter()
        self._mismatches = Counter()
        self._waits = Counter()
        self._failures = Counter()
        self._takeovers = Counter()
        self._leases_lost = Counter()
        self._unstored = Counter()

    def __repr__(self) -> str:
        return (
            f"Idempotency(name={self.name!r}, ttl_s={self.ttl_s}, lease_s={self.lease_s}, "
            f"wait_s={self.wait_s})"
        )

    def statistics(self) -> IdempotencyStatistics:
        return IdempotencyStatistics(
            hits=self._hits.value,
            misses=self._misses.value,
            conflicts=self._conflicts.value,
            mismatches=self._mismatches.value,
            waits=self._waits.value,
            failures=self._failures.value,
            takeovers=self._takeovers.value,
            leases_lost=self._leases_lost.value,
            unstored=self._unstored.value,
        )

    # -- running functions ---------------------------------------------------------------

    def run(
        self,
        key: str,
        fn: Callable[..., T],
        /,
        *args: Any,
        fingerprint: str | None = None,
        **kwargs: Any,
    ) -> T:
        """Call ``fn(*args, **kwargs)`` at most once for ``key``; duplicates get its result.

        ``fingerprint`` identifies the request; by default it is computed from ``fn``'s name
        and the (JSON-encodable) arguments.
        """
        if inspect.iscoroutinefunction(fn):
            raise TypeError("run: fn is a coroutine function; use arun")
        fp = fingerprint if fingerprint is not None else fingerprint_call(fn, args, kwargs)
        return self._run(key, None, fp, fn, args, kwargs)

    def _run(
        self,
        key: str,
        namespace: str | None,
        fp: str,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        ticket = self.begin(key, fp, namespace=namespace)
        if not ticket.acquired:
            return cast(T, self._decode(ticket.payload))
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            self.abandon(ticket)
            raise
        self.finish(ticket, self._encode_result(key, result))
        return result

    async def arun(
        self,
        key: str,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        fingerprint: str | None = None,
        **kwargs: Any,
    ) -> T:
        """The ``async`` twin of :meth:`run`: awaits ``fn(*args, **kwargs)`` at most once."""
        fp = fingerprint if fingerprint is not None else fingerprint_call(fn, args, kwargs)
        return await self._arun(key, None, fp, fn, args, kwargs)

    async def _arun(
        self,
        key: str,
        namespace: str | None,
        fp: str,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        ticket = await self.abegin(key, fp, namespace=namespace)
        if not ticket.acquired:
            return cast(T, self._decode(ticket.payload))
        try:
            result = await fn(*args, **kwargs)
        except BaseException:
            # Cancellation included: the caller gave up, so a retry must be able to run.
            self.abandon(ticket)
            raise
        self.finish(ticket, self._encode_result(key, result))
        return result

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` so calls inside an ``idempotency_key(...)`` block are deduplicated."""
        return self.decorate(fn)

    def decorate(self, fn: F, *, fingerprint_of: Callable[..., str] | None = None) -> F:
        """Like ``@idempotency`` but with ``fingerprint_of(*args, **kwargs)`` for the fingerprint.

        The key comes from :func:`phalanx.resilience.keys.current_idempotency_key`. A call
        without a key runs normally, unless ``key_required`` was set (then
        :class:`BadRequest`). Each decorated function keeps its own record under a key (the
        namespace is its module and qualified name), so one ``idempotency_key`` block may
        cover several decorated calls, nested or in sequence.
        """
        namespace = _function_namespace(fn)

        def fingerprint(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            if fingerprint_of is not None:
                return fingerprint_of(*args, **kwargs)
            return fingerprint_call(fn, args, kwargs)

        def key_or_none() -> str | None:
            key = current_idempotency_key()
            if key is None and self.key_required:
                raise BadRequest(f"{fn.__qualname__}: an idempotency key is required")
            return key

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                key = key_or_none()
                if key is None:
                    return await fn(*args, **kwargs)
                fp = fingerprint(args, kwargs)
                return await self._arun(key, namespace, fp, fn, args, kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = key_or_none()
            if key is None:
                return fn(*args, **kwargs)
            return self._run(key, namespace, fingerprint(args, kwargs), fn, args, kwargs)

        return cast(F, wrapper)

    # -- the steps, for callers that run the operation themselves (the ASGI middleware) ---

    def begin(self, key: str, fingerprint: str, *, namespace: str | None = None) -> Ticket:
        """Claim ``key``, waiting (blocking the thread) while another execution holds it.

        Returns an acquired ticket (run, then :meth:`finish` or :meth:`abandon`) or a replay
        ticket carrying the stored payload. Raises :class:`KeyInProgress`,
        :class:`FingerprintMismatch`, :class:`Conflict` or :class:`BadRequest`. With a
        ``namespace`` the record is kept under :func:`scoped_key` of both, apart from the
        same key in any other namespace.
        """
        validate_key(key)
        if namespace is not None:
            scoped_key(namespace, key)  # a bad namespace fails before anything is claimed
        owner = self._next_owner()
        started_s = self.clock.now_s()
        self._maybe_purge(started_s)
        until_s = started_s + self._wait_budget_s()
        waited = False
        while True:
            ticket, pause_s = self._attempt(
                key, namespace, fingerprint, owner, until_s, waited=waited
            )
            if ticket is not None:
                return ticket
            waited = True
            self.clock.sleep(pause_s)

    async def abegin(self, key: str, fingerprint: str, *, namespace: str | None = None) -> Ticket:
        """The ``async`` twin of :meth:`begin`: waits by suspending the task, not the thread."""
        validate_key(key)
        if namespace is not None:
            scoped_key(namespace, key)
        owner = self._next_owner()
        started_s = self.clock.now_s()
        self._maybe_purge(started_s)
        until_s = started_s + self._wait_budget_s()
        waited = False
        while True:
            ticket, pause_s = self._attempt(
                key, namespace, fingerprint, owner, until_s, waited=waited
            )
            if ticket is not None:
                return ticket
            waited = True
            await self.clock.asleep(pause_s)

    def finish(self, ticket: Ticket, payload: bytes | None) -> bool:
        """Store ``payload`` as the result of an acquired ticket; None: ran, but not storable.

        A payload over ``result_bytes_max`` is not stored either. In both cases the key stays
        completed, so duplicates get a :class:`Conflict` instead of running again. Returns
        False when the ticket had lost its key (lease expired and taken over).
        """
        if not ticket.acquired:
            raise ValueError("ticket: finish needs an acquired ticket")
        if payload is not None and len(payload) > self.result_bytes_max:
            _log.warning(
                "idempotency key %r: result of %d bytes exceeds result_bytes_max=%d; not stored",
                ticket.key,
                len(payload),
                self.result_bytes_max,
            )
            payload = None
        if payload is None:
            self._unstored.incr()
        stored = _TAG_UNSTORED if payload is None else _TAG_VALUE + payload
        ok = self.store.complete(
            ticket.store_key, ticket.owner, stored, now_s=self.clock.wall_s(), ttl_s=self.ttl_s
        )
        now_s = self.clock.now_s()
        if ok:
            self._emit("complete", now_s, ticket.key, stored=payload is not None)
        else:
            self._leases_lost.incr()
            self._emit("lease_lost", now_s, ticket.key)
        return ok

    def abandon(self, ticket: Ticket) -> None:
        """Release an acquired ticket's key after a failure, so a retry can run."""
        if not ticket.acquired:
            raise ValueError("ticket: abandon needs an acquired ticket")
        self._failures.incr()
        self.store.release(ticket.store_key, ticket.owner)
        self._emit("release", self.clock.now_s(), ticket.key)

    # -- internals -----------------------------------------------------------------------

    def _next_owner(self) -> str:
        return f"{self._owner_prefix}:{next(self._owner_seq)}"

    def _maybe_purge(self, now_s: float) -> None:
        if now_s - self._purged_at_s < self.purge_interval_s:
            return
        # One caller purges; the others go on without waiting for it.
        if not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._purged_at_s = now_s
            self.store.purge(now_s=self.clock.wall_s())
        finally:
            self._purge_lock.release()

    def _wait_budget_s(self) -> float:
        # The caller's deadline, if sooner, bounds the wait too: waiting past it is useless.
        left_s = remaining_s()
        if left_s is None:
            return self.wait_s
        return min(self.wait_s, max(left_s, 0.0))

    def _attempt(
        self,
        key: str,
        namespace: str | None,
        fingerprint: str,
        owner: str,
        until_s: float,
        *,
        waited: bool,
    ) -> tuple[Ticket | None, float]:
        """One claim: a ticket, or None and how long to pause before the next attempt."""
        store_key = key if namespace is None else scoped_key(namespace, key)
        wall_s = self.clock.wall_s()
        claim = self.store.claim(
            store_key, fingerprint, owner, now_s=wall_s, lease_s=self.lease_s, ttl_s=self.ttl_s
        )
        now_s = self.clock.now_s()
        if claim.acquired:
            self._misses.incr()
            if claim.took_over:
                self._takeovers.incr()
                self._emit("takeover", now_s, key)
            self._emit("miss", now_s, key)
            ticket = Ticket(key, fingerprint, acquired=True, owner=owner, namespace=namespace)
            return ticket, 0.0
        record = claim.record
        if record.fingerprint != fingerprint:
            self._mismatches.incr()
            self._emit("mismatch", now_s, key)
            raise FingerprintMismatch(
                f"idempotency key {key!r} was first used with a different request "
                f"(fingerprint {record.fingerprint}, this one {fingerprint})",
                key=key,
                stored=record.fingerprint,
                given=fingerprint,
            )
        if record.state is RecordState.COMPLETED:
            return self._replay(key, namespace, record, now_s), 0.0
        left_s = until_s - now_s
        if left_s <= 0:
            self._conflicts.incr()
            self._emit("conflict", now_s, key, reason="in_progress")
            raise KeyInProgress(
                f"idempotency key {key!r} is in progress in another execution "
                f"(wait_s={self.wait_s})",
                key=key,
                retry_after_s=max(min(record.lease_expires_at_s - wall_s, self.lease_s), 0.0),
            )
        if not waited:
            self._waits.incr()
            self._emit("wait", now_s, key)
        return None, min(self.poll_interval_s, left_s)

    def _replay(
        self, key: str, namespace: str | None, record: IdempotencyRecord, now_s: float
    ) -> Ticket:
        stored = record.result or b""
        if not stored.startswith(_TAG_VALUE):
            self._conflicts.incr()
            self._emit("conflict", now_s, key, reason="unstored")
            raise Conflict(
                f"idempotency key {key!r}: the operation already ran but its result "
                "was not stored (larger than result_bytes_max or not encodable); "
                "it will not run again while the record lives"
            )
        self._hits.incr()
        self._emit("hit", now_s, key)
        return Ticket(
            key, record.fingerprint, acquired=False, payload=stored[1:], namespace=namespace
        )

    def _encode_result(self, key: str, result: object) -> bytes | None:
        try:
            return self._encode(result)
        except Exception:
            # The operation already ran: remember that, even though nothing can be replayed.
            _log.exception("idempotency key %r: cannot encode the result; not stored", key)
            return None

    def _emit(self, kind: str, now_s: float, key: str, **data: object) -> None:
        if self._emitter.active:
            self._emitter.emit(kind, now_s, {"key": key, **data})
