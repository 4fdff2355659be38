"""What health checks and probes report: statuses, results, reports and statistics.

These are the values :class:`~phalanx.health.checks.HealthRegistry` returns and the ASGI app
turns into JSON; failures inside checks are values of these types, never exceptions.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Check",
    "CheckFailed",
    "CheckFn",
    "CheckResult",
    "CheckStatus",
    "HealthStatistics",
    "Probe",
    "ProbeReport",
    "ProbeStatus",
]

CheckFn = Callable[[], Any]


class Probe(enum.Enum):
    """The three questions an orchestrator asks a process."""

    LIVENESS = "liveness"
    READINESS = "readiness"
    STARTUP = "startup"


class CheckStatus(enum.Enum):
    """The outcome of one run of one check. ``TIMEOUT`` counts as a failure."""

    OK = "ok"
    FAIL = "fail"
    TIMEOUT = "timeout"


class ProbeStatus(enum.Enum):
    """The overall answer to one probe."""

    OK = "ok"
    DEGRADED = "degraded"  # a non-critical check failed; still 200
    FAIL = "fail"
    STARTING = "starting"  # startup has not completed; liveness and readiness wait on it

    @property
    def http_status(self) -> int:
        return 200 if self in (ProbeStatus.OK, ProbeStatus.DEGRADED) else 503


class CheckFailed(Exception):
    """Raise from a check to fail it with exactly this message."""


@dataclass(frozen=True, slots=True)
class Check:
    """A registered check and its configuration."""

    name: str
    fn: CheckFn
    probes: frozenset[Probe]
    timeout_s: float
    cache_s: float
    critical: bool


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One run of one check.

    ``checked_at_s`` is on the registry clock's monotonic scale (used for cache ages);
    ``checked_at_wall_s`` is Unix time, for people.
    """

    name: str
    status: CheckStatus
    duration_s: float
    message: str
    checked_at_s: float
    checked_at_wall_s: float
    critical: bool = True

    @property
    def ok(self) -> bool:
        return self.status is CheckStatus.OK

    def to_json(self, *, now_s: float | None = None, verbose: bool = False) -> dict[str, Any]:
        """The JSON form served by the HTTP app (``duration_ms`` rounded to microseconds)."""
        body: dict[str, Any] = {
            "name": self.name,
            "status": self.status.value,
            "duration_ms": round(self.duration_s * 1000.0, 3),
            "message": self.message,
        }
        if verbose:
            body["critical"] = self.critical
            body["checked_at"] = (
                datetime.fromtimestamp(self.checked_at_wall_s, UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z")
            )
            if now_s is not None:
                body["age_ms"] = round(max(now_s - self.checked_at_s, 0.0) * 1000.0, 3)
        return body


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """The answer to one probe: overall status, why, and each check's latest result."""

    probe: Probe
    status: ProbeStatus
    reason: str
    checks: tuple[CheckResult, ...]
    checked_at_s: float

    @property
    def http_status(self) -> int:
        return self.status.http_status

    def to_json(self, *, verbose: bool = False) -> dict[str, Any]:
        return {
            "probe": self.probe.value,
            "status": self.status.value,
            "reason": self.reason,
            "checks": [
                result.to_json(now_s=self.checked_at_s, verbose=verbose) for result in self.checks
            ],
        }


@dataclass(frozen=True, slots=True)
class HealthStatistics:
    """Counters of a registry since it was created."""

    checks: int
    startup_complete: bool
    manual_ready: bool
    check_runs: int
    check_failures: int
    check_timeouts: int
    cache_hits: int
    coalesced_waits: int
    sync_threads_busy: int
    probes_served: Mapping[str, int]
