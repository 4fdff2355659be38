"""The circuit breaker: stop calling a dependency that keeps failing, probe it, recover.

This module owns the thread- and asyncio-safe breaker users call (:class:`CircuitBreaker`),
its permits and statistics. Its configuration lives in :mod:`.breaker_config` and its
decisions in the sans-I/O :class:`~.breaker_machine.BreakerMachine` (time is an argument,
transitions are returned as values); both are re-exported here.

States and edges (every automatic transition follows one of :data:`LEGAL_EDGES`)::

    CLOSED --trip--> OPEN --open_timeout_s--> HALF_OPEN --all probes ok--> CLOSED
                       ^                          |
                       +-------any probe fails----+

A closed breaker trips when, with at least ``minimum_calls`` calls in its sliding window,
the failure rate reaches ``failure_rate_threshold`` or the slow-call rate reaches
``slow_call_rate_threshold``; or when ``consecutive_failures`` calls fail in a row.
``reset()``, ``force_open()``, ``disable()`` and state adopted from a shared
:class:`~phalanx.resilience.breaker_store.BreakerStore` may jump between any two states.

Errors: a refused call raises :class:`phalanx.errors.CircuitOpen` (``retry_after_s`` is the
time until probing starts, ``None`` when unknown); an exception from the protected call
propagates unchanged after being counted. Invalid configuration raises ``ValueError``
naming the field, at construction.

Speed: while closed, with a count-based window, no slow-call threshold, no store and no
listener, a successful call takes no lock and reads no clock: it bumps a lock-free counter
that the locked slow path folds into the window before it next decides anything. That fast
path is switched off whenever a success alone could trip the breaker (the window is about
to reach ``minimum_calls`` with enough failures in it).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, ParamSpec, TypeVar, cast

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import CircuitOpen
from phalanx.resilience.breaker_config import (
    CONFIG_TEXT_CHARS_MAX,
    CONSECUTIVE_FAILURES_MAX,
    HALF_OPEN_REQUESTS_MAX,
    LEGAL_EDGES,
    MINIMUM_CALLS_MAX,
    OPEN_TIMEOUT_S_MAX,
    REFRESH_INTERVAL_S_MAX,
    SLOW_CALL_DURATION_S_MAX,
    BreakerConfig,
    BreakerState,
    Transition,
)
from phalanx.resilience.breaker_machine import PROBE, REJECT, BreakerMachine
from phalanx.resilience.breaker_store import BreakerRecord, BreakerStore
from phalanx.resilience.events import Emitter, Listener
from phalanx.resilience.stats import Counter

__all__ = [
    "CONFIG_TEXT_CHARS_MAX",
    "CONSECUTIVE_FAILURES_MAX",
    "HALF_OPEN_REQUESTS_MAX",
    "LEGAL_EDGES",
    "MINIMUM_CALLS_MAX",
    "OPEN_TIMEOUT_S_MAX",
    "REFRESH_INTERVAL_S_MAX",
    "SLOW_CALL_DURATION_S_MAX",
    "BreakerConfig",
    "BreakerMachine",
    "BreakerState",
    "BreakerStatistics",
    "CircuitBreaker",
    "ExceptionRule",
    "Permit",
    "Transition",
]

_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN

_log = logging.getLogger("phalanx.resilience.breaker")

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """A snapshot of one breaker.

    ``calls`` counts admitted calls that completed (``successes + failures + ignored``);
    ``rejections`` counts refused ones. ``window_*`` and the two rates describe the current
    sliding window (rates are 0.0 while it is empty). ``store_version`` is the version of
    the last shared record seen (0 without a store).
    """

    name: str
    state: BreakerState
    disabled: bool
    forced_open: bool
    calls: int
    successes: int
    failures: int
    ignored: int
    rejections: int
    slow_calls: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    failure_rate: float
    slow_call_rate: float
    consecutive_failures: int
    transitions: int
    half_open_in_flight: int
    retry_after_s: float | None
    store_version: int


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------

_SUCCESS: Final = 0
_FAILURE: Final = 1
_IGNORED: Final = 2

ExceptionRule = type[BaseException] | Callable[[BaseException], bool]

# Permits taken by ``with breaker:`` blocks in the current thread or task, innermost last.
# A context variable (not an attribute) because one breaker serves many threads and tasks.
_ENTERED: contextvars.ContextVar[tuple[Permit | CircuitBreaker, ...]] = contextvars.ContextVar(
    "phalanx_breaker_permits", default=()
)


class Permit:
    """The right to make one call through a breaker; report its result exactly once.

    ``success()``, ``failure()``, ``record_exception(exc)`` (classified by the breaker's
    ``failure_on``/``ignore_on`` rules) or ``release()`` (counts neither way). ``duration_s``
    defaults to the time since the permit was granted, on the breaker's clock. A probe
    permit that is never completed keeps its half-open slot taken until the breaker next
    changes state, so always complete it (``try/finally``).
    """

    __slots__ = ("_breaker", "_done", "_generation", "_start_s", "probe")

    def __init__(
        self, breaker: CircuitBreaker, generation: int, start_s: float, probe: bool
    ) -> None:
        self._breaker = breaker
        self._generation = generation
        self._start_s = start_s
        self._done = False
        self.probe = probe

    def _finish(self, kind: int, duration_s: float | None, error: BaseException | None) -> None:
        if self._done:
            raise RuntimeError("breaker permit: result already reported")
        self._done = True
        self._breaker._record(kind, self._generation, self.probe, self._start_s, duration_s, error)

    def success(self, duration_s: float | None = None) -> None:
        self._finish(_SUCCESS, duration_s, None)

    def failure(self, error: BaseException | None = None, duration_s: float | None = None) -> None:
        self._finish(_FAILURE, duration_s, error)

    def release(self) -> None:
        self._finish(_IGNORED, None, None)

    def record_exception(self, error: BaseException, duration_s: float | None = None) -> None:
        self._finish(self._breaker._classify(error), duration_s, error)


def _split_rules(
    field: str, rules: ExceptionRule | Iterable[ExceptionRule] | None
) -> tuple[tuple[type[BaseException], ...], tuple[Callable[[BaseException], bool], ...]]:
    if rules is None:
        return (), ()
    items: Iterable[object] = (
        (rules,) if isinstance(rules, type) or not isinstance(rules, Iterable) else rules
    )
    types: list[type[BaseException]] = []
    predicates: list[Callable[[BaseException], bool]] = []
    for rule in items:
        if isinstance(rule, type) and issubclass(rule, BaseException):
            types.append(rule)
        elif callable(rule) and not isinstance(rule, type):
            predicates.append(cast(Callable[[BaseException], bool], rule))
        else:
            raise ValueError(f"{field}: expected exception types or predicates, got {rule!r}")
    return tuple(types), tuple(predicates)


class CircuitBreaker:
    """A circuit breaker for ``def`` and ``async def`` callables alike.

    Use it as a decorator (``@breaker``), through ``breaker.call(fn, ...)`` /
    ``await breaker.acall(fn, ...)``, as ``with breaker:`` / ``async with breaker:``, or
    through the permit API (``try_acquire()`` / ``acquire()``). All of them share one state.

    ``failure_on`` lists exception types and/or predicates that make a call a failure
    (default: any :class:`Exception`); ``ignore_on`` lists types that count neither way and
    win over ``failure_on``. Other exceptions count as successes (the dependency answered).
    ``BaseException``\\ s that are not ``Exception`` (cancellation, ``KeyboardInterrupt``)
    count neither way unless ``failure_on`` names them.

    The breaker's lock is held only to admit a call and to record its result, never while
    the call runs. Store reads and writes happen outside it too.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_clocked",
        "_drained",
        "_emitter",
        "_failure_predicates",
        "_failure_types",
        "_fast",
        "_ignore_types",
        "_lock",
        "_machine",
        "_next_refresh_s",
        "_ok",
        "_seen_version",
        "_store",
        "_store_dirty",
        "_store_lock",
        "_ticks_possible",
        "config",
        "name",
    )

    def __init__(
        self,
        name: str = "breaker",
        *,
        failure_rate_threshold: float | str = 0.5,
        consecutive_failures: int | str | None = 10,
        open_timeout_s: float | str = 30.0,
        half_open_requests: int | str = 3,
        window_type: Literal["count", "time"] = "count",
        window_size_calls: int | str = 100,
        window_size_s: int | str = 60,
        minimum_calls: int | str = 10,
        slow_call_duration_s: float | str | None = None,
        slow_call_rate_threshold: float | str = 1.0,
        refresh_interval_s: float | str = 1.0,
        failure_on: ExceptionRule | Iterable[ExceptionRule] | None = Exception,
        ignore_on: type[BaseException] | Iterable[type[BaseException]] | None = None,
        store: BreakerStore | None = None,
        clock: Clock = SYSTEM_CLOCK,
        listeners: Iterable[Listener] = (),
        config: BreakerConfig | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("name: a breaker name must be a non-empty string")
        if config is None:
            config = BreakerConfig(
                failure_rate_threshold=failure_rate_threshold,  # type: ignore[arg-type]
                consecutive_failures=consecutive_failures,  # type: ignore[arg-type]
                open_timeout_s=open_timeout_s,  # type: ignore[arg-type]
                half_open_requests=half_open_requests,  # type: ignore[arg-type]
                window_type=window_type,
                window_size_calls=window_size_calls,  # type: ignore[arg-type]
                window_size_s=window_size_s,  # type: ignore[arg-type]
                minimum_calls=minimum_calls,  # type: ignore[arg-type]
                slow_call_duration_s=slow_call_duration_s,  # type: ignore[arg-type]
                slow_call_rate_threshold=slow_call_rate_threshold,  # type: ignore[arg-type]
                refresh_interval_s=refresh_interval_s,  # type: ignore[arg-type]
            )
        self.name = name
        self.config = config
        self._failure_types, self._failure_predicates = _split_rules("failure_on", failure_on)
        ignore_types, ignore_predicates = _split_rules("ignore_on", ignore_on)
        if ignore_predicates:
            raise ValueError("ignore_on: expected exception types only")
        self._ignore_types = ignore_types
        if store is not None and not isinstance(store, BreakerStore):
            raise ValueError(f"store: expected a BreakerStore, got {store!r}")
        self._store = store
        self._clock = clock
        self._emitter = Emitter("breaker", name, tuple(listeners))
        self._lock = threading.Lock()
        self._store_lock = threading.Lock()
        self._machine = BreakerMachine(config)
        # The closed-state success path needs the clock only for time windows, slow-call
        # durations and store refreshes; without them it reads no clock at all.
        self._clocked = (
            config.window_type == "time" or config.slow_call_duration_s is not None
        ) or store is not None
        counter = Counter()
        self._ok = counter
        self._drained = 0
        self._ticks_possible = False
        self._seen_version = 0
        self._store_dirty = False
        self._next_refresh_s = -math.inf
        self._fast: Callable[[], int] | None = None
        with self._lock:
            self._update_fast()

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, object] | str,
        *,
        name: str = "breaker",
        failure_on: ExceptionRule | Iterable[ExceptionRule] | None = Exception,
        ignore_on: type[BaseException] | Iterable[type[BaseException]] | None = None,
        store: BreakerStore | None = None,
        clock: Clock = SYSTEM_CLOCK,
        listeners: Iterable[Listener] = (),
    ) -> CircuitBreaker:
        """A breaker from the guide's configuration (a mapping or ``key: value`` lines)."""
        return cls(
            name,
            config=BreakerConfig.from_mapping(config),
            failure_on=failure_on,
            ignore_on=ignore_on,
            store=store,
            clock=clock,
            listeners=listeners,
        )

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._machine.state.value!r})"

    # -- listeners ----------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Receive ``state_change``, ``rejected``, ``success`` and ``failure`` events."""
        self._emitter.add_listener(listener)
        with self._lock:
            self._update_fast()

    def remove_listener(self, listener: Listener) -> None:
        self._emitter.remove_listener(listener)
        with self._lock:
            self._update_fast()

    # -- internals (called with ``_lock`` held unless said otherwise) --------------------------

    def _update_fast(self) -> None:
        machine = self._machine
        if machine.disabled or (
            not self._clocked
            and not self._emitter.active
            and machine.state is _CLOSED
            and machine.success_cannot_trip()
        ):
            self._fast = self._ok.incr
            self._ticks_possible = True
        else:
            self._fast = None

    def _drain(self, now_s: float) -> None:
        """Fold the lock-free success count into the machine."""
        if not self._ticks_possible:
            return
        total = self._ok.value
        pending = total - self._drained
        self._drained = total
        if self._fast is None:
            # Calls admitted before the fast path was switched off may still tick the
            # counter; those are folded in the next time the fast path is on.
            self._ticks_possible = False
        if pending:
            self._machine.on_successes(pending, now_s)

    def _classify(self, error: BaseException) -> int:
        if self._ignore_types and isinstance(error, self._ignore_types):
            return _IGNORED
        if isinstance(error, self._failure_types):
            return _FAILURE
        for predicate in self._failure_predicates:
            try:
                if predicate(error):
                    return _FAILURE
            except Exception:
                _log.exception(
                    "breaker %s: failure_on predicate raised; counting a failure", self.name
                )
                return _FAILURE
        if not isinstance(error, Exception):
            return _IGNORED
        return _SUCCESS

    # -- the store (never called with ``_lock`` held) ------------------------------------------

    def _after(self, transitions: list[Transition]) -> None:
        """Emit transitions and publish the ones the other processes must see."""
        publish = False
        for transition in transitions:
            self._emitter.emit(
                "state_change",
                transition.at_s,
                {
                    "from": transition.from_state.value,
                    "to": transition.to_state.value,
                    "reason": transition.reason,
                },
            )
            if transition.reason not in ("remote", "disabled") and transition.to_state in (
                _OPEN,
                _CLOSED,
            ):
                publish = True
        if publish and self._store is not None:
            with self._lock:
                self._store_dirty = True
            with self._store_lock:
                self._sync_store(load=False)

    def _local_record(self) -> BreakerRecord:
        # Called with ``_lock`` held. Half-open is published as open: it is local.
        machine = self._machine
        clock = self._clock
        open_until_wall_s: float | None = None
        if machine.state is not _CLOSED and not machine.forced and machine.open_until_s is not None:
            open_until_wall_s = clock.wall_s() + (machine.open_until_s - clock.now_s())
        state = "closed" if machine.state is _CLOSED else "open"
        return BreakerRecord(state, 0, open_until_wall_s, clock.wall_s())

    def _adopt(self, record: BreakerRecord) -> None:
        # Called with ``_lock`` held.
        self._seen_version = record.version
        open_until_s: float | None = None
        now_s = self._clock.now_s()
        if record.open_until_wall_s is not None:
            # Wall clocks of two processes can disagree; never stay open longer than this
            # breaker's own timeout because of that.
            left_s = record.open_until_wall_s - self._clock.wall_s()
            open_until_s = now_s + min(max(left_s, 0.0), self.config.open_timeout_s)
        self._machine.adopt(record.state, open_until_s, now_s)

    def _sync_store(self, *, load: bool) -> None:
        """Publish local state if it changed, then optionally load the shared record.

        Called with ``_store_lock`` held, which serialises this process's store traffic.
        """
        store = self._store
        if store is None:
            return
        transitions: list[Transition] = []
        record: BreakerRecord | None = None
        try:
            with self._lock:
                dirty = self._store_dirty
                record = self._local_record() if dirty else None
                expected = self._seen_version
                self._store_dirty = False
            current: BreakerRecord | None
            if record is not None:
                won, current = store.compare_and_set(self.name, expected, record)
                with self._lock:
                    if won:
                        self._seen_version = current.version
                    elif current.version > self._seen_version:
                        self._adopt(current)
                    transitions = self._machine.take_transitions()
                    self._update_fast()
            if load:
                current = store.load(self.name)
                with self._lock:
                    if current is not None and current.version > self._seen_version:
                        self._adopt(current)
                    transitions += self._machine.take_transitions()
                    self._update_fast()
        except Exception:
            # A broken store must not break calls: decide locally and try again later.
            _log.warning(
                "breaker %s: shared store failed; deciding locally", self.name, exc_info=True
            )
            with self._lock:
                self._store_dirty = self._store_dirty or record is not None
        for transition in transitions:
            self._emitter.emit(
                "state_change",
                transition.at_s,
                {
                    "from": transition.from_state.value,
                    "to": transition.to_state.value,
                    "reason": transition.reason,
                },
            )

    def _maybe_refresh(self, now_s: float) -> None:
        with self._lock:
            if now_s < self._next_refresh_s:
                return
            self._next_refresh_s = now_s + self.config.refresh_interval_s
        # Another thread already talking to the store will bring the news; do not queue.
        if self._store_lock.acquire(blocking=False):
            try:
                self._sync_store(load=True)
            finally:
                self._store_lock.release()

    def refresh(self) -> None:
        """Publish pending changes and read the shared store now (no-op without a store)."""
        if self._store is not None:
            with self._lock:
                self._next_refresh_s = self._clock.now_s() + self.config.refresh_interval_s
            with self._store_lock:
                self._sync_store(load=True)

    # -- admission and recording --------------------------------------------------------------

    def _admit(self) -> Permit | CircuitOpen:
        now_s = self._clock.now_s()
        if self._store is not None and not self._machine.disabled:
            self._maybe_refresh(now_s)
        with self._lock:
            machine = self._machine
            verdict = machine.admit(now_s)
            generation = machine.generation
            retry_after_s = machine.retry_after_s(now_s) if verdict == REJECT else None
            transitions = machine.take_transitions() if machine.transitions else None
            if transitions:
                self._update_fast()
        if transitions:
            self._after(transitions)
        if verdict == REJECT:
            if self._emitter.active:
                self._emitter.emit("rejected", now_s, {"retry_after_s": retry_after_s})
            state = "half-open with every probe slot taken"
            if retry_after_s is not None or self._machine.state is _OPEN:
                state = "open"
            return CircuitOpen(
                f"circuit breaker {self.name!r} is {state}", retry_after_s=retry_after_s
            )
        return Permit(self, generation, now_s, verdict == PROBE)

    def try_acquire(self) -> Permit | None:
        """A permit for one call, or ``None`` if the breaker refuses it now."""
        admitted = self._admit()
        return None if isinstance(admitted, CircuitOpen) else admitted

    def acquire(self) -> Permit:
        """A permit for one call; raises :class:`~phalanx.errors.CircuitOpen` if refused."""
        admitted = self._admit()
        if isinstance(admitted, CircuitOpen):
            raise admitted
        return admitted

    def retry_after_s(self) -> float | None:
        """Seconds until an open breaker starts probing (``None`` if not open or forced)."""
        with self._lock:
            return self._machine.retry_after_s(self._clock.now_s())

    def _record(
        self,
        kind: int,
        generation: int,
        probe: bool,
        start_s: float,
        duration_s: float | None,
        error: BaseException | None,
    ) -> None:
        now_s = self._clock.now_s()
        if duration_s is None:
            duration_s = now_s - start_s
        with self._lock:
            self._drain(now_s)
            machine = self._machine
            if kind == _SUCCESS:
                machine.on_success(now_s, duration_s, generation, probe)
            elif kind == _FAILURE:
                machine.on_failure(now_s, duration_s, generation, probe)
            else:
                machine.on_ignored(generation, probe)
            transitions = machine.take_transitions() if machine.transitions else None
            self._update_fast()
        emitter = self._emitter
        if emitter.active and kind != _IGNORED:
            data: dict[str, object] = {"duration_s": duration_s}
            if error is not None:
                data["error"] = type(error).__name__
            emitter.emit("success" if kind == _SUCCESS else "failure", now_s, data)
        if transitions:
            self._after(transitions)

    def _fast_exception(self, error: BaseException) -> None:
        """Record an exception raised by a call admitted on the lock-free path."""
        kind = self._classify(error)
        with self._lock:
            machine = self._machine
            # The call was admitted while closed; if the state has moved on since, its
            # result is stale and only counted.
            generation = machine.generation if machine.state is _CLOSED else -1
        self._record(kind, generation, False, self._clock.now_s(), 0.0, error)  # noqa: FBT003

    # -- the ways to call ---------------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` through the breaker."""
        ok = self._fast
        if ok is not None:
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:
                self._fast_exception(error)
                raise
            ok()
            return result
        permit = self.acquire()
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            permit.record_exception(error)
            raise
        permit.success()
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` through the breaker."""
        ok = self._fast
        if ok is not None:
            try:
                result = await fn(*args, **kwargs)
            except BaseException as error:
                self._fast_exception(error)
                raise
            ok()
            return result
        permit = self.acquire()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as error:
            permit.record_exception(error)
            raise
        permit.success()
        return result

    def __call__(self, fn: F) -> F:
        """Decorate a ``def`` or ``async def`` function."""
        breaker = self
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                ok = breaker._fast
                if ok is not None:
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as error:
                        breaker._fast_exception(error)
                        raise
                    ok()
                    return result
                return await breaker.acall(fn, *args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # The body of ``call`` inlined: one Python frame fewer on the hot path.
            ok = breaker._fast
            if ok is not None:
                try:
                    result = fn(*args, **kwargs)
                except BaseException as error:
                    breaker._fast_exception(error)
                    raise
                ok()
                return result
            return breaker.call(fn, *args, **kwargs)

        return cast(F, wrapper)

    def __enter__(self) -> Permit | None:
        if self._fast is not None:
            # Lock-free admission: the stack entry is the breaker itself, not a permit.
            _ENTERED.set((*_ENTERED.get(), self))
            return None
        permit = self.acquire()
        _ENTERED.set((*_ENTERED.get(), permit))
        return permit

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack = _ENTERED.get()
        for index in range(len(stack) - 1, -1, -1):
            entry = stack[index]
            if entry is self or (isinstance(entry, Permit) and entry._breaker is self):
                _ENTERED.set(stack[:index] + stack[index + 1 :])
                break
        else:
            raise RuntimeError(f"circuit breaker {self.name!r}: __exit__ without __enter__")
        if isinstance(entry, Permit):
            if exc is None:
                entry.success()
            else:
                entry.record_exception(exc)
        elif exc is None:
            self._ok.incr()
        else:
            self._fast_exception(exc)

    async def __aenter__(self) -> Permit | None:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- control and observation --------------------------------------------------------------

    def _control(self, action: Callable[[float], None]) -> bool:
        now_s = self._clock.now_s()
        with self._lock:
            self._drain(now_s)
            action(now_s)
            transitions = self._machine.take_transitions()
            self._update_fast()
        self._after(transitions)
        return bool(transitions)

    def force_open(self) -> None:
        """Refuse every call until :meth:`reset` (``retry_after_s`` is ``None``)."""
        moved = self._control(self._machine.force_open)
        if self._store is not None and not moved:
            # Already open (no transition) still changes what others must see.
            with self._lock:
                self._store_dirty = True
            with self._store_lock:
                self._sync_store(load=False)

    def reset(self) -> None:
        """Back to closed with an empty window; undoes ``force_open`` and ``disable``."""
        self._control(self._machine.reset)

    def disable(self) -> None:
        """Admit every call and record nothing until :meth:`reset`. Local to this process."""
        self._control(self._machine.disable)

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose timeout has passed reads half-open)."""
        now_s = self._clock.now_s()
        if self._store is not None and not self._machine.disabled:
            self._maybe_refresh(now_s)
        with self._lock:
            self._machine.tick(now_s)
            transitions = self._machine.take_transitions()
            state = self._machine.state
            self._update_fast()
        if transitions:
            self._after(transitions)
        return state

    def statistics(self) -> BreakerStatistics:
        now_s = self._clock.now_s()
        with self._lock:
            self._drain(now_s)
            machine = self._machine
            transitions = machine.take_transitions()
            self._update_fast()
            calls, failures, slow = machine.window.totals(now_s)
            stats = BreakerStatistics(
                name=self.name,
                state=machine.state,
                disabled=machine.disabled,
                forced_open=machine.forced,
                calls=machine.successes + machine.failures + machine.ignored,
                successes=machine.successes,
                failures=machine.failures,
                ignored=machine.ignored,
                rejections=machine.rejections,
                slow_calls=machine.slow_calls,
                window_calls=calls,
                window_failures=failures,
                window_slow_calls=slow,
                failure_rate=failures / calls if calls else 0.0,
                slow_call_rate=slow / calls if calls else 0.0,
                consecutive_failures=machine.consecutive_failures,
                transitions=machine.transition_count,
                half_open_in_flight=machine.probes_in_flight,
                retry_after_s=machine.retry_after_s(now_s),
                store_version=self._seen_version,
            )
        if transitions:
            self._after(transitions)
        return stats
