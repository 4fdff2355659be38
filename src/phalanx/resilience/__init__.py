"""Fault-tolerance primitives: retry, retry budgets, circuit breaker, bulkhead, rate limiter,
timeout, idempotency, and a pipeline that composes them.

Each primitive works on ``def`` and ``async def`` alike, as a decorator, through
``.call(fn, *args)`` / ``.acall(fn, *args)``, and as a context manager where that makes
sense; takes an injectable clock (and RNG where randomness is involved); reports
``statistics()``; and emits events that :mod:`phalanx.obs.metrics` turns into Prometheus
series. Errors are those of :mod:`phalanx.errors`. See ``docs/resilience.md``.

The stores for shared servers (:class:`PostgresIdempotencyStore`,
:class:`RedisIdempotencyStore`, :class:`RedisBreakerStore`) load on first use, so their
client libraries (the ``postgres`` and ``redis`` extras) are needed only by those who use them.
"""

from typing import TYPE_CHECKING

from phalanx.resilience.backoff import JITTER_MODES, Backoff
from phalanx.resilience.breaker import (
    BreakerConfig,
    BreakerState,
    BreakerStatistics,
    CircuitBreaker,
    Permit,
)
from phalanx.resilience.breaker_store import (
    BreakerRecord,
    BreakerStore,
    MemoryBreakerStore,
    SQLiteBreakerStore,
)
from phalanx.resilience.budget import (
    AdaptiveThrottle,
    RetryBudget,
    RetryBudgetStatistics,
    ThrottleStatistics,
)
from phalanx.resilience.bulkhead import Bulkhead, BulkheadStatistics
from phalanx.resilience.deadline import check_deadline, current_deadline, deadline, remaining_s
from phalanx.resilience.events import Event, Listener, Observable
from phalanx.resilience.idempotency import (
    FingerprintMismatch,
    Idempotency,
    IdempotencyMiddleware,
    IdempotencyStatistics,
    IdempotencyStore,
    KeyInProgress,
    MemoryIdempotencyStore,
    SqliteIdempotencyStore,
    asend_idempotency_key,
    send_idempotency_key,
)
from phalanx.resilience.keys import current_idempotency_key, idempotency_key
from phalanx.resilience.pipeline import Pipeline, Policy
from phalanx.resilience.pool import BoundedPool, PoolStatistics
from phalanx.resilience.ratelimit import Gcra, RateLimiter, RateLimiterStatistics, TokenBucket
from phalanx.resilience.registry import BulkheadRegistry
from phalanx.resilience.retry import DEFAULT_RETRY_ON, Attempt, Retry, RetryStatistics
from phalanx.resilience.threadpool import ThreadPoolBulkhead, ThreadPoolStatistics
from phalanx.resilience.timeout import TimeLimiter, TimeLimiterStatistics

if TYPE_CHECKING:  # loaded lazily by __getattr__ below
    from phalanx.resilience.breaker_redis import RedisBreakerStore
    from phalanx.resilience.idempotency.postgres import PostgresIdempotencyStore
    from phalanx.resilience.idempotency.redis import RedisIdempotencyStore

__all__ = [
    "DEFAULT_RETRY_ON",
    "JITTER_MODES",
    "AdaptiveThrottle",
    "Attempt",
    "Backoff",
    "BoundedPool",
    "BreakerConfig",
    "BreakerRecord",
    "BreakerState",
    "BreakerStatistics",
    "BreakerStore",
    "Bulkhead",
    "BulkheadRegistry",
    "BulkheadStatistics",
    "CircuitBreaker",
    "Event",
    "FingerprintMismatch",
    "Gcra",
    "Idempotency",
    "IdempotencyMiddleware",
    "IdempotencyStatistics",
    "IdempotencyStore",
    "KeyInProgress",
    "Listener",
    "MemoryBreakerStore",
    "MemoryIdempotencyStore",
    "Observable",
    "Permit",
    "Pipeline",
    "Policy",
    "PoolStatistics",
    "PostgresIdempotencyStore",
    "RateLimiter",
    "RateLimiterStatistics",
    "RedisBreakerStore",
    "RedisIdempotencyStore",
    "Retry",
    "RetryBudget",
    "RetryBudgetStatistics",
    "RetryStatistics",
    "SQLiteBreakerStore",
    "SqliteIdempotencyStore",
    "ThreadPoolBulkhead",
    "ThreadPoolStatistics",
    "ThrottleStatistics",
    "TimeLimiter",
    "TimeLimiterStatistics",
    "TokenBucket",
    "asend_idempotency_key",
    "check_deadline",
    "current_deadline",
    "current_idempotency_key",
    "deadline",
    "idempotency_key",
    "remaining_s",
    "send_idempotency_key",
]


_LAZY = {
    "PostgresIdempotencyStore": "phalanx.resilience.idempotency.postgres",
    "RedisIdempotencyStore": "phalanx.resilience.idempotency.redis",
    "RedisBreakerStore": "phalanx.resilience.breaker_redis",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
