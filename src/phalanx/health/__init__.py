"""Liveness, readiness and startup probes for Phalanx services.

- :mod:`phalanx.health.checks`: the :class:`HealthRegistry` of named checks, caching,
  timeouts and startup gating: what each probe means.
- :mod:`phalanx.health.results`: what checks and probes report (statuses, results, reports).
- :mod:`phalanx.health.builtin`: ready-made checks (ping, SQLite, TCP, circuit breaker).
- :mod:`phalanx.health.asgi`: :class:`HealthApp`, the probes as a pure ASGI app.
- :mod:`phalanx.health.server`: :class:`HealthServer` and :func:`serve`, a standalone server.

See ``docs/health.md``.
"""

from phalanx.health.asgi import DEFAULT_PATHS, HealthApp
from phalanx.health.builtin import (
    BreakerLike,
    BreakerStateLike,
    breaker_check,
    breaker_state_name,
    ping_check,
    sqlite_check,
    tcp_check,
)
from phalanx.health.checks import (
    CHECK_NAME_CHARS_MAX,
    CHECKS_MAX,
    DEFAULT_CACHE_S,
    DEFAULT_TIMEOUT_S,
    MESSAGE_CHARS_MAX,
    SYNC_THREADS_MAX,
    Check,
    CheckFailed,
    CheckFn,
    CheckResult,
    CheckStatus,
    HealthRegistry,
    HealthStatistics,
    Probe,
    ProbeReport,
    ProbeStatus,
)
from phalanx.health.server import DEFAULT_HOST, DEFAULT_PORT, HealthServer, serve

__all__ = [
    "CHECKS_MAX",
    "CHECK_NAME_CHARS_MAX",
    "DEFAULT_CACHE_S",
    "DEFAULT_HOST",
    "DEFAULT_PATHS",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT_S",
    "MESSAGE_CHARS_MAX",
    "SYNC_THREADS_MAX",
    "BreakerLike",
    "BreakerStateLike",
    "Check",
    "CheckFailed",
    "CheckFn",
    "CheckResult",
    "CheckStatus",
    "HealthApp",
    "HealthRegistry",
    "HealthServer",
    "HealthStatistics",
    "Probe",
    "ProbeReport",
    "ProbeStatus",
    "breaker_check",
    "breaker_state_name",
    "ping_check",
    "serve",
    "sqlite_check",
    "tcp_check",
]
