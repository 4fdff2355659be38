"""The circuit breaker's sans-I/O state machine.

:class:`BreakerMachine` makes every decision of a breaker with the current time passed in:
no clock, no lock, no I/O. :class:`~phalanx.resilience.breaker.CircuitBreaker` wraps it with
locking, timing and the call forms.
"""

from __future__ import annotations

from typing import Final

from phalanx.errors import invariant
from phalanx.resilience.breaker_config import (
    LEGAL_EDGES,
    MANUAL_REASONS,
    BreakerConfig,
    BreakerState,
    Transition,
)
from phalanx.resilience.breaker_window import (
    CountWindow,
    SlidingWindow,
    TimeWindow,
)

__all__ = [
    "ADMIT",
    "PROBE",
    "REJECT",
    "BreakerMachine",
]

_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN

#: What :meth:`BreakerMachine.admit` returns.
REJECT: Final = 0
ADMIT: Final = 1
PROBE: Final = 2


class BreakerMachine:
    """The breaker's decisions, with no clock, lock or I/O.

    Inputs are calls to :meth:`admit` and the ``on_*`` methods with the current time;
    outputs are the admission verdicts and :class:`Transition` values queued in
    ``transitions`` until :meth:`take_transitions` collects them. Each transition bumps
    ``generation``; results of calls admitted in an older generation no longer describe
    the dependency, so they are counted in lifetime totals but do not move the state.
    Not thread-safe: the driver serialises calls.
    """

    __slots__ = (
        "config",
        "consecutive_failures",
        "disabled",
        "failures",
        "forced",
        "generation",
        "ignored",
        "open_until_s",
        "probes_in_flight",
        "probes_succeeded",
        "rejections",
        "slow_calls",
        "state",
        "successes",
        "transition_count",
        "transitions",
        "window",
    )

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.window: SlidingWindow = (
            CountWindow(config.window_size_calls)
            if config.window_type == "count"
            else TimeWindow(config.window_size_s)
        )
        self.state = _CLOSED
        self.generation = 0
        self.consecutive_failures = 0
        self.open_until_s: float | None = None
        self.forced = False
        self.disabled = False
        self.probes_in_flight = 0
        self.probes_succeeded = 0
        self.transitions: list[Transition] = []
        self.successes = 0
        self.failures = 0
        self.ignored = 0
        self.rejections = 0
        self.slow_calls = 0
        self.transition_count = 0

    # -- transitions ------------------------------------------------------------------------

    def _move(self, to_state: BreakerState, now_s: float, reason: str) -> None:
        from_state = self.state
        invariant(
            (from_state, to_state) in LEGAL_EDGES or reason in MANUAL_REASONS,
            f"breaker: illegal transition {from_state.value} -> {to_state.value} ({reason})",
        )
        self.state = to_state
        self.generation += 1
        self.transition_count += 1
        self.probes_in_flight = 0
        self.probes_succeeded = 0
        self.consecutive_failures = 0
        self.window.clear()
        self.transitions.append(Transition(from_state, to_state, now_s, reason))

    def _trip(self, now_s: float, reason: str) -> None:
        self.open_until_s = now_s + self.config.open_timeout_s
        self._move(_OPEN, now_s, reason)

    def take_transitions(self) -> list[Transition]:
        """Collect the transitions made since the last call (the driver emits them)."""
        taken = self.transitions
        self.transitions = []
        return taken

    def tick(self, now_s: float) -> None:
        """Move an open breaker whose timeout has passed to half-open."""
        if (
            self.state is _OPEN
            and not self.forced
            and self.open_until_s is not None
            and now_s >= self.open_until_s
        ):
            self._move(_HALF_OPEN, now_s, "open_timeout")

    # -- admission --------------------------------------------------------------------------

    def admit(self, now_s: float) -> int:
        """:data:`ADMIT` a call, admit it as a half-open :data:`PROBE`, or :data:`REJECT` it."""
        if self.disabled or self.state is _CLOSED:
            return ADMIT
        self.tick(now_s)
        if (
            self.state is _HALF_OPEN
            and self.probes_in_flight + self.probes_succeeded < self.config.half_open_requests
        ):
            self.probes_in_flight += 1
            return PROBE
        self.rejections += 1
        return REJECT

    def retry_after_s(self, now_s: float) -> float | None:
        """Seconds until an open breaker starts probing; ``None`` if forced or not open."""
        if self.state is _OPEN and not self.forced and self.open_until_s is not None:
            return max(self.open_until_s - now_s, 0.0)
        return None

    # -- results ----------------------------------------------------------------------------

    def _is_slow(self, duration_s: float) -> bool:
        limit = self.config.slow_call_duration_s
        return limit is not None and duration_s > limit

    def on_success(self, now_s: float, duration_s: float, generation: int, probe: bool) -> None:
        self.successes += 1
        slow = self._is_slow(duration_s)
        self.slow_calls += slow
        if self.disabled or generation != self.generation:
            return
        if probe:
            self.probes_in_flight -= 1
            if slow:
                # A probe that answers but too slowly has not shown the dependency recovered.
                self._trip(now_s, "probe_slow")
                return
            self.probes_succeeded += 1
            if self.probes_succeeded >= self.config.half_open_requests:
                self.open_until_s = None
                self._move(_CLOSED, now_s, "probes_succeeded")
            return
        if self.state is _CLOSED:
            self.window.add(now_s, failed=False, slow=slow)
            self.consecutive_failures = 0
            self._evaluate(now_s)

    def on_successes(self, count: int, now_s: float) -> None:
        """``count`` fast-path successes of the current closed period (order-free)."""
        if count <= 0:
            return
        self.successes += count
        if self.disabled or self.state is not _CLOSED:
            return
        self.window.add_successes(count, now_s)
        self.consecutive_failures = 0
        self._evaluate(now_s)

    def on_failure(self, now_s: float, duration_s: float, generation: int, probe: bool) -> None:
        self.failures += 1
        slow = self._is_slow(duration_s)
        self.slow_calls += slow
        if self.disabled or generation != self.generation:
            return
        if probe:
            self._trip(now_s, "probe_failed")
            return
        if self.state is _CLOSED:
            self.window.add(now_s, failed=True, slow=slow)
            self.consecutive_failures += 1
            self._evaluate(now_s)

    def on_ignored(self, generation: int, probe: bool) -> None:
        """A call that counts neither way (an ignored exception, a cancellation)."""
        self.ignored += 1
        if probe and not self.disabled and generation == self.generation:
            # Free the probe slot so another call can test the dependency.
            self.probes_in_flight -= 1

    def _evaluate(self, now_s: float) -> None:
        config = self.config
        limit = config.consecutive_failures
        if limit is not None and self.consecutive_failures >= limit:
            self._trip(now_s, "consecutive_failures")
            return
        calls, failures, slow = self.window.totals(now_s)
        if calls < config.minimum_calls:
            return
        if failures >= config.failure_rate_threshold * calls:
            self._trip(now_s, "failure_rate")
        elif (
            config.slow_call_duration_s is not None
            and slow >= config.slow_call_rate_threshold * calls
        ):
            self._trip(now_s, "slow_call_rate")

    def success_cannot_trip(self) -> bool:
        """True if no run of successes could trip the breaker from its current window.

        Successes only lower the rates, except that one may bring the window up to
        ``minimum_calls`` while the failures already in it are at the threshold.
        """
        config = self.config
        if config.slow_call_duration_s is not None:
            return False
        calls, failures, _ = self.window.totals(0.0)
        if calls >= config.minimum_calls:
            return True
        return failures < config.failure_rate_threshold * config.minimum_calls

    # -- manual control and shared state ------------------------------------------------------

    def force_open(self, now_s: float) -> None:
        self.disabled = False
        self.forced = True
        self.open_until_s = None
        if self.state is _OPEN:
            self.generation += 1  # in-flight results no longer matter
        else:
            self._move(_OPEN, now_s, "forced_open")

    def reset(self, now_s: float) -> None:
        self.disabled = False
        self.forced = False
        self.open_until_s = None
        if self.state is _CLOSED:
            self.generation += 1
            self.consecutive_failures = 0
            self.window.clear()
        else:
            self._move(_CLOSED, now_s, "reset")

    def disable(self, now_s: float) -> None:
        self.reset(now_s)
        if self.transitions and self.transitions[-1].reason == "reset":
            last = self.transitions[-1]
            self.transitions[-1] = Transition(last.from_state, last.to_state, now_s, "disabled")
        self.disabled = True

    def adopt(self, state: str, open_until_s: float | None, now_s: float) -> None:
        """Take a state decided by another process (``"open"`` or ``"closed"``)."""
        if self.disabled:
            return
        if state == "open":
            self.forced = open_until_s is None
            self.open_until_s = open_until_s
            if self.state is _OPEN:
                self.generation += 1
            else:
                self._move(_OPEN, now_s, "remote")
        elif self.state is not _CLOSED:
            self.forced = False
            self.open_until_s = None
            self._move(_CLOSED, now_s, "remote")

    def check(self) -> None:
        """Raise :class:`~phalanx.errors.InvariantViolation` if the state is inconsistent."""
        limit = self.config.half_open_requests
        invariant(0 <= self.probes_in_flight <= limit, "breaker: probes in flight out of range")
        invariant(
            self.probes_in_flight + self.probes_succeeded <= limit,
            "breaker: more probes admitted than half_open_requests",
        )
        invariant(
            self.state is _HALF_OPEN or self.probes_in_flight == 0,
            "breaker: probes in flight outside half-open",
        )
        invariant(
            self.state is not _OPEN or self.forced or self.open_until_s is not None,
            "breaker: open without an end time",
        )
