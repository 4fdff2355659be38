"""The health-check registry: named checks, their results, and the three probes.

This module owns what a probe *means*. A :class:`HealthRegistry` holds named checks, each
registered for one or more of the probes Kubernetes knows:

- ``liveness`` (``/healthz``): is the process working at all? Failing it gets the container
  restarted, so only register checks whose failure a restart can cure (a wedged event loop,
  a dead worker thread), never a dependency.
- ``readiness`` (``/ready``): can the process take traffic now? Failing it removes the pod
  from the load balancer until it passes again; dependencies (a database, a circuit breaker)
  and draining before shutdown belong here.
- ``startup`` (``/startup``): has initialisation finished? Until every critical startup check
  has passed once, liveness and readiness answer "starting" (503), as Kubernetes holds the
  other two probes back while its startup probe fails. Once complete, startup stays complete.

A check is a sync or async callable. It passes by returning anything but ``False`` (a
returned ``str`` becomes the result's message) and fails by returning ``False`` or raising;
raise :class:`CheckFailed` to fail with a message and no exception type in it. Every run has
a deadline of ``timeout_s``: async checks are cancelled at it; sync checks run in a daemon
worker thread, so a hung check cannot hang the probe. At most ``sync_threads_max`` worker
threads run at once; a sync check waits for a free one within its own deadline. A thread
cannot be killed, so a check whose previous run is still stuck is not started again, and
only threads still running past their deadline can keep the others waiting. A
``TimeoutError`` raised by the check itself (a socket timeout, say) is a ``fail`` with its
description; ``timeout`` means the registry's deadline passed.

Results are cached for ``cache_s`` per check, and probes that arrive while a check is running
wait for that one run instead of starting their own. Checks registered with
``critical=False`` are reported but cannot fail a probe; when one of them fails the probe is
``degraded`` and still answers 200.

Failures inside checks are values (:class:`CheckResult`), never exceptions out of a probe;
only bad configuration raises, as ``ValueError`` naming the field, at registration.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.health.results import (
    Check,
    CheckFailed,
    CheckFn,
    CheckResult,
    CheckStatus,
    HealthStatistics,
    Probe,
    ProbeReport,
    ProbeStatus,
)
from phalanx.resilience.config import parse_count, require_non_negative, require_positive

__all__ = [
    "CHECKS_MAX",
    "CHECK_NAME_CHARS_MAX",
    "DEFAULT_CACHE_S",
    "DEFAULT_TIMEOUT_S",
    "MESSAGE_CHARS_MAX",
    "SYNC_THREADS_MAX",
    "Check",
    "CheckFailed",
    "CheckFn",
    "CheckResult",
    "CheckStatus",
    "HealthRegistry",
    "HealthStatistics",
    "Probe",
    "ProbeReport",
    "ProbeStatus",
]

# Kubernetes' default probe timeoutSeconds is 1 s; checks of one probe run concurrently, so a
# per-check default comfortably under it lets a timed-out check still be reported in time.
DEFAULT_TIMEOUT_S = 0.5
# Probes arrive every few seconds from each kubelet and load balancer; one second of caching
# turns a burst of them into one run without hiding a failure for long.
DEFAULT_CACHE_S = 1.0
CHECKS_MAX = 64
SYNC_THREADS_MAX = 8
CHECK_NAME_CHARS_MAX = 100
MESSAGE_CHARS_MAX = 512

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]*$")

_F = TypeVar("_F", bound=CheckFn)


@dataclass(slots=True)
class _CheckState:
    check: Check
    last: CheckResult | None = None
    ever_passed: bool = False
    inflight: asyncio.Task[CheckResult] | None = None
    # The in-flight run is queued for a worker thread (sync_threads_max reached).
    waiting_for_thread: bool = False
    # True while a worker thread is still inside this sync check (possibly after its deadline).
    thread_busy: bool = False
    thread_started_s: float = 0.0


@dataclass(slots=True)
class _Counters:
    check_runs: int = 0
    check_failures: int = 0
    check_timeouts: int = 0
    cache_hits: int = 0
    coalesced_waits: int = 0
    probes_served: dict[str, int] = field(default_factory=lambda: {p.value: 0 for p in Probe})


def _parse_probes(probes: Iterable[Probe | str] | Probe | str) -> frozenset[Probe]:
    items: Iterable[Probe | str] = (probes,) if isinstance(probes, Probe | str) else probes
    parsed: set[Probe] = set()
    for item in items:
        if isinstance(item, Probe):
            parsed.add(item)
            continue
        try:
            parsed.add(Probe(item))
        except ValueError:
            known = ", ".join(p.value for p in Probe)
            raise ValueError(f"probes: unknown probe {item!r}; expected one of {known}") from None
    if not parsed:
        raise ValueError("probes: a check must belong to at least one probe")
    return frozenset(parsed)


def _truncate(message: str) -> str:
    if len(message) <= MESSAGE_CHARS_MAX:
        return message
    return message[: MESSAGE_CHARS_MAX - 3] + "..."


def _describe(error: BaseException) -> str:
    if isinstance(error, CheckFailed):
        return str(error) or "check failed"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class HealthRegistry:
    """Named health checks grouped into the liveness, readiness and startup probes.

    ``checks_max`` caps how many checks may be registered, ``sync_threads_max`` how many
    worker threads sync checks may occupy at once (including hung ones past their deadline);
    a sync check that finds them all busy waits for one within its own ``timeout_s``.
    ``timeout_s`` and ``cache_s`` are the defaults for checks that do not set their own.

    Probes are evaluated on an asyncio loop (:meth:`run_probe`); the HTTP app and server call
    it. :meth:`set_ready` may be called from any thread.
    """

    def __init__(
        self,
        *,
        clock: Clock = SYSTEM_CLOCK,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        cache_s: float = DEFAULT_CACHE_S,
        checks_max: int = CHECKS_MAX,
        sync_threads_max: int = SYNC_THREADS_MAX,
    ) -> None:
        self._clock = clock
        self._timeout_s = require_positive("timeout_s", timeout_s)
        self._cache_s = require_non_negative("cache_s", cache_s)
        self._checks_max = parse_count("checks_max", checks_max)
        self._sync_threads_max = parse_count("sync_threads_max", sync_threads_max)
        self._states: dict[str, _CheckState] = {}
        # Complete while no critical startup check is pending; latched once a probe has been
        # answered with startup complete, so checks added later cannot un-start the process.
        self._startup_complete = True
        self._startup_latched = False
        self._manual_ready = True
        self._manual_reason = ""
        self._threads_lock = threading.Lock()
        self._threads_busy = 0
        # Runs waiting for a worker thread, first come first served. A freed thread is handed
        # to the first waiter directly (the busy count is not lowered), on the waiter's loop.
        self._thread_waiters: collections.deque[tuple[asyncio.AbstractEventLoop, _Waiter]] = (
            collections.deque()
        )
        self._counters = _Counters()

    # -- registration -------------------------------------------------------------------

    def add(
        self,
        name: str,
        fn: CheckFn,
        *,
        probes: Iterable[Probe | str] | Probe | str = (Probe.READINESS,),
        timeout_s: float | None = None,
        cache_s: float | None = None,
        critical: bool = True,
    ) -> Check:
        """Register ``fn`` as check ``name`` for ``probes`` and return its configuration."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(
                f"name: {name!r} must start with a letter or digit and contain only "
                f"letters, digits and _ . : / @ + -"
            )
        if len(name) > CHECK_NAME_CHARS_MAX:
            raise ValueError(f"name: longer than {CHECK_NAME_CHARS_MAX} characters")
        if name in self._states:
            raise ValueError(f"name: a check named {name!r} is already registered")
        if not callable(fn):
            raise ValueError(f"fn: expected a callable, got {fn!r}")
        if len(self._states) >= self._checks_max:
            raise ValueError(f"checks_max: the registry already holds {self._checks_max} checks")
        check = Check(
            name=name,
            fn=fn,
            probes=_parse_probes(probes),
            timeout_s=self._timeout_s
            if timeout_s is None
            else require_positive("timeout_s", timeout_s),
            cache_s=self._cache_s if cache_s is None else require_non_negative("cache_s", cache_s),
            critical=bool(critical),
        )
        self._states[name] = _CheckState(check)
        self._refresh_startup()
        return check

    def check(
        self,
        name: str | None = None,
        *,
        probes: Iterable[Probe | str] | Probe | str = (Probe.READINESS,),
        timeout_s: float | None = None,
        cache_s: float | None = None,
        critical: bool = True,
    ) -> Callable[[_F], _F]:
        """Decorator form of :meth:`add`; the name defaults to the function's name."""

        def register(fn: _F) -> _F:
            self.add(
                name or str(getattr(fn, "__name__", "")),
                fn,
                probes=probes,
                timeout_s=timeout_s,
                cache_s=cache_s,
                critical=critical,
            )
            return fn

        return register

    def remove(self, name: str) -> None:
        """Unregister check ``name`` (``KeyError`` if there is none).

        A run already in flight finishes within its timeout; its result is discarded.
        """
        del self._states[name]
        self._refresh_startup()

    def checks(self, probe: Probe | str | None = None) -> tuple[Check, ...]:
        """Registered checks in registration order, optionally only those of ``probe``."""
        wanted = None if probe is None else next(iter(_parse_probes(probe)))
        return tuple(
            s.check for s in self._states.values() if wanted is None or wanted in s.check.probes
        )

    # -- manual state -------------------------------------------------------------------

    def set_ready(self, ready: bool, reason: str = "draining") -> None:
        """Force readiness off (``False``, e.g. draining before shutdown) or back on.

        While off, ``/ready`` answers 503 with ``reason`` and runs no checks; liveness is
        unaffected, so the orchestrator stops sending traffic without restarting the process.
        """
        self._manual_reason = "" if ready else reason
        self._manual_ready = bool(ready)

    @property
    def manual_ready(self) -> bool:
        return self._manual_ready

    @property
    def startup_complete(self) -> bool:
        """True once every critical startup check has passed at least once.

        A registry with no critical startup checks is complete from the start. Once a probe
        has been answered with startup complete it never reverts, even if a startup check is
        added later.
        """
        return self._startup_complete

    # -- running ------------------------------------------------------------------------

    async def run_check(self, name: str) -> CheckResult:
        """The result of check ``name``: cached if fresh, else from one (shared) run."""
        return await self._result_for(self._states[name])

    async def run_probe(self, probe: Probe | str) -> ProbeReport:
        """Evaluate one probe and return its report (never raises for failing checks)."""
        which = next(iter(_parse_probes(probe)))
        self._counters.probes_served[which.value] += 1
        if self._startup_complete:
            self._startup_latched = True
        if which is Probe.STARTUP:
            return await self._startup_report()
        if not self._startup_complete:
            startup = await self._startup_report()
            if startup.status is ProbeStatus.STARTING:
                return ProbeReport(
                    which,
                    ProbeStatus.STARTING,
                    startup.reason,
                    startup.checks,
                    startup.checked_at_s,
                )
        if which is Probe.READINESS and not self._manual_ready:
            reason = f"not ready: {self._manual_reason}"
            return ProbeReport(which, ProbeStatus.FAIL, reason, (), self._clock.now_s())
        results = await self._run_all(which)
        return self._summarise(which, results)

    async def aclose(self) -> None:
        """Cancel and await check runs in flight on this loop (sync threads are left to end)."""
        loop = asyncio.get_running_loop()
        tasks = [
            s.inflight
            for s in self._states.values()
            if s.inflight is not None and not s.inflight.done() and s.inflight.get_loop() is loop
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def statistics(self) -> HealthStatistics:
        c = self._counters
        return HealthStatistics(
            checks=len(self._states),
            startup_complete=self._startup_complete,
            manual_ready=self._manual_ready,
            check_runs=c.check_runs,
            check_failures=c.check_failures,
            check_timeouts=c.check_timeouts,
            cache_hits=c.cache_hits,
            coalesced_waits=c.coalesced_waits,
            sync_threads_busy=self._threads_busy,
            probes_served=dict(c.probes_served),
        )

    # -- internals ----------------------------------------------------------------------

    def _refresh_startup(self) -> None:
        if self._startup_latched:
            return
        self._startup_complete = not any(
            Probe.STARTUP in s.check.probes and s.check.critical and not s.ever_passed
            for s in self._states.values()
        )

    async def _startup_report(self) -> ProbeReport:
        states = [s for s in self._states.values() if Probe.STARTUP in s.check.probes]
        if self._startup_complete and all(s.last is not None for s in states):
            # Complete: report what was last seen without running anything again (a check
            # that never ran, e.g. a non-critical one, runs once so the report shows it).
            results = tuple(s.last for s in states if s.last is not None)
            return ProbeReport(
                Probe.STARTUP, ProbeStatus.OK, "started", results, self._clock.now_s()
            )
        results = await self._run_states(states)
        pending = [
            s.check.name
            for s in states
            if s.check.critical and not s.ever_passed and not self._startup_latched
        ]
        if pending:
            reason = "starting: waiting for " + ", ".join(pending)
            return ProbeReport(
                Probe.STARTUP, ProbeStatus.STARTING, reason, results, self._clock.now_s()
            )
        self._startup_complete = self._startup_latched = True
        # Each check passed at some point, so startup is complete even if one fails right now
        # (that is readiness's business); say so rather than answer 503 for a finished startup.
        failing = [r.name for r in results if not r.ok]
        now_s = self._clock.now_s()
        if failing:
            reason = "started; degraded: " + ", ".join(failing)
            return ProbeReport(Probe.STARTUP, ProbeStatus.DEGRADED, reason, results, now_s)
        return ProbeReport(Probe.STARTUP, ProbeStatus.OK, "started", results, now_s)

    async def _run_all(self, probe: Probe) -> tuple[CheckResult, ...]:
        return await self._run_states([s for s in self._states.values() if probe in s.check.probes])

    async def _run_states(self, states: list[_CheckState]) -> tuple[CheckResult, ...]:
        return tuple(await asyncio.gather(*(self._result_for(s) for s in states)))

    def _summarise(self, probe: Probe, results: tuple[CheckResult, ...]) -> ProbeReport:
        failed_critical = [r.name for r in results if not r.ok and r.critical]
        failed_optional = [r.name for r in results if not r.ok and not r.critical]
        now_s = self._clock.now_s()
        if failed_critical:
            reason = "failing: " + ", ".join(failed_critical)
            return ProbeReport(probe, ProbeStatus.FAIL, reason, results, now_s)
        if failed_optional:
            reason = "degraded: " + ", ".join(failed_optional)
            return ProbeReport(probe, ProbeStatus.DEGRADED, reason, results, now_s)
        return ProbeReport(probe, ProbeStatus.OK, "", results, now_s)

    async def _result_for(self, state: _CheckState) -> CheckResult:
        last = state.last
        if last is not None and self._clock.now_s() - last.checked_at_s < state.check.cache_s:
            self._counters.cache_hits += 1
            return last
        loop = asyncio.get_running_loop()
        task = state.inflight
        if task is not None and not task.done() and task.get_loop() is loop:
            self._counters.coalesced_waits += 1
        else:
            task = loop.create_task(self._run(state), name=f"health-check:{state.check.name}")
            state.inflight = task
        # Shielded: a probe whose client went away must not cancel the run others wait on.
        return await asyncio.shield(task)

    async def _run(self, state: _CheckState) -> CheckResult:
        check = state.check
        clock = self._clock
        started_s = clock.now_s()
        status = CheckStatus.OK
        message = ""
        state.waiting_for_thread = False
        scope = asyncio.timeout(check.timeout_s)
        try:
            async with scope:
                outcome = await self._invoke(state)
            if outcome is False:
                status, message = CheckStatus.FAIL, "check returned False"
            elif isinstance(outcome, str):
                message = outcome
        except TimeoutError as error:
            if not scope.expired():  # raised by the check itself: an ordinary failure
                status, message = CheckStatus.FAIL, _describe(error)
            elif state.waiting_for_thread:
                status = CheckStatus.TIMEOUT
                message = (
                    f"timed out after {check.timeout_s:g} s waiting for a check thread "
                    f"(sync_threads_max: all {self._sync_threads_max} busy)"
                )
            else:
                status, message = CheckStatus.TIMEOUT, f"timed out after {check.timeout_s:g} s"
        except _StillRunning as still:
            status, message = CheckStatus.TIMEOUT, str(still)
        except Exception as error:  # any exception from a check is its failure
            status, message = CheckStatus.FAIL, _describe(error)
        result = CheckResult(
            name=check.name,
            status=status,
            duration_s=max(clock.now_s() - started_s, 0.0),
            message=_truncate(message),
            checked_at_s=clock.now_s(),
            checked_at_wall_s=clock.wall_s(),
            critical=check.critical,
        )
        counters = self._counters
        counters.check_runs += 1
        if status is CheckStatus.TIMEOUT:
            counters.check_timeouts += 1
        if status is not CheckStatus.OK:
            counters.check_failures += 1
        state.last = result
        if result.ok and not state.ever_passed:
            state.ever_passed = True
            self._refresh_startup()
        return result

    async def _invoke(self, state: _CheckState) -> object:
        fn = state.check.fn
        if inspect.iscoroutinefunction(fn):
            outcome: object = await fn()
        else:
            outcome = await self._in_thread(state)
        # A plain callable may hand back an awaitable (e.g. a lambda around a coroutine).
        if inspect.isawaitable(outcome):
            outcome = await outcome
        return outcome

    async def _acquire_thread(self, state: _CheckState) -> None:
        """Take a worker-thread slot, waiting (within the caller's deadline) if none is free."""
        loop = asyncio.get_running_loop()
        with self._threads_lock:
            if self._threads_busy < self._sync_threads_max and not self._thread_waiters:
                self._threads_busy += 1
                return
            waiter: _Waiter = loop.create_future()
            entry = (loop, waiter)
            self._thread_waiters.append(entry)
        # Left set if the deadline passes while waiting, so the timeout message can say so.
        state.waiting_for_thread = True
        try:
            await waiter
        except BaseException:
            with self._threads_lock:
                try:
                    self._thread_waiters.remove(entry)
                    handed_over = False
                except ValueError:  # a slot was handed to us as we gave up: pass it on
                    handed_over = True
            if handed_over:
                self._release_thread()
            raise
        state.waiting_for_thread = False

    def _release_thread(self) -> None:
        """Give a worker-thread slot to the first live waiter, or free it. Any thread."""
        with self._threads_lock:
            while self._thread_waiters:
                loop, waiter = self._thread_waiters.popleft()
                try:
                    loop.call_soon_threadsafe(_grant, waiter)
                except RuntimeError:  # that waiter's loop is closed; nobody waits there
                    continue
                return
            self._threads_busy -= 1

    async def _in_thread(self, state: _CheckState) -> object:
        if state.thread_busy:
            stuck_s = self._clock.now_s() - state.thread_started_s
            raise _StillRunning(f"previous run still running after {stuck_s:g} s (hung?)")
        await self._acquire_thread(state)
        state.thread_busy = True
        state.thread_started_s = self._clock.now_s()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        fn = state.check.fn

        def deliver(outcome: object, error: Exception | None) -> None:
            if future.done():  # the run already timed out and was cancelled
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(outcome)

        def work() -> None:
            outcome: object = None
            error: Exception | None = None
            try:
                outcome = fn()
            except Exception as exc:  # handed to the waiting probe as the check's failure
                error = exc
            except BaseException as exc:  # SystemExit and the like: fail the check, not the loop
                error = CheckFailed(_describe(exc))
            finally:
                state.thread_busy = False
                self._release_thread()
            # If the loop closed while the check ran, nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, outcome, error)

        # Daemon: a check hung forever must not keep the interpreter from exiting.
        thread = threading.Thread(target=work, name=f"health-check:{state.check.name}", daemon=True)
        try:
            thread.start()
        except BaseException:
            state.thread_busy = False
            self._release_thread()
            raise
        return await future


_Waiter = asyncio.Future[None]


def _grant(waiter: _Waiter) -> None:
    if not waiter.done():  # a waiter that gave up already passed the slot on
        waiter.set_result(None)


class _StillRunning(Exception):
    """A sync check could not be started; reported as a timeout, never raised out."""
