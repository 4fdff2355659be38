"""Fault-tolerance primitives: retry, retry budgets, circuit breaker, bulkhead, rate limiter,
timeout, idempotency, and a pipeline that composes them.

Each primitive works on ``def`` and ``async def`` alike, as a decorator, through
``.call(fn, *args)``, and as a context manager where that makes sense; takes an injectable
clock (and RNG where randomness is involved); reports ``statistics()``; and emits events that
:mod:`phalanx.obs.metrics` turns into Prometheus series.
"""

from phalanx.resilience.deadline import check_deadline, current_deadline, deadline, remaining_s
from phalanx.resilience.events import Event, Listener
from phalanx.resilience.keys import current_idempotency_key, idempotency_key

__all__ = [
    "Event",
    "Listener",
    "check_deadline",
    "current_deadline",
    "current_idempotency_key",
    "deadline",
    "idempotency_key",
    "remaining_s",
]
