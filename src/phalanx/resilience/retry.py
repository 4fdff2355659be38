"""Retry with exponential backoff, jitter, deadlines and budgets.

A :class:`Retry` re-runs a failed call after a backoff delay (see :mod:`.backoff`) while
all of these hold:

* the failure is retryable: an exception in ``retry_on`` (by default only transient ones:
  :class:`~phalanx.errors.Unavailable`, :class:`~phalanx.errors.Timeout`,
  :class:`~phalanx.errors.Indeterminate`, ``ConnectionError``, ``TimeoutError``), or a result
  for which ``retry_if_result`` is true;
* fewer than ``attempts_max`` attempts were made (always bounded);
* the next attempt can start before the total deadline (``total_timeout_s``, always bounded,
  tightened by any deadline the caller already has, see :mod:`.deadline`);
* the shared :class:`~phalanx.resilience.budget.RetryBudget`, if any, has a token;
* the call is idempotent, or the failure is known not to have taken effect, or the call
  carries an idempotency key (:func:`~phalanx.resilience.keys.idempotency_key`);
* a server-supplied retry-after (an exception's ``retry_after_s``, or ``retry_after(exc)``)
  is honoured: the delay is at least that long, and a hint longer than
  ``retry_after_max_s`` or than the time left ends the retries at once.

When it gives up, the last exception is re-raised with a note saying why (or, with
``reraise=False``, wrapped in :class:`~phalanx.errors.RetryError`). Rejected results always
end in :class:`~phalanx.errors.RetryError` carrying ``last_result``.

Timeouts: ``total_timeout_s`` bounds the retry loop (no attempt starts and no backoff sleep
ends past it) and is published as the deadline of everything called inside, so
deadline-aware callees end by it. It does not cancel an attempt in flight by itself: set
``timeout_per_attempt_s`` for that, and each async attempt is cancelled at the sooner of its
own limit and the total deadline. Publishing costs about 150 ns per call (a context variable set and
reset); on a hot sync path that calls nothing deadline-aware, a decorator made with
``propagate_deadline=False`` skips it for first attempts (retries still publish).
A cancelled attempt raises :class:`~phalanx.errors.Timeout`, which is retryable. A running
sync function cannot be interrupted: for sync calls both timeouts are cooperative, i.e.
published as the deadline that nested Phalanx calls and
:func:`~phalanx.resilience.deadline.remaining_s` obey.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, NoReturn, ParamSpec, TypeVar, cast

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import (
    Indeterminate,
    InvariantViolation,
    Outcome,
    RetryError,
    Timeout,
    Unavailable,
    outcome_of,
)
from phalanx.resilience.backoff import Backoff
from phalanx.resilience.budget import RetryBudget
from phalanx.resilience.config import parse_count, parse_duration_s
from phalanx.resilience.deadline import _DEADLINE, Deadline, tighter
from phalanx.resilience.events import Emitter, Listener, Observable
from phalanx.resilience.keys import current_idempotency_key
from phalanx.resilience.stats import Counter
from phalanx.resilience.wrapping import decorate_async

__all__ = ["DEFAULT_RETRY_ON", "Retry", "RetryStatistics"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_RETRY_ON: Final[tuple[type[BaseException], ...]] = (
    Unavailable,
    Timeout,
    Indeterminate,
    ConnectionError,
    TimeoutError,
)
ATTEMPTS_MAX_LIMIT: Final = 1000
#: Longest total deadline and per-attempt limit: a week, for background jobs.
TIMEOUT_S_MAX: Final = 7 * 86_400.0
#: Longest backoff delay.
DELAY_S_MAX: Final = 86_400.0
_NO_RESULT: Final[Any] = object()

RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True, slots=True)
class RetryStatistics:
    """Counters since construction. ``attempts == calls + retries``."""

    calls: int
    attempts: int
    retries: int
    gave_up: int
    gave_up_by_reason: dict[str, int] = field(default_factory=dict)
    retry_delay_s_total: float = 0.0


class _GiveUp(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Retry(Observable):
    """A retry policy; one object serves ``def`` and ``async def`` alike.

    >>> retry = Retry(attempts_max=5, base_delay_s=1.0, jitter="none")
    >>> [retry.backoff.schedule_s(i) for i in range(4)]
    [1.0, 2.0, 4.0, 8.0]
    """

    def __init__(
        self,
        *,
        attempts_max: int = 4,
        base_delay_s: float | str = 0.1,
        max_delay_s: float | str = 5.0,
        multiplier: float = 2.0,
        jitter: str = "full",
        total_timeout_s: float | str = 20.0,
        timeout_per_attempt_s: float | str | None = None,
        retry_on: RetryOn = DEFAULT_RETRY_ON,
        retry_if_result: Callable[[Any], bool] | None = None,
        idempotent: bool = True,
        budget: RetryBudget | None = None,
        retry_after: Callable[[BaseException], float | None] | None = None,
        retry_after_max_s: float | str = 60.0,
        reraise: bool = True,
        propagate_deadline: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        name: str = "retry",
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.attempts_max = parse_count("attempts_max", attempts_max)
        if self.attempts_max > ATTEMPTS_MAX_LIMIT:
            raise ValueError(f"attempts_max: at most {ATTEMPTS_MAX_LIMIT}, got {attempts_max}")
        self.backoff = Backoff(
            base_delay_s=parse_duration_s(
                "base_delay_s", base_delay_s, allow_zero=True, maximum_s=DELAY_S_MAX
            ),
            max_delay_s=parse_duration_s(
                "max_delay_s", max_delay_s, allow_zero=True, maximum_s=DELAY_S_MAX
            ),
            multiplier=multiplier,
            jitter=jitter,
        )
        self.total_timeout_s = parse_duration_s(
            "total_timeout_s", total_timeout_s, maximum_s=TIMEOUT_S_MAX
        )
        self.timeout_per_attempt_s = (
            None
            if timeout_per_attempt_s is None
            else parse_duration_s(
                "timeout_per_attempt_s", timeout_per_attempt_s, maximum_s=TIMEOUT_S_MAX
            )
        )
        if isinstance(retry_on, tuple):
            for kind in retry_on:
                if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                    raise ValueError(f"retry_on: {kind!r} is not an exception type")
        elif not callable(retry_on):
            raise ValueError("retry_on: expected a tuple of exception types or a predicate")
        self.retry_on = retry_on
        for field_name, hook in (
            ("retry_if_result", retry_if_result),
            ("retry_after", retry_after),
        ):
            if hook is not None and not callable(hook):
                raise ValueError(f"{field_name}: expected a callable or None, got {hook!r}")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ValueError(f"budget: expected a RetryBudget or None, got {budget!r}")
        self.retry_if_result = retry_if_result
        self.idempotent = idempotent
        self.budget = budget
        self.retry_after = retry_after
        self.retry_after_max_s = parse_duration_s(
            "retry_after_max_s", retry_after_max_s, maximum_s=DELAY_S_MAX
        )
        self.reraise = reraise
        self.propagate_deadline = propagate_deadline
        self.name = name
        self._emitter = Emitter("retry", name, listeners)
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._calls = Counter()
        self._lock = threading.Lock()
        self._retries = 0
        self._delay_s_total = 0.0
        self._gave_up: dict[str, int] = {}

    # -- decisions (no I/O) -------------------------------------------------------------

    def _is_retryable(self, error: BaseException) -> bool:
        retry_on = self.retry_on
        if isinstance(retry_on, tuple):
            return isinstance(error, retry_on)
        return bool(retry_on(error))

    def _hinted_delay_s(self, error: BaseException | None) -> float | None:
        if error is None:
            return None
        hint = self.retry_after(error) if self.retry_after is not None else None
        if hint is None:
            hint = getattr(error, "retry_after_s", None)
        if isinstance(hint, int | float) and not isinstance(hint, bool) and hint >= 0:
            return float(hint)
        return None

    def _plan(
        self,
        attempt: int,
        error: BaseException | None,
        previous_delay_s: float,
        deadline: Deadline,
    ) -> float:
        """The delay before attempt ``attempt + 1``; raises :class:`_GiveUp` to stop."""
        if error is not None:
            if not self._is_retryable(error):
                raise _GiveUp("not_retryable")
            if (
                not self.idempotent
                and outcome_of(error) is not Outcome.FAILED
                and current_idempotency_key() is None
            ):
                raise _GiveUp("not_idempotent")
        if attempt >= self.attempts_max:
            raise _GiveUp("attempts")
        delay_s = self.backoff.delay_s(attempt - 1, previous_delay_s, self._rng)
        hint_s = self._hinted_delay_s(error)
        if hint_s is not None:
            if hint_s > self.retry_after_max_s:
                raise _GiveUp("retry_after")
            delay_s = max(delay_s, hint_s)
        if deadline[1].now_s() + delay_s >= deadline[0]:
            raise _GiveUp("deadline")
        if self.budget is not None and not self.budget.try_withdraw():
            raise _GiveUp("budget")
        with self._lock:
            self._retries += 1
            self._delay_s_total += delay_s
        if self._emitter.active:
            self._emitter.emit(
                "retry",
                self._clock.now_s(),
                {
                    "attempt": attempt,
                    "delay_s": delay_s,
                    "error": type(error).__name__ if error is not None else "result",
                },
            )
        return delay_s

    def _give_up(
        self, reason: str, attempt: int, error: BaseException | None, result: object
    ) -> NoReturn:
        with self._lock:
            self._gave_up[reason] = self._gave_up.get(reason, 0) + 1
        if self._emitter.active:
            self._emitter.emit(
                "gave_up", self._clock.now_s(), {"reason": reason, "attempts": attempt}
            )
        message = f"{self.name}: gave up after {attempt} attempt(s): {_REASONS[reason]}"
        if error is None:
            raise RetryError(message, attempts=attempt, last_exception=None, last_result=result)
        if reason != "not_retryable":
            if self.reraise:
                error.add_note(message)
                raise error
            raise RetryError(message, attempts=attempt, last_exception=error) from error
        raise error

    def _deadline(self) -> Deadline:
        return tighter(self.total_timeout_s, self._clock)

    def _deadline_since(self, start_s: float) -> Deadline:
        """The loop's deadline for a call that started at ``start_s`` on our clock."""
        own: Deadline = (start_s + self.total_timeout_s, self._clock)
        current = _DEADLINE.get()
        if current is None:
            return own
        left_s = current[0] - current[1].now_s()
        at_s = self._clock.now_s() + left_s
        return own if own[0] <= at_s else (at_s, self._clock)

    def _attempt_deadline(self, deadline: Deadline) -> Deadline:
        per_attempt_s = self.timeout_per_attempt_s
        if per_attempt_s is None:
            return deadline
        at_s = deadline[1].now_s() + per_attempt_s
        return deadline if deadline[0] <= at_s else (at_s, deadline[1])

    def _accepts(self, result: object) -> bool:
        predicate = self.retry_if_result
        return predicate is None or not predicate(result)

    # -- sync ---------------------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` under this policy (synchronously)."""
        self._calls.incr()
        if self.budget is not None:
            self.budget.deposit()
        deadline = self._deadline()
        token = _DEADLINE.set(self._attempt_deadline(deadline))
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            _DEADLINE.reset(token)
            return self._retry_sync(fn, args, kwargs, deadline, exc, _NO_RESULT)
        except BaseException:
            _DEADLINE.reset(token)
            raise
        _DEADLINE.reset(token)
        if self.retry_if_result is not None and not self._accepts(result):
            return self._retry_sync(fn, args, kwargs, deadline, None, result)
        return result

    def _retry_sync(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: Deadline,
        error: BaseException | None,
        result: Any,
    ) -> R:
        attempt = 1
        delay_s = 0.0
        while True:
            try:
                delay_s = self._plan(attempt, error, delay_s, deadline)
            except _GiveUp as stop:
                self._give_up(stop.reason, attempt, error, result)
            self._clock.sleep(delay_s)
            attempt += 1
            token = _DEADLINE.set(self._attempt_deadline(deadline))
            try:
                result = fn(*args, **kwargs)
                error = None
            except Exception as exc:
                error, result = exc, _NO_RESULT
            finally:
                _DEADLINE.reset(token)
            if error is None and self._accepts(result):
                return cast(R, result)

    # -- async --------------------------------------------------------------------------

    async def _attempt_async(
        self,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: Deadline,
    ) -> R:
        attempt_deadline = self._attempt_deadline(deadline)
        token = _DEADLINE.set(attempt_deadline)
        try:
            if self.timeout_per_attempt_s is None:
                return await fn(*args, **kwargs)
            left_s = attempt_deadline[0] - attempt_deadline[1].now_s()
            scope = asyncio.timeout(max(left_s, 0.0))
            try:
                async with scope:
                    return await fn(*args, **kwargs)
            except TimeoutError as exc:
                if scope.expired():
                    raise Timeout(f"{self.name}: attempt exceeded {left_s:.3f}s") from exc
                raise
        finally:
            _DEADLINE.reset(token)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` under this policy."""
        self._calls.incr()
        if self.budget is not None:
            self.budget.deposit()
        deadline = self._deadline()
        if self.timeout_per_attempt_s is None:
            token = _DEADLINE.set(deadline)
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                _DEADLINE.reset(token)
                return await self._retry_async(fn, args, kwargs, deadline, exc, _NO_RESULT)
            except BaseException:
                _DEADLINE.reset(token)
                raise
            _DEADLINE.reset(token)
        else:
            try:
                result = await self._attempt_async(fn, args, kwargs, deadline)
            except Exception as exc:
                return await self._retry_async(fn, args, kwargs, deadline, exc, _NO_RESULT)
        if self.retry_if_result is not None and not self._accepts(result):
            return await self._retry_async(fn, args, kwargs, deadline, None, result)
        return result

    async def _retry_async(
        self,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: Deadline,
        error: BaseException | None,
        result: Any,
    ) -> R:
        attempt = 1
        delay_s = 0.0
        while True:
            try:
                delay_s = self._plan(attempt, error, delay_s, deadline)
            except _GiveUp as stop:
                self._give_up(stop.reason, attempt, error, result)
            await self._clock.asleep(delay_s)
            attempt += 1
            try:
                result = await self._attempt_async(fn, args, kwargs, deadline)
                error = None
            except Exception as exc:
                error, result = exc, _NO_RESULT
            if error is None and self._accepts(result):
                return cast(R, result)

    # -- attempts as a loop ---------------------------------------------------------------

    def _attempts_start(self) -> Deadline:
        self._calls.incr()
        if self.budget is not None:
            self.budget.deposit()
        return self._deadline()

    def _after_attempt(self, attempt: Attempt, delay_s: float) -> float:
        """The delay before the next attempt; re-raises the error when retrying stops."""
        error = attempt.error
        if error is None:
            raise InvariantViolation("retry: planning after an attempt that did not fail")
        try:
            return self._plan(attempt.number, error, delay_s, attempt.deadline)
        except _GiveUp as stop:
            self._give_up(stop.reason, attempt.number, error, _NO_RESULT)

    def attempts(self) -> Iterator[Attempt]:
        """Retry a block of sync code::

            for attempt in retry.attempts():
                with attempt:
                    send(order)

        Each ``with attempt:`` block runs under the deadline; an exception leaving it is
        swallowed while the policy retries and re-raised (with a note) when it gives up.
        """
        deadline = self._attempts_start()
        number, delay_s = 1, 0.0
        while True:
            attempt = Attempt(number, deadline, self._attempt_deadline(deadline))
            yield attempt
            if not attempt.failed:
                return
            delay_s = self._after_attempt(attempt, delay_s)
            self._clock.sleep(delay_s)
            number += 1

    async def aattempts(self) -> AsyncIterator[Attempt]:
        """Retry a block of async code: ``async for attempt in retry.aattempts(): with attempt:``.

        Waits with the clock's ``asleep``. ``timeout_per_attempt_s`` is published as the
        attempt's deadline but not enforced here; wrap the block in a ``TimeLimiter`` to
        cancel slow attempts.
        """
        deadline = self._attempts_start()
        number, delay_s = 1, 0.0
        while True:
            attempt = Attempt(number, deadline, self._attempt_deadline(deadline))
            yield attempt
            if not attempt.failed:
                return
            delay_s = self._after_attempt(attempt, delay_s)
            await self._clock.asleep(delay_s)
            number += 1

    # -- decorator ----------------------------------------------------------------------

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``fn`` (``def`` or ``async def``) with this policy."""
        if inspect.iscoroutinefunction(fn):
            if self.timeout_per_attempt_s is not None:
                return cast(Callable[P, R], decorate_async(fn, self.acall))
            return cast(Callable[P, R], self._async_wrapper(fn))
        return self._sync_wrapper(fn)

    def _async_wrapper(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        # The same inlined success path as the sync wrapper, in one coroutine frame.
        calls_incr = self._calls.incr
        budget = self.budget
        clock = self._clock
        now_s = clock.now_s
        total_s = self.total_timeout_s
        get, set_, reset = _DEADLINE.get, _DEADLINE.set, _DEADLINE.reset
        accepts = self._accepts if self.retry_if_result is not None else None
        retry_async = self._retry_async

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            calls_incr()
            if budget is not None:
                budget.deposit()
            current = get()
            at_s = now_s() + total_s
            if current is None or (current[1] is clock and current[0] > at_s):
                deadline: Deadline = (at_s, clock)
            else:
                deadline = tighter(total_s, clock)
            token = set_(deadline)
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                reset(token)
                return await retry_async(fn, args, kwargs, deadline, exc, _NO_RESULT)
            except BaseException:
                reset(token)
                raise
            reset(token)
            if accepts is not None and not accepts(result):
                return await retry_async(fn, args, kwargs, deadline, None, result)
            return result

        return async_wrapper

    def _sync_wrapper(self, fn: Callable[P, R]) -> Callable[P, R]:
        # The success path is inlined here with locals bound once: it runs on every call.
        calls_incr = self._calls.incr
        budget = self.budget
        clock = self._clock
        now_s = clock.now_s
        total_s = self.total_timeout_s
        per_attempt_s = self.timeout_per_attempt_s
        get, set_, reset = _DEADLINE.get, _DEADLINE.set, _DEADLINE.reset
        accepts = self._accepts if self.retry_if_result is not None else None
        retry_sync = self._retry_sync

        if not self.propagate_deadline:
            deadline_since = self._deadline_since

            @functools.wraps(fn)
            def light(*args: P.args, **kwargs: P.kwargs) -> R:
                calls_incr()
                if budget is not None:
                    budget.deposit()
                start_s = now_s()
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    return retry_sync(fn, args, kwargs, deadline_since(start_s), exc, _NO_RESULT)
                if accepts is not None and not accepts(result):
                    return retry_sync(fn, args, kwargs, deadline_since(start_s), None, result)
                return result

            return light

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            calls_incr()
            if budget is not None:
                budget.deposit()
            current = get()
            at_s = now_s() + total_s
            if current is None or (current[1] is clock and current[0] > at_s):
                deadline: Deadline = (at_s, clock)
            else:
                deadline = tighter(total_s, clock)
            token = set_(deadline if per_attempt_s is None else self._attempt_deadline(deadline))
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                reset(token)
                return retry_sync(fn, args, kwargs, deadline, exc, _NO_RESULT)
            except BaseException:
                reset(token)
                raise
            reset(token)
            if accepts is not None and not accepts(result):
                return retry_sync(fn, args, kwargs, deadline, None, result)
            return result

        return wrapper

    # -- observation --------------------------------------------------------------------

    def statistics(self) -> RetryStatistics:
        calls = self._calls.value
        with self._lock:
            return RetryStatistics(
                calls=calls,
                attempts=calls + self._retries,
                retries=self._retries,
                gave_up=sum(self._gave_up.values()),
                gave_up_by_reason=dict(self._gave_up),
                retry_delay_s_total=self._delay_s_total,
            )

    def __repr__(self) -> str:
        return (
            f"Retry(name={self.name!r}, attempts_max={self.attempts_max}, "
            f"total_timeout_s={self.total_timeout_s}, {self.backoff!r})"
        )


class Attempt:
    """One attempt of :meth:`Retry.attempts`; use it as a context manager around the work."""

    __slots__ = ("_token", "deadline", "error", "failed", "number", "scope")

    def __init__(self, number: int, deadline: Deadline, scope: Deadline) -> None:
        self.number = number
        self.deadline = deadline  # of the whole loop
        self.scope = scope  # published inside the block: the attempt's own deadline
        self.error: BaseException | None = None
        self.failed = False
        self._token: Any = None

    def __enter__(self) -> Attempt:
        self._token = _DEADLINE.set(self.scope)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        _DEADLINE.reset(self._token)
        if exc is None or not isinstance(exc, Exception):
            return False  # success, or cancellation / interrupts: never swallowed
        self.error = exc
        self.failed = True
        return True  # the loop decides: retry, or re-raise it with a note

    def __repr__(self) -> str:
        return f"Attempt(number={self.number}, failed={self.failed})"


_REASONS: Final = {
    "not_retryable": "the error is not retryable",
    "not_idempotent": (
        "the call is not idempotent, carries no idempotency key, and may have taken effect"
    ),
    "attempts": "attempts_max reached",
    "deadline": "the next attempt could not start before the deadline",
    "budget": "the shared retry budget is exhausted",
    "retry_after": "the server asked to wait longer than retry_after_max_s",
}
