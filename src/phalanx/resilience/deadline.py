"""Deadlines that propagate to nested calls through ``contextvars``.

A retry policy with ``total_timeout_s=20`` opens a deadline 20 s from now; anything called
inside it (another retry, a timeout, a client call) sees the remaining budget through
:func:`remaining_s` and never waits past it. Deadlines only tighten: an inner scope asking
for more time than its caller has left gets the caller's deadline.

Because ``contextvars`` are per thread and per asyncio task, the budget follows the logical
call chain, including into tasks created inside the scope (they copy the context).

A deadline is stored as ``(at_s, clock)``: the instant on that clock's monotonic scale.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import DeadlineExceeded

__all__ = ["check_deadline", "current_deadline", "deadline", "remaining_s"]

Deadline = tuple[float, Clock]

_DEADLINE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "phalanx_deadline", default=None
)


def current_deadline() -> Deadline | None:
    """The innermost deadline as ``(at_s, clock)``, or ``None`` when the call is unbounded."""
    return _DEADLINE.get()


def remaining_s() -> float | None:
    """Seconds left before the current deadline (may be negative), or ``None`` if none."""
    current = _DEADLINE.get()
    if current is None:
        return None
    return current[0] - current[1].now_s()


def check_deadline(what: str = "operation") -> None:
    """Raise :class:`DeadlineExceeded` if the current deadline has passed."""
    left = remaining_s()
    if left is not None and left <= 0:
        raise DeadlineExceeded(f"{what}: deadline exceeded by {-left:.3f}s")


def tighter(timeout_s: float, clock: Clock) -> Deadline:
    """The deadline ``timeout_s`` from now on ``clock``, or the current one if it is sooner."""
    at_s = clock.now_s() + timeout_s
    current = _DEADLINE.get()
    if current is None:
        return (at_s, clock)
    if current[1] is clock:
        return current if current[0] <= at_s else (at_s, clock)
    # A different clock: compare remaining budgets, express the result on ``clock``.
    left_s = current[0] - current[1].now_s()
    return (clock.now_s() + left_s, clock) if left_s < timeout_s else (at_s, clock)


def set_deadline(value: Deadline) -> contextvars.Token[Deadline | None]:
    """Install ``value`` as the current deadline; undo with :func:`reset_deadline`."""
    return _DEADLINE.set(value)


reset_deadline = _DEADLINE.reset


@contextmanager
def deadline(timeout_s: float, *, clock: Clock = SYSTEM_CLOCK) -> Iterator[Deadline]:
    """Bound everything inside the block to ``timeout_s`` seconds (or less, if already bounded).

    This is cooperative: it does not interrupt running code. Phalanx primitives inside the
    block read it; your own code can call :func:`remaining_s` or :func:`check_deadline`.
    For preemptive cancellation of async code use :class:`phalanx.resilience.Timeout`.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: must be > 0, got {timeout_s!r}")
    value = tighter(timeout_s, clock)
    token = _DEADLINE.set(value)
    try:
        yield value
    finally:
        _DEADLINE.reset(token)
